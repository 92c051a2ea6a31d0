package custody_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	head := history.Link(nil, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventSold, Time: metav1.NewTime(now), Actor: "erp:test", Reference: "PO-1"})
	d0.Spec.Custody = &custodyv1alpha1.DeviceCustody{Head: head, DeviceUID: d0.UID}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithStatusSubresource(&custodyv1alpha1.Device{}).WithObjects(d0).Build()
	a := &custody.Applier{Client: c, Reader: c, FieldOwner: "custody-manager", Audit: logr.Discard()}

	get := func() *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(d0), d); err != nil {
			t.Fatal(err)
		}
		return d
	}
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
