package integration

import (
	"context"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
)

// TestConcurrentClaimsBindExactlyOnce: many tenants claim one device at
// once with the right code; exactly one binding results, every other Claim
// says why, truly given the device's final state (bound to another tenant,
// no dispute unless spec.dispute says so), and the device's history has one
// entry. Each losing Claim gets one Event, and the Device at most one
// CompetingClaim Event per tenant (aggregated), not one per reconcile.
// Repeated on fresh devices.
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
		var held []*custodyv1alpha1.Claim
		decided := make([]*custodyv1alpha1.Claim, 0, len(claims))
		for _, c := range claims {
			got := &custodyv1alpha1.Claim{}
			waitFor(t, "claim "+c.Name+" to be decided", func() bool {
				if err := admin.Get(ctx, clientKey(c), got); err != nil {
					return false
				}
				return got.Status.Phase == custodyv1alpha1.ClaimPhaseBound || got.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed || got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied
			})
			decided = append(decided, got.DeepCopy())
			if readyReason(got) == custodyv1alpha1.ClaimReasonHeldByAnotherTenant {
				held = append(held, got.DeepCopy())
			}
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
		assertLosersToldTheTruth(t, dev, decided)
		assertCompetingClaimEvents(t, dev, held)
	}
}

// assertLosersToldTheTruth checks every losing Claim's message against the
// device's final state: a dispute is mentioned only if spec.dispute holds
// the Claim, "bound to another tenant" only if it is.
func assertLosersToldTheTruth(t *testing.T, dev *custodyv1alpha1.Device, claims []*custodyv1alpha1.Claim) {
	t.Helper()
	for _, c := range claims {
		if c.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
			continue
		}
		msg := readyMessage(c)
		otherHolder := dev.Spec.ClaimRef != nil && dev.Spec.ClaimRef.UID != c.UID && dev.Spec.ClaimRef.Namespace != c.Namespace
		switch readyReason(c) {
		case custodyv1alpha1.ClaimReasonHeldByAnotherTenant:
			if msg != claim.MsgHeldByOther || !otherHolder {
				t.Fatalf("claim %s says %q; device bound to %+v", c.Name, msg, dev.Spec.ClaimRef)
			}
		case custodyv1alpha1.ClaimReasonClaimCodeUsed:
			if msg != claim.MsgCodeUsed || !claim.Consumed(dev, dev.Spec.ClaimCode.Verifier) {
				t.Fatalf("claim %s says %q; consumed codes %v", c.Name, msg, dev.Spec.ConsumedClaimCodes)
			}
		case custodyv1alpha1.ClaimReasonDisputed:
			if !claim.InDispute(dev, c.UID) {
				t.Fatalf("claim %s says it is in a dispute the device does not show: %+v", c.Name, dev.Spec.Dispute)
			}
		}
		if dev.Spec.Dispute == nil && strings.Contains(strings.ToLower(msg), "dispute") {
			t.Fatalf("claim %s mentions a dispute, and there is none: %q", c.Name, msg)
		}
	}
}

// assertCompetingClaimEvents checks the Events of a race: each Claim that
// lost to a binding has exactly one DeviceHeldByAnotherTenant Event, and the
// Device has at least one and at most one CompetingClaim Event per
// competing tenant, none naming another tenant's Claim.
func assertCompetingClaimEvents(t *testing.T, dev *custodyv1alpha1.Device, held []*custodyv1alpha1.Claim) {
	t.Helper()
	if len(held) == 0 {
		return
	}
	tenants := map[string]bool{}
	for _, c := range held {
		tenants[c.Namespace] = true
	}
	var onDevice []corev1.Event
	waitFor(t, "the CompetingClaim Events of "+dev.Name, func() bool {
		var list corev1.EventList
		if err := admin.List(context.Background(), &list, client.InNamespace(metav1.NamespaceDefault)); err != nil {
			return false
		}
		onDevice = onDevice[:0]
		for _, e := range list.Items {
			if e.InvolvedObject.UID == dev.UID && e.Reason == "CompetingClaim" {
				onDevice = append(onDevice, e)
			}
		}
		return len(onDevice) > 0
	})
	if len(onDevice) > len(tenants) {
		t.Fatalf("%d CompetingClaim Events on the device for %d competing tenants", len(onDevice), len(tenants))
	}
	for _, e := range onDevice {
		if e.Related == nil || e.Related.Kind != "Tenant" || !strings.Contains(e.Message, "Tenant "+e.Related.Name+" ") {
			t.Fatalf("CompetingClaim Event %q is not about one tenant (related %+v)", e.Message, e.Related)
		}
		for _, c := range held {
			if strings.Contains(e.Message, c.Name) {
				t.Fatalf("CompetingClaim Event names a Claim: %q", e.Message)
			}
		}
	}
	for _, c := range held {
		waitFor(t, "the Event of "+c.Name, func() bool {
			var list corev1.EventList
			if err := admin.List(context.Background(), &list, client.InNamespace(c.Namespace)); err != nil {
				return false
			}
			n := 0
			for _, e := range list.Items {
				if e.InvolvedObject.UID == c.UID && e.Reason == custodyv1alpha1.ClaimReasonHeldByAnotherTenant {
					n++
					if e.Count > 1 || (e.Series != nil && e.Series.Count > 1) {
						t.Fatalf("claim %s: its Event was recorded more than once (%+v)", c.Name, e)
					}
				}
			}
			if n > 1 {
				t.Fatalf("claim %s has %d DeviceHeldByAnotherTenant Events", c.Name, n)
			}
			return n == 1
		})
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
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, c := range claims {
			got := &custodyv1alpha1.Claim{}
			if admin.Get(ctx, clientKey(c), got) == nil {
				t.Logf("claim %s: %s %s: %s", c.Name, got.Status.Phase, readyReason(got), readyMessage(got))
			}
		}
		dev := getDevice(t, d.Name)
		t.Logf("device: claimRef %v, pending %v, dispute %+v", dev.Spec.ClaimRef, dev.Spec.PendingClaim, dev.Spec.Dispute)
	})
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
	var decided []*custodyv1alpha1.Claim
	for _, c := range claims {
		got := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, clientKey(c), got); err != nil {
			t.Fatal(err)
		}
		decided = append(decided, got)
	}
	assertLosersToldTheTruth(t, dev, decided)
	assertChain(t, d.Name)
}
