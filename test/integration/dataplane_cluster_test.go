package integration

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/dataplane"
)

// TestDataPlaneCutOffOnEveryServer: in a three-server NATS cluster whose
// manager is connected to server 0 only, a device connected over NATS to
// server 1 and over MQTT to server 2 reaches its owner's subscriber on
// server 0 (the account pushed through server 0 reaches the others); when
// its ownership ends both connections are closed, on the servers the
// manager is not connected to, and its old certificate is refused on every
// server over both protocols.
func TestDataPlaneCutOffOnEveryServer(t *testing.T) {
	start := time.Now()
	dp := startDataPlaneCluster(t, 3)
	t.Logf("three-server data plane formed in %v", time.Since(start))
	startManager(t, withDataPlane(dp))
	g := startGateway(t)

	for _, how := range []string{"transfer", "release"} {
		t.Run(how, func(t *testing.T) {
			oldOwner, newOwner := newTenant(t), newTenant(t)
			rec := newDevice(t)
			name := rec.Device.Name
			user := dataplane.DeviceUser(name)
			agent := newAgent(t, g, rec)
			held := waitPhase(t, claimWithCode(t, admin, oldOwner.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			enrollAgent(t, agent)
			cert, _ := agent.Certificate()

			// The owner's subscriber is on server 0, the manager's server.
			ownerIn := subscribe(t, dp.accountUser(t, oldOwner), "devices.>")

			// NATS to server 1.
			nc, err := dp.on(1).natsAs(cert)
			if err != nil {
				t.Fatalf("the device is refused over NATS on server 1: %v", err)
			}
			defer nc.Close()
			natsClosed := make(chan struct{})
			nc.SetClosedHandler(func(*nats.Conn) { close(natsClosed) })
			if got := nc.ConnectedServerName(); got != dp.Servers[1].Name() {
				t.Fatalf("the device's NATS connection is on %s, want server 1 (%s)", got, dp.Servers[1].Name())
			}
			if err := nc.Publish("devices."+name+".telemetry", []byte("nats via server 1")); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := ownerIn.next(t, "telemetry over NATS via server 1"); string(got.Data) != "nats via server 1" {
				t.Fatalf("the owner received %q", got.Data)
			}

			// MQTT to server 2.
			var lostAt atomic.Int64
			lost := make(chan struct{})
			o := mqtt.NewClientOptions().AddBroker(dp.Servers[2].MQTTURL).SetClientID(dataplane.MQTTClientID(name)).SetCleanSession(false).
				SetTLSConfig(dp.clientTLS(cert)).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
				SetConnectionLostHandler(func(mqtt.Client, error) { lostAt.Store(time.Now().UnixNano()); close(lost) })
			m := mqtt.NewClient(o)
			if tok := m.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("the device is refused over MQTT on server 2: %v", tok.Error())
			}
			defer m.Disconnect(0)
			if tok := m.Publish(topicOf(name, "telemetry"), 1, false, []byte("mqtt via server 2")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("MQTT publish: %v", tok.Error())
			}
			if got := ownerIn.next(t, "telemetry over MQTT via server 2"); string(got.Data) != "mqtt via server 2" {
				t.Fatalf("the owner received %q", got.Data)
			}

			// The device is connected to servers 1 and 2, and not to the
			// manager's server.
			for i, want := range []int{0, 1, 1} {
				if got := deviceConns(t, dp.Servers[i], user); got != want {
					t.Fatalf("server %d holds %d connections of the device, want %d", i, got, want)
				}
			}

			begin := endOwnership(t, how, held, rec, oldOwner, newOwner)
			for what, ch := range map[string]chan struct{}{"MQTT (server 2)": lost, "NATS (server 1)": natsClosed} {
				select {
				case <-ch:
				case <-time.After(30 * time.Second):
					t.Fatalf("the device's %s connection is still open after its ownership ended", what)
				}
			}
			t.Logf("%s: ownership change requested → MQTT connection on server 2 closed in %v", how, time.Unix(0, lostAt.Load()).Sub(begin))
			for i := range dp.Servers {
				if got := deviceConns(t, dp.Servers[i], user); got != 0 {
					t.Fatalf("server %d still holds %d connections of the device", i, got)
				}
			}

			// The old certificate is refused on every server, over both
			// protocols.
			for i := range dp.Servers {
				if c, err := dp.on(i).natsAs(cert); err == nil {
					c.Close()
					t.Fatalf("the device's old certificate is admitted over NATS on server %d after its ownership ended", i)
				}
				if c, err := dp.on(i).mqttAs(cert, dataplane.MQTTClientID(name), true); err == nil {
					c.Disconnect(0)
					t.Fatalf("the device's old certificate is admitted over MQTT on server %d after its ownership ended", i)
				}
			}

			// The history records both connections closed.
			var purged custodyv1alpha1.CustodyRecord
			waitFor(t, "the purge in the device's history", func() bool {
				es := entries(getDevice(t, name), custodyv1alpha1.CustodyEventDataPurged)
				if len(es) == 1 {
					purged = es[0]
				}
				return len(es) == 1
			})
			if purged.Tenant != oldOwner.Name || !strings.Contains(purged.Reason, "2 data-plane connection(s) closed") {
				t.Fatalf("the purge entry says %+v", purged)
			}
		})
	}
}

// deviceConns is the number of connections of user server s holds.
func deviceConns(t testing.TB, s *dataplane.Embedded, user string) int {
	t.Helper()
	cz, err := s.Connz(&server.ConnzOptions{Username: true, User: user})
	if err != nil {
		t.Fatal(err)
	}
	return len(cz.Conns)
}

// TestDataPlaneConnectionsOnARestartedServer: a server that joins the
// cluster after the Service last asked every server (a restart, a cluster
// grown by one) is asked too: its connections are found every time, not
// only when its answer happens to arrive among as many as answered before.
func TestDataPlaneConnectionsOnARestartedServer(t *testing.T) {
	dp := startDataPlaneCluster(t, 3)
	if err := dp.Service.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dp.Service.Close)
	ctx := t.Context()

	// Server 2 is down while the Service asks: two servers answer.
	dp.Servers[2].Shutdown()
	dp.Servers[2].WaitForShutdown()
	waitFor(t, "servers 0 and 1 to lose their route to server 2", func() bool {
		return dp.Servers[0].NumRemotes() == 1 && dp.Servers[1].NumRemotes() == 1
	})
	if _, err := dp.Service.Connections(ctx, ""); err != nil {
		t.Fatal(err)
	}

	// It comes back, and a client connects to it.
	srv, err := dp.Keys.StartEmbedded(dp.Configs[2])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	dp.Servers[2] = srv
	waitFor(t, "server 2 to rejoin the cluster", func() bool {
		for _, s := range dp.Servers {
			if s.NumRemotes() != 2 {
				return false
			}
		}
		return true
	})
	tn := &custodyv1alpha1.Tenant{}
	tn.Name, tn.UID = "restarted", "restarted-uid"
	dp.on(2).accountUser(t, tn)

	// Asked ten times, every answer holds it (a Service that stops at two
	// answers misses it about every other time).
	account, err := dp.Service.TenantAccount(tn)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		conns, err := dp.Service.Connections(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, c := range conns {
			if c.Account == account && c.Server == srv.ID() {
				found++
			}
		}
		if found != 1 {
			t.Fatalf("question %d: the connection on the restarted server %s is not among %+v", i, srv.ID(), conns)
		}
	}
}
