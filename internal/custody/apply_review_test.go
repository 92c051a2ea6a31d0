package custody_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/custody"
	"github.com/custody-dev/custody/internal/history"
	"github.com/custody-dev/custody/internal/scheme"
)

// TestApplyRefusesAChangeDecidedOnAnOlderDevice (review finding): Apply
// first completes the observed Device (Complete). When the observed Device
// is unfinished and stale, Complete replaces it with the API server's
// Device (*d = *fresh) and Apply then writes the Change, which was
// computed from the older observation, with the fresh resourceVersion: the
// optimistic lock no longer protects it. Here claim X's Bind, decided while
// the device was unbound, lands after claim Y bound it: two ownership
// changes land, Y's binding is overwritten without a trace of a release.
func TestApplyRefusesAChangeDecidedOnAnOlderDevice(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	by := custody.By{Actor: "user:alice", Time: now}
	x := custody.Holder{Tenant: "acme", Namespace: "tenant-acme", Name: "x", UID: "uid-x"}
	y := custody.Holder{Tenant: "globex", Namespace: "tenant-globex", Name: "y", UID: "uid-y"}

	// A device whose last change (a recorded sale) is written to spec but
	// not yet to status.history: the state every watcher sees between
	// step 1 and step 3 of Apply.
	d0 := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: "xr200-sn1", UID: "dev-uid"},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN1", Model: "XR200", ClaimCode: &custodyv1alpha1.DeviceClaimCode{Verifier: "v1"}}}
	c, get, _ := soldUnfinished(t, d0, now, "PO-1")
	a := &custody.Applier{Client: c, Reader: c, FieldOwner: "custody-manager", Audit: logr.Discard()}

	// Claim X's reconcile observes the device (unbound) and decides.
	seenByX := get()
	chX, err := custody.Bind(seenByX, x, "ClaimCode", custody.Consume{Code: true}, by)
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile claim Y binds it.
	seenByY := get()
	chY, err := custody.Bind(seenByY, y, "ClaimCode", custody.Consume{Code: true}, by)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, seenByY, chY); err != nil {
		t.Fatal(err)
	}
	// X's write must not land: it was decided on a device that is gone.
	errX := a.Apply(ctx, seenByX, chX)
	after := get()
	if errX == nil || after.Spec.ClaimRef == nil || after.Spec.ClaimRef.UID != y.UID {
		var types []string
		for _, h := range after.Status.History {
			types = append(types, string(h.Type)+" "+string(h.ClaimUID))
		}
		t.Fatalf("Apply of a change decided before another landed: err %v; the device is bound to %+v; history %v", errX, after.Spec.ClaimRef, types)
	}
}

// TestCompleteKnowsItsOwnAppend: a Device read from a cache that has not
// seen this process's append of its head shows the head unfinished.
// Complete does not append it again (the API server would refuse the
// JSON-patch test, and the caller would read the Device afresh): it says
// ErrCompleting, for the caller to look again. After AppendedWindow it
// repairs such a Device as any other (someone may have rewritten the
// status), and a view that shows another head is not affected.
func TestCompleteKnowsItsOwnAppend(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(now)
	d0 := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: "xr200-sn2", UID: "dev-uid-2"},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN2", Model: "XR200"}}
	c, get, head := soldUnfinished(t, d0, now, "PO-2")
	a := &custody.Applier{Client: c, Reader: c, FieldOwner: "custody-manager", Audit: logr.Discard(), Clock: clk}
	stale := get()
	if err := a.Complete(ctx, get()); err != nil {
		t.Fatal(err)
	}
	written := get().ResourceVersion
	if err := a.Complete(ctx, stale.DeepCopy()); !errors.Is(err, custody.ErrCompleting) {
		t.Fatalf("Complete of a view older than its own append: %v, want ErrCompleting", err)
	}
	if d := get(); d.ResourceVersion != written || len(d.Status.History) != 1 {
		t.Fatalf("the Device was written again: resourceVersion %s → %s, %d history entries", written, d.ResourceVersion, len(d.Status.History))
	}
	// A view showing another head unfinished (a change written since, by
	// anyone) is completed at once, though this process appended the
	// first head moments ago.
	next := get()
	next.Spec.Custody.Head = history.Link(&head, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventSold, Time: metav1.NewTime(now), Actor: "erp:test", Reference: "PO-3"})
	if err := c.Update(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := a.Complete(ctx, get()); err != nil {
		t.Fatalf("Complete of a Device showing another head unfinished: %v", err)
	}
	if d := get(); len(d.Status.History) != 2 || d.Status.History[1].Hash != next.Spec.Custody.Head.Hash {
		t.Fatalf("the other head was not appended: %+v", d.Status.History)
	}
	head = next.Spec.Custody.Head
	// The Device once complete is not affected.
	if err := a.Complete(ctx, get()); err != nil {
		t.Fatalf("Complete of the complete Device: %v", err)
	}
	// Past the window the head is appended as any unfinished one: here
	// the Device's status lost it meanwhile.
	d := get()
	d.Status.History = nil
	if err := c.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := a.Complete(ctx, get()); err != nil {
		t.Fatalf("Complete after the status lost the head (within the window, but the entry was forgotten once seen): %v", err)
	}
	d = get()
	d.Status.History = nil
	if err := c.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := a.Complete(ctx, get()); !errors.Is(err, custody.ErrCompleting) {
		t.Fatalf("within the window: %v, want ErrCompleting", err)
	}
	clk.SetTime(now.Add(custody.AppendedWindow))
	if err := a.Complete(ctx, get()); err != nil {
		t.Fatalf("past the window: %v", err)
	}
	if d := get(); len(d.Status.History) == 0 || d.Status.History[len(d.Status.History)-1].Hash != head.Hash {
		t.Fatalf("past the window the head was not appended again: %+v", d.Status.History)
	}
}

// soldUnfinished stores d0 as a Device whose recorded sale (reference ref)
// is written to spec but not yet to status.history, the state every
// watcher sees between step 1 and step 3 of Apply, in a fake API server;
// get reads it back.
func soldUnfinished(t *testing.T, d0 *custodyv1alpha1.Device, now time.Time, ref string) (client.Client, func() *custodyv1alpha1.Device, custodyv1alpha1.CustodyRecord) {
	t.Helper()
	head := history.Link(nil, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventSold, Time: metav1.NewTime(now), Actor: "erp:test", Reference: ref})
	d0.Spec.Custody = &custodyv1alpha1.DeviceCustody{Head: head, DeviceUID: d0.UID}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithStatusSubresource(&custodyv1alpha1.Device{}).WithObjects(d0).Build()
	get := func() *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(d0), d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return c, get, head
}
