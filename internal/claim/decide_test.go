package claim

import (
	"reflect"

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
	counted.Status.ClaimThrottles = []custodyv1alpha1.ClaimThrottle{{DeviceName: "xr200.sn-1", Failures: 1, LastAttempt: "1"}}

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
			d := Decide(in, v)
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
	a := Decide(withDevice, &fakeVerifier{right: right})
	b := Decide(base, &fakeVerifier{right: right})
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("wrong code and unknown serial differ:\n%+v\n%+v", a, b)
	}
}

func TestLockoutGrows(t *testing.T) {
	p := DefaultPolicy
	s := &custodyv1alpha1.TenantStatus{}
	var prev time.Duration
	for i := 1; i <= 10; i++ {
		at := now.Add(time.Duration(i) * time.Second)
		RecordFailure(s, "xr200.sn-1", typesUID(string(rune('a'+i))), at, p)
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
	if RecordFailure(s, "xr200.sn-1", typesUID(string(rune('a'+10))), now, p) {
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
