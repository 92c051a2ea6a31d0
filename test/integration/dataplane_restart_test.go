package integration

import (
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/dataplane"
)

// TestDataPlaneRestartLosesNothing: the data-plane server restarts (same
// ports and store) under a running manager; the manager reconnects, answers
// the callout again, the bound device is admitted again into its tenant's
// account, and a transfer afterwards still cuts it off.
func TestDataPlaneRestartLosesNothing(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	owner, next := newTenant(t), newTenant(t)
	rec, held, cert := boundDevice(t, g, owner, nil)
	nc, err := dp.natsAs(cert)
	if err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	nc.Close()

	// Restart on the same ports and store.
	store := filepath.Dir(dp.Server.ConfigFile)
	dir := filepath.Dir(store)
	u, err := url.Parse(dp.Server.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	natsPort := u.Port()
	_, mqttPort := dp.mqttHostPort()
	dp.Server.Shutdown()
	dp.Server.WaitForShutdown()
	port, _ := strconv.Atoi(natsPort)
	mport, _ := strconv.Atoi(mqttPort)
	srv, err := dp.Keys.StartEmbedded(dataplane.ServerConfig{Port: port, MQTTPort: mport, StoreDir: store,
		CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key")})
	if err != nil {
		t.Fatal(err)
	}
	dp.Server = srv
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	waitFor(t, "the device to be admitted again after the data plane restarted", func() bool {
		c, err := dp.natsAs(cert)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})

	m, err := dp.mqttAs(cert, dataplane.MQTTClientID(rec.Device.Name), true)
	if err != nil {
		t.Fatalf("MQTT after the restart: %v", err)
	}
	lost := make(chan struct{})
	go func() {
		for m.IsConnectionOpen() {
			time.Sleep(10 * time.Millisecond)
		}
		close(lost)
	}()
	offer(t, admin, held, next.Name)
	waitPhase(t, proofClaim(t, admin, next.Status.Namespace, rec, acceptFrom(owner.Name)), custodyv1alpha1.ClaimPhaseBound)
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("after the restart, a transfer did not close the device's connection")
	}
}
