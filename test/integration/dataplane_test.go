package integration

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/dataplane"
)

// TestDataPlaneDeviceReachesItsOwnerOnly: a bound device connects to the
// embedded nats-server with nothing but its Custody certificate, over MQTT
// 3.1.1 (paho) and over NATS; the auth callout lands it in its tenant's
// account, where the owner's subscriber receives what it publishes. Another
// tenant, with valid credentials for its own account, receives nothing,
// and what it publishes on the device's subjects never reaches the owner.
func TestDataPlaneDeviceReachesItsOwnerOnly(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	owner, other := newTenant(t), newTenant(t)
	rec, _, cert := boundDevice(t, g, owner, nil)
	name := rec.Device.Name

	ownerIn := subscribe(t, dp.accountUser(t, owner), "devices.>")
	otherConn := dp.accountUser(t, other)
	otherIn := subscribe(t, otherConn, "devices.>")

	admittedBefore := admissions("admitted", "Admitted")
	m, err := dp.mqttAs(cert, dataplane.MQTTClientID(name), true)
	if err != nil {
		t.Fatalf("the bound device's MQTT connect was refused: %v", err)
	}
	defer m.Disconnect(0)
	if tok := m.Publish(topicOf(name, "telemetry"), 1, false, []byte("over mqtt")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT publish: %v", tok.Error())
	}
	got := ownerIn.next(t, "the owner's subscriber, MQTT telemetry")
	if got.Subject != "devices."+name+".telemetry" || string(got.Data) != "over mqtt" {
		t.Fatalf("the owner received %q on %s", got.Data, got.Subject)
	}

	nc, err := dp.natsAs(cert)
	if err != nil {
		t.Fatalf("the bound device's NATS connect was refused: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish("devices."+name+".status", []byte("over nats")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	got = ownerIn.next(t, "the owner's subscriber, NATS status")
	if got.Subject != "devices."+name+".status" || string(got.Data) != "over nats" {
		t.Fatalf("the owner received %q on %s", got.Data, got.Subject)
	}
	if n := admissions("admitted", "Admitted") - admittedBefore; n != 2 {
		t.Fatalf("the callout admitted %v connections, want 2", n)
	}

	// The other tenant: nothing of the device, and its own publishes on the
	// device's subjects stay in its own account.
	if err := otherConn.Publish("devices."+name+".telemetry", []byte("forged")); err != nil {
		t.Fatal(err)
	}
	if err := otherConn.Flush(); err != nil {
		t.Fatal(err)
	}
	forged := otherIn.next(t, "the other tenant's own publish (in its own account)")
	if string(forged.Data) != "forged" {
		t.Fatalf("the other tenant received %q", forged.Data)
	}
	// A marker the device sends after the forged message: once the owner
	// has it, the forged one would have arrived before it.
	if err := nc.Publish("devices."+name+".status", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if got := ownerIn.next(t, "the marker"); string(got.Data) != "marker" {
		t.Fatalf("the owner received %q from the other tenant's account", got.Data)
	}
	if n := otherIn.count(); n != 1 {
		t.Fatalf("the other tenant's subscriber received %d messages, want only its own", n)
	}

	// The union of the tenants' CAs a production server verifies client
	// certificates against (verify: true) holds both tenants' bundles.
	waitFor(t, "the data plane's client CA union to hold both tenants' CAs", func() bool {
		cm := &corev1.ConfigMap{}
		if admin.Get(t.Context(), client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.DataPlaneClientCAsName}, cm) != nil {
			return false
		}
		union := cm.Data["ca.crt"]
		return strings.Contains(union, strings.TrimSpace(trustBundle(t, owner))) && strings.Contains(union, strings.TrimSpace(trustBundle(t, other)))
	})
}
