// Package claim decides what a Claim's outcome is from what the manager has
// observed: the Claim, its Tenant, the Device it asks for, and the claim code
// the tenant supplied. It performs no I/O; the claim controller fetches the
// inputs and applies the Decision.
//
// Every claim decision lives here: Decide (the outcome, the dispute cap, the
// pairing code's issue, keep or drop), DirectSaleTenant and DirectSaleClaim
// (the Claim the manager opens for a direct sale), UseToken (whether a
// device claims itself with a pairing token), Reserve and Unreserve (the
// failed-attempt throttle), and the claim policy (policy.go: one Policy,
// defaulted, bounded by the API and combined in one place).
//
// Security rules this package owns:
//   - a wrong code and an unknown serial produce the same Decision;
//   - the code never appears in a Decision;
//   - a valid code on a device held by someone else is a dispute, never a win;
//   - failures are throttled per tenant and device name, whether or not the
//     device exists.
package claim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

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
	// ActionReserve: count the attempt on the Tenant (claim.Reserve, with
	// the Tenant's resourceVersion) before any code is verified, then decide
	// again with Input.Reserved set. Never written as the Claim's status.
	ActionReserve Action = "Reserve"
	// ActionRecordFailure: the code was verified and failed. The attempt is
	// already counted on the Tenant (its reservation stands); count it on
	// the Device, if it exists, for support staff.
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
	// ActionTransfer: move the Device's binding from the offering Claim to
	// this one, in one write.
	ActionTransfer Action = "Transfer"
	// ActionStartCoolingOff: record this Claim as the Device's pending claim.
	ActionStartCoolingOff Action = "StartCoolingOff"
	// ActionDispute: add this Claim (and the pending one) to the Device's
	// dispute.
	ActionDispute Action = "Dispute"
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
	// Offer is the Transfer that spec.transfer accepts: in the offering
	// tenant's namespace, naming this tenant as recipient and this device,
	// Offered and unexpired. Nil if there is none.
	Offer *custodyv1alpha1.Transfer
	// OfferingNamespace is the namespace of the Tenant spec.transfer names.
	OfferingNamespace string
	// Reserved: this reconcile has just counted the Claim's attempt on the
	// Tenant (ActionReserve) and Tenant holds the status it wrote. Only
	// then is a code verified.
	Reserved bool
	// PairingTTL is how long a pairing code issued now is accepted
	// (DefaultPairingTTL when zero).
	PairingTTL time.Duration
}

// DefaultPairingTTL is how long a Claim's pairing code is accepted unless
// the manager is configured otherwise.
const DefaultPairingTTL = 24 * time.Hour

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
	// IssuePairing: give the Claim a new pairing code to enter into the
	// device (the controller draws it at random). Set only when the Claim
	// has none.
	IssuePairing bool
	// PairingExpiresAt is when the pairing code IssuePairing asks for
	// expires.
	PairingExpiresAt time.Time
	// DropPairing: the Claim is decided (neither awaiting its device nor
	// pending), so its pairing code has done its work or expired; remove
	// it. Neither this nor IssuePairing: keep the Claim's pairing as it is.
	DropPairing bool
	// ConsumeSale: the sale record bound the device and is used up.
	ConsumeSale bool
	// CoolingOffUntil is when the Claim's cooling-off ends.
	CoolingOffUntil time.Time
	// CodeProven: the claim code was verified and proves ownership, so the
	// attempt reserved for it is not a failure (claim.Unreserve).
	CodeProven bool
}

// Messages shown to tenant users. They never name the device's state unless
// the tenant has proven the code, and never echo the code.
const (
	MsgNotVerified        = "No claimable device matches this serial number, model and claim code. Check all three against the device label and documentation pack, then create a new Claim."
	MsgThrottled          = "Too many failed claim attempts for this serial number from this tenant. The claim is verified automatically after status.retryAfter."
	MsgSecretNotFound     = "The Secret named in spec.claimCode.secretRef does not exist in this namespace. Create it with the claim code; the claim proceeds when it appears."
	MsgSecretKeyMissing   = "The Secret named in spec.claimCode.secretRef has no such key. Put the claim code under spec.claimCode.secretRef.key; the claim proceeds when the Secret changes."
	MsgMalformed          = "The value in the Secret does not have the form of a claim code, which is exactly 20 letters and digits (never U), printed on the label in five groups of four; dashes and spaces between them do not matter, any other character does. Copy the whole code from the label into the Secret again; this did not count as a failed attempt."
	MsgCheckCharacter     = "The claim code in the Secret has the right form, but its last character, a check character computed from the other 19, does not match them: at least one character was mistyped, or two were swapped. Compare the code with the label character by character and update the Secret; this did not count as a failed attempt."
	MsgBound              = "The device is bound to this Claim."
	MsgCodeUsed           = "The claim code is right but has already been used to claim this device. Ask the seller for a new claim code."
	MsgHeldByOther        = "The claim code is right, but the device is already bound to another tenant and that binding stands. This Claim is recorded as a competing claim (an Event on the Device); support staff can investigate and award the device to it."
	MsgSaleHeldByOther    = "The sale record names this tenant, but the device is already bound to, cooling off for, or disputed by another claim, and that stands. This Claim is recorded as a competing claim (an Event on the Device); support staff can investigate and award the device to it."
	MsgDisputeFull        = "Ownership was proven, but when this Claim was decided the device's dispute already held the most competing claims it can (8), so this Claim was not added to it and will not be considered, however the dispute ends. Ask support staff about the device; if it is still unclaimed after the dispute, create a new Claim."
	MsgAlreadyYours       = "Another Claim of this tenant already holds this device. This Claim is redundant and can be deleted."
	MsgTenantNotReady     = "This namespace does not belong to a ready Tenant. The claim proceeds when the Tenant is ready."
	MsgDeviceReleased     = "The device is no longer bound to this Claim (it was released, transferred or decommissioned)."
	MsgReleasedBy         = "The device was released for claiming by Transfer %s and is no longer bound to this Claim; its certificates are refused. This Claim can be deleted."
	MsgReleasedTenant     = "The device was released when its Tenant was deleted and is no longer bound to this Claim."
	MsgTransferred        = "The device was transferred to tenant %s (Transfer %s) and is no longer bound to this Claim; its certificates are refused. This Claim can be deleted."
	MsgDecommissioned     = "The device was decommissioned (taken out of service) and is no longer bound to this Claim; its certificates are refused. This Claim can be deleted."
	MsgResolvedAway       = "Support staff awarded the device to another claim or reset it, and it is no longer bound to this Claim. This Claim can be deleted."
	MsgVerifying          = "The claim is being verified."
	MsgAttemptSpent       = "This claim attempt was counted against this tenant's failed attempts and cannot be verified again (its verification failed, or the manager stopped before it verified the code or could record that the code was right). Create a new Claim to try again."
	MsgAwaitingDevice     = "Enter the pairing code from status.pairing.code into the device (custody-device pair); the claim proceeds when the device proves possession through the gateway, until status.pairing.expiresAt."
	MsgTenantLimitReached = "Too many failed claim attempts from this tenant. The claim is verified automatically after status.retryAfter."
	MsgCoolingOff         = "Ownership is proven with fewer proofs than the device's claim policy wants for an immediate binding. The claim binds at status.coolingOffUntil unless another claim competes; the seller has been told."
	MsgDisputed           = "Another valid claim competes for this device. No certificate is issued until support staff resolve the dispute."
	MsgDisputeLost        = "Support staff resolved the claims on this device in favour of another claim, or reset it."
	MsgNoTransferOffer    = "No transfer of this device to this tenant is on offer from spec.transfer.fromTenant. The holder creates a Transfer naming this tenant; the claim proceeds when it does."
	MsgSaleRecordNotValid = "No unused sale record for this serial number and model names this tenant, or the claim policy forbids sale-record proofs."
)

// Decide returns the Decision for a Claim that is not being deleted.
func Decide(in Input, v Verifier) Decision {
	d := decide(in, v)
	pairing(&d, in)
	return d
}

// pairing completes d with what becomes of the Claim's pairing code: a new
// one is issued (awaitDevice asks for it) with its expiry, an existing one
// is kept while the Claim awaits its device or is pending, and dropped once
// it is decided.
func pairing(d *Decision, in Input) {
	if d.IssuePairing {
		ttl := in.PairingTTL
		if ttl <= 0 {
			ttl = DefaultPairingTTL
		}
		d.PairingExpiresAt = in.Now.Add(ttl)
		d.RequeueAfter = ttl // another look when it expires
		return
	}
	d.DropPairing = in.Claim.Status.Pairing != nil &&
		d.Phase != custodyv1alpha1.ClaimPhaseAwaitingDevice && d.Phase != custodyv1alpha1.ClaimPhasePending
}

// lost says how the binding of Claim c ended, from the custody history of
// its device d: the first change after the binding began (the newest
// entry that bound the device to c) that ended it. A release, a
// decommissioning or a reset names c; a transfer or an award names the
// Claim that took the device. Without such an entry (no Device, or a
// history that no longer holds it) it says only that the binding ended.
func lost(c *custodyv1alpha1.Claim, d *custodyv1alpha1.Device) (string, string) {
	if d == nil {
		return custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased
	}
	records := d.Status.History
	if d.Spec.Custody != nil && (len(records) == 0 || records[len(records)-1].Sequence < d.Spec.Custody.Head.Sequence) {
		records = append(slices.Clip(records), d.Spec.Custody.Head) // the change not yet copied to status
	}
	mine := func(r custodyv1alpha1.CustodyRecord) bool { return r.ClaimUID == c.UID }
	began := -1
	for i, r := range records {
		switch r.Type {
		case custodyv1alpha1.CustodyEventBound, custodyv1alpha1.CustodyEventTransferred, custodyv1alpha1.CustodyEventReattached:
			if mine(r) {
				began = i
			}
		case custodyv1alpha1.CustodyEventResolved:
			if mine(r) && r.Proof == custodyProofAward {
				began = i
			}
		}
	}
	for _, r := range records[began+1:] {
		switch {
		case r.Type == custodyv1alpha1.CustodyEventTransferred && !mine(r) && began >= 0:
			return custodyv1alpha1.ClaimReasonDeviceTransferred, fmt.Sprintf(MsgTransferred, r.Tenant, r.Reference)
		case r.Type == custodyv1alpha1.CustodyEventResolved && (mine(r) || began >= 0):
			return custodyv1alpha1.ClaimReasonDisputeLost, MsgResolvedAway
		case r.Type == custodyv1alpha1.CustodyEventDecommissioned && mine(r):
			return custodyv1alpha1.ClaimReasonDeviceDecommissioned, MsgDecommissioned
		case r.Type == custodyv1alpha1.CustodyEventReleased && mine(r):
			switch r.Proof {
			case "Transfer":
				return custodyv1alpha1.ClaimReasonDeviceReleased, fmt.Sprintf(MsgReleasedBy, r.Reference)
			case "TenantDeleted":
				return custodyv1alpha1.ClaimReasonDeviceReleased, MsgReleasedTenant
			}
			return custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased
		}
	}
	return custodyv1alpha1.ClaimReasonDeviceReleased, MsgDeviceReleased
}

// custodyProofAward is the proof of a history entry in which support staff
// awarded the device (internal/custody ProofAward).
const custodyProofAward = "Award"

func decide(in Input, v Verifier) Decision {
	c := in.Claim
	d := in.Device
	boundHere := d != nil && d.Spec.ClaimRef != nil && d.Spec.ClaimRef.UID == c.UID

	// The device is bound to this Claim: by this or an earlier reconcile
	// that did not finish (crash, conflict), by a transfer, or by support
	// staff. Finish it, whatever else changed.
	if boundHere {
		return bound(ActionFinishBind)
	}
	// A bound Claim only needs to notice when it stops being bound, and
	// why; once Lost, what it said stays (the device's history moves on).
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseLost && readyReason(c) != "" {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseLost, Reason: readyReason(c), Message: readyMessage(c)}
	}
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseBound || c.Status.Phase == custodyv1alpha1.ClaimPhaseLost {
		reason, msg := lost(c, d)
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseLost, Reason: reason, Message: msg,
			Event: &Event{"Warning", reason, msg}}
	}
	if InDispute(d, c.UID) {
		return disputed(ActionNone)
	}
	// A Claim that was in a dispute or cooling off, and no longer is,
	// lost it to support staff's decision.
	if (c.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed && readyReason(c) == custodyv1alpha1.ClaimReasonDisputed) ||
		(c.Status.Phase == custodyv1alpha1.ClaimPhaseCoolingOff && !pendingHere(d, c.UID)) {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonDisputeLost, Message: MsgDisputeLost,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonDisputeLost, MsgDisputeLost}}
	}
	// Denied and Disputed are final: a new attempt is a new Claim.
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseDenied || c.Status.Phase == custodyv1alpha1.ClaimPhaseDisputed {
		return Decision{Action: ActionNone, Phase: c.Status.Phase, Reason: readyReason(c), Message: readyMessage(c)}
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

	// Proofs that are not secrets guessed by the claimant: not throttled.
	if c.Spec.Transfer != nil {
		return decideTransfer(in)
	}
	if c.Spec.SaleRecord != nil {
		return decideSaleRecord(in)
	}

	// A code an earlier reconcile proved right (status.codeVerified, written
	// when the attempt it counted could not be taken back at once) is not
	// verified again, counted again or throttled: it is right.
	proven := CodeVerifiedHolds(c, d, tenant.Name)
	if !in.Reserved && !proven {
		// An attempt counted by an earlier reconcile is never verified
		// again: it was verified and failed, or the manager stopped between
		// counting and verifying. Either way it is spent.
		if Counted(&tenant.Status, name, c.UID) {
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonNotVerified, Message: MsgAttemptSpent,
				Event: &Event{"Warning", custodyv1alpha1.ClaimReasonNotVerified, MsgAttemptSpent}}
		}
		if until := LockedUntil(&tenant.Status, name, in.Now); !until.IsZero() {
			return throttled(until, in.Now, MsgThrottled)
		}
		if full, until := Full(&tenant.Status, name, in.Now); full {
			return throttled(until, in.Now, MsgTenantLimitReached)
		}
	}

	// The claim code, when offered, is verified first: a wrong code is a
	// failed attempt whatever else the Claim offers.
	codeOK := false
	if c.Spec.ClaimCode != nil && proven {
		codeOK = true
	} else if c.Spec.ClaimCode != nil {
		switch {
		case errors.Is(in.CodeErr, ErrSecretNotFound):
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonSecretNotFound, Message: MsgSecretNotFound}
		case errors.Is(in.CodeErr, ErrSecretKeyMissing):
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonSecretNotFound, Message: MsgSecretKeyMissing}
		case in.CodeErr != nil:
			// Told from the code alone, never from the Device: which kind
			// of typo it is says nothing about the serial number.
			msg := MsgMalformed
			if errors.Is(in.CodeErr, claimcode.ErrCheckSymbol) {
				msg = MsgCheckCharacter
			}
			return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonClaimCodeMalformed, Message: msg,
				Event: &Event{"Warning", custodyv1alpha1.ClaimReasonClaimCodeMalformed, msg}}
		}
		// The attempt is counted before the code is verified, for an
		// unknown serial as for a known one.
		if !in.Reserved {
			return Decision{Action: ActionReserve, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonVerifying, Message: MsgVerifying}
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
		// A device in another tenant's custody answers like a wrong code:
		// a code photographed in the custodian's warehouse is worthless.
		if HeldUnderSale(d, tenant.Name) {
			return notVerified(ActionRecordFailure)
		}
		codeOK = true
	}
	dec := decideProven(in, codeOK)
	dec.CodeProven = codeOK
	return dec
}

// CodeVerifiedDigest is what ClaimCodeVerification.verifier holds for
// Claim uid and Device d: the SHA-256 of the Claim's UID, the Device's UID
// and its claim-code verifier, hex. A record is good for one Claim and one
// code of one Device.
func CodeVerifiedDigest(uid types.UID, d *custodyv1alpha1.Device) string {
	h := sha256.New()
	h.Write([]byte(uid))
	h.Write([]byte{0})
	h.Write([]byte(d.UID))
	h.Write([]byte{0})
	if d.Spec.ClaimCode != nil {
		h.Write([]byte(d.Spec.ClaimCode.Verifier))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// CodeVerifiedHolds reports whether Claim c's status.codeVerified still
// proves its code right for Device d and tenant: it was written for this
// Claim and for d with the claim code the code was verified against, and d
// is neither decommissioned nor in another tenant's custody (where a right
// code answers like a wrong one). Only the manager writes the record (the
// Claim webhook refuses it from anyone else).
func CodeVerifiedHolds(c *custodyv1alpha1.Claim, d *custodyv1alpha1.Device, tenant string) bool {
	p := c.Status.CodeVerified
	if p == nil || c.Spec.ClaimCode == nil || d == nil || d.Spec.ClaimCode == nil || d.Spec.Decommissioned {
		return false
	}
	return p.Verifier == CodeVerifiedDigest(c.UID, d) && !HeldUnderSale(d, tenant)
}

// decideProven decides a Claim whose code, if it offered one, proved right.
func decideProven(in Input, codeOK bool) Decision {
	c, d, tenant := in.Claim, in.Device, in.Tenant
	// Possession is proven when the device signed this Claim's pairing code
	// (the enrollment controller checked the signature and the code).
	// A pairing-token Claim is created by the manager only after the device
	// proved possession (the webhook keeps users from setting pairingToken).
	possessionOK := c.Spec.Possession != nil && d != nil && !d.Spec.Decommissioned &&
		(c.Spec.PairingToken != nil || (c.Status.Pairing != nil && c.Status.Pairing.ConfirmedAt != nil))

	need := in.Policy.RequiredProof
	if !satisfies(need, codeOK, possessionOK) {
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
	if c.Spec.PairingToken != nil {
		proof = ProofPairingToken
	}
	if HeldUnderSale(d, tenant.Name) {
		return notVerified(ActionNone)
	}
	// Ownership is proven.
	if d.Spec.ClaimRef != nil {
		if c.Spec.PairingToken != nil {
			// A pairing token says who set the device up, not who owns it.
			return notVerified(ActionNone)
		}
		return Decision{Action: ActionReportDispute, Phase: custodyv1alpha1.ClaimPhaseDisputed, Reason: custodyv1alpha1.ClaimReasonHeldByAnotherTenant, Message: MsgHeldByOther,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonHeldByAnotherTenant, MsgHeldByOther}, Proof: proof}
	}
	if codeOK && !possessionOK && Consumed(d, d.Spec.ClaimCode.Verifier) {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonClaimCodeUsed, Message: MsgCodeUsed,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonClaimCodeUsed, MsgCodeUsed}}
	}
	// A second valid claim while another waits or competes is a dispute.
	// The dispute holds MaxDisputeClaims at most: a claim that finds it
	// full is denied for good, and never added (Denied is final, so it
	// never reads as a party that lost the dispute either).
	if d.Spec.Dispute != nil && len(d.Spec.Dispute.Claims) >= MaxDisputeClaims {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonDisputeFull, Message: MsgDisputeFull,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonDisputeFull, MsgDisputeFull}}
	}
	if d.Spec.Dispute != nil || (d.Spec.PendingClaim != nil && d.Spec.PendingClaim.UID != c.UID) {
		dd := disputed(ActionDispute)
		dd.Proof = proof
		return dd
	}
	if p := d.Spec.PendingClaim; p != nil {
		if in.Now.Before(p.Until.Time) {
			return coolingOff(p.Until.Time, in.Now, ActionNone)
		}
		b := bound(ActionBind)
		b.Proof, b.ConsumeCode = p.Proof, codeOK
		return b
	}
	if in.Policy.CoolingOff > 0 && !satisfies(in.Policy.ImmediateProof, codeOK || c.Spec.PairingToken != nil, possessionOK) {
		co := coolingOff(in.Now.Add(in.Policy.CoolingOff), in.Now, ActionStartCoolingOff)
		co.Proof = proof
		return co
	}
	b := bound(ActionBind)
	b.Proof, b.ConsumeCode = proof, codeOK
	return b
}

// satisfies reports whether the proofs offered meet need.
func satisfies(need custodyv1alpha1.RequiredProof, code, possession bool) bool {
	return (code || possession) && (!NeedsCode(need) || code) && (!NeedsPossession(need) || possession)
}

// decideTransfer accepts a transfer offered by the device's current holder.
// The move is one optimistic write, so it races safely with anything else
// that writes the binding.
func decideTransfer(in Input) Decision {
	c, d, o := in.Claim, in.Device, in.Offer
	if d == nil || o == nil || d.Spec.Decommissioned || d.Spec.ClaimRef == nil ||
		d.Spec.ClaimRef.Namespace != o.Namespace || d.Spec.ClaimRef.Name != o.Spec.ClaimName ||
		o.Namespace != in.OfferingNamespace || o.Spec.Recipient == nil || o.Spec.Recipient.Tenant != in.Tenant.Name ||
		o.Status.Phase != custodyv1alpha1.TransferPhaseOffered || o.Status.DeviceName != c.DeviceName() ||
		o.Status.ExpiresAt == nil || !in.Now.Before(o.Status.ExpiresAt.Time) {
		return Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhasePending, Reason: custodyv1alpha1.ClaimReasonNoTransferOffer, Message: MsgNoTransferOffer}
	}
	b := bound(ActionTransfer)
	b.Proof = ProofTransfer
	return b
}

// decideSaleRecord accepts the ERP's sale record as proof for the tenant
// it names, once.
func decideSaleRecord(in Input) Decision {
	d := in.Device
	deny := Decision{Action: ActionNone, Phase: custodyv1alpha1.ClaimPhaseDenied, Reason: custodyv1alpha1.ClaimReasonSaleRecordNotValid, Message: MsgSaleRecordNotValid,
		Event: &Event{"Warning", custodyv1alpha1.ClaimReasonSaleRecordNotValid, MsgSaleRecordNotValid}}
	if d == nil || d.Spec.Decommissioned || in.Policy.SaleRecordForbidden || SaleHolder(d) != in.Tenant.Name || SaleConsumed(d) {
		return deny
	}
	if d.Spec.ClaimRef != nil || d.Spec.PendingClaim != nil || d.Spec.Dispute != nil {
		// The sale names this tenant, but someone else holds or claims the
		// device: never a silent win.
		return Decision{Action: ActionReportDispute, Phase: custodyv1alpha1.ClaimPhaseDisputed, Reason: custodyv1alpha1.ClaimReasonHeldByAnotherTenant, Message: MsgSaleHeldByOther,
			Event: &Event{"Warning", custodyv1alpha1.ClaimReasonHeldByAnotherTenant, MsgSaleHeldByOther}, Proof: ProofSaleRecord}
	}
	b := bound(ActionBind)
	b.Proof, b.ConsumeSale = ProofSaleRecord, true
	return b
}

// SaleHolder is the tenant the device's sale names (custodian or owner),
// "" if none.
func SaleHolder(d *custodyv1alpha1.Device) string {
	if d == nil || d.Spec.Sale == nil {
		return ""
	}
	if d.Spec.Sale.CustodianTenant != "" {
		return d.Spec.Sale.CustodianTenant
	}
	return d.Spec.Sale.OwnerTenant
}

// SaleConsumed reports whether the device's sale record has been used.
func SaleConsumed(d *custodyv1alpha1.Device) bool {
	return d.Spec.Sale != nil && slices.Contains(d.Spec.ConsumedSaleRecords, d.Spec.Sale.OrderReference)
}

// HeldUnderSale reports whether the device is in the custody of a tenant
// other than tenant because of its sale record: the sale names that tenant
// and has not been used, or that tenant holds the device now.
func HeldUnderSale(d *custodyv1alpha1.Device, tenant string) bool {
	holder := SaleHolder(d)
	if holder == "" || holder == tenant {
		return false
	}
	if d.Spec.ClaimRef != nil {
		return d.Spec.ClaimRef.Tenant == holder
	}
	return !SaleConsumed(d)
}

// InDispute reports whether the Claim uid is one of the device's disputed
// claims.
func InDispute(d *custodyv1alpha1.Device, uid types.UID) bool {
	if d == nil || d.Spec.Dispute == nil {
		return false
	}
	for _, p := range d.Spec.Dispute.Claims {
		if p.UID == uid {
			return true
		}
	}
	return false
}

func pendingHere(d *custodyv1alpha1.Device, uid types.UID) bool {
	return d != nil && d.Spec.PendingClaim != nil && d.Spec.PendingClaim.UID == uid
}

func disputed(a Action) Decision {
	return Decision{Action: a, Phase: custodyv1alpha1.ClaimPhaseDisputed, Reason: custodyv1alpha1.ClaimReasonDisputed, Message: MsgDisputed,
		Event: &Event{"Warning", custodyv1alpha1.ClaimReasonDisputed, MsgDisputed}}
}

func coolingOff(until, now time.Time, a Action) Decision {
	return Decision{Action: a, Phase: custodyv1alpha1.ClaimPhaseCoolingOff, Reason: custodyv1alpha1.ClaimReasonCoolingOff, Message: MsgCoolingOff,
		Event: &Event{"Normal", custodyv1alpha1.ClaimReasonCoolingOff, MsgCoolingOff}, CoolingOffUntil: until, RequeueAfter: until.Sub(now)}
}

// MaxDisputeClaims bounds Device.spec.dispute.claims (the CRD's MaxItems).
const MaxDisputeClaims = custodyv1alpha1.MaxDisputeClaims

// Proofs recorded in the custody history.
const (
	ProofCode              = "ClaimCode"
	ProofPossession        = "Possession"
	ProofCodeAndPossession = "ClaimCode+Possession"
	ProofSaleRecord        = "SaleRecord"
	ProofTransfer          = "Transfer"
	ProofPairingToken      = "PairingToken+Possession"
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
