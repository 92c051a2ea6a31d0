package claim

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
)

// TestDecideJourneys covers the decisions of the ownership journeys:
// custody, sale records, transfers, cooling-off, disputes and tokens.
func TestDecideJourneys(t *testing.T) {
	right, _ := claimcode.Generate()
	ref := func(tenant, uid string) custodyv1alpha1.DeviceClaimReference {
		return custodyv1alpha1.DeviceClaimReference{Tenant: tenant, Namespace: tenant, Name: "c-" + uid, UID: typesUID(uid)}
	}
	dev := func(mutate func(*custodyv1alpha1.Device)) *custodyv1alpha1.Device {
		d := device()
		d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "SO-1", Buyer: custodyv1alpha1.Buyer{Name: "B"}}
		mutate(d)
		return d
	}
	custodian := func(name string) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) { d.Spec.Sale.CustodianTenant = name }
	}
	saleUsed := func(d *custodyv1alpha1.Device) { d.Spec.ConsumedSaleRecords = []string{"SO-1"} }
	boundTo := func(tenant string) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) { r := ref(tenant, "holder"); d.Spec.ClaimRef = &r }
	}
	pendingFor := func(uid string, until time.Time) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) {
			d.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{DeviceClaimReference: ref("globex", uid), Proof: ProofCode, Until: metav1.NewTime(until)}
		}
	}
	disputedWith := func(uids ...string) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) {
			d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(now)}
			for _, u := range uids {
				d.Spec.Dispute.Claims = append(d.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: ref("acme", u), Proof: ProofCode})
			}
		}
	}
	all := func(fs ...func(*custodyv1alpha1.Device)) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) {
			for _, f := range fs {
				f(d)
			}
		}
	}
	sale := func(c *custodyv1alpha1.Claim) {
		c.Spec.ClaimCode, c.Spec.SaleRecord = nil, &custodyv1alpha1.SaleRecordProof{}
	}
	accept := func(c *custodyv1alpha1.Claim) {
		c.Spec.ClaimCode, c.Spec.Transfer = nil, &custodyv1alpha1.TransferAcceptance{FromTenant: "wholesale"}
	}
	token := func(c *custodyv1alpha1.Claim) {
		c.Spec.ClaimCode, c.Spec.Possession, c.Spec.PairingToken = nil, &custodyv1alpha1.PossessionProof{}, &custodyv1alpha1.PairingTokenProof{SecretName: "t"}
	}
	phase := func(p custodyv1alpha1.ClaimPhase, reason string) func(*custodyv1alpha1.Claim) {
		return func(c *custodyv1alpha1.Claim) {
			c.Status.Phase = p
			c.Status.Conditions = []metav1.Condition{{Type: custodyv1alpha1.ConditionReady, Reason: reason}}
		}
	}
	expires := metav1.NewTime(now.Add(time.Hour))
	offer := &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Namespace: "wholesale", Name: "o"},
		Spec:   custodyv1alpha1.TransferSpec{ClaimName: "c-holder", Recipient: &custodyv1alpha1.TransferRecipient{Tenant: "acme"}},
		Status: custodyv1alpha1.TransferStatus{Phase: custodyv1alpha1.TransferPhaseOffered, DeviceName: "xr200.sn-1", ExpiresAt: &expires}}
	expired := offer.DeepCopy()
	past := metav1.NewTime(now)
	expired.Status.ExpiresAt = &past
	toOther := offer.DeepCopy()
	toOther.Spec.Recipient.Tenant = "globex"
	coolingOff := DefaultPolicy
	coolingOff.CoolingOff, coolingOff.ImmediateProof = 72*time.Hour, custodyv1alpha1.RequiredProofCodeAndPossession
	forbidden := DefaultPolicy
	forbidden.SaleRecordForbidden = true

	for _, tt := range []struct {
		name   string
		device *custodyv1alpha1.Device
		claim  []func(*custodyv1alpha1.Claim)
		offer  *custodyv1alpha1.Transfer
		policy *Policy
		action Action
		phase  custodyv1alpha1.ClaimPhase
		reason string
		proof  string
	}{
		// Custody.
		{"code on a device in another's custody answers like a wrong code", dev(custodian("wholesale")), nil, nil, nil, ActionRecordFailure, "Denied", custodyv1alpha1.ClaimReasonNotVerified, ""},
		{"code while the custodian holds it", dev(all(custodian("wholesale"), saleUsed, boundTo("wholesale"))), nil, nil, nil, ActionRecordFailure, "Denied", custodyv1alpha1.ClaimReasonNotVerified, ""},
		{"code after the custodian released it", dev(all(custodian("wholesale"), saleUsed)), nil, nil, nil, ActionBind, "Bound", "Bound", ProofCode},
		{"sale record of the custodian", dev(custodian("acme")), fs(sale), nil, nil, ActionBind, "Bound", "Bound", ProofSaleRecord},
		{"sale record naming another tenant", dev(custodian("wholesale")), fs(sale), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonSaleRecordNotValid, ""},
		{"used sale record", dev(all(custodian("acme"), saleUsed)), fs(sale), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonSaleRecordNotValid, ""},
		{"sale record forbidden by policy", dev(custodian("acme")), fs(sale), nil, &forbidden, ActionNone, "Denied", custodyv1alpha1.ClaimReasonSaleRecordNotValid, ""},
		{"sale record on a device someone else holds", dev(all(custodian("acme"), boundTo("globex"))), fs(sale), nil, nil, ActionReportDispute, "Disputed", custodyv1alpha1.ClaimReasonHeldByAnotherTenant, ProofSaleRecord},
		// Transfers.
		{"accepting an offer", dev(boundTo("wholesale")), fs(accept), offer, nil, ActionTransfer, "Bound", "Bound", ProofTransfer},
		{"no offer", dev(boundTo("wholesale")), fs(accept), nil, nil, ActionNone, "Pending", custodyv1alpha1.ClaimReasonNoTransferOffer, ""},
		{"expired offer", dev(boundTo("wholesale")), fs(accept), expired, nil, ActionNone, "Pending", custodyv1alpha1.ClaimReasonNoTransferOffer, ""},
		{"offer to another tenant", dev(boundTo("wholesale")), fs(accept), toOther, nil, ActionNone, "Pending", custodyv1alpha1.ClaimReasonNoTransferOffer, ""},
		{"offer whose Claim no longer holds the device", dev(boundTo("globex")), fs(accept), offer, nil, ActionNone, "Pending", custodyv1alpha1.ClaimReasonNoTransferOffer, ""},
		// Cooling-off and disputes.
		{"code alone cools off", device(), nil, nil, &coolingOff, ActionStartCoolingOff, "CoolingOff", custodyv1alpha1.ClaimReasonCoolingOff, ProofCode},
		{"code and possession bind at once", device(), fs(withPossession, paired(true, time.Hour)), nil, &coolingOff, ActionBind, "Bound", "Bound", ProofCodeAndPossession},
		{"still cooling off", dev(pendingFor("1", now.Add(time.Hour))), nil, nil, &coolingOff, ActionNone, "CoolingOff", custodyv1alpha1.ClaimReasonCoolingOff, ""},
		{"cooling-off over", dev(pendingFor("1", now)), nil, nil, &coolingOff, ActionBind, "Bound", "Bound", ProofCode},
		{"a second valid claim disputes", dev(pendingFor("other", now.Add(time.Hour))), nil, nil, &coolingOff, ActionDispute, "Disputed", custodyv1alpha1.ClaimReasonDisputed, ProofCode},
		{"a second claim with every proof still disputes", dev(pendingFor("other", now.Add(time.Hour))), fs(withPossession, paired(true, time.Hour)), nil, &coolingOff, ActionDispute, "Disputed", custodyv1alpha1.ClaimReasonDisputed, ProofCodeAndPossession},
		{"a third valid claim joins the dispute", dev(disputedWith("a", "b")), nil, nil, &coolingOff, ActionDispute, "Disputed", custodyv1alpha1.ClaimReasonDisputed, ProofCode},
		{"a disputed claim waits for support", dev(disputedWith("1", "b")), fs(phase("Disputed", custodyv1alpha1.ClaimReasonDisputed)), nil, nil, ActionNone, "Disputed", custodyv1alpha1.ClaimReasonDisputed, ""},
		{"a cooling-off claim swept into a dispute", dev(disputedWith("1", "b")), fs(phase("CoolingOff", custodyv1alpha1.ClaimReasonCoolingOff)), nil, nil, ActionNone, "Disputed", custodyv1alpha1.ClaimReasonDisputed, ""},
		{"support awarded another claim", dev(boundTo("globex")), fs(phase("Disputed", custodyv1alpha1.ClaimReasonDisputed)), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonDisputeLost, ""},
		{"support reset during cooling-off", device(), fs(phase("CoolingOff", custodyv1alpha1.ClaimReasonCoolingOff)), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonDisputeLost, ""},
		// Pairing tokens.
		{"token claim on a free device", device(), fs(token), nil, &coolingOff, ActionBind, "Bound", "Bound", ProofPairingToken},
		{"token claim on a bound device", dev(boundTo("globex")), fs(token), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonNotVerified, ""},
		{"token claim in another's custody", dev(custodian("wholesale")), fs(token), nil, nil, ActionNone, "Denied", custodyv1alpha1.ClaimReasonNotVerified, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Device: tt.device, Code: right, Now: now, Policy: DefaultPolicy,
				Offer: tt.offer, OfferingNamespace: "wholesale"}
			for _, f := range tt.claim {
				f(in.Claim)
			}
			if tt.policy != nil {
				in.Policy = *tt.policy
			}
			d := decideAsController(t, &in, &fakeVerifier{right: right})
			if d.Action != tt.action || d.Phase != tt.phase || d.Reason != tt.reason {
				t.Fatalf("got %s/%s/%s, want %s/%s/%s", d.Action, d.Phase, d.Reason, tt.action, tt.phase, tt.reason)
			}
			if tt.proof != "" && d.Proof != tt.proof {
				t.Fatalf("proof %q, want %q", d.Proof, tt.proof)
			}
			if d.Action == ActionStartCoolingOff && !d.CoolingOffUntil.Equal(now.Add(72*time.Hour)) {
				t.Fatalf("cooling off until %v", d.CoolingOffUntil)
			}
			if d.ConsumeSale != (d.Proof == ProofSaleRecord && d.Action == ActionBind) {
				t.Fatalf("ConsumeSale %v with proof %s", d.ConsumeSale, d.Proof)
			}
		})
	}
}

// A wrong code during a dispute is a failed attempt, not a party to it.
func TestWrongCodeNeverJoinsADispute(t *testing.T) {
	right, _ := claimcode.Generate()
	wrong, _ := claimcode.Generate()
	d := device()
	d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(now), Claims: []custodyv1alpha1.DisputedClaim{{Proof: ProofCode}}}
	got := decideAsController(t, &Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Device: d, Code: wrong, Now: now, Policy: DefaultPolicy}, &fakeVerifier{right: right})
	if got.Action != ActionRecordFailure || got.Reason != custodyv1alpha1.ClaimReasonNotVerified {
		t.Fatalf("got %s/%s", got.Action, got.Reason)
	}
}

func TestTightenCoolingOffAndSaleRecords(t *testing.T) {
	hour := &custodyv1alpha1.ClaimPolicy{CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: time.Hour}, ImmediateProof: custodyv1alpha1.RequiredProofPossession}}
	day := &custodyv1alpha1.ClaimPolicy{CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: 24 * time.Hour}, ImmediateProof: custodyv1alpha1.RequiredProofCode}}
	p := DefaultPolicy.Tighten(day, hour, &custodyv1alpha1.ClaimPolicy{SaleRecordProof: custodyv1alpha1.SaleRecordProofForbidden}, &custodyv1alpha1.ClaimPolicy{SaleRecordProof: custodyv1alpha1.SaleRecordProofAllowed})
	if p.CoolingOff != 24*time.Hour || p.ImmediateProof != custodyv1alpha1.RequiredProofCodeAndPossession || !p.SaleRecordForbidden {
		t.Fatalf("tightened policy %+v: want the longest period, the strictest immediate proof, and Forbidden to stick", p)
	}
	if q := DefaultPolicy.Tighten(&custodyv1alpha1.ClaimPolicy{CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: time.Hour}}}); q.ImmediateProof != custodyv1alpha1.RequiredProofCodeAndPossession {
		t.Fatalf("an unset immediate proof means CodeAndPossession, got %q", q.ImmediateProof)
	}
	if DefaultPolicy.CoolingOff != 0 || DefaultPolicy.SaleRecordForbidden {
		t.Fatal("the default must not cool off nor forbid sale records")
	}
}

// TestFullDisputeSaysSo: a valid claim on a device whose dispute is full is
// not added to it, and its message says exactly that rather than claiming
// a place in the dispute.
func TestFullDisputeSaysSo(t *testing.T) {
	right, _ := claimcode.Generate()
	d := device()
	d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(now)}
	for i := range MaxDisputeClaims {
		d.Spec.Dispute.Claims = append(d.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{Tenant: "globex", UID: typesUID(string(rune('a' + i)))}})
	}
	in := &Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Device: d, Code: right, Now: now, Policy: DefaultPolicy}
	got := decideAsController(t, in, &fakeVerifier{right: right})
	if got.Action != ActionNone || got.Phase != custodyv1alpha1.ClaimPhaseDenied || got.Message != MsgDisputeFull {
		t.Fatalf("full dispute: %s/%s %q", got.Action, got.Phase, got.Message)
	}
	d.Spec.Dispute.Claims = d.Spec.Dispute.Claims[:MaxDisputeClaims-1]
	in = &Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Device: d, Code: right, Now: now, Policy: DefaultPolicy}
	if got := decideAsController(t, in, &fakeVerifier{right: right}); got.Action != ActionDispute {
		t.Fatalf("room in the dispute: %s", got.Action)
	}
}
