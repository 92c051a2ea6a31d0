package integration

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
)

// TestLockoutGrowsAndSparesTheOwner: a tenant that keeps failing on one
// device is locked out with growing back-off (measured on an injected
// clock), while another tenant with the right code still claims it.
func TestLockoutGrowsAndSparesTheOwner(t *testing.T) {
	policy := claim.DefaultPolicy
	policy.MaxFailedAttempts = 3
	policy.LockoutBase = time.Minute
	m := startManager(t, func(o *controllers.Options) { o.ClaimPolicy = policy })
	ctx := context.Background()
	attacker := newTenant(t)
	owner := newTenant(t)
	rec := newDevice(t)
	serial, model := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model
	wrong := otherCode(t, rec.Code)

	fail := func() {
		t.Helper()
		c := claimWithCode(t, admin, attacker.Status.Namespace, serial, model, wrong.String())
		waitPhase(t, c, custodyv1alpha1.ClaimPhaseDenied)
	}
	// lockedFor makes a claim while locked out and returns how long the
	// lockout lasts from now, by the manager's clock.
	lockedFor := func() (time.Duration, *custodyv1alpha1.Claim) {
		t.Helper()
		c := claimWithCode(t, admin, attacker.Status.Namespace, serial, model, rec.Code.String())
		got := waitPhase(t, c, custodyv1alpha1.ClaimPhasePending)
		waitFor(t, "the throttled reason", func() bool {
			_ = admin.Get(ctx, client.ObjectKeyFromObject(c), got)
			return readyReason(got) == custodyv1alpha1.ClaimReasonThrottled && got.Status.RetryAfter != nil
		})
		return got.Status.RetryAfter.Sub(m.Clock.Now()), got
	}

	for range policy.MaxFailedAttempts {
		fail()
	}
	first, held := lockedFor()
	if first != time.Minute {
		t.Fatalf("first lockout is %v, want %v", first, time.Minute)
	}

	// While the attacker is locked out, the owner claims with the right code.
	ownerClaim := claimWithCode(t, admin, owner.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, ownerClaim, custodyv1alpha1.ClaimPhaseBound)

	// After the lockout the held claim is verified: the attacker had the
	// right code too late, and the device is already held: a dispute, not a win.
	m.Clock.Step(first + time.Second)
	touch(t, held)
	disputed := waitPhase(t, held, custodyv1alpha1.ClaimPhaseDisputed)
	if readyReason(disputed) != custodyv1alpha1.ClaimReasonHeldByAnotherTenant {
		t.Fatalf("late valid claim: reason %s", readyReason(disputed))
	}

	// Another failure after the lockout doubles it.
	fail()
	second, _ := lockedFor()
	if second != 2*time.Minute {
		t.Fatalf("second lockout is %v, want %v", second, 2*time.Minute)
	}
	m.Clock.Step(second + time.Second)
	fail()
	third, _ := lockedFor()
	if third != 4*time.Minute {
		t.Fatalf("third lockout is %v, want %v", third, 4*time.Minute)
	}
	if getDevice(t, rec.Device.Name).Spec.ClaimRef.Tenant != owner.Name {
		t.Fatal("the owner lost the device")
	}
}

// touch makes the manager look at an object again (as any edit would).
func touch(t *testing.T, obj client.Object) {
	t.Helper()
	patch := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"annotations":{"test.custody.dev/touch":"`+time.Now().Format(time.RFC3339Nano)+`"}}}`))
	if err := admin.Patch(context.Background(), obj, patch); err != nil {
		t.Fatal(err)
	}
}
