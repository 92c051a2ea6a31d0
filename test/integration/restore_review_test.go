package integration

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/custody"
)

// TestRestoreDoesNotReplaySupportActions (review finding): a restore that
// re-created SupportActions without status applied an old Reset again: the
// tenant that claimed the device after the reset lost it, and the history
// recorded a support decision nobody made. A SupportAction is a command,
// applied once; the restore identity may not re-create it, and the device
// keeps its binding with one Restored entry.
func TestRestoreDoesNotReplaySupportActions(t *testing.T) {
	ctx := context.Background()
	m := startManager(t)
	acme, globex := newTenant(t), newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	award := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("reset")}, Spec: custodyv1alpha1.SupportActionSpec{
		DeviceName: name, Action: custodyv1alpha1.SupportActionReset, Reason: "TICKET-9: stolen"}}
	if err := admin.Create(ctx, award); err != nil {
		t.Fatal(err)
	}
	waitSupportAction(t, award, custodyv1alpha1.SupportActionSucceeded)
	// The ERP issues a new code; globex claims the device with it.
	code := otherCode(t, rec.Code)
	verifier, err := claimcode.NewVerifier(code)
	if err != nil {
		t.Fatal(err)
	}
	if err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) {
		d.Spec.ClaimCode = &custodyv1alpha1.DeviceClaimCode{Verifier: verifier}
	}); err != nil {
		t.Fatal(err)
	}
	theirs := waitPhase(t, claimWithCode(t, admin, globex.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, code.String()), custodyv1alpha1.ClaimPhaseBound)
	waitFor(t, "the binding to be complete", func() bool { return custody.Completed(getDevice(t, name)) && boundTo(t, name, theirs.UID) })
	oldHead := getDevice(t, name).Spec.Custody.Head
	dump := dumpTenants(t, []*custodyv1alpha1.Tenant{acme, globex}, []string{name})
	m.stop()

	fresh, m2, restorer := freshRestore(t)
	defer m2.stop()
	refused := 0
	for _, u := range dump {
		err := restorer.Create(ctx, u, client.FieldOwner("velero"))
		if u.GetKind() == "SupportAction" {
			// A command applied before the backup is not re-created.
			if !apierrors.IsForbidden(err) {
				t.Fatalf("the restore identity re-created SupportAction %s: %v", u.GetName(), err)
			}
			refused++
			continue
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("restoring %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	if refused == 0 {
		t.Fatal("the backup held no SupportAction")
	}
	get := func() *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		if err := fresh.Client.Get(ctx, client.ObjectKey{Name: name}, d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	waitFor(t, "the restore to be recorded", func() bool { d := get(); return !custody.RestorePending(d) && custody.Completed(d) })
	waitFor(t, "the history to be complete", func() bool { return custody.Completed(get()) && get().Status.ObservedGeneration == get().Generation })
	d := get()
	var after []custodyv1alpha1.CustodyRecord
	for _, h := range d.Status.History {
		if h.Sequence > oldHead.Sequence {
			after = append(after, h)
		}
	}
	if d.Spec.ClaimRef == nil || d.Spec.ClaimRef.Tenant != globex.Name || len(after) != 1 {
		t.Fatalf("after the restore the device is bound to %+v; entries after the backup's head: %+v", d.Spec.ClaimRef, after)
	}
}

// TestRestoreDoesNotReviveExpiredOffer (review finding): a Transfer offer
// that expired (the holder's offer lapsed; it keeps the device) is
// re-created by the documented restore without status, and the transfer
// controller offers it again with a fresh expiry: the recipient the holder
// no longer wanted to give the device to can now take it.
func TestRestoreDoesNotReviveExpiredOffer(t *testing.T) {
	ctx := context.Background()
	short := func(o *controllers.Options) { o.TransferTTL = 2 * time.Second }
	m := startManager(t, short)
	acme, globex := newTenant(t), newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	mine := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	tr := offer(t, admin, mine, globex.Name)
	m.Clock.Step(time.Hour)
	waitTransfer(t, tr, custodyv1alpha1.TransferPhaseExpired)
	waitFor(t, "the history to be complete", func() bool { return custody.Completed(getDevice(t, name)) })
	dump := dumpTenants(t, []*custodyv1alpha1.Tenant{acme, globex}, []string{name})
	m.stop()

	fresh, m2, restorer := freshRestore(t)
	defer m2.stop()
	restoreAll(t, restorer, dump)
	get := func() *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		if err := fresh.Client.Get(ctx, client.ObjectKey{Name: name}, d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	waitFor(t, "the restore to be recorded", func() bool { d := get(); return !custody.RestorePending(d) && custody.Completed(d) })
	got := &custodyv1alpha1.Transfer{}
	waitFor(t, "the restored Transfer to be decided", func() bool {
		return fresh.Client.Get(ctx, clientKey(tr), got) == nil && got.Status.Phase != "" && got.Status.Phase != custodyv1alpha1.TransferPhasePending
	})
	if got.Status.Phase == custodyv1alpha1.TransferPhaseOffered {
		// Show the consequence: the recipient takes the device.
		accept := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: uniq("accept"), Namespace: globex.Status.Namespace},
			Spec: custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model, Transfer: &custodyv1alpha1.TransferAcceptance{FromTenant: acme.Name}}}
		if err := fresh.Client.Create(ctx, accept); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the revived offer's outcome", func() bool {
			c := &custodyv1alpha1.Claim{}
			return fresh.Client.Get(ctx, clientKey(accept), c) == nil && c.Status.Phase != "" && c.Status.Phase != custodyv1alpha1.ClaimPhasePending
		})
		t.Fatalf("the expired offer was offered again after the restore (%+v); the device is now bound to %+v", got.Status, get().Spec.ClaimRef)
	}
}

// TestRestoreKeepsCompletedTransfers (review finding): a completed
// Transfer whose entry is not the head of the device's chain at backup
// time goes back to Pending/ClaimNotBound after a status-less restore (the
// issue lists this as a defect to fix): the transfer controller looks for
// its entry only in status.history and the head.
func TestRestoreKeepsCompletedTransfers(t *testing.T) {
	ctx := context.Background()
	m := startManager(t)
	acme, globex := newTenant(t), newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	mine := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	tr := offer(t, admin, mine, globex.Name)
	theirs := waitPhase(t, proofClaim(t, admin, globex.Status.Namespace, rec, acceptFrom(acme.Name)), custodyv1alpha1.ClaimPhaseBound)
	waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
	// globex then releases the device: the chain's head is no longer the
	// transfer.
	release(t, theirs, false)
	waitFor(t, "the history to be complete", func() bool { return custody.Completed(getDevice(t, name)) })
	dump := dumpTenants(t, []*custodyv1alpha1.Tenant{acme, globex}, []string{name})
	m.stop()

	fresh, m2, restorer := freshRestore(t)
	defer m2.stop()
	restoreAll(t, restorer, dump)
	got := &custodyv1alpha1.Transfer{}
	waitFor(t, "the restored Transfer to be decided", func() bool {
		return fresh.Client.Get(ctx, clientKey(tr), got) == nil && got.Status.Phase != ""
	})
	time.Sleep(5 * time.Second) // let the restore be recorded and the Transfer looked at again
	if err := fresh.Client.Get(ctx, clientKey(tr), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != custodyv1alpha1.TransferPhaseCompleted {
		t.Fatalf("the completed Transfer after the restore: %+v", got.Status)
	}
}

// TestRestoreDoesNotDecommissionAgain (review finding): a decommissioned
// device whose chain head is Decommissioned is restored; Restored becomes
// the head, and DecommissionPending (head is not Decommissioned) records
// a second Decommissioned entry, blaming "erp:<restore tool>": the restore
// invents an event, as the issue reports for Sold.
func TestRestoreDoesNotDecommissionAgain(t *testing.T) {
	ctx := context.Background()
	m := startManager(t)
	acme := newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	if err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }); err != nil {
		t.Fatal(err)
	}
	lastEntry(t, name, custodyv1alpha1.CustodyEventDecommissioned)
	waitFor(t, "the history to be complete", func() bool { return custody.Completed(getDevice(t, name)) })
	oldHead := getDevice(t, name).Spec.Custody.Head
	dump := dumpTenants(t, []*custodyv1alpha1.Tenant{acme}, []string{name})
	m.stop()

	fresh, m2, restorer := freshRestore(t)
	defer m2.stop()
	restoreAll(t, restorer, dump)
	d := &custodyv1alpha1.Device{}
	waitFor(t, "the restore to be recorded", func() bool {
		return fresh.Client.Get(ctx, client.ObjectKey{Name: name}, d) == nil && !custody.RestorePending(d) && custody.Completed(d) && d.Status.ObservedGeneration == d.Generation
	})
	time.Sleep(3 * time.Second)
	if err := fresh.Client.Get(ctx, client.ObjectKey{Name: name}, d); err != nil {
		t.Fatal(err)
	}
	var after []string
	for _, h := range custody.Records(d) {
		if h.Sequence > oldHead.Sequence {
			after = append(after, string(h.Type)+" by "+h.Actor)
		}
	}
	if len(after) != 1 {
		t.Fatalf("entries after the backup's head: %v", after)
	}
}

// TestResetOfADecommissionedDeviceRecordsOneDecommission (review finding):
// support staff reset a decommissioned device; the device controller then
// finds the head is not Decommissioned and records the decommissioning
// again, a second time, naming the ERP.
func TestResetOfADecommissionedDeviceRecordsOneDecommission(t *testing.T) {
	ctx := context.Background()
	startManager(t)
	rec := newDevice(t)
	name := rec.Device.Name
	if err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }); err != nil {
		t.Fatal(err)
	}
	lastEntry(t, name, custodyv1alpha1.CustodyEventDecommissioned)
	reset := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("reset")}, Spec: custodyv1alpha1.SupportActionSpec{
		DeviceName: name, Action: custodyv1alpha1.SupportActionReset, Reason: "TICKET-10: cleanup"}}
	if err := admin.Create(ctx, reset); err != nil {
		t.Fatal(err)
	}
	waitSupportAction(t, reset, custodyv1alpha1.SupportActionSucceeded)
	time.Sleep(3 * time.Second)
	d := getDevice(t, name)
	if n := len(entries(d, custodyv1alpha1.CustodyEventDecommissioned)); n != 1 {
		var got []string
		for _, h := range custody.Records(d) {
			got = append(got, string(h.Type)+" by "+h.Actor)
		}
		t.Fatalf("%d Decommissioned entries for one decommissioning: %v", n, got)
	}
}
