package integration

import (
	"context"
	"errors"
	"testing"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/custody"
)

// TestApplyRefusesAStaleDecisionOnTheAPIServer (review finding, against the
// real API server): a change decided on a Device observed between step 1
// and step 3 of an earlier change (every watcher sees that state) lands
// after a newer change, because Complete swaps the observed Device for the
// API server's and Apply writes with the fresh resourceVersion. Here a
// Release decided on the old binding lands after the device was
// transferred, so the recipient loses the device and the history says
// the old holder released it.
func TestApplyRefusesAStaleDecisionOnTheAPIServer(t *testing.T) {
	ctx := context.Background()
	startManager(t)
	_, stopAfterChange, a := managerAppliers(t, false)
	rec := newDevice(t)
	name := rec.Device.Name
	z := custody.Holder{Tenant: "zeta", Namespace: "zeta", Name: "z", UID: "uid-z"}
	y := custody.Holder{Tenant: "ypsilon", Namespace: "ypsilon", Name: "y", UID: "uid-y"}
	by := custody.By{Actor: "user:test", Time: epoch}

	d := getDevice(t, name)
	bind, err := custody.Bind(d, z, "ClaimCode", custody.Consume{Code: true}, by)
	if err != nil {
		t.Fatal(err)
	}
	if err := stopAfterChange.Apply(ctx, d, bind); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	observed := d.DeepCopy() // bound to z, history not yet appended
	// Two decisions from that observation: z's Claim is deleted (Release),
	// and z's Transfer to y is accepted. The transfer lands first.
	release, err := custody.Release(observed, z, "ClaimDeleted", "", "", by)
	if err != nil {
		t.Fatal(err)
	}
	seenByY := observed.DeepCopy()
	transfer, err := custody.Transfer(seenByY, z, y, "zeta/offer", by)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, seenByY, transfer); err != nil {
		t.Fatal(err)
	}
	errRelease := a.Apply(ctx, observed, release)
	after := getDevice(t, name)
	if errRelease == nil || after.Spec.ClaimRef == nil || after.Spec.ClaimRef.UID != y.UID {
		var got []string
		for _, h := range custody.Records(after) {
			got = append(got, string(h.Type)+" "+h.Tenant)
		}
		t.Fatalf("a Release decided before the transfer landed after it: err %v, claimRef %+v, history %v", errRelease, after.Spec.ClaimRef, got)
	}
}

// errCrash is what the Applier managerAppliers makes crash returns.
var errCrash = errors.New("crash")

// managerAppliers returns a client as the manager, an Applier that stops
// after writing a change and its head (returning errCrash, as a crash
// there would), and one that completes its changes. With derive both
// write the derived status with each history entry, as the manager's do.
func managerAppliers(t testing.TB, derive bool) (client.Client, *custody.Applier, *custody.Applier) {
	t.Helper()
	mc := managerClient(t)
	newApplier := func() *custody.Applier {
		a := &custody.Applier{Client: mc, Reader: mc, FieldOwner: "custody-manager", Audit: logr.Discard()}
		if derive {
			a.DeriveStatus = controllers.DeriveDeviceStatus(mc)
		}
		return a
	}
	crashing := newApplier()
	crashing.FailPoint = func(step, _ string) error {
		if step == custody.StepChanged {
			return errCrash
		}
		return nil
	}
	return mc, crashing, newApplier()
}
