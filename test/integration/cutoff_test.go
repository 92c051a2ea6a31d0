package integration

import (
	"bytes"
	"context"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestTransferCutsOffTheOldOwner: after a transfer the previous owner's
// certificate is refused at the gateway and cannot be renewed; the device
// enrols again and gets a certificate of its new owner only.
func TestTransferCutsOffTheOldOwner(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	oldOwner, newOwner := newTenant(t), newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	held := waitPhase(t, claimWithCode(t, admin, oldOwner.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)

	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	oldTLS, oldLeaf := agent.Certificate()
	oldCert := *oldTLS
	if oldLeaf.URIs[0].String() != identityOf(serial, oldOwner.Name, name).URI {
		t.Fatalf("first certificate names %s", oldLeaf.URIs[0])
	}
	if err := agent.Client.Heartbeat(ctx, oldCert, protocol.HeartbeatRequest{}); err != nil {
		t.Fatalf("the owner's certificate is refused before the transfer: %v", err)
	}

	offer(t, admin, held, newOwner.Name)
	accepted := waitPhase(t, proofClaim(t, admin, newOwner.Status.Namespace, rec, acceptFrom(oldOwner.Name)), custodyv1alpha1.ClaimPhaseBound)
	waitPhase(t, held, custodyv1alpha1.ClaimPhaseLost)

	// At once: no heartbeat, no renewal with the old owner's certificate.
	csr, err := device.NewCSR(agent.Key, identityOf(serial, oldOwner.Name, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Client.Heartbeat(ctx, oldCert, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
		t.Fatalf("heartbeat with the old owner's certificate: %v, want CertificateRefused", err)
	}
	if _, err := agent.Client.Reenroll(ctx, oldCert, csr); !device.IsCode(err, protocol.ErrCertificateRefused) {
		t.Fatalf("renewal with the old owner's certificate: %v, want CertificateRefused", err)
	}

	// The device notices and enrols again, under its new owner.
	enrollAgent(t, agent)
	_, newLeaf := agent.Certificate()
	if newLeaf.URIs[0].String() != identityOf(serial, newOwner.Name, name).URI {
		t.Fatalf("after the transfer the certificate names %s", newLeaf.URIs[0])
	}
	if out, err := opensslVerify(t, trustBundle(t, oldOwner), writeTemp(t, "new.pem", string(pemCert(newLeaf.Raw)))); err == nil {
		t.Fatalf("the new owner's certificate verifies under the old owner's CA: %s", out)
	}
	got := &custodyv1alpha1.Claim{}
	waitFor(t, "the new owner's Claim to show the certificate", func() bool {
		return admin.Get(ctx, client.ObjectKeyFromObject(accepted), got) == nil && got.Status.Certificate != nil && got.Status.Certificate.NotAfter.Time.Equal(newLeaf.NotAfter)
	})
}

// TestDecommissionEndsTheBinding: the ERP's decommission ends the binding at
// once and makes the device unclaimable and unenrollable.
func TestDecommissionEndsTheBinding(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme, next := newTenant(t), newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	held := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	cert, _ := agent.Certificate()
	oldCert := *cert

	if err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }, client.FieldOwner(erpOwner)); err != nil {
		t.Fatalf("decommissioning a bound device: %v", err)
	}
	if lost := waitPhase(t, held, custodyv1alpha1.ClaimPhaseLost); readyReason(lost) != custodyv1alpha1.ClaimReasonDeviceDecommissioned {
		t.Fatalf("the decommissioned device's Claim reads %s: %s", readyReason(lost), readyMessage(lost))
	}
	waitFor(t, "the device to be Decommissioned", func() bool {
		d := getDevice(t, name)
		return d.Spec.ClaimRef == nil && d.Status.Phase == custodyv1alpha1.DevicePhaseDecommissioned
	})
	e := lastEntry(t, name, custodyv1alpha1.CustodyEventDecommissioned)
	if e.Tenant != acme.Name || e.ClaimUID != held.UID || e.Actor != "erp:"+erpOwner {
		t.Fatalf("decommission recorded as %+v", e)
	}
	if err := agent.Client.Heartbeat(ctx, oldCert, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
		t.Fatalf("heartbeat after decommission: %v, want CertificateRefused", err)
	}
	csr, err := device.NewCSR(agent.Key, identityOf(serial, acme.Name, name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Client.Enroll(ctx, agent.Key, serial, model, csr); !device.IsCode(err, protocol.ErrNotBound) {
		t.Fatalf("enrollment after decommission: %v, want NotBound", err)
	}
	again := waitPhase(t, claimWithCode(t, admin, next.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(again) != custodyv1alpha1.ClaimReasonNotVerified {
		t.Fatalf("a claim on a decommissioned device got %s", readyReason(again))
	}
	assertChain(t, name)
}

// TestFieldResetKeepsOwnership: a device wiped in the field (no
// certificate left) enrols again with its factory key under its binding;
// the reset never moves ownership. Its key is the same, so while its
// certificate has more than half its lifetime left it gets that certificate
// back (one certificate per key and binding, see
// TestEnrollmentRestartIssuesOneCertificate); later, a new one.
func TestFieldResetKeepsOwnership(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	held := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	before := newAgent(t, g, rec)
	enrollAgent(t, before)
	_, first := before.Certificate()
	historyBefore := len(getDevice(t, name).Status.History)

	wiped := newAgent(t, g, rec) // a fresh directory: only the factory key survives
	if c, _ := wiped.Certificate(); c != nil {
		t.Fatal("the wiped device kept a certificate")
	}
	enrollAgent(t, wiped)
	_, again := wiped.Certificate()
	if !bytes.Equal(again.Raw, first.Raw) || countRequests(t, name) != 1 {
		t.Fatalf("re-enrollment with the same key, early in the certificate's life, gave another certificate (%x, not %x)", again.SerialNumber, first.SerialNumber)
	}

	m.Clock.SetTime(first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 3 / 5))
	wipedLater := newAgent(t, g, rec)
	enrollAgent(t, wipedLater)
	_, second := wipedLater.Certificate()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || second.URIs[0].String() != identityOf(serial, acme.Name, name).URI {
		t.Fatalf("re-enrollment after a reset gave %s", second.URIs[0])
	}
	d := getDevice(t, name)
	if !boundTo(t, name, held.UID) || len(d.Status.History) != historyBefore {
		t.Fatal("a field reset changed ownership or its history")
	}
}
