package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/custody-dev/custody/internal/dataplane"
	"github.com/custody-dev/custody/pkg/device"
)

// requireMosquitto finds the Debian mosquitto-clients tools (.ci/run
// installs them).
func requireMosquitto(t testing.TB) (pub, sub string) {
	t.Helper()
	pub, err1 := exec.LookPath("mosquitto_pub")
	sub, err2 := exec.LookPath("mosquitto_sub")
	if err1 != nil || err2 != nil {
		t.Fatal("mosquitto_pub and mosquitto_sub are needed (apt-get install mosquitto-clients)")
	}
	return pub, sub
}

// certFiles writes a client certificate (chain) and its key as PEM files
// for a third-party client.
func certFiles(t testing.TB, c *tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	priv := c.PrivateKey
	if fk, ok := priv.(*device.FileKey); ok {
		priv = fk.Signer
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, "client.pem", string(chain)), writeTemp(t, "client.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
}

// TestMosquittoClientsOnTheDataPlane: Debian's mosquitto_pub and
// mosquitto_sub (libmosquitto, MQTT 3.1.1), given only the device's
// certificate and key and the data plane's CA, publish the device's
// telemetry to its owner and receive the owner's command; mosquitto_sub
// with the tenant's DataAccess Secret (tls.crt, tls.key) receives the
// telemetry, with another tenant's receives nothing; with a forged
// self-signed certificate naming the device they are refused.
func TestMosquittoClientsOnTheDataPlane(t *testing.T) {
	pub, sub := requireMosquitto(t)
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	owner := newTenant(t)
	rec, _, cert := boundDevice(t, g, owner, nil)
	name := rec.Device.Name
	certFile, keyFile := certFiles(t, cert)
	host, port := dp.mqttHostPort()
	ownerConn := dp.accountUser(t, owner)
	ownerIn := subscribe(t, ownerConn, "devices.>")
	base := []string{"-h", host, "-p", port, "--cafile", dp.CAFile, "-V", "mqttv311"}
	common := append(append([]string{}, base...), "-i", dataplane.MQTTClientID(name))

	// The tenant's and another tenant's DataAccess holders subscribe with
	// mosquitto_sub, as the README shows.
	other := newTenant(t)
	_, ownerAccess := accessCredentials(t, owner, "dashboard", nil)
	_, otherAccess := accessCredentials(t, other, "dashboard", nil)
	subCtx, stopSubs := context.WithTimeout(context.Background(), 90*time.Second)
	defer stopSubs()
	startSub := func(cert *tls.Certificate, max string) (*exec.Cmd, *strings.Builder) {
		c, k := certFiles(t, cert)
		cmd := exec.CommandContext(subCtx, sub, append(append([]string{}, base...), "-i", dataplane.AccessMQTTClientID("dashboard"), "--cert", c, "--key", k, "-q", "1", "-t", "devices/#", "-v", "-C", max, "-W", "80")...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}
	ownerSub, ownerSubOut := startSub(ownerAccess, "1")
	otherSub, otherSubOut := startSub(otherAccess, "1")
	waitFor(t, "both mosquitto_sub subscribers to connect", func() bool {
		a, err1 := dp.Service.Connections(subCtx, dataplane.AccessUser(owner.Status.Namespace, "dashboard"))
		b, err2 := dp.Service.Connections(subCtx, dataplane.AccessUser(other.Status.Namespace, "dashboard"))
		return err1 == nil && err2 == nil && len(a) == 1 && len(b) == 1
	})

	// Retained, so that a subscriber whose SUBSCRIBE is still on its way
	// gets it too.
	out, err := exec.Command(pub, append(common, "--cert", certFile, "--key", keyFile, "-q", "1", "-r", "-t", topicOf(name, "telemetry"), "-m", "from mosquitto")...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub with the device's certificate: %v\n%s", err, out)
	}
	if got := ownerIn.next(t, "the owner, from mosquitto_pub"); string(got.Data) != "from mosquitto" || got.Subject != "devices."+name+".telemetry" {
		t.Fatalf("the owner received %q on %s", got.Data, got.Subject)
	}
	if err := ownerSub.Wait(); err != nil || strings.TrimSpace(ownerSubOut.String()) != topicOf(name, "telemetry")+" from mosquitto" {
		t.Fatalf("mosquitto_sub with the owner's DataAccess: %v, printed %q", err, ownerSubOut.String())
	}
	// The other tenant's subscriber: stop it and read what it printed.
	_ = otherSub.Process.Kill()
	_ = otherSub.Wait()
	if out := strings.TrimSpace(otherSubOut.String()); out != "" {
		t.Fatalf("mosquitto_sub with another tenant's DataAccess printed %q", out)
	}

	// mosquitto_sub as the device, on its commands; the owner sends one
	// once the subscription is there.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sub, append(common, "--cert", certFile, "--key", keyFile, "-q", "1", "-t", topicOf(name, "commands"), "-C", "1", "-W", "50")...)
	var subOut strings.Builder
	cmd.Stdout, cmd.Stderr = &subOut, &subOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mosquitto_sub's subscription", func() bool {
		conns, err := dp.Service.Connections(ctx, dataplane.DeviceUser(name))
		return err == nil && len(conns) == 1
	})
	// The connection exists; publish until the subscription is in place.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(50 * time.Second)
	for sent := false; !sent; {
		if err := ownerConn.Publish("devices."+name+".commands", []byte("reboot")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil || strings.TrimSpace(subOut.String()) != "reboot" {
				t.Fatalf("mosquitto_sub: %v, printed %q", err, subOut.String())
			}
			sent = true
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("mosquitto_sub received no command: %s", subOut.String())
		}
	}

	// A forged, self-signed certificate naming the device: refused.
	forged := forgeDeviceCert(t, nil, nil, rec.Device.Spec.SerialNumber, identityOf(rec.Device.Spec.SerialNumber, owner.Name, name).URI, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	fCert, fKey := certFiles(t, forged)
	out, err = exec.Command(pub, append(common, "--cert", fCert, "--key", fKey, "-q", "1", "-t", topicOf(name, "telemetry"), "-m", "forged")...).CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "not authori") {
		t.Fatalf("mosquitto_pub with a forged certificate: %v\n%s", err, out)
	}
}
