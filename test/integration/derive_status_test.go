package integration

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/custody"
)

// TestDerivedStatusAppendConvergesAfterSpecChange: the custody core
// appends a change's history entry together with the phase, conditions and
// observed generation derived from the Device (Applier.DeriveStatus),
// tested against /metadata/generation. A crash between the spec write and
// the append, then a spec write by someone else (the generation moves on),
// then the repair from the older observation: the repair must not fail for
// good on the generation test, and must not leave a status derived for
// the older generation.
func TestDerivedStatusAppendConvergesAfterSpecChange(t *testing.T) {
	ctx := context.Background()
	// The manager's own repair of the Device is held back (its Complete
	// stops before the append), so that the repair under test is this one.
	var target atomic.Value
	target.Store("")
	startManager(t, func(o *controllers.Options) {
		o.FailPoint = func(step string, k client.ObjectKey) error {
			if step == custody.StepAudited && k.Name == target.Load().(string) {
				return errors.New("held back by the test")
			}
			return nil
		}
	})
	mc, stopAfterChange, a := managerAppliers(t, true)
	tn := newTenant(t)
	rec := newDevice(t)
	name := rec.Device.Name
	h := custody.Holder{Tenant: tn.Name, Namespace: tn.Status.Namespace, Name: "c", UID: "uid-c"}
	var d *custodyv1alpha1.Device
	for i := 0; ; i++ {
		// The device controller writes the new Device's status meanwhile.
		d = getDevice(t, name)
		bind, err := custody.Bind(d, h, "ClaimCode", custody.Consume{Code: true}, custody.By{Actor: "user:test", Time: epoch})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			target.Store(name)
		}
		err = stopAfterChange.Apply(ctx, d, bind)
		if errors.Is(err, errCrash) {
			break
		}
		if !apierrors.IsConflict(err) || i > 20 {
			t.Fatal(err)
		}
	}
	observed := d.DeepCopy() // bound, history not yet appended
	// Someone else writes the spec: the generation moves on.
	if err := mc.Patch(ctx, getDevice(t, name), client.RawPatch(types.MergePatchType, []byte(`{"spec":{"claimPolicy":{"maxFailedAttempts":3}}}`))); err != nil {
		t.Fatal(err)
	}
	if err := a.Complete(ctx, observed); err != nil {
		t.Fatalf("the repair of the crashed append failed: %v", err)
	}
	after := getDevice(t, name)
	if after.Generation == d.Generation {
		t.Fatal("the spec write did not move the generation: the test shows nothing")
	}
	n := len(after.Status.History)
	if n == 0 || after.Status.History[n-1].Hash != after.Spec.Custody.Head.Hash {
		t.Fatalf("history not completed: %d entries", n)
	}
	if after.Status.Phase != custodyv1alpha1.DevicePhaseBound {
		t.Errorf("phase %q after the repaired append, want Bound", after.Status.Phase)
	}
	// The manager's device controller may also have written the status
	// meanwhile; either way it must be for the current generation.
	if after.Status.ObservedGeneration != after.Generation {
		t.Errorf("status observed generation %d, Device at generation %d", after.Status.ObservedGeneration, after.Generation)
	}
}
