package claim

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

func TestDefaulted(t *testing.T) {
	if got := (Policy{}).Defaulted(); got != DefaultPolicy {
		t.Fatalf("the zero policy defaults to %+v, want DefaultPolicy %+v", got, DefaultPolicy)
	}
	// Set fields stay; unset ones are the default's, one by one.
	p := Policy{MaxFailedAttempts: 3, CoolingOff: time.Hour, SaleRecordForbidden: true}.Defaulted()
	want := DefaultPolicy
	want.MaxFailedAttempts, want.CoolingOff, want.SaleRecordForbidden = 3, time.Hour, true
	want.ImmediateProof = custodyv1alpha1.RequiredProofCodeAndPossession
	if p != want {
		t.Fatalf("defaulted %+v, want %+v", p, want)
	}
	if DefaultPolicy.Validate() != nil {
		t.Fatalf("the default is out of bounds: %v", DefaultPolicy.Validate())
	}
}

func TestValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*Policy)
		want   string // "" for valid
	}{
		"default":                  {func(*Policy) {}, ""},
		"lowest attempts":          {func(p *Policy) { p.MaxFailedAttempts = custodyv1alpha1.MaxFailedAttemptsLowest }, ""},
		"highest attempts":         {func(p *Policy) { p.MaxFailedAttempts = custodyv1alpha1.MaxFailedAttemptsHighest }, ""},
		"no attempts":              {func(p *Policy) { p.MaxFailedAttempts = 0 }, "maxFailedAttempts must be between 1 and 20"},
		"too many attempts":        {func(p *Policy) { p.MaxFailedAttempts = custodyv1alpha1.MaxFailedAttemptsHighest + 1 }, "maxFailedAttempts must be between 1 and 20"},
		"no lockout":               {func(p *Policy) { p.LockoutBase = 0 }, "first lockout must be positive and at most 24h"},
		"lockout beyond its cap":   {func(p *Policy) { p.LockoutBase = 25 * time.Hour }, "first lockout must be positive and at most 24h"},
		"never forgets":            {func(p *Policy) { p.Forget = 0 }, "forgotten"},
		"shortest cooling-off":     {func(p *Policy) { p.CoolingOff = custodyv1alpha1.CoolingOffPeriodShortest }, ""},
		"cooling-off too short":    {func(p *Policy) { p.CoolingOff = time.Second }, "coolingOff.period must be between 1m and 720h"},
		"cooling-off too long":     {func(p *Policy) { p.CoolingOff = custodyv1alpha1.CoolingOffPeriodLongest + time.Hour }, "coolingOff.period must be between 1m and 720h"},
		"misspelt proof":           {func(p *Policy) { p.RequiredProof = "possession" }, "requiredProof must be"},
		"misspelt immediate proof": {func(p *Policy) { p.ImmediateProof = "Both" }, "immediateProof must be"},
	} {
		p := DefaultPolicy
		tc.mutate(&p)
		err := p.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

func TestValidateClaimPolicy(t *testing.T) {
	period := func(d time.Duration) *custodyv1alpha1.CoolingOffPolicy {
		return &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: d}}
	}
	for name, tc := range map[string]struct {
		p    *custodyv1alpha1.ClaimPolicy
		want string
	}{
		"none":               {nil, ""},
		"empty":              {&custodyv1alpha1.ClaimPolicy{}, ""},
		"in bounds":          {&custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: ptr.To[int32](20), CoolingOff: period(720 * time.Hour), RequiredProof: custodyv1alpha1.RequiredProofCode, SaleRecordProof: custodyv1alpha1.SaleRecordProofForbidden}, ""},
		"zero attempts":      {&custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: ptr.To[int32](0)}, "models.XR200.maxFailedAttempts must be between 1 and 20"},
		"21 attempts":        {&custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: ptr.To[int32](21)}, "models.XR200.maxFailedAttempts must be between 1 and 20"},
		"59s cooling-off":    {&custodyv1alpha1.ClaimPolicy{CoolingOff: period(59 * time.Second)}, "models.XR200.coolingOff.period must be between 1m and 720h"},
		"721h cooling-off":   {&custodyv1alpha1.ClaimPolicy{CoolingOff: period(721 * time.Hour)}, "models.XR200.coolingOff.period must be between 1m and 720h"},
		"misspelt proof":     {&custodyv1alpha1.ClaimPolicy{RequiredProof: "code"}, "models.XR200.requiredProof must be"},
		"misspelt immediate": {&custodyv1alpha1.ClaimPolicy{CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: time.Hour}, ImmediateProof: "Both"}}, "models.XR200.coolingOff.immediateProof must be"},
		"misspelt sale":      {&custodyv1alpha1.ClaimPolicy{SaleRecordProof: "Forbid"}, "models.XR200.saleRecordProof must be Allowed or Forbidden"},
	} {
		errs := ValidateClaimPolicy("models.XR200", tc.p)
		switch {
		case tc.want == "" && len(errs) != 0:
			t.Errorf("%s: %v", name, errs)
		case tc.want != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want)):
			t.Errorf("%s: %v, want one error saying %q", name, errs, tc.want)
		}
	}
}

// TestEffective: the one place policies combine. The manager's policy is
// defaulted, then the model's, the Tenant's and the Device's make it
// stricter, never looser, whichever says what.
func TestEffective(t *testing.T) {
	three, ten := int32(3), int32(10)
	withPolicy := func(p *custodyv1alpha1.ClaimPolicy) (*custodyv1alpha1.Tenant, *custodyv1alpha1.Device) {
		tn, d := tenant("acme"), device()
		tn.Spec.ClaimPolicy, d.Spec.ClaimPolicy = p, p
		return tn, d
	}
	strict := &custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: &three, RequiredProof: custodyv1alpha1.RequiredProofPossession,
		CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: time.Hour}}, SaleRecordProof: custodyv1alpha1.SaleRecordProofForbidden}
	loose := &custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: &ten, RequiredProof: custodyv1alpha1.RequiredProofCodeOrPossession, SaleRecordProof: custodyv1alpha1.SaleRecordProofAllowed}
	want := DefaultPolicy
	want.MaxFailedAttempts, want.RequiredProof, want.CoolingOff, want.ImmediateProof, want.SaleRecordForbidden =
		3, custodyv1alpha1.RequiredProofPossession, time.Hour, custodyv1alpha1.RequiredProofCodeAndPossession, true

	strictT, strictD := withPolicy(strict)
	looseT, looseD := withPolicy(loose)
	for name, got := range map[string]Policy{
		"from the model":      Effective(Policy{}, strict, looseT, looseD),
		"from the Tenant":     Effective(Policy{}, loose, strictT, looseD),
		"from the Device":     Effective(Policy{}, loose, looseT, strictD),
		"from all, no device": Effective(Policy{}, strict, strictT, nil),
		"no Tenant":           Effective(Policy{}, nil, nil, strictD),
	} {
		if got != want {
			t.Errorf("%s: %+v, want %+v", name, got, want)
		}
	}
	if got := Effective(Policy{}, loose, looseT, looseD); got != DefaultPolicy {
		t.Errorf("looser policies loosened the default: %+v", got)
	}
	base := DefaultPolicy
	base.MaxFailedAttempts = 2
	if got := Effective(base, strict, nil, nil); got.MaxFailedAttempts != 2 {
		t.Errorf("a stricter manager policy was loosened to %d", got.MaxFailedAttempts)
	}
}
