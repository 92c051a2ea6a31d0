package claim

import (
	"errors"
	"fmt"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// Policy is the claim policy one claim is decided under.
//
// This file is the only place where a claim policy is defaulted
// (Defaulted), checked against the API's bounds (Validate,
// ValidateClaimPolicy) and combined (Tighten, Effective). The manager's
// base policy is DefaultPolicy with its flags applied, made stricter by its
// --config file; Effective makes that stricter again with the device
// model's, the Tenant's and the Device's ClaimPolicy for each claim.
type Policy struct {
	// MaxFailedAttempts a tenant may make on one device name before the
	// first lockout.
	MaxFailedAttempts int32
	// LockoutBase is the first lockout; each further failure doubles it.
	LockoutBase time.Duration
	// LockoutMax caps a lockout.
	LockoutMax time.Duration
	// Forget is how long after its last failure an unlocked entry is dropped.
	Forget time.Duration
	// RequiredProof is which proofs a claim must offer; empty means
	// CodeOrPossession.
	RequiredProof custodyv1alpha1.RequiredProof
	// CoolingOff is how long a claim proven with less than ImmediateProof
	// waits before it binds; zero binds at once.
	CoolingOff time.Duration
	// ImmediateProof is the proof with which a claim binds at once when
	// CoolingOff is set (CodeAndPossession when empty).
	ImmediateProof custodyv1alpha1.RequiredProof
	// SaleRecordForbidden: sale records prove nothing.
	SaleRecordForbidden bool
}

// DefaultPolicy is the built-in claim policy: 5 failed attempts, then a
// lockout of 5 minutes doubling up to 24 hours, failures forgotten after a
// day, the claim code or a possession proof, no cooling-off, sale records
// allowed. It is what the API's field comments call "the manager's
// default". Copy it; never assign to it.
var DefaultPolicy = Policy{MaxFailedAttempts: 5, LockoutBase: 5 * time.Minute, LockoutMax: 24 * time.Hour, Forget: 24 * time.Hour,
	RequiredProof: custodyv1alpha1.RequiredProofCodeOrPossession}

// Defaulted returns p with every unset (zero) field set to DefaultPolicy's,
// and ImmediateProof set to CodeAndPossession when a cooling-off period is
// set without one. Zero CoolingOff and false SaleRecordForbidden are values,
// not unset: no cooling-off, sale records allowed.
func (p Policy) Defaulted() Policy {
	if p.MaxFailedAttempts == 0 {
		p.MaxFailedAttempts = DefaultPolicy.MaxFailedAttempts
	}
	if p.LockoutBase == 0 {
		p.LockoutBase = DefaultPolicy.LockoutBase
	}
	if p.LockoutMax == 0 {
		p.LockoutMax = DefaultPolicy.LockoutMax
	}
	if p.Forget == 0 {
		p.Forget = DefaultPolicy.Forget
	}
	if p.RequiredProof == "" {
		p.RequiredProof = DefaultPolicy.RequiredProof
	}
	if p.CoolingOff > 0 && p.ImmediateProof == "" {
		p.ImmediateProof = custodyv1alpha1.RequiredProofCodeAndPossession
	}
	return p
}

// Validate reports what in p is outside the bounds the API sets for a
// ClaimPolicy (api/v1alpha1: MaxFailedAttemptsLowest..Highest,
// CoolingOffPeriodShortest..Longest), or makes no sense as a lockout. The
// manager checks its own base policy (flags, --config) with it, so that it
// holds itself to the bounds Tenants and Devices are held to.
func (p Policy) Validate() error {
	var errs []error
	if p.MaxFailedAttempts < custodyv1alpha1.MaxFailedAttemptsLowest || p.MaxFailedAttempts > custodyv1alpha1.MaxFailedAttemptsHighest {
		errs = append(errs, errAttempts("maxFailedAttempts"))
	}
	if p.LockoutBase <= 0 || p.LockoutBase > p.LockoutMax {
		errs = append(errs, fmt.Errorf("the first lockout must be positive and at most %s", short(p.LockoutMax)))
	}
	if p.Forget <= 0 {
		errs = append(errs, errors.New("failures must be forgotten after a positive time"))
	}
	if p.CoolingOff != 0 && (p.CoolingOff < custodyv1alpha1.CoolingOffPeriodShortest || p.CoolingOff > custodyv1alpha1.CoolingOffPeriodLongest) {
		errs = append(errs, errPeriod("coolingOff.period"))
	}
	for name, r := range map[string]custodyv1alpha1.RequiredProof{"requiredProof": p.RequiredProof, "coolingOff.immediateProof": p.ImmediateProof} {
		if r != "" && !validProof(r) {
			errs = append(errs, errProof(name))
		}
	}
	return errors.Join(errs...)
}

// ValidateClaimPolicy reports what in a ClaimPolicy that did not pass the
// API server (the manager's --config file) is outside the bounds the CRD
// sets; where names it in the messages (for example "models.XR200").
func ValidateClaimPolicy(where string, p *custodyv1alpha1.ClaimPolicy) []error {
	if p == nil {
		return nil
	}
	var errs []error
	if n := p.MaxFailedAttempts; n != nil && (*n < custodyv1alpha1.MaxFailedAttemptsLowest || *n > custodyv1alpha1.MaxFailedAttemptsHighest) {
		errs = append(errs, errAttempts(where+".maxFailedAttempts"))
	}
	if p.RequiredProof != "" && !validProof(p.RequiredProof) {
		errs = append(errs, errProof(where+".requiredProof"))
	}
	if co := p.CoolingOff; co != nil {
		if co.Period.Duration < custodyv1alpha1.CoolingOffPeriodShortest || co.Period.Duration > custodyv1alpha1.CoolingOffPeriodLongest {
			errs = append(errs, errPeriod(where+".coolingOff.period"))
		}
		if co.ImmediateProof != "" && !validProof(co.ImmediateProof) {
			errs = append(errs, errProof(where+".coolingOff.immediateProof"))
		}
	}
	switch p.SaleRecordProof {
	case "", custodyv1alpha1.SaleRecordProofAllowed, custodyv1alpha1.SaleRecordProofForbidden:
	default:
		errs = append(errs, fmt.Errorf("%s.saleRecordProof must be %s or %s", where, custodyv1alpha1.SaleRecordProofAllowed, custodyv1alpha1.SaleRecordProofForbidden))
	}
	return errs
}

func errAttempts(field string) error {
	return fmt.Errorf("%s must be between %d and %d", field, custodyv1alpha1.MaxFailedAttemptsLowest, custodyv1alpha1.MaxFailedAttemptsHighest)
}

func errPeriod(field string) error {
	return fmt.Errorf("%s must be between %s and %s", field, short(custodyv1alpha1.CoolingOffPeriodShortest), short(custodyv1alpha1.CoolingOffPeriodLongest))
}

func errProof(field string) error {
	return fmt.Errorf("%s must be %s, %s, %s or %s", field, custodyv1alpha1.RequiredProofCodeOrPossession, custodyv1alpha1.RequiredProofCode,
		custodyv1alpha1.RequiredProofPossession, custodyv1alpha1.RequiredProofCodeAndPossession)
}

func validProof(r custodyv1alpha1.RequiredProof) bool {
	switch r {
	case custodyv1alpha1.RequiredProofCodeOrPossession, custodyv1alpha1.RequiredProofCode, custodyv1alpha1.RequiredProofPossession, custodyv1alpha1.RequiredProofCodeAndPossession:
		return true
	}
	return false
}

// short spells a duration as the API's messages do: 1m, 720h.
func short(d time.Duration) string {
	switch {
	case d > 0 && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d > 0 && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// Effective is the policy a claim on a device of a model is decided under:
// the manager's base policy, defaulted, made stricter by the model's policy
// (from the manager's --config) and by the ClaimPolicy of the Tenant and
// of the Device (each may be nil). The claim decision, the direct-sale
// decision and every other caller get their policy here.
func Effective(base Policy, model *custodyv1alpha1.ClaimPolicy, t *custodyv1alpha1.Tenant, d *custodyv1alpha1.Device) Policy {
	policies := []*custodyv1alpha1.ClaimPolicy{model}
	if t != nil {
		policies = append(policies, t.Spec.ClaimPolicy)
	}
	if d != nil {
		policies = append(policies, d.Spec.ClaimPolicy)
	}
	return base.Defaulted().Tighten(policies...)
}

// Tighten returns p made stricter by the given policies (nil ones are
// ignored): a policy can lower MaxFailedAttempts, never raise it; require
// more proofs, never fewer; lengthen the cooling-off and strengthen its
// immediate proof, never the reverse; and forbid sale-record proofs, never
// allow them again. The result does not depend on the order of policies.
func (p Policy) Tighten(policies ...*custodyv1alpha1.ClaimPolicy) Policy {
	for _, o := range policies {
		if o == nil {
			continue
		}
		if o.MaxFailedAttempts != nil && *o.MaxFailedAttempts < p.MaxFailedAttempts {
			p.MaxFailedAttempts = *o.MaxFailedAttempts
		}
		p.RequiredProof = StricterProof(p.RequiredProof, o.RequiredProof)
		if co := o.CoolingOff; co != nil {
			p.CoolingOff = max(p.CoolingOff, co.Period.Duration)
			immediate := co.ImmediateProof
			if immediate == "" {
				immediate = custodyv1alpha1.RequiredProofCodeAndPossession
			}
			p.ImmediateProof = StricterProof(p.ImmediateProof, immediate)
		}
		if o.SaleRecordProof == custodyv1alpha1.SaleRecordProofForbidden {
			p.SaleRecordForbidden = true
		}
	}
	if p.CoolingOff > 0 && p.ImmediateProof == "" {
		p.ImmediateProof = custodyv1alpha1.RequiredProofCodeAndPossession
	}
	return p
}

// StricterProof combines two proof requirements into the strictest one.
func StricterProof(a, b custodyv1alpha1.RequiredProof) custodyv1alpha1.RequiredProof {
	code := NeedsCode(a) || NeedsCode(b)
	possession := NeedsPossession(a) || NeedsPossession(b)
	switch {
	case code && possession:
		return custodyv1alpha1.RequiredProofCodeAndPossession
	case code:
		return custodyv1alpha1.RequiredProofCode
	case possession:
		return custodyv1alpha1.RequiredProofPossession
	}
	return custodyv1alpha1.RequiredProofCodeOrPossession
}

// NeedsCode reports whether r requires the claim code.
func NeedsCode(r custodyv1alpha1.RequiredProof) bool {
	return r == custodyv1alpha1.RequiredProofCode || r == custodyv1alpha1.RequiredProofCodeAndPossession
}

// NeedsPossession reports whether r requires a possession proof.
func NeedsPossession(r custodyv1alpha1.RequiredProof) bool {
	return r == custodyv1alpha1.RequiredProofPossession || r == custodyv1alpha1.RequiredProofCodeAndPossession
}

// Lockout is how long a tenant is locked out after its failures-th failure.
func (p Policy) Lockout(failures int32) time.Duration {
	if failures < p.MaxFailedAttempts {
		return 0
	}
	d := p.LockoutBase
	for i := p.MaxFailedAttempts; i < failures && d < p.LockoutMax; i++ {
		d *= 2
	}
	return min(d, p.LockoutMax)
}
