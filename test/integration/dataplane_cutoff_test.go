package integration

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/dataplane"
)

// TestDataPlaneOwnershipChangeCutsOff: when a device is transferred,
// released or decommissioned, every open connection it has is closed, the
// previous owner's subscriber receives nothing more from it, its old
// certificate is refused on reconnect, and the previous owner's account no
// longer holds its MQTT session, the durable consumer of its subscription,
// its retained or its stored messages; the purge is in the device's
// history. The delay from the ownership change request to the connection
// closing is measured and logged (the benchmark reports its distribution).
func TestDataPlaneOwnershipChangeCutsOff(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	ctx := context.Background()

	for _, how := range []string{"transfer", "release", "decommission"} {
		t.Run(how, func(t *testing.T) {
			oldOwner, newOwner := newTenant(t), newTenant(t)
			rec := newDevice(t)
			name := rec.Device.Name
			agent := newAgent(t, g, rec)
			held := waitPhase(t, claimWithCode(t, admin, oldOwner.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			enrollAgent(t, agent)
			cert, _ := agent.Certificate()

			oldConn := dp.accountUser(t, oldOwner)
			oldIn := subscribe(t, oldConn, "devices.>")

			// A persistent MQTT session with a QoS 1 subscription, a
			// retained message and a stored QoS 1 message, and a NATS
			// connection.
			var lostAt atomic.Int64
			lost := make(chan struct{})
			o := mqtt.NewClientOptions().AddBroker(dp.Server.MQTTURL).SetClientID(dataplane.MQTTClientID(name)).SetCleanSession(false).
				SetTLSConfig(dp.clientTLS(cert)).SetProtocolVersion(4).SetAutoReconnect(false).
				// A retained will, as firmware sets one: closed by the
				// cut-off, it must not tell the old owner anything.
				SetBinaryWill(topicOf(name, "status"), []byte("offline"), 1, true).
				SetConnectionLostHandler(func(mqtt.Client, error) { lostAt.Store(time.Now().UnixNano()); close(lost) })
			m := mqtt.NewClient(o)
			if tok := m.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("MQTT connect: %v", tok.Error())
			}
			if tok := m.Subscribe(topicOf(name, "commands"), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("MQTT subscribe to its commands: %v", tok.Error())
			}
			if tok := m.Publish(topicOf(name, "state"), 1, true, []byte("retained")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("MQTT retained publish: %v", tok.Error())
			}
			oldIn.next(t, "the retained publish")
			nc, err := dp.natsAs(cert)
			if err != nil {
				t.Fatal(err)
			}
			natsClosed := make(chan struct{})
			nc.SetClosedHandler(func(*nats.Conn) { close(natsClosed) })

			space := "devices." + name
			if got := streamState(t, oldConn, "$MQTT_rmsgs", "$MQTT.rmsgs."+space+".>"); len(got) != 1 {
				t.Fatalf("before: the old owner's account holds retained %v, want the device's one", got)
			}
			if got := streamState(t, oldConn, "$MQTT_sess", ">"); len(got) == 0 {
				t.Fatal("before: the old owner's account holds no MQTT session")
			}
			if got := consumerNames(t, oldConn, "$MQTT_msgs"); len(got) == 0 {
				t.Fatal("before: the device's QoS 1 subscription has no durable consumer")
			}

			cutOffs := testutil.CollectAndCount(dataplane.CutOffSeconds)
			beforeChange := oldIn.count()
			start := endOwnership(t, how, held, rec, oldOwner, newOwner)
			for what, ch := range map[string]chan struct{}{"MQTT": lost, "NATS": natsClosed} {
				select {
				case <-ch:
				case <-time.After(30 * time.Second):
					t.Fatalf("the device's %s connection is still open after its ownership ended", what)
				}
			}
			t.Logf("%s: ownership change requested → MQTT connection closed in %v", how, time.Unix(0, lostAt.Load()).Sub(start))

			// The old certificate is refused now, over both protocols.
			if c, err := dp.mqttAs(cert, dataplane.MQTTClientID(name), true); err == nil {
				c.Disconnect(0)
				t.Fatal("the device's old certificate is admitted over MQTT after its ownership ended")
			}
			if c, err := dp.natsAs(cert); err == nil {
				c.Close()
				t.Fatal("the device's old certificate is admitted over NATS after its ownership ended")
			}

			// The purge is recorded, and true.
			var purged custodyv1alpha1.CustodyRecord
			waitFor(t, "the purge in the device's history", func() bool {
				es := entries(getDevice(t, name), custodyv1alpha1.CustodyEventDataPurged)
				if len(es) == 1 {
					purged = es[0]
				}
				return len(es) == 1
			})
			if purged.Tenant != oldOwner.Name || purged.Actor != "manager" || !strings.Contains(purged.Reason, "2 data-plane connection(s) closed") || !strings.Contains(purged.Reason, "1 retained") {
				t.Fatalf("the purge entry says %+v", purged)
			}
			assertChain(t, name)
			if got := streamState(t, oldConn, "$MQTT_rmsgs", "$MQTT.rmsgs."+space+".>"); len(got) != 0 {
				t.Fatalf("after: the old owner's account still holds retained %v", got)
			}
			if got := streamState(t, oldConn, "$MQTT_sess", ">"); len(got) != 0 {
				t.Fatalf("after: the old owner's account still holds MQTT sessions %v", got)
			}
			if got := consumerNames(t, oldConn, "$MQTT_msgs"); len(got) != 0 {
				t.Fatalf("after: the old owner's account still holds consumers %v", got)
			}
			if got := streamState(t, oldConn, "$MQTT_msgs", "$MQTT.msgs."+space+".>"); len(got) != 0 {
				t.Fatalf("after: the old owner's account still holds stored messages %v", got)
			}
			if n := testutil.CollectAndCount(dataplane.CutOffSeconds); n < cutOffs {
				t.Fatal("the cut-off histogram lost observations")
			}

			// After the change the old owner got nothing of the device: at
			// most the purge's empty retained publishes (MQTT's way of
			// clearing a retained message carries no data), never its will.
			oldIn.mu.Lock()
			for _, m := range oldIn.msgs[beforeChange:] {
				if len(m.Data) > 0 {
					t.Errorf("after the change the old owner received %q on %s", m.Data, m.Subject)
				}
			}
			oldIn.mu.Unlock()
			before := oldIn.count()
			if how == "transfer" {
				// The device enrols again under its new owner and reaches it;
				// the old owner receives nothing more.
				newIn := subscribe(t, dp.accountUser(t, newOwner), "devices.>")
				enrollAgent(t, agent)
				newCert, _ := agent.Certificate()
				nc2, err := dp.natsAs(newCert)
				if err != nil {
					t.Fatalf("the device's new certificate is refused: %v", err)
				}
				defer nc2.Close()
				if err := nc2.Publish(space+".telemetry", []byte("to the new owner")); err != nil {
					t.Fatal(err)
				}
				_ = nc2.Flush()
				if got := newIn.next(t, "the new owner"); string(got.Data) != "to the new owner" {
					t.Fatalf("the new owner received %q", got.Data)
				}
			}
			_ = oldConn.Flush()
			if n := oldIn.count(); n != before {
				t.Fatalf("the old owner received %d more messages after the cut-off", n-before)
			}
			_ = ctx
		})
	}
}
