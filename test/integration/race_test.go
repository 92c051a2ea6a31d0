package integration

import (
	"context"
	"sync"
	"testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
)

// TestConcurrentClaimsBindExactlyOnce: many tenants claim one device at
// once with the right code; exactly one binding results, every other Claim
// says why, and the device's history has one entry. Repeated on fresh
// devices.
func TestConcurrentClaimsBindExactlyOnce(t *testing.T) {
	const tenants, rounds = 20, 5
	startManager(t, func(o *controllers.Options) { o.MaxConcurrentClaims = 8 })
	ctx := context.Background()
	var ts []*custodyv1alpha1.Tenant
	for range tenants {
		ts = append(ts, newTenant(t))
	}
	for round := range rounds {
		rec := newDevice(t)
		d := rec.Device
		claims := make([]*custodyv1alpha1.Claim, tenants)
		var wg sync.WaitGroup
		for i, tn := range ts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				claims[i] = claimWithCode(t, admin, tn.Status.Namespace, d.Spec.SerialNumber, d.Spec.Model, rec.Code.String())
			}()
		}
		wg.Wait()

		winners := 0
		for _, c := range claims {
			got := &custodyv1alpha1.Claim{}
			waitFor(t, "claim "+c.Name+" to be decided", func() bool {
				if err := admin.Get(ctx, clientKey(c), got); err != nil {
					return false
				}
				return got.Status.Phase == custodyv1alpha1.ClaimPhaseBound || got.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed || got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied
			})
			switch got.Status.Phase {
			case custodyv1alpha1.ClaimPhaseBound:
				winners++
			default:
				// A loser proved the code; it is told the device is held, and
				// never that the code was wrong.
				if r := readyReason(got); r != custodyv1alpha1.ClaimReasonHeldByAnotherTenant && r != custodyv1alpha1.ClaimReasonClaimCodeUsed {
					t.Fatalf("round %d: losing claim has reason %q", round, r)
				}
				if msg := readyMessage(got); msg == "" {
					t.Fatalf("round %d: losing claim does not say why", round)
				}
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d claims bound the device", round, winners)
		}
		dev := getDevice(t, d.Name)
		waitFor(t, "the history entry", func() bool {
			dev = getDevice(t, d.Name)
			return len(dev.Status.History) >= 1
		})
		if len(dev.Status.History) != 1 || dev.Spec.ClaimRef == nil {
			t.Fatalf("round %d: history %+v, binding %+v", round, dev.Status.History, dev.Spec.ClaimRef)
		}
	}
}

func readyMessage(c *custodyv1alpha1.Claim) string {
	for _, cond := range c.Status.Conditions {
		if cond.Type == custodyv1alpha1.ConditionReady {
			return cond.Message
		}
	}
	return ""
}

// TestConcurrentClaimsUnderCoolingOffDispute: under a cooling-off policy,
// tenants claiming one device at once with the right code never bind it and
// never leave two claims cooling off: every claim ends up in the device's
// dispute, and every Claim says so.
func TestConcurrentClaimsUnderCoolingOffDispute(t *testing.T) {
	const tenants = 6
	startManager(t, coolingOff, func(o *controllers.Options) { o.MaxConcurrentClaims = 8 })
	ctx := context.Background()
	var ts []*custodyv1alpha1.Tenant
	for range tenants {
		ts = append(ts, newTenant(t))
	}
	rec := newDevice(t)
	d := rec.Device
	claims := make([]*custodyv1alpha1.Claim, tenants)
	var wg sync.WaitGroup
	for i, tn := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claims[i] = claimWithCode(t, admin, tn.Status.Namespace, d.Spec.SerialNumber, d.Spec.Model, rec.Code.String())
		}()
	}
	wg.Wait()
	for _, c := range claims {
		got := &custodyv1alpha1.Claim{}
		waitFor(t, "claim "+c.Name+" to be in the dispute", func() bool {
			return admin.Get(ctx, clientKey(c), got) == nil && got.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed
		})
		if readyReason(got) != custodyv1alpha1.ClaimReasonDisputed {
			t.Fatalf("claim %s: reason %s", c.Name, readyReason(got))
		}
	}
	dev := getDevice(t, d.Name)
	if dev.Spec.ClaimRef != nil || dev.Spec.PendingClaim != nil || dev.Spec.Dispute == nil || len(dev.Spec.Dispute.Claims) != tenants {
		t.Fatalf("binding %v, pending %v, dispute %+v: want all %d claims in the dispute and nothing else", dev.Spec.ClaimRef, dev.Spec.PendingClaim, dev.Spec.Dispute, tenants)
	}
	assertChain(t, d.Name)
}
