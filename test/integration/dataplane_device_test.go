package integration

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestDevicePublisherFollowsItsOwner: the device side (pkg/device, what
// `custody-device run --dataplane` runs) connects with the certificate its
// agent holds and publishes telemetry to its owner; after a renewal it
// reconnects with the new certificate; after a transfer its
// connection is closed and its old certificate refused, and once its agent
// has enrolled again it publishes to the new owner without anyone's help;
// the old owner receives nothing more.
func TestDevicePublisherFollowsItsOwner(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	ctx := context.Background()
	oldOwner, newOwner := newTenant(t), newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	agent := newAgent(t, g, rec)
	held := waitPhase(t, claimWithCode(t, admin, oldOwner.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)

	p := &device.Publisher{Agent: agent, URL: dp.Server.MQTTURL, RootCAs: dp.Roots, Log: testLogger.WithName("publisher")}
	defer p.Close()
	if err := p.PublishOnce(ctx); err != device.ErrNoCertificate {
		t.Fatalf("before enrolling: %v, want ErrNoCertificate", err)
	}
	enrollAgent(t, agent)
	oldIn := subscribe(t, dp.accountUser(t, oldOwner), "devices.>")
	newIn := subscribe(t, dp.accountUser(t, newOwner), "devices.>")
	if err := p.PublishOnce(ctx); err != nil {
		t.Fatalf("publishing with the enrolled certificate: %v", err)
	}
	got := oldIn.next(t, "the owner, the device's telemetry")
	var tm device.Telemetry
	if err := json.Unmarshal(got.Data, &tm); err != nil || got.Subject != protocol.DeviceSubject(name, protocol.SuffixTelemetry) || tm.Sequence != 1 {
		t.Fatalf("the owner received %s on %s (%v)", got.Data, got.Subject, err)
	}

	// Renewal: the agent renews at two thirds of the certificate's life;
	// the publisher's next message goes over a new connection made with
	// the renewed certificate.
	_, before := agent.Certificate()
	renewedLost := p.Lost()
	agent.Clock = clocktesting.NewFakePassiveClock(before.NotBefore.Add(before.NotAfter.Sub(before.NotBefore) * 3 / 4))
	if _, err := agent.Step(ctx); err != nil {
		t.Fatalf("renewing: %v", err)
	}
	agent.Clock = clock.RealClock{}
	if _, after := agent.Certificate(); after == nil || after.Equal(before) {
		t.Fatal("the agent did not renew")
	}
	if err := p.PublishOnce(ctx); err != nil {
		t.Fatalf("publishing after the renewal: %v", err)
	}
	select {
	case <-renewedLost:
	default:
		t.Fatal("the publisher kept the connection made with the replaced certificate")
	}
	if got := oldIn.next(t, "the owner, after the renewal"); json.Unmarshal(got.Data, &tm) != nil || tm.Sequence != 2 {
		t.Fatalf("the owner received %s after the renewal", got.Data)
	}
	lost := p.Lost()

	offer(t, admin, held, newOwner.Name)
	waitPhase(t, proofClaim(t, admin, newOwner.Status.Namespace, rec, acceptFrom(oldOwner.Name)), custodyv1alpha1.ClaimPhaseBound)
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the device's data-plane connection stayed open after the transfer")
	}
	if err := p.PublishOnce(ctx); err == nil {
		t.Fatal("the publisher reconnected with the old owner's certificate")
	}

	// The agent notices at its next heartbeat and enrols under the new
	// owner; the publisher's next tick connects with the new certificate.
	enrollAgent(t, agent)
	if err := p.PublishOnce(ctx); err != nil {
		t.Fatalf("publishing after enrolling under the new owner: %v", err)
	}
	got = newIn.next(t, "the new owner, the device's telemetry")
	if err := json.Unmarshal(got.Data, &tm); err != nil || tm.Sequence < 3 {
		t.Fatalf("the new owner received %s (%v)", got.Data, err)
	}
	if n := oldIn.count(); n != 2 {
		t.Fatalf("the old owner received %d messages, want only the two before the transfer", n)
	}
}
