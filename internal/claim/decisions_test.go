package claim

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/pkg/protocol"
)

// fullDispute returns a device whose dispute holds MaxDisputeClaims claims
// of other tenants.
func fullDispute() *custodyv1alpha1.Device {
	d := device()
	d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(now)}
	for i := range MaxDisputeClaims {
		u := string(rune('a' + i))
		d.Spec.Dispute.Claims = append(d.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{
			DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{Tenant: "globex", Namespace: "globex", Name: "c-" + u, UID: typesUID(u)}, Proof: ProofCode})
	}
	return d
}

// TestDisputeFullIsFinal: a valid claim that finds the dispute full is
// denied with its own reason and a message that stays true whatever
// becomes of the dispute: it is never added (ActionDispute), and never
// told later that it lost a dispute it was not in.
func TestDisputeFullIsFinal(t *testing.T) {
	right, _ := claimcode.Generate()
	if !strings.Contains(MsgDisputeFull, "("+strconv.Itoa(MaxDisputeClaims)+")") {
		t.Fatalf("MsgDisputeFull does not name the bound %d: %q", MaxDisputeClaims, MsgDisputeFull)
	}

	// First decision.
	for name, shape := range map[string]func(*custodyv1alpha1.Claim){
		"code":                nil,
		"code and possession": func(c *custodyv1alpha1.Claim) { withPossession(c); paired(true, time.Hour)(c) },
		"possession":          func(c *custodyv1alpha1.Claim) { possessionOnly(c); paired(true, time.Hour)(c) },
	} {
		c := claimFor("1")
		if shape != nil {
			shape(c)
		}
		in := &Input{Claim: c, Tenant: tenant("acme"), TenantReady: true, Device: fullDispute(), Code: right, Now: now, Policy: DefaultPolicy}
		got := decideAsController(t, in, &fakeVerifier{right: right})
		if got.Action != ActionNone || got.Phase != custodyv1alpha1.ClaimPhaseDenied || got.Reason != custodyv1alpha1.ClaimReasonDisputeFull ||
			got.Message != MsgDisputeFull || got.Event == nil || got.Event.Reason != custodyv1alpha1.ClaimReasonDisputeFull {
			t.Fatalf("%s: %s/%s/%s %q", name, got.Action, got.Phase, got.Reason, got.Message)
		}
		if got.Proof != "" || got.ConsumeCode || got.IssuePairing {
			t.Fatalf("%s: a refused claim proves, consumes or pairs nothing: %+v", name, got)
		}
	}

	// Later reconciles, whatever became of the dispute.
	denied := func() *custodyv1alpha1.Claim {
		c := claimFor("1")
		c.Status.Phase = custodyv1alpha1.ClaimPhaseDenied
		c.Status.Conditions = []metav1.Condition{{Type: custodyv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: custodyv1alpha1.ClaimReasonDisputeFull, Message: MsgDisputeFull}}
		return c
	}
	awarded := device()
	awarded.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "globex", Namespace: "globex", Name: "c-a", UID: "a"}
	room := fullDispute()
	room.Spec.Dispute.Claims = room.Spec.Dispute.Claims[1:]
	for name, d := range map[string]*custodyv1alpha1.Device{
		"still full":         fullDispute(),
		"awarded to another": awarded,
		"reset (free, code used)": func() *custodyv1alpha1.Device {
			d := device()
			d.Spec.ConsumedClaimCodes = []string{claimcode.Digest(d.Spec.ClaimCode.Verifier)}
			return d
		}(),
		"a party withdrew: room again": room,
		"decommissioned":               func() *custodyv1alpha1.Device { d := device(); d.Spec.Decommissioned = true; return d }(),
		"device deleted":               nil,
		"cooling off for another claimant": func() *custodyv1alpha1.Device {
			d := device()
			d.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{UID: "z"}}
			return d
		}(),
	} {
		v := &fakeVerifier{right: right}
		in := &Input{Claim: denied(), Tenant: tenant("acme"), TenantReady: true, Device: d, Code: right, Now: now, Policy: DefaultPolicy}
		got := decideAsController(t, in, v)
		if got.Action != ActionNone || got.Phase != custodyv1alpha1.ClaimPhaseDenied || got.Reason != custodyv1alpha1.ClaimReasonDisputeFull || got.Message != MsgDisputeFull {
			t.Errorf("%s: %s/%s/%s %q, want it to stay Denied/%s", name, got.Action, got.Phase, got.Reason, got.Message, custodyv1alpha1.ClaimReasonDisputeFull)
		}
		if v.calls != 0 {
			t.Errorf("%s: a final Claim verified its code again", name)
		}
	}
}

// TestPairingDecision: Decide says what becomes of a Claim's pairing code,
// issue (with its expiry), keep or drop; the controller only draws the
// code.
func TestPairingDecision(t *testing.T) {
	right, _ := claimcode.Generate()
	bound := device()
	bound.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c-1", UID: "1"}
	for name, tc := range map[string]struct {
		shape            []func(*custodyv1alpha1.Claim)
		device           *custodyv1alpha1.Device
		codeErr          error
		ttl              time.Duration
		both             bool // the policy wants code and possession
		issue, drop      bool
		expires, requeue time.Duration
	}{
		"possession: issued with the TTL":     {shape: fs(possessionOnly), device: device(), ttl: time.Hour, issue: true, expires: time.Hour, requeue: time.Hour},
		"possession: default TTL":             {shape: fs(possessionOnly), device: device(), issue: true, expires: DefaultPairingTTL, requeue: DefaultPairingTTL},
		"unknown serial: issued alike":        {shape: fs(possessionOnly), ttl: time.Hour, issue: true, expires: time.Hour, requeue: time.Hour},
		"code and possession: issued":         {shape: fs(withPossession), device: device(), ttl: time.Hour, both: true, issue: true, expires: time.Hour, requeue: time.Hour},
		"waiting: kept":                       {shape: fs(possessionOnly, paired(false, time.Hour)), device: device(), ttl: time.Hour},
		"pending on its Secret: kept":         {shape: fs(withPossession, paired(false, time.Hour)), device: device(), codeErr: ErrSecretNotFound, ttl: time.Hour},
		"confirmed and bound: dropped":        {shape: fs(possessionOnly, paired(true, time.Hour)), device: device(), ttl: time.Hour, drop: true},
		"expired: dropped":                    {shape: fs(possessionOnly, paired(false, 0)), device: device(), ttl: time.Hour, drop: true},
		"bound earlier: dropped":              {shape: fs(possessionOnly, paired(true, time.Hour)), device: bound, ttl: time.Hour, drop: true},
		"code only: none to issue nor drop":   {device: device(), ttl: time.Hour},
		"full dispute: dropped, never issued": {shape: fs(possessionOnly, paired(true, time.Hour)), device: fullDispute(), ttl: time.Hour, drop: true},
	} {
		c := claimFor("1")
		for _, f := range tc.shape {
			f(c)
		}
		in := &Input{Claim: c, Tenant: tenant("acme"), TenantReady: true, Device: tc.device, Code: right, CodeErr: tc.codeErr, Now: now, Policy: DefaultPolicy, PairingTTL: tc.ttl}
		if tc.both {
			in.Policy.RequiredProof = custodyv1alpha1.RequiredProofCodeAndPossession
		}
		got := decideAsController(t, in, &fakeVerifier{right: right})
		if got.IssuePairing != tc.issue || got.DropPairing != tc.drop {
			t.Errorf("%s: issue %v drop %v (%s/%s), want issue %v drop %v", name, got.IssuePairing, got.DropPairing, got.Phase, got.Reason, tc.issue, tc.drop)
			continue
		}
		if tc.issue && (!got.PairingExpiresAt.Equal(now.Add(tc.expires)) || got.RequeueAfter != tc.requeue) {
			t.Errorf("%s: expires %v, requeue %v; want %v, %v", name, got.PairingExpiresAt, got.RequeueAfter, now.Add(tc.expires), tc.requeue)
		}
		if !tc.issue && !got.PairingExpiresAt.IsZero() {
			t.Errorf("%s: an expiry without a code to issue", name)
		}
	}
}

// TestDirectSale: the manager opens a direct sale's Claim only for a ready
// owner tenant, an unused sale record, a free device and a policy that
// allows sale-record proofs.
func TestDirectSale(t *testing.T) {
	owner := func() *custodyv1alpha1.Tenant {
		tn := tenant("acme")
		tn.Spec.Namespace = "acme-ns"
		return tn
	}
	sold := func(mutate ...func(*custodyv1alpha1.Device)) *custodyv1alpha1.Device {
		d := device()
		d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "SO-1", OwnerTenant: "acme", Buyer: custodyv1alpha1.Buyer{Name: "B"}}
		for _, m := range mutate {
			m(d)
		}
		return d
	}
	forbidden := DefaultPolicy
	forbidden.SaleRecordForbidden = true
	for name, tc := range map[string]struct {
		d      *custodyv1alpha1.Device
		t      *custodyv1alpha1.Tenant
		ready  bool
		p      Policy
		tenant string // DirectSaleTenant
		open   bool
	}{
		"direct sale":      {sold(), owner(), true, DefaultPolicy, "acme", true},
		"tenant not ready": {sold(), owner(), false, DefaultPolicy, "acme", false},
		"tenant missing":   {sold(), nil, true, DefaultPolicy, "acme", false},
		"another tenant":   {sold(), tenant("globex"), true, DefaultPolicy, "acme", false},
		"policy forbids":   {sold(), owner(), true, forbidden, "acme", false},
		"no sale":          {device(), owner(), true, DefaultPolicy, "", false},
		"custodian's sale": {sold(func(d *custodyv1alpha1.Device) { d.Spec.Sale.OwnerTenant, d.Spec.Sale.CustodianTenant = "", "acme" }), owner(), true, DefaultPolicy, "", false},
		"sale record used": {sold(func(d *custodyv1alpha1.Device) { d.Spec.ConsumedSaleRecords = []string{"SO-1"} }), owner(), true, DefaultPolicy, "", false},
		"decommissioned":   {sold(func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }), owner(), true, DefaultPolicy, "", false},
		"bound": {sold(func(d *custodyv1alpha1.Device) {
			d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "globex"}
		}), owner(), true, DefaultPolicy, "", false},
		"cooling off": {sold(func(d *custodyv1alpha1.Device) { d.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{} }), owner(), true, DefaultPolicy, "", false},
		"disputed":    {sold(func(d *custodyv1alpha1.Device) { d.Spec.Dispute = &custodyv1alpha1.Dispute{} }), owner(), true, DefaultPolicy, "", false},
	} {
		if got := DirectSaleTenant(tc.d); got != tc.tenant {
			t.Errorf("%s: DirectSaleTenant %q, want %q", name, got, tc.tenant)
		}
		c := DirectSaleClaim(tc.d, tc.t, tc.ready, tc.p)
		if (c != nil) != tc.open {
			t.Errorf("%s: Claim %v, want one: %v", name, c, tc.open)
			continue
		}
		if c == nil {
			continue
		}
		if c.Name != tc.d.Name || c.Namespace != "acme-ns" || c.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue ||
			c.Spec.SaleRecord == nil || c.Spec.ClaimCode != nil || c.Spec.Possession != nil || c.Spec.ReleasePolicy != custodyv1alpha1.ReleasePolicyRetain ||
			c.Spec.SerialNumber != tc.d.Spec.SerialNumber || c.Spec.Model != tc.d.Spec.Model {
			t.Errorf("%s: Claim %+v", name, c)
		}
		// The Claim it opens is one Decide binds by its sale record.
		got := Decide(Input{Claim: c, Tenant: tc.t, TenantReady: true, Device: tc.d, Now: now, Policy: tc.p}, &fakeVerifier{})
		if got.Action != ActionBind || got.Proof != ProofSaleRecord || !got.ConsumeSale {
			t.Errorf("%s: the opened Claim decides %s/%s", name, got.Action, got.Reason)
		}
	}
}

// TestUseToken: the decision whether a device claims itself with a pairing
// token, and what is counted.
func TestUseToken(t *testing.T) {
	tok, err := protocol.GeneratePairingToken("acme")
	if err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PairingTokenSecretPrefix + tok.ID, UID: "uid-1"}, Type: PairingTokenSecretType,
		Data: map[string][]byte{TokenKeyID: []byte(tok.ID), TokenKeySecret: []byte(tok.Secret),
			TokenKeyExpiration: []byte(now.Add(time.Hour).Format(time.RFC3339)), TokenKeyUsageLimit: []byte("2")}}
	digest := protocol.PairingTokenDigest("xr200.sn-1", tok)
	boundTo := func(tn string) *custodyv1alpha1.Device {
		d := device()
		d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: tn}
		return d
	}
	custody := device()
	custody.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "SO-1", CustodianTenant: "wholesale"}
	for name, tc := range map[string]struct {
		st      TokenState
		d       *custodyv1alpha1.Device
		digest  string
		want    TokenVerdict
		changed bool
		used    int
	}{
		"free device: counted":            {TokenState{UID: "uid-1"}, device(), digest, TokenAccepted, true, 1},
		"first sight: recorded, counted":  {TokenState{}, device(), digest, TokenAccepted, true, 1},
		"retry of a counted use":          {TokenState{UID: "uid-1", Used: 1, Recent: []TokenUse{{Device: "xr200.sn-1", Proof: "proof-1"}}}, device(), digest, TokenAccepted, false, 1},
		"bound to another tenant":         {TokenState{UID: "uid-1"}, boundTo("globex"), digest, TokenDeviceNotFree, false, 0},
		"bound to the token's tenant":     {TokenState{UID: "uid-1"}, boundTo("acme"), digest, TokenDeviceNotFree, false, 0},
		"in another tenant's custody":     {TokenState{UID: "uid-1"}, custody, digest, TokenDeviceNotFree, false, 0},
		"disputed":                        {TokenState{UID: "uid-1"}, fullDispute(), digest, TokenDeviceNotFree, false, 0},
		"not free, first sight: recorded": {TokenState{}, boundTo("globex"), digest, TokenDeviceNotFree, true, 0},
		"wrong token before not free":     {TokenState{UID: "uid-1"}, boundTo("globex"), "nope", TokenMismatch, false, 0},
		"used up":                         {TokenState{UID: "uid-1", Used: 2}, device(), digest, TokenUsedUp, false, 2},
		"revoked: never counted":          {TokenState{UID: "uid-0"}, device(), digest, TokenRevoked, true, 0},
	} {
		st := tc.st
		verdict, changed := UseToken(&st, secret, "acme", tc.d, tc.digest, "proof-1", now)
		if verdict != tc.want || changed != tc.changed || st.Used != tc.used {
			t.Errorf("%s: %q changed %v used %d, want %q %v %d", name, verdict, changed, st.Used, tc.want, tc.changed, tc.used)
		}
	}
}
