package integration

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
)

// countingVerifier is the manager's real argon2id verifier, counting every
// verification it performs.
type countingVerifier struct {
	controllers.Argon2Verifier
	n atomic.Int64
}

func (v *countingVerifier) Verify(code claimcode.Code, verifier string) bool {
	v.n.Add(1)
	return v.Argon2Verifier.Verify(code, verifier)
}

func (v *countingVerifier) VerifyNothing(code claimcode.Code) {
	v.n.Add(1)
	v.Argon2Verifier.VerifyNothing(code)
}

// TestConcurrentWrongClaimsNeverOvershootTheLockout: one tenant fires 200
// wrong Claims at one serial at once, against a manager with 8 claim
// workers. At most maxFailedAttempts codes are verified (argon2id, counted
// at the verifier) before the lockout, and at most one after each lockout
// ends (injected clock), however many Claims wait. The Tenant's bookkeeping
// counts exactly the verified attempts.
func TestConcurrentWrongClaimsNeverOvershootTheLockout(t *testing.T) {
	const claims, workers = 200, 8
	v := &countingVerifier{}
	m := startManager(t, func(o *controllers.Options) { o.Verifier, o.MaxConcurrentClaims = v, workers })
	ctx := context.Background()
	attacker := newTenant(t)
	rec := newDevice(t)
	serial, model := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model
	wrong := otherCode(t, rec.Code).String()
	limit := int64(claim.DefaultPolicy.MaxFailedAttempts)

	all := make([]*custodyv1alpha1.Claim, claims)
	var wg sync.WaitGroup
	for i := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			all[i] = claimWithCode(t, admin, attacker.Status.Namespace, serial, model, wrong)
		}()
	}
	wg.Wait()

	// settle waits until every Claim is denied or waits for a lockout that
	// ends after notBefore, and returns the waiting ones and the number denied.
	settle := func(notBefore time.Time) (waiting []*custodyv1alpha1.Claim, denied int64) {
		t.Helper()
		for _, c := range all {
			got := &custodyv1alpha1.Claim{}
			waitFor(t, "claim "+c.Name+" to be decided", func() bool {
				if err := admin.Get(ctx, clientKey(c), got); err != nil {
					return false
				}
				return got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied ||
					(readyReason(got) == custodyv1alpha1.ClaimReasonThrottled && got.Status.RetryAfter != nil && got.Status.RetryAfter.After(notBefore))
			})
			if got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied {
				if readyReason(got) != custodyv1alpha1.ClaimReasonNotVerified {
					t.Fatalf("claim %s: reason %s", c.Name, readyReason(got))
				}
				denied++
			} else {
				waiting = append(waiting, got)
			}
		}
		return waiting, denied
	}
	lockedUntil := func() time.Time {
		t.Helper()
		tn := &custodyv1alpha1.Tenant{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(attacker), tn); err != nil {
			t.Fatal(err)
		}
		for _, e := range tn.Status.ClaimThrottles {
			if e.LockedUntil != nil {
				return e.LockedUntil.Time
			}
		}
		t.Fatal("the tenant is not locked out")
		return time.Time{}
	}
	failedOnTenant := func() int64 {
		tn := &custodyv1alpha1.Tenant{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(attacker), tn); err != nil {
			t.Fatal(err)
		}
		return tn.Status.FailedClaimAttempts
	}

	waiting, denied := settle(m.Clock.Now())
	if got := v.n.Load(); got > limit || got != denied || failedOnTenant() != got {
		t.Fatalf("before the lockout: %d codes verified, %d Claims denied, %d failures counted; want at most %d, all equal", got, denied, failedOnTenant(), limit)
	}
	t.Logf("%d Claims: %d verified before the lockout, %d wait", claims, denied, len(waiting))

	for round := range 2 {
		before := v.n.Load()
		m.Clock.SetTime(lockedUntil().Add(time.Second))
		// Every waiting Claim is looked at again at once.
		var wg sync.WaitGroup
		for _, c := range waiting {
			wg.Add(1)
			go func() { defer wg.Done(); touch(t, c) }()
		}
		wg.Wait()
		var deniedNow int64
		waiting, deniedNow = settle(m.Clock.Now())
		if got := v.n.Load() - before; got > 1 || got != deniedNow-denied {
			t.Fatalf("round %d: %d codes verified after the lockout ended (%d more Claims denied), want at most 1", round, got, deniedNow-denied)
		}
		if v.n.Load() != failedOnTenant() {
			t.Fatalf("round %d: %d verified, %d counted", round, v.n.Load(), failedOnTenant())
		}
		denied = deniedNow
	}
}
