package claim

import (
	"fmt"
	"reflect"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
)

// fakeVerifier accepts exactly one code and counts the work done.
type fakeVerifier struct {
	right claimcode.Code
	calls int
}

func (f *fakeVerifier) Verify(c claimcode.Code, _ string) bool { f.calls++; return c == f.right }
func (f *fakeVerifier) VerifyNothing(claimcode.Code)           { f.calls++ }

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func claimFor(uid string) *custodyv1alpha1.Claim {
	return &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: "c-" + uid, Namespace: "acme", UID: typesUID(uid)},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-1", Model: "XR200",
			ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "code"}}},
	}
}

// Claim shapes for the possession cases.
func possessionOnly(c *custodyv1alpha1.Claim) {
	c.Spec.ClaimCode, c.Spec.Possession = nil, &custodyv1alpha1.PossessionProof{}
}
func withPossession(c *custodyv1alpha1.Claim) { c.Spec.Possession = &custodyv1alpha1.PossessionProof{} }
func paired(confirmed bool, expiresIn time.Duration) func(*custodyv1alpha1.Claim) {
	return func(c *custodyv1alpha1.Claim) {
		c.Status.Pairing = &custodyv1alpha1.Pairing{Code: "P", ExpiresAt: metav1.NewTime(now.Add(expiresIn))}
		if confirmed {
			t := metav1.NewTime(now.Add(-time.Second))
			c.Status.Pairing.ConfirmedAt = &t
		}
	}
}

func device() *custodyv1alpha1.Device {
	return &custodyv1alpha1.Device{
		ObjectMeta: metav1.ObjectMeta{Name: "xr200.sn-1"},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN-1", Model: "XR200",
			ClaimCode: &custodyv1alpha1.DeviceClaimCode{Verifier: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"}},
	}
}

func tenant(name string) *custodyv1alpha1.Tenant {
	return &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func TestDecide(t *testing.T) {
	right, _ := claimcode.Generate()
	wrong, _ := claimcode.Generate()

	boundToOther := device()
	boundToOther.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "globex", Namespace: "globex", Name: "x", UID: "other"}
	boundToMe := device()
	boundToMe.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c-1", UID: "1"}
	retained := device()
	retained.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "old", UID: "old"}
	consumed := device()
	consumed.Spec.ConsumedClaimCodes = []string{claimcode.Digest(consumed.Spec.ClaimCode.Verifier)}
	decommissioned := device()
	decommissioned.Spec.Decommissioned = true
	locked := tenant("acme")
	until := metav1.NewTime(now.Add(time.Minute))
	locked.Status.ClaimThrottles = []custodyv1alpha1.ClaimThrottle{{DeviceName: "xr200.sn-1", Failures: 5, LockedUntil: &until}}
	counted := tenant("acme")
	counted.Status.ClaimThrottles = []custodyv1alpha1.ClaimThrottle{{DeviceName: "xr200.sn-1", Failures: 1, Attempts: []string{"1"}}}

	code := custodyv1alpha1.RequiredProofCode
	both := custodyv1alpha1.RequiredProofCodeAndPossession
	tests := []struct {
		name   string
		in     Input
		action Action
		phase  custodyv1alpha1.ClaimPhase
		reason string
		work   int
		claim  []func(*custodyv1alpha1.Claim)
		policy custodyv1alpha1.RequiredProof
		proof  string
	}{
		{"right code binds", Input{Device: device(), Code: right}, ActionBind, "Bound", "Bound", 1, nil, "", ""},
		{"wrong code", Input{Device: device(), Code: wrong}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, nil, "", ""},
		{"unknown serial", Input{Code: right}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, nil, "", ""},
		{"no verifier", Input{Device: &custodyv1alpha1.Device{}, Code: right}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, nil, "", ""},
		{"decommissioned", Input{Device: decommissioned, Code: right}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, nil, "", ""},
		{"held by another tenant", Input{Device: boundToOther, Code: right}, ActionReportDispute, "Disputed", "DeviceHeldByAnotherTenant", 1, nil, "", ""},
		{"held by another, wrong code", Input{Device: boundToOther, Code: wrong}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, nil, "", ""},
		{"code already used", Input{Device: consumed, Code: right}, ActionNone, "Denied", "ClaimCodeAlreadyUsed", 1, nil, "", ""},
		{"bound here finishes", Input{Device: boundToMe, Code: wrong}, ActionFinishBind, "Bound", "Bound", 0, nil, "", ""},
		{"retained binding reattaches", Input{Device: retained}, ActionReattach, "Bound", "Bound", 0, nil, "", ""},
		{"retained with live claim", Input{Device: retained, BoundClaimExists: true}, ActionNone, "Denied", "DeviceAlreadyClaimedByTenant", 0, nil, "", ""},
		{"locked out", Input{Tenant: locked, Device: device(), Code: right}, ActionNone, "Pending", "TooManyFailedAttempts", 0, nil, "", ""},
		{"already counted", Input{Tenant: counted, Device: device(), Code: right}, ActionNone, "Denied", "ClaimNotVerified", 0, nil, "", ""},
		{"secret missing", Input{Device: device(), CodeErr: ErrSecretNotFound}, ActionNone, "Pending", "ClaimCodeSecretNotFound", 0, nil, "", ""},
		{"malformed", Input{Device: device(), CodeErr: claimcode.ErrMalformed}, ActionNone, "Pending", "ClaimCodeMalformed", 0, nil, "", ""},
		{"tenant not ready", Input{Tenant: tenant("acme"), Device: device(), Code: right, TenantReady: false}, ActionNone, "Pending", "TenantNotReady", 0, nil, "", ""},

		// Possession.
		{"possession: pairing issued", Input{Device: device()}, ActionNone, "AwaitingDevice", "AwaitingDevice", 0, fs(possessionOnly), "", ""},
		{"possession: unknown serial waits alike", Input{}, ActionNone, "AwaitingDevice", "AwaitingDevice", 0, fs(possessionOnly), "", ""},
		{"possession: waiting", Input{Device: device()}, ActionNone, "AwaitingDevice", "AwaitingDevice", 0, fs(possessionOnly, paired(false, time.Hour)), "", ""},
		{"possession: proven binds", Input{Device: device()}, ActionBind, "Bound", "Bound", 0, fs(possessionOnly, paired(true, time.Hour)), "", ProofPossession},
		{"possession: expired", Input{Device: device()}, ActionNone, "Denied", "ClaimNotVerified", 0, fs(possessionOnly, paired(false, 0)), "", ""},
		{"possession: unknown serial expires alike", Input{}, ActionNone, "Denied", "ClaimNotVerified", 0, fs(possessionOnly, paired(false, 0)), "", ""},
		{"possession: decommissioned never binds", Input{Device: decommissioned}, ActionNone, "AwaitingDevice", "AwaitingDevice", 0, fs(possessionOnly, paired(true, time.Hour)), "", ""},
		{"possession: held by another is a dispute", Input{Device: boundToOther}, ActionReportDispute, "Disputed", "DeviceHeldByAnotherTenant", 0, fs(possessionOnly, paired(true, time.Hour)), "", ProofPossession},
		{"possession: code policy wants the code", Input{Device: device()}, ActionNone, "Denied", "AdditionalProofRequired", 0, fs(possessionOnly, paired(true, time.Hour)), code, ""},
		{"both: code alone is not enough", Input{Device: device(), Code: right}, ActionNone, "Denied", "AdditionalProofRequired", 1, nil, both, ""},
		{"both: right code waits for the device", Input{Device: device(), Code: right}, ActionNone, "AwaitingDevice", "AwaitingDevice", 1, fs(withPossession), both, ""},
		{"both: right code and possession bind", Input{Device: device(), Code: right}, ActionBind, "Bound", "Bound", 1, fs(withPossession, paired(true, time.Hour)), both, ProofCodeAndPossession},
		{"both: wrong code fails despite possession", Input{Device: device(), Code: wrong}, ActionRecordFailure, "Denied", "ClaimNotVerified", 1, fs(withPossession, paired(true, time.Hour)), both, ""},
		{"default: right code binds without waiting", Input{Device: device(), Code: right}, ActionBind, "Bound", "Bound", 1, fs(withPossession), "", ProofCode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Claim = claimFor("1")
			for _, f := range tt.claim {
				f(in.Claim)
			}
			if in.Tenant == nil {
				in.Tenant, in.TenantReady = tenant("acme"), true
			} else if tt.reason != "TenantNotReady" {
				in.TenantReady = true
			}
			in.Now, in.Policy = now, DefaultPolicy
			if tt.policy != "" {
				in.Policy.RequiredProof = tt.policy
			}
			v := &fakeVerifier{right: right}
			d := decideAsController(t, &in, v)
			if d.Action != tt.action || d.Phase != tt.phase || d.Reason != tt.reason {
				t.Fatalf("got %s/%s/%s, want %s/%s/%s", d.Action, d.Phase, d.Reason, tt.action, tt.phase, tt.reason)
			}
			if d.Proof != tt.proof && tt.proof != "" {
				t.Fatalf("proof %q, want %q", d.Proof, tt.proof)
			}
			if d.Action == ActionBind && d.ConsumeCode != (d.Proof != ProofPossession) {
				t.Fatalf("ConsumeCode %v with proof %s", d.ConsumeCode, d.Proof)
			}
			if want := tt.phase == "AwaitingDevice" && in.Claim.Status.Pairing == nil; d.IssuePairing != want {
				t.Fatalf("IssuePairing %v, want %v", d.IssuePairing, want)
			}
			if v.calls != tt.work {
				t.Fatalf("verifier ran %d times, want %d", v.calls, tt.work)
			}
		})
	}
}

// TestWrongCodeAndUnknownSerialDecideAlike is the enumeration rule at the
// decision level; the integration test checks the same on the API server.
func TestWrongCodeAndUnknownSerialDecideAlike(t *testing.T) {
	right, _ := claimcode.Generate()
	wrong, _ := claimcode.Generate()
	base := Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Now: now, Policy: DefaultPolicy, Code: wrong}
	withDevice := base
	withDevice.Device = device()
	withDevice.Tenant = tenant("acme")
	a := decideAsController(t, &withDevice, &fakeVerifier{right: right})
	b := decideAsController(t, &base, &fakeVerifier{right: right})
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("wrong code and unknown serial differ:\n%+v\n%+v", a, b)
	}
	// Both reserved (counted) the attempt the same way.
	if !reflect.DeepEqual(withDevice.Tenant.Status, base.Tenant.Status) || !Counted(&base.Tenant.Status, "xr200.sn-1", "1") {
		t.Fatalf("the bookkeeping differs or counted nothing:\n%+v\n%+v", withDevice.Tenant.Status, base.Tenant.Status)
	}
}

// A malformed code is reported as the kind of mistake it is: the check
// character for a typo, the form for anything else. The message is the
// same whether or not the serial number exists (and whoever holds the
// device), counts no attempt, and never holds the code.
func TestMalformedCodeSaysWhatIsWrong(t *testing.T) {
	right, _ := claimcode.Generate()
	last := byte('0')
	if right[claimcode.Symbols-1] == last {
		last = '1'
	}
	typo := string(right[:claimcode.Symbols-1]) + string(last)
	boundToOther := device()
	boundToOther.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "globex", Namespace: "globex", Name: "x", UID: "other"}
	for _, tt := range []struct {
		typed, want string
	}{
		{typo, MsgCheckCharacter},
		{right.String()[:18], MsgMalformed},
		{right.String() + "7", MsgMalformed},
		{strings.Replace(right.String(), "-", ",", 1), MsgMalformed},
	} {
		_, err := claimcode.Parse(tt.typed)
		if err == nil {
			t.Fatalf("%q parsed", tt.typed)
		}
		var first *Decision
		for _, dev := range []*custodyv1alpha1.Device{device(), nil, boundToOther} {
			in := Input{Claim: claimFor("1"), Tenant: tenant("acme"), TenantReady: true, Now: now, Policy: DefaultPolicy, Device: dev, CodeErr: err}
			v := &fakeVerifier{right: right}
			d := decideAsController(t, &in, v)
			if d.Reason != custodyv1alpha1.ClaimReasonClaimCodeMalformed || d.Message != tt.want || d.Event == nil || d.Event.Message != tt.want {
				t.Fatalf("%q: %s %q, want ClaimCodeMalformed %q", tt.typed, d.Reason, d.Message, tt.want)
			}
			if v.calls != 0 || in.Tenant.Status.ClaimThrottles != nil {
				t.Fatalf("%q: a malformed code was verified or counted", tt.typed)
			}
			if strings.Contains(strings.ReplaceAll(d.Message, "-", ""), string(right[:6])) {
				t.Fatalf("the message echoes the code: %q", d.Message)
			}
			if first == nil {
				first = &d
			} else if !reflect.DeepEqual(*first, d) {
				t.Fatalf("%q: the decision depends on the Device:\n%+v\n%+v", tt.typed, *first, d)
			}
		}
	}
}

// decideAsController decides as the claim controller does: a Decision to
// reserve is applied to the Tenant's status (the write that precedes every
// verification), then Decide runs again with the reservation; a right code
// takes its reservation back. It checks that nothing is verified before
// the reservation.
func decideAsController(t *testing.T, in *Input, v *fakeVerifier) Decision {
	t.Helper()
	calls := v.calls
	d := Decide(*in, v)
	if d.Action != ActionReserve {
		return d
	}
	if v.calls != calls {
		t.Fatal("a code was verified before its attempt was reserved")
	}
	in.Tenant = in.Tenant.DeepCopy()
	in.Reserved = Reserve(&in.Tenant.Status, in.Claim.DeviceName(), in.Claim.UID, in.Now, in.Policy) == Reserved
	d = Decide(*in, v)
	if d.Action == ActionReserve {
		t.Fatal("asked to reserve twice")
	}
	if in.Reserved && d.CodeProven {
		Unreserve(&in.Tenant.Status, in.Claim.DeviceName(), in.Claim.UID)
	}
	return d
}

// TestReserveBeforeVerifying: the pure reservation decision. Each attempt
// is counted before its code is verified; MaxFailedAttempts reservations
// succeed before the lockout and one after each lockout ends, whatever the
// order; a Claim is counted once; a right code takes its reservation (and
// the lockout it caused) back; another tenant is never affected.
func TestReserveBeforeVerifying(t *testing.T) {
	p := DefaultPolicy
	name := "xr200.sn-1"
	s := &custodyv1alpha1.TenantStatus{}
	granted := 0
	for i := range 200 {
		if Reserve(s, name, typesUID(fmt.Sprint("a", i)), now, p) == Reserved {
			granted++
		}
	}
	if granted != int(p.MaxFailedAttempts) {
		t.Fatalf("%d reservations before the lockout, want %d", granted, p.MaxFailedAttempts)
	}
	if got := Reserve(s, name, "a0", now, p); got != AlreadyCounted {
		t.Fatalf("a counted Claim reserved again: %s", got)
	}
	if got := Reserve(s, name, "late", now, p); got != Locked {
		t.Fatalf("reservation while locked out: %s", got)
	}
	// After each lockout ends, exactly one more attempt is verified.
	at := now
	for round := range 4 {
		at = LockedUntil(s, name, at)
		granted = 0
		for i := range 50 {
			if Reserve(s, name, typesUID(fmt.Sprint("r", round, "-", i)), at, p) == Reserved {
				granted++
			}
		}
		if granted != 1 {
			t.Fatalf("round %d: %d reservations after the lockout ended, want 1", round, granted)
		}
	}
	failures := findThrottle(s, name).Failures
	// A right code after a lockout: its reservation and the lockout it
	// caused are taken back; the failures before it still count.
	at = LockedUntil(s, name, at)
	if Reserve(s, name, "owner", at, p) != Reserved || LockedUntil(s, name, at).IsZero() {
		t.Fatal("the reservation after the lockout did not lock")
	}
	if !Unreserve(s, name, "owner") || !LockedUntil(s, name, at).IsZero() || findThrottle(s, name).Failures != failures || Counted(s, name, "owner") {
		t.Fatalf("unreserve left %+v", findThrottle(s, name))
	}
	if Unreserve(s, name, "owner") {
		t.Fatal("unreserved twice")
	}
	// A right code below the limit leaves nothing behind.
	fresh := &custodyv1alpha1.TenantStatus{}
	Reserve(fresh, name, "x", now, p)
	if !Unreserve(fresh, name, "x") || len(fresh.ClaimThrottles) != 0 || fresh.FailedClaimAttempts != 0 {
		t.Fatalf("unreserve left %+v", fresh)
	}
	// The bookkeeping is per tenant: another tenant's status is untouched
	// and its first attempt is granted.
	if Reserve(&custodyv1alpha1.TenantStatus{}, name, "owner-tenant", at, p) != Reserved {
		t.Fatal("another tenant was locked out")
	}
}

// TestVerifiedOnlyAfterReservation: Decide asks for a reservation before it
// verifies anything, runs the verifier once after it, and refuses to verify
// an attempt an earlier reconcile counted.
func TestVerifiedOnlyAfterReservation(t *testing.T) {
	right, _ := claimcode.Generate()
	wrong, _ := claimcode.Generate()
	for _, in := range []Input{{Device: device(), Code: wrong}, {Code: wrong}, {Device: device(), Code: right}} {
		in.Claim, in.Tenant, in.TenantReady, in.Now, in.Policy = claimFor("1"), tenant("acme"), true, now, DefaultPolicy
		v := &fakeVerifier{right: right}
		if d := Decide(in, v); d.Action != ActionReserve || v.calls != 0 || d.Phase != custodyv1alpha1.ClaimPhasePending {
			t.Fatalf("unreserved: %s/%s after %d verifications", d.Action, d.Phase, v.calls)
		}
		in.Reserved = true
		if d := Decide(in, v); d.Action == ActionReserve || v.calls != 1 || d.CodeProven != (in.Code == right && in.Device != nil) {
			t.Fatalf("reserved: %s, %d verifications, proven %v", d.Action, v.calls, d.CodeProven)
		}
		// Counted by an earlier reconcile (a crash, a retry): never again.
		in.Reserved = false
		Reserve(&in.Tenant.Status, "xr200.sn-1", "1", now, DefaultPolicy)
		if d := Decide(in, v); d.Action != ActionNone || d.Phase != custodyv1alpha1.ClaimPhaseDenied || d.Message != MsgAttemptSpent || v.calls != 1 {
			t.Fatalf("counted earlier: %s/%s %q after %d verifications", d.Action, d.Phase, d.Message, v.calls)
		}
	}
}

// TestRecordedProofIsNotVerifiedAgain: a Claim whose code an earlier
// reconcile proved right (status.codeVerified, recorded when its attempt
// could not be taken back) binds although its attempt is still counted,
// even while the tenant is locked out and with its Secret gone, and
// without verifying anything. The record is worth nothing for another
// Device, a Device recreated under the same name, a new claim code, a
// decommissioned Device, a Device in another tenant's custody, or a Claim
// without a code; those Claims are decided as before.
func TestRecordedProofIsNotVerifiedAgain(t *testing.T) {
	right, _ := claimcode.Generate()
	dev := device()
	dev.UID = "dev-uid-1"
	proved := func() Input {
		c := claimFor("1")
		c.Status.CodeVerified = &custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.NewTime(now), Verifier: CodeVerifiedDigest(c.UID, dev)}
		in := Input{Claim: c, Device: dev.DeepCopy(), Tenant: tenant("acme"), TenantReady: true, Now: now, Policy: DefaultPolicy, CodeErr: ErrSecretNotFound}
		// Counted, and locked out by the failures of others after it.
		Reserve(&in.Tenant.Status, "xr200.sn-1", "1", now, DefaultPolicy)
		for i := range DefaultPolicy.MaxFailedAttempts + 1 {
			Reserve(&in.Tenant.Status, "xr200.sn-1", typesUID(fmt.Sprint("other-", i)), now, DefaultPolicy)
		}
		if LockedUntil(&in.Tenant.Status, "xr200.sn-1", now).IsZero() {
			t.Fatal("setup: not locked out")
		}
		return in
	}
	v := &fakeVerifier{right: right}
	if d := Decide(proved(), v); d.Action != ActionBind || !d.CodeProven || v.calls != 0 {
		t.Fatalf("recorded proof: %s/%s %q, proven %v, %d verifications", d.Action, d.Phase, d.Message, d.CodeProven, v.calls)
	}

	for name, spoil := range map[string]func(*Input){
		"another device":       func(in *Input) { in.Device.UID = "dev-uid-2" },
		"new claim code":       func(in *Input) { in.Device.Spec.ClaimCode.Verifier += "x" },
		"decommissioned":       func(in *Input) { in.Device.Spec.Decommissioned = true },
		"forged digest":        func(in *Input) { in.Claim.Status.CodeVerified.Verifier = strings.Repeat("0", 64) },
		"another claim's":      func(in *Input) { in.Claim.UID = "2" },
		"held for another":     func(in *Input) { in.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{CustodianTenant: "wholesale"} },
		"code no longer asked": func(in *Input) { possessionOnly(in.Claim) },
	} {
		in := proved()
		spoil(&in)
		if CodeVerifiedHolds(in.Claim, in.Device, "acme") {
			t.Errorf("%s: the record still holds", name)
		}
		d := Decide(in, v)
		if d.CodeProven || d.Action == ActionBind {
			t.Errorf("%s: %s/%s, proven %v", name, d.Action, d.Phase, d.CodeProven)
		}
	}
	// Without a record, the counted attempt is spent (as before).
	in := proved()
	in.Claim.Status.CodeVerified = nil
	in.CodeErr, in.Code = nil, right
	if d := Decide(in, v); d.Phase != custodyv1alpha1.ClaimPhaseDenied || d.Message != MsgAttemptSpent || v.calls != 0 {
		t.Fatalf("no record: %s/%s %q after %d verifications", d.Action, d.Phase, d.Message, v.calls)
	}
}

func TestLockoutGrows(t *testing.T) {
	p := DefaultPolicy
	s := &custodyv1alpha1.TenantStatus{}
	var prev time.Duration
	at := now
	for i := 1; i <= 10; i++ {
		// Each attempt comes when the lockout before it has ended.
		if u := LockedUntil(s, "xr200.sn-1", at); !u.IsZero() {
			at = u
		}
		at = at.Add(time.Second)
		if Reserve(s, "xr200.sn-1", typesUID(string(rune('a'+i))), at, p) != Reserved {
			t.Fatalf("attempt %d refused", i)
		}
		until := LockedUntil(s, "xr200.sn-1", at)
		switch {
		case int32(i) < p.MaxFailedAttempts:
			if !until.IsZero() {
				t.Fatalf("locked after %d failures", i)
			}
		default:
			d := until.Sub(at)
			if d <= prev {
				t.Fatalf("lockout after %d failures is %v, not longer than %v", i, d, prev)
			}
			prev = d
		}
	}
	if s.FailedClaimAttempts != 10 {
		t.Fatalf("counted %d failures, want 10", s.FailedClaimAttempts)
	}
	// The same attempt is never counted twice.
	if Reserve(s, "xr200.sn-1", typesUID(string(rune('a'+10))), at, p) == Reserved {
		t.Fatal("a retried attempt was counted again")
	}
	if !RecordSuccess(s, "xr200.sn-1") || len(s.ClaimThrottles) != 0 {
		t.Fatal("success did not clear the bookkeeping")
	}
}

func TestPolicyOnlyTightens(t *testing.T) {
	three, ten := int32(3), int32(10)
	p := DefaultPolicy.Tighten(&custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: &ten}, nil, &custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: &three})
	if p.MaxFailedAttempts != 3 {
		t.Fatalf("MaxFailedAttempts = %d, want 3", p.MaxFailedAttempts)
	}
	if DefaultPolicy.Tighten(&custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: &ten}).MaxFailedAttempts != DefaultPolicy.MaxFailedAttempts {
		t.Fatal("a policy loosened the default")
	}
}

func typesUID(s string) types.UID { return types.UID(s) }

func fs(f ...func(*custodyv1alpha1.Claim)) []func(*custodyv1alpha1.Claim) { return f }

func TestStricterProof(t *testing.T) {
	c, p, e, b := custodyv1alpha1.RequiredProofCode, custodyv1alpha1.RequiredProofPossession, custodyv1alpha1.RequiredProofCodeOrPossession, custodyv1alpha1.RequiredProofCodeAndPossession
	for _, tc := range []struct{ a, b, want custodyv1alpha1.RequiredProof }{
		{e, "", e}, {e, c, c}, {c, e, c}, {p, e, p}, {c, p, b}, {b, e, b}, {e, e, e},
	} {
		if got := StricterProof(tc.a, tc.b); got != tc.want {
			t.Errorf("StricterProof(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
	pol := DefaultPolicy.Tighten(&custodyv1alpha1.ClaimPolicy{RequiredProof: c}, nil, &custodyv1alpha1.ClaimPolicy{RequiredProof: e})
	if pol.RequiredProof != c {
		t.Fatalf("a later looser policy loosened the requirement to %q", pol.RequiredProof)
	}
}

// A Claim that loses its device says how, from the device's custody
// history: transferred (naming the Transfer and the recipient), released,
// decommissioned, or taken by support staff; DeviceReleased alone when the
// history cannot tell. Once Lost, what it said stays.
func TestLostSaysHowTheBindingEnded(t *testing.T) {
	rec := func(seq int64, typ custodyv1alpha1.CustodyEventType, uid, tenant, from, proof, ref string) custodyv1alpha1.CustodyRecord {
		return custodyv1alpha1.CustodyRecord{Sequence: seq, Type: typ, ClaimUID: typesUID(uid), Tenant: tenant, FromTenant: from, Proof: proof, Reference: ref}
	}
	bound := rec(1, custodyv1alpha1.CustodyEventBound, "1", "acme", "", "ClaimCode", "")
	toGlobex := rec(2, custodyv1alpha1.CustodyEventTransferred, "g", "globex", "acme", "Transfer", "acme/to-globex")
	withHistory := func(head *custodyv1alpha1.CustodyRecord, history ...custodyv1alpha1.CustodyRecord) *custodyv1alpha1.Device {
		d := device()
		d.Status.History = history
		if head != nil {
			d.Spec.Custody = &custodyv1alpha1.DeviceCustody{Head: *head}
		}
		return d
	}
	for _, tt := range []struct {
		name, reason, msg string
		dev               *custodyv1alpha1.Device
	}{
		{"transferred", custodyv1alpha1.ClaimReasonDeviceTransferred, fmt.Sprintf(MsgTransferred, "globex", "acme/to-globex"), withHistory(&toGlobex, bound, toGlobex)},
		{"transferred, history not yet completed", custodyv1alpha1.ClaimReasonDeviceTransferred, fmt.Sprintf(MsgTransferred, "globex", "acme/to-globex"), withHistory(&toGlobex, bound)},
		{"transferred, then onwards", custodyv1alpha1.ClaimReasonDeviceTransferred, fmt.Sprintf(MsgTransferred, "globex", "acme/to-globex"),
			withHistory(nil, bound, toGlobex, rec(3, custodyv1alpha1.CustodyEventDataPurged, "", "acme", "", "", ""), rec(4, custodyv1alpha1.CustodyEventTransferred, "i", "initech", "globex", "Transfer", "globex/on"))},
		{"released for claiming by a Transfer", custodyv1alpha1.ClaimReasonDeviceReleased, fmt.Sprintf(MsgReleasedBy, "acme/resale"),
			withHistory(nil, bound, rec(2, custodyv1alpha1.CustodyEventReleased, "1", "acme", "", "Transfer", "acme/resale"))},
		{"released with its tenant", custodyv1alpha1.ClaimReasonDeviceReleased, MsgReleasedTenant,
			withHistory(nil, bound, rec(2, custodyv1alpha1.CustodyEventReleased, "1", "acme", "", "TenantDeleted", ""))},
		{"decommissioned", custodyv1alpha1.ClaimReasonDeviceDecommissioned, MsgDecommissioned,
			withHistory(nil, bound, rec(2, custodyv1alpha1.CustodyEventDecommissioned, "1", "acme", "", "Decommissioned", ""))},
		{"awarded to another", custodyv1alpha1.ClaimReasonDisputeLost, MsgResolvedAway,
			withHistory(nil, bound, rec(2, custodyv1alpha1.CustodyEventResolved, "g", "globex", "acme", custodyProofAward, "support/a"))},
		{"an earlier binding's transfer is not this one's end", custodyv1alpha1.ClaimReasonDeviceDecommissioned, MsgDecommissioned,
			withHistory(nil, rec(1, custodyv1alpha1.CustodyEventBound, "0", "acme", "", "ClaimCode", ""), rec(2, custodyv1alpha1.CustodyEventTransferred, "1", "acme", "old", "Transfer", "old/t"),
				rec(3, custodyv1alpha1.CustodyEventDecommissioned, "1", "acme", "", "Decommissioned", ""))},
		{"device gone", custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased, nil},
		{"history lost the change", custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased, withHistory(nil, rec(9, custodyv1alpha1.CustodyEventSold, "", "", "", "", ""))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := claimFor("1")
			c.Status.Phase = custodyv1alpha1.ClaimPhaseBound
			in := Input{Claim: c, Tenant: tenant("acme"), TenantReady: true, Now: now, Policy: DefaultPolicy, Device: tt.dev}
			d := Decide(in, &fakeVerifier{})
			if d.Phase != custodyv1alpha1.ClaimPhaseLost || d.Reason != tt.reason || d.Message != tt.msg || d.Event == nil || d.Event.Reason != tt.reason {
				t.Fatalf("got %s %s %q, want Lost %s %q", d.Phase, d.Reason, d.Message, tt.reason, tt.msg)
			}
			// Lost stays what it said, whatever the history does next.
			c.Status.Phase = custodyv1alpha1.ClaimPhaseLost
			c.Status.Conditions = []metav1.Condition{{Type: custodyv1alpha1.ConditionReady, Reason: d.Reason, Message: d.Message}}
			in.Device = nil
			if again := Decide(in, &fakeVerifier{}); again.Reason != tt.reason || again.Message != tt.msg || again.Event != nil {
				t.Fatalf("once Lost: %s %q (event %v)", again.Reason, again.Message, again.Event)
			}
		})
	}
}
