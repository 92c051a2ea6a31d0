// Package claim decides what a Claim's outcome is from what the manager has
// observed: the Claim, its Tenant, the Device it asks for, and the claim code
// the tenant supplied. It performs no I/O; the claim controller fetches the
// inputs and applies the Decision.
//
// Security rules this package owns:
//   - a wrong code and an unknown serial produce the same Decision;
//   - the code never appears in a Decision;
//   - a valid code on a device held by someone else is a dispute, never a win;
//   - failures are throttled per tenant and device name, whether or not the
//     device exists.
package claim

import (
	"errors"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
)

// Errors the controller reports for the claim-code Secret.
var (
	// ErrSecretNotFound: the Secret named by the Claim does not exist.
	ErrSecretNotFound = errors.New("claim-code Secret not found")
	// ErrSecretKeyMissing: the Secret has no such key.
	ErrSecretKeyMissing = errors.New("claim-code Secret has no such key")
)

// Action is what the controller must do besides writing the Claim's status.
type Action string

const (
	// ActionNone: write the Claim's status only.
	ActionNone Action = "None"
	// ActionRecordFailure: count a failed attempt on the Tenant (and the
	// Device if it exists) before writing the Claim's status.
	ActionRecordFailure Action = "RecordFailure"
	// ActionBind: bind the Device to the Claim and consume the code.
	ActionBind Action = "Bind"
	// ActionReattach: move the tenant's retained binding to this Claim.
	ActionReattach Action = "Reattach"
	// ActionFinishBind: the Device is bound to this Claim; make sure the
	// history, the code Secret and the Claim's status say so.
	ActionFinishBind Action = "FinishBind"
	// ActionReportDispute: record a competing valid claim on the Device.
	ActionReportDispute Action = "ReportDispute"
)

// Input is what the controller observed.
type Input struct {
	Claim *custodyv1alpha1.Claim
	// Tenant owning the Claim's namespace, nil if none does.
	Tenant *custodyv1alpha1.Tenant
	// TenantReady reports whether the Tenant is Ready and not being deleted.
	TenantReady bool
	// Device asked for, nil if it does not exist.
	Device *custodyv1alpha1.Device
	// BoundClaimExists reports whether the Claim that Device.spec.claimRef
	// names still exists (used when the device is bound to this tenant).
	BoundClaimExists bool
	// Code is the parsed claim code; CodeErr is set instead when the Secret
	// is missing or the code is malformed.
	Code    claimcode.Code
	CodeErr error
	Now     time.Time
	Policy  Policy
}

// Verifier checks a code against a verifier string. It is injected so that
// tests need not spend argon2id's cost; claimcode.Verify in production.
type Verifier interface {
	Verify(code claimcode.Code, verifier string) bool
	VerifyNothing(code claimcode.Code)
}

// Event is an Event to record on the Claim.
type Event struct {
	Type, Reason, Message string
}

// Decision is the outcome of Decide.
type Decision struct {
	Action  Action
	Phase   custodyv1alpha1.ClaimPhase
	Reason  string
	Message string
	// Ready is the status of the Claim's Ready condition.
	Ready bool
	// RetryAfter is set while the tenant is locked out.
	RetryAfter time.Time
	// Event, when set, is recorded on the Claim when its outcome (phase or
	// reason) changes; the controller does not repeat it otherwise.
	Event *Event
	// RequeueAfter asks for another look after this long.
	RequeueAfter time.Duration
	// Proof is what proved ownership (ProofCode, ProofPossession or
	// ProofCodeAndPossession) when the Claim binds or disputes.
	Proof string
	// ConsumeCode: the claim code bound the device and is used up.
	ConsumeCode bool
	// IssuePairing: give the Claim a pairing code to enter into the device.
	IssuePairing bool
}

// Messages shown to tenant users. They never name the device's state unless
// the tenant has proven the code, and never echo the code.
const (
	MsgNotVerified        = "No claimable device matches this serial number, model and claim code. Check all three against the device label and documentation pack, then create a new Claim."
	MsgThrottled          = "Too many failed claim attempts for this serial number from this tenant. The claim is verified automatically after status.retryAfter."
	MsgSecretNotFound     = "The Secret named in spec.claimCode.secretRef does not exist in this namespace. Create it with the claim code; the claim proceeds when it appears."
	MsgSecretKeyMissing   = "The Secret named in spec.claimCode.secretRef has no such key. Put the claim code under spec.claimCode.secretRef.key; the claim proceeds when the Secret changes."
	MsgMalformed          = "The claim code in the Secret is not well-formed: it has 20 letters and digits in five groups of four. Check it for a typo and update the Secret; this did not count as a failed attempt."
	MsgBound              = "The device is bound to this Claim."
	MsgCodeUsed           = "The claim code is right but has already been used to claim this device. Ask the seller for a new claim code."
	MsgHeldByOther        = "The claim code is right but the device is held by another tenant. Support staff have been notified of the dispute."
	MsgAlreadyYours       = "Another Claim of this tenant already holds this device. This Claim is redundant and can be deleted."
	MsgTenantNotReady     = "This namespace does not belong to a ready Tenant. The claim proceeds when the Tenant is ready."
	MsgDeviceReleased     = "The device is no longer bound to this Claim (it was released, transferred or decommissioned)."
	MsgVerifying          = "The claim is being verified."
	MsgAwaitingDevice     = "Enter the pairing code from status.pairing.code into the device (custody-device pair); the claim proceeds when the device proves possession through the gateway, until status.pairing.expiresAt."
	MsgTenantLimitReached = "Too many failed claim attempts from this tenant. The claim is verified automatically after status.retryAfter."
)

// Decide returns the Decision for a Claim that is not being deleted.
func Decide(in Input, v Verifier) Decision {
	c := in.Claim
	d := in.Device
	boundHere := d != nil && d.Spec.ClaimRef != nil && d.Spec.ClaimRef.UID == c.UID

	// A bound Claim only needs to notice when it stops being bound.
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseBound || c.Status.Phase == custodyv1alpha1.ClaimPhaseLost {
		if boundHere {
			return bound(ActionFinishBind)
		}
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseLost, Reason: custodyv1alpha1.ClaimReasonDeviceReleased, Message: MsgDeviceReleased,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased}}
	}
	// Denied and Disputed are final: a new attempt is a new Claim.
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseDenied || c.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed {
		return Decision{Action: ActionNone, Phase: c.Status.Phase, Reason: readyReason(c), Message: readyMessage(c)}
	}
	// The device was bound to this Claim by an earlier reconcile that did
	// not finish (crash, conflict): finish it, whatever else changed.
	if boundHere {
		return bound(ActionFinishBind)
	}
	if in.Tenant == nil || !in.TenantReady {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonTenantNotReady, Message: MsgTenantNotReady}
	}
	tenant := in.Tenant
	name := c.DeviceName()

	// The tenant already holds the device through another Claim.
	if d != nil && d.Spec.ClaimRef != nil && d.Spec.ClaimRef.Tenant == tenant.Name && d.Spec.ClaimRef.Namespace == c.Namespace {
		if in.BoundClaimExists {
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonAlreadyBoundToTenant, Message: MsgAlreadyYours,
				Event: &Event{"Normal", custodyv1alpha1.ClaimReasonAlreadyBoundToTenant, MsgAlreadyYours}}
		}
		return bound(ActionReattach)
	}

	// An attempt already counted as failed is denied without another try.
	if Counted(&tenant.Status, name, c.UID) {
		return notVerified(ActionNone)
	}
	if until := LockedUntil(&tenant.Status, name, in.Now); !until.IsZero() {
		return throttled(until, in.Now, MsgThrottled)
	}
	if full, until := Full(&tenant.Status, name, in.Now); full {
		return throttled(until, in.Now, MsgTenantLimitReached)
	}

	// The claim code, when offered, is verified first: a wrong code is a
	// failed attempt whatever else the Claim offers.
	codeOK := false
	if c.Spec.ClaimCode != nil {
		switch {
		case errors.Is(in.CodeErr, ErrSecretNotFound):
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonSecretNotFound, Message: MsgSecretNotFound}
		case errors.Is(in.CodeErr, ErrSecretKeyMissing):
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonSecretNotFound, Message: MsgSecretKeyMissing}
		case in.CodeErr != nil:
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonClaimCodeMalformed, Message: MsgMalformed,
				Event: &Event{"Warning", custodyv1alpha1.ClaimReasonClaimCodeMalformed, MsgMalformed}}
		}
		// Every path spends one argon2id computation, so that an unknown
		// serial answers like a wrong code.
		if d == nil || d.Spec.ClaimCode == nil || d.Spec.Decommissioned {
			v.VerifyNothing(in.Code)
			return notVerified(ActionRecordFailure)
		}
		if !v.Verify(in.Code, d.Spec.ClaimCode.Verifier) {
			return notVerified(ActionRecordFailure)
		}
		codeOK = true
	}
	// Possession is proven when the device signed this Claim's pairing code
	// (the enrollment controller checked the signature and the code).
	possessionOK := c.Spec.Possession != nil && c.Status.Pairing != nil && c.Status.Pairing.ConfirmedAt != nil &&
		d != nil && !d.Spec.Decommissioned

	need := in.Policy.RequiredProof
	satisfied := (codeOK || possessionOK) && (!NeedsCode(need) || codeOK) && (!NeedsPossession(need) || possessionOK)
	if !satisfied {
		if c.Spec.Possession != nil && !possessionOK {
			return awaitDevice(c, in.Now)
		}
		msg := MsgProofRequired(need)
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonProofRequired, Message: msg,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonProofRequired, msg}}
	}

	proof := ProofCode
	switch {
	case codeOK && possessionOK:
		proof = ProofCodeAndPossession
	case possessionOK:
		proof = ProofPossession
	}
	// Ownership is proven.
	if d.Spec.ClaimRef != nil {
		return Decision{Action: ActionReportDispute, Phase: custodyv1alpha1.ClaimPhaseDisputed, Reason: custodyv1alpha1.ClaimReasonHeldByAnotherTenant, Message: MsgHeldByOther,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonHeldByAnotherTenant, MsgHeldByOther}, Proof: proof}
	}
	if codeOK && !possessionOK && Consumed(d, d.Spec.ClaimCode.Verifier) {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonClaimCodeUsed, Message: MsgCodeUsed,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonClaimCodeUsed, MsgCodeUsed}}
	}
	b := bound(ActionBind)
	b.Proof, b.ConsumeCode = proof, codeOK
	return b
}

// Proofs recorded in the custody history.
const (
	ProofCode              = "ClaimCode"
	ProofPossession        = "Possession"
	ProofCodeAndPossession = "ClaimCode+Possession"
)

// awaitDevice waits for the device to prove possession with the Claim's
// pairing code, until the code expires. An expired wait is answered like a
// wrong code, so that waiting on an unknown serial number tells nothing.
func awaitDevice(c *custodyv1alpha1.Claim, now time.Time) Decision {
	pr := c.Status.Pairing
	if pr != nil && !now.Before(pr.ExpiresAt.Time) {
		return notVerified(ActionNone)
	}
	d := Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseAwaitingDevice, Reason: custodyv1alpha1.ClaimReasonAwaitingDevice, Message: MsgAwaitingDevice,
		Event: &Event{"Normal", custodyv1alpha1.ClaimReasonAwaitingDevice, MsgAwaitingDevice}}
	if pr == nil {
		d.IssuePairing = true
	} else {
		d.RequeueAfter = pr.ExpiresAt.Sub(now)
	}
	return d
}

// MsgProofRequired tells a claimant who proved ownership one way which
// proofs the device's policy wants.
func MsgProofRequired(need custodyv1alpha1.RequiredProof) string {
	switch need {
	case custodyv1alpha1.RequiredProofCode:
		return "The device's claim policy requires the claim code. Create a new Claim with spec.claimCode."
	case custodyv1alpha1.RequiredProofPossession:
		return "The device's claim policy requires a possession proof. Create a new Claim with spec.possession and pair the device."
	}
	return "The device's claim policy requires both the claim code and a possession proof. Create a new Claim with spec.claimCode and spec.possession."
}

// Consumed reports whether verifier's code has already bound the device.
func Consumed(d *custodyv1alpha1.Device, verifier string) bool {
	digest := claimcode.Digest(verifier)
	for _, c := range d.Spec.ConsumedClaimCodes {
		if c == digest {
			return true
		}
	}
	return false
}

func bound(a Action) Decision {
	return Decision{Action: a, Phase: custodyv1alpha1.ClaimPhaseBound, Reason: custodyv1alpha1.ClaimReasonBound, Message: MsgBound, Ready: true,
		Event: &Event{"Normal", custodyv1alpha1.ClaimReasonBound, MsgBound}}
}

func notVerified(a Action) Decision {
	return Decision{Action: a, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonNotVerified, Message: MsgNotVerified,
		Event: &Event{"Warning", custodyv1alpha1.ClaimReasonNotVerified, MsgNotVerified}}
}

func throttled(until, now time.Time, msg string) Decision {
	return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonThrottled, Message: msg,
		RetryAfter: until, RequeueAfter: until.Sub(now)}
}

func readyReason(c *custodyv1alpha1.Claim) string {
	for _, cond := range c.Status.Conditions {
		if cond.Type == custodyv1alpha1.ConditionReady {
			return cond.Reason
		}
	}
	return ""
}

func readyMessage(c *custodyv1alpha1.Claim) string {
	for _, cond := range c.Status.Conditions {
		if cond.Type == custodyv1alpha1.ConditionReady {
			return cond.Message
		}
	}
	return ""
}
