// Package custody is where a device changes hands. Every ownership change
// — bind, reattach, cooling-off, dispute, withdrawal, award, reset,
// transfer, release, decommission, a recorded sale and a restore — is a pure
// function here, from the Device as observed to the Device spec it leads to
// and the history entry that records it. One Applier writes them all (apply.go), with one write
// order, one crash-repair rule and one field manager:
//
//  1. the new spec and its history entry (spec.custody.head, already linked
//     into the hash chain) in one optimistic write of the Device: the change
//     and its record land together or not at all, and of two concurrent
//     changes exactly one lands;
//  2. the audit line for the entry;
//  3. the entry appended to status.history, conditional only on the chain's
//     newest entry (a JSON patch test), so that no other status writer
//     collides with it.
//
// A crash after step 1 is repaired by Complete, which every path (and the
// device controller, for every Device) calls first: it finds a head that
// status.history lacks and does steps 2 and 3. A crash between 2 and 3 logs
// the line again; the audit log reader keeps an entry once (by hash).
//
// Controllers decide (internal/claim and their own observations) and call
// these functions; they never write ownership fields themselves.
package custody

import (
	"errors"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
)

// Bounds of the manager-written lists: the API's (api/v1alpha1
// TestCRDBoundsMatchGo keeps them equal to the CRDs').
const (
	// MaxConsumed bounds spec.consumedClaimCodes and spec.consumedSaleRecords.
	MaxConsumed = min(custodyv1alpha1.MaxConsumedClaimCodes, custodyv1alpha1.MaxConsumedSaleRecords)
	// MaxDisputeClaims bounds spec.dispute.claims.
	MaxDisputeClaims = custodyv1alpha1.MaxDisputeClaims
	// MaxHistory bounds status.history.
	MaxHistory = custodyv1alpha1.MaxHistoryEntries
)

// Proofs and reasons recorded in the history that this package chooses.
const (
	ProofAward    = "Award"
	ProofReset    = "Reset"
	ProofRetained = "RetainedByTenant"
	ProofRestore  = "Backup"
	// ProofDecommissioned is why a decommissioned device's binding ended.
	ProofDecommissioned = "Decommissioned"
)

// ErrNotApplicable is returned when the observed Device does not allow the
// change (for example a bind of a device that is already bound): the caller
// decided from an older observation and must look again.
var ErrNotApplicable = errors.New("the change does not apply to the device as observed")

// ErrDisputeFull is returned by Dispute when the dispute already holds
// MaxDisputeClaims claims.
var ErrDisputeFull = fmt.Errorf("%w: the dispute is full", ErrNotApplicable)

// Holder is a Claim that holds or competes for a device: its tenant,
// namespace, name and UID.
type Holder struct {
	Tenant, Namespace, Name string
	UID                     types.UID
}

// HolderOf returns the Holder a device reference names.
func HolderOf(ref custodyv1alpha1.DeviceClaimReference) Holder {
	return Holder{Tenant: ref.Tenant, Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID}
}

func (h Holder) ref(boundAt *metav1.Time) custodyv1alpha1.DeviceClaimReference {
	return custodyv1alpha1.DeviceClaimReference{Tenant: h.Tenant, Namespace: h.Namespace, Name: h.Name, UID: h.UID, BoundAt: boundAt}
}

// claim is "<namespace>/<name>", as the history names a Claim.
func (h Holder) claim() string {
	if h.Namespace == "" && h.Name == "" {
		return ""
	}
	return h.Namespace + "/" + h.Name
}

// By says who made a change and when (the manager's clock).
type By struct {
	// Actor is recorded in the history entry (see CustodyRecord.actor).
	Actor string
	Time  time.Time
}

// Event is the Kubernetes Event recorded on the Device once a change is
// written. Related, when set, is the object that caused it.
type Event struct {
	Type, Reason, Action, Note string
	Related                    runtime.Object
}

// Change is one ownership change: the Device's spec after it, the history
// entry that records it (unlinked: Apply sets sequence and hashes), and the
// Event that announces it.
type Change struct {
	Spec   custodyv1alpha1.DeviceSpec
	Record custodyv1alpha1.CustodyRecord
	Event  *Event
}

// change starts a Change from the observed device.
func change(d *custodyv1alpha1.Device, typ custodyv1alpha1.CustodyEventType, by By) Change {
	return Change{Spec: *d.Spec.DeepCopy(), Record: custodyv1alpha1.CustodyRecord{Type: typ, Time: metav1.NewTime(by.Time), Actor: by.Actor}}
}

func (c *Change) concerns(h Holder) {
	c.Record.Tenant, c.Record.Claim, c.Record.ClaimUID = h.Tenant, h.claim(), h.UID
}

func notApplicable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotApplicable, fmt.Sprintf(format, args...))
}

// Consume says which proofs a binding uses up.
type Consume struct {
	// Code: the device's current claim code never binds again.
	Code bool
	// Sale: the device's sale record proves nothing again.
	Sale bool
}

// Bind binds an unbound device to the Claim to, which proved ownership
// with proof. It ends the Claim's own cooling-off, if it waited.
func Bind(d *custodyv1alpha1.Device, to Holder, proof string, consume Consume, by By) (Change, error) {
	s := &d.Spec
	switch {
	case s.Decommissioned:
		return Change{}, notApplicable("device %s is decommissioned", d.Name)
	case s.ClaimRef != nil:
		return Change{}, notApplicable("device %s is bound to Claim %s/%s", d.Name, s.ClaimRef.Namespace, s.ClaimRef.Name)
	case s.Dispute != nil:
		return Change{}, notApplicable("device %s is disputed", d.Name)
	case s.PendingClaim != nil && s.PendingClaim.UID != to.UID:
		return Change{}, notApplicable("device %s is cooling off for another claim", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventBound, by)
	ref := to.ref(timeRef(by.Time))
	c.Spec.ClaimRef, c.Spec.PendingClaim = &ref, nil
	if consume.Code && s.ClaimCode != nil {
		c.Spec.ConsumedClaimCodes = appendBounded(c.Spec.ConsumedClaimCodes, claimcode.Digest(s.ClaimCode.Verifier))
	}
	if consume.Sale && s.Sale != nil {
		c.Spec.ConsumedSaleRecords = appendBounded(c.Spec.ConsumedSaleRecords, s.Sale.OrderReference)
	}
	c.concerns(to)
	c.Record.Proof = proof
	c.Event = &Event{Type: "Normal", Reason: "Bound", Action: "Bind", Note: fmt.Sprintf("Bound to tenant %s by Claim %s (proof: %s).", to.Tenant, to.claim(), proof)}
	return c, nil
}

// Reattach moves a tenant's binding to another Claim of the same tenant
// (its bound Claim was deleted with policy Retain, or re-created by a
// restore). proof says why the tenant still holds it.
func Reattach(d *custodyv1alpha1.Device, to Holder, proof string, by By) (Change, error) {
	ref := d.Spec.ClaimRef
	if ref == nil || ref.Tenant != to.Tenant || ref.Namespace != to.Namespace || ref.UID == to.UID {
		return Change{}, notApplicable("device %s is not held by another Claim of tenant %s", d.Name, to.Tenant)
	}
	c := change(d, custodyv1alpha1.CustodyEventReattached, by)
	next := to.ref(timeRef(by.Time))
	c.Spec.ClaimRef = &next
	c.concerns(to)
	c.Record.Proof = proof
	c.Event = &Event{Type: "Normal", Reason: "Reattached", Action: "Bind", Note: fmt.Sprintf("Reattached to Claim %s of tenant %s, which still holds the device (%s).", to.claim(), to.Tenant, proof)}
	return c, nil
}

// StartCoolingOff records the Claim to as the device's pending claim: it
// proved ownership with proof, which the claim policy wants confirmed by
// time passing, and binds at until unless another claim competes.
func StartCoolingOff(d *custodyv1alpha1.Device, to Holder, proof string, until time.Time, by By) (Change, error) {
	s := &d.Spec
	if s.Decommissioned || s.ClaimRef != nil || s.PendingClaim != nil || s.Dispute != nil {
		return Change{}, notApplicable("device %s is held, claimed or out of service", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventClaimed, by)
	c.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{DeviceClaimReference: to.ref(nil), Proof: proof, Until: metav1.NewTime(until)}
	c.concerns(to)
	c.Record.Proof = proof
	c.Event = &Event{Type: "Normal", Reason: "CoolingOff", Action: "Claim", Note: fmt.Sprintf("Tenant %s proved ownership (%s) with Claim %s; it binds at %s unless another claim competes.",
		to.Tenant, proof, to.claim(), until.UTC().Format(time.RFC3339))}
	return c, nil
}

// Dispute adds the Claim to, which proved ownership with proof, to the
// device's dispute, opening one with the pending claim if there is none.
func Dispute(d *custodyv1alpha1.Device, to Holder, proof string, by By) (Change, error) {
	s := &d.Spec
	if s.Decommissioned || s.ClaimRef != nil || (s.Dispute == nil && (s.PendingClaim == nil || s.PendingClaim.UID == to.UID)) {
		return Change{}, notApplicable("device %s has no competing claim to dispute", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventDisputed, by)
	if c.Spec.Dispute == nil {
		c.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(by.Time)}
		p := s.PendingClaim
		c.Spec.Dispute.Claims = append(c.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: p.DeviceClaimReference, Proof: p.Proof})
	}
	for _, p := range c.Spec.Dispute.Claims {
		if p.UID == to.UID {
			return Change{}, notApplicable("Claim %s already disputes device %s", to.claim(), d.Name)
		}
	}
	if len(c.Spec.Dispute.Claims) >= MaxDisputeClaims {
		return Change{}, ErrDisputeFull
	}
	c.Spec.Dispute.Claims = append(c.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: to.ref(nil), Proof: proof})
	c.Spec.PendingClaim = nil
	c.concerns(to)
	c.Record.Proof = proof
	c.Event = &Event{Type: "Warning", Reason: "Disputed", Action: "Claim", Note: fmt.Sprintf("Tenant %s proved ownership (%s) with Claim %s while another claim competes: support staff must resolve the dispute.",
		to.Tenant, proof, to.claim())}
	return c, nil
}

// Withdraw takes the deleted Claim uid out of the device's cooling-off or
// dispute. A dispute stays open with the remaining claims until support
// staff resolve it: the party that withdraws may be the one that started it.
func Withdraw(d *custodyv1alpha1.Device, uid types.UID, by By) (Change, error) {
	s := &d.Spec
	var who *custodyv1alpha1.DeviceClaimReference
	if s.PendingClaim != nil && s.PendingClaim.UID == uid {
		who = &s.PendingClaim.DeviceClaimReference
	}
	if s.Dispute != nil {
		for i := range s.Dispute.Claims {
			if s.Dispute.Claims[i].UID == uid {
				who = &s.Dispute.Claims[i].DeviceClaimReference
			}
		}
	}
	if who == nil {
		return Change{}, notApplicable("the Claim neither cools off for nor disputes device %s", d.Name)
	}
	h := HolderOf(*who)
	c := change(d, custodyv1alpha1.CustodyEventWithdrawn, by)
	if c.Spec.PendingClaim != nil && c.Spec.PendingClaim.UID == uid {
		c.Spec.PendingClaim = nil
	}
	if dp := c.Spec.Dispute; dp != nil {
		dp.Claims = slices.DeleteFunc(dp.Claims, func(p custodyv1alpha1.DisputedClaim) bool { return p.UID == uid })
		if len(dp.Claims) == 0 {
			c.Spec.Dispute = nil
		}
	}
	if by.Actor == "" {
		c.Record.Actor = "tenant:" + h.Tenant
	}
	c.concerns(h)
	c.Record.Proof = "ClaimDeleted"
	c.Event = &Event{Type: "Normal", Reason: "ClaimWithdrawn", Action: "Claim", Note: fmt.Sprintf("Claim %s was deleted while cooling off or disputed; it no longer competes for the device.", h.claim())}
	return c, nil
}

// Transfer moves the binding from the Claim that offered the device
// (from) to the recipient's Claim to, accepting the Transfer offer
// ("<namespace>/<name>").
func Transfer(d *custodyv1alpha1.Device, from, to Holder, offer string, by By) (Change, error) {
	ref := d.Spec.ClaimRef
	if d.Spec.Decommissioned || ref == nil || ref.UID != from.UID {
		return Change{}, notApplicable("device %s is not held by the offering Claim %s", d.Name, from.claim())
	}
	c := change(d, custodyv1alpha1.CustodyEventTransferred, by)
	next := to.ref(timeRef(by.Time))
	c.Spec.ClaimRef = &next
	c.concerns(to)
	c.Record.FromTenant, c.Record.Proof, c.Record.Reference = ref.Tenant, "Transfer", offer
	c.Event = &Event{Type: "Normal", Reason: "Transferred", Action: "Bind", Note: fmt.Sprintf("Transferred from tenant %s to tenant %s by Claim %s (Transfer %s); the old owner's certificates are refused from now on.",
		ref.Tenant, to.Tenant, to.claim(), offer)}
	return c, nil
}

// Release ends the binding of the Claim only (any binding when only has no
// UID). why is recorded as the entry's proof (ClaimDeleted, TenantDeleted,
// Transfer), reference names what asked for it, and a non-empty verifier
// replaces the device's claim code (the old one is used up).
func Release(d *custodyv1alpha1.Device, only Holder, why, reference, verifier string, by By) (Change, error) {
	ref := d.Spec.ClaimRef
	if ref == nil || (only.UID != "" && ref.UID != only.UID) {
		return Change{}, notApplicable("device %s is not bound to Claim %s", d.Name, only.claim())
	}
	c := change(d, custodyv1alpha1.CustodyEventReleased, by)
	c.Spec.ClaimRef = nil
	if verifier != "" {
		if old := d.Spec.ClaimCode; old != nil {
			c.Spec.ConsumedClaimCodes = appendBounded(c.Spec.ConsumedClaimCodes, claimcode.Digest(old.Verifier))
		}
		c.Spec.ClaimCode = &custodyv1alpha1.DeviceClaimCode{Verifier: verifier}
	}
	c.concerns(HolderOf(*ref))
	c.Record.Proof, c.Record.Reference = why, reference
	c.Event = &Event{Type: "Normal", Reason: "Released", Action: "Release", Note: fmt.Sprintf("Released from tenant %s (claim %s/%s): %s; its certificates are refused from now on.", ref.Tenant, ref.Namespace, ref.Name, why)}
	return c, nil
}

// Award binds the device to the Claim to as support staff decided
// (SupportAction action, for reason), ending any cooling-off or dispute. The
// current claim code took part in what was resolved: it never binds again.
func Award(d *custodyv1alpha1.Device, to Holder, action, reason string, by By) (Change, error) {
	if d.Spec.Decommissioned {
		return Change{}, notApplicable("device %s is decommissioned", d.Name)
	}
	c := resolve(d, action, reason, by)
	since := timeRef(by.Time)
	if ref := d.Spec.ClaimRef; ref != nil && ref.UID == to.UID {
		since = ref.BoundAt // awarded to the Claim already bound: the binding goes on
	} else if ref != nil {
		c.Record.FromTenant = ref.Tenant
	}
	next := to.ref(since)
	c.Spec.ClaimRef = &next
	c.concerns(to)
	c.Record.Proof = ProofAward
	c.Event.Note = fmt.Sprintf("Award by %s: awarded to tenant %s (Claim %s) (%s: %s)", by.Actor, to.Tenant, to.claim(), action, reason)
	return c, nil
}

// Reset ends every binding, cooling-off and dispute of the device as
// support staff decided, and uses up its current claim code.
func Reset(d *custodyv1alpha1.Device, action, reason string, by By) Change {
	c := resolve(d, action, reason, by)
	if ref := d.Spec.ClaimRef; ref != nil {
		c.concerns(HolderOf(*ref))
	}
	c.Spec.ClaimRef = nil
	c.Record.Proof = ProofReset
	c.Event.Note = fmt.Sprintf("Reset by %s: no binding, cooling-off or dispute remains, and the claim code is used up (%s: %s)", by.Actor, action, reason)
	return c
}

func resolve(d *custodyv1alpha1.Device, action, reason string, by By) Change {
	c := change(d, custodyv1alpha1.CustodyEventResolved, by)
	if cc := d.Spec.ClaimCode; cc != nil {
		c.Spec.ConsumedClaimCodes = appendBounded(c.Spec.ConsumedClaimCodes, claimcode.Digest(cc.Verifier))
	}
	c.Spec.PendingClaim, c.Spec.Dispute = nil, nil
	c.Record.Reference, c.Record.Reason = action, reason
	c.Event = &Event{Type: "Normal", Reason: "Resolved", Action: "SupportAction"}
	return c
}

// Decommission ends the binding, cooling-off and dispute of a device the
// ERP took out of service, and records it once.
func Decommission(d *custodyv1alpha1.Device, by By) (Change, error) {
	if !DecommissionPending(d) {
		return Change{}, notApplicable("device %s is not being decommissioned", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventDecommissioned, by)
	c.Spec.ClaimRef, c.Spec.PendingClaim, c.Spec.Dispute = nil, nil, nil
	c.Record.Proof = ProofDecommissioned
	note := "Decommissioned: the device was not bound."
	if ref := d.Spec.ClaimRef; ref != nil {
		c.concerns(HolderOf(*ref))
		note = fmt.Sprintf("Decommissioned: released from tenant %s (claim %s/%s); its certificates are refused from now on.", ref.Tenant, ref.Namespace, ref.Name)
	}
	c.Event = &Event{Type: "Normal", Reason: "Decommissioned", Action: "Release", Note: note}
	return c, nil
}

// DecommissionPending reports whether a decommissioned device still holds a
// binding, cooling-off or dispute, or has not had its decommissioning
// recorded.
func DecommissionPending(d *custodyv1alpha1.Device) bool {
	if !d.Spec.Decommissioned {
		return false
	}
	if d.Spec.ClaimRef != nil || d.Spec.PendingClaim != nil || d.Spec.Dispute != nil {
		return true
	}
	if d.Spec.Custody != nil {
		return !d.Spec.Custody.Decommissioned
	}
	head := Head(d) // recorded before spec.custody existed
	return head == nil || head.Type != custodyv1alpha1.CustodyEventDecommissioned
}

// RecommissionPending reports whether the ERP returned a device whose
// decommissioning is recorded to service, and that is not recorded yet.
func RecommissionPending(d *custodyv1alpha1.Device) bool {
	return !d.Spec.Decommissioned && d.Spec.Custody != nil && d.Spec.Custody.Decommissioned
}

// Recommission records that the ERP returned a decommissioned device to
// service; it is unbound, and a claim code that bound it never binds again.
func Recommission(d *custodyv1alpha1.Device, by By) (Change, error) {
	if !RecommissionPending(d) {
		return Change{}, notApplicable("device %s was not returned to service", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventRecommissioned, by)
	c.Record.Proof = "Recommissioned"
	c.Event = &Event{Type: "Normal", Reason: "Recommissioned", Action: "Release", Note: "Returned to service, unbound; it is claimable with a claim code that has not bound it before."}
	return c, nil
}

// RecordSale records the ERP's sale (spec.sale) once per order reference;
// actor is the ERP's field manager.
func RecordSale(d *custodyv1alpha1.Device, by By) (Change, error) {
	if !SaleToRecord(d) {
		return Change{}, notApplicable("device %s has no unrecorded sale", d.Name)
	}
	sale := d.Spec.Sale
	c := change(d, custodyv1alpha1.CustodyEventSold, by)
	if c.Spec.Custody == nil {
		c.Spec.Custody = &custodyv1alpha1.DeviceCustody{}
	}
	c.Spec.Custody.RecordedSale = sale.OrderReference
	c.Record.Tenant, c.Record.Reference = saleHolder(sale), sale.OrderReference
	switch {
	case sale.CustodianTenant != "":
		c.Record.Proof = "Custodian"
	case sale.OwnerTenant != "":
		c.Record.Proof = "Owner"
	}
	return c, nil
}

// SaleToRecord reports whether the device's sale is not yet recorded.
func SaleToRecord(d *custodyv1alpha1.Device) bool {
	sale := d.Spec.Sale
	if sale == nil || (d.Spec.Custody != nil && d.Spec.Custody.RecordedSale == sale.OrderReference) {
		return false
	}
	// Recorded before spec.custody existed.
	return !Recorded(d, func(h custodyv1alpha1.CustodyRecord) bool {
		return h.Type == custodyv1alpha1.CustodyEventSold && h.Reference == sale.OrderReference
	})
}

func saleHolder(s *custodyv1alpha1.SaleRecord) string {
	if s.CustodianTenant != "" {
		return s.CustodianTenant
	}
	return s.OwnerTenant
}

// RestorePending reports whether the Device was re-created from a backup
// (its chain head was written to a Device with another UID) and the
// restore is not yet recorded.
func RestorePending(d *custodyv1alpha1.Device) bool {
	return d.Spec.Custody != nil && d.Spec.Custody.DeviceUID != "" && d.Spec.Custody.DeviceUID != d.UID
}

// Restore records that the Device was re-created from a backup, carrying
// its custody chain on from the head the backup kept. Claims re-created by
// the same restore have new UIDs: current maps "<namespace>/<name>" of each
// Claim the device refers to, that still exists and asks for this device,
// to its UID now, and the binding, cooling-off and dispute follow them.
// reference names the tool that re-created the Device (its field manager).
func Restore(d *custodyv1alpha1.Device, current map[string]types.UID, reference string, by By) (Change, error) {
	if !RestorePending(d) {
		return Change{}, notApplicable("device %s was not restored", d.Name)
	}
	c := change(d, custodyv1alpha1.CustodyEventRestored, by)
	remap := func(r *custodyv1alpha1.DeviceClaimReference) {
		if uid, ok := current[r.Namespace+"/"+r.Name]; ok {
			r.UID = uid
		}
	}
	s := &c.Spec
	if s.ClaimRef != nil {
		remap(s.ClaimRef)
		c.concerns(HolderOf(*s.ClaimRef))
	}
	if s.PendingClaim != nil {
		remap(&s.PendingClaim.DeviceClaimReference)
	}
	if s.Dispute != nil {
		for i := range s.Dispute.Claims {
			remap(&s.Dispute.Claims[i].DeviceClaimReference)
		}
	}
	c.Record.Proof, c.Record.Reference = ProofRestore, reference
	c.Record.Reason = fmt.Sprintf("Re-created from a backup without status: binding, proofs and sale are the backup's; entries up to %d are in the audit log.", d.Spec.Custody.Head.Sequence)
	c.Event = &Event{Type: "Normal", Reason: "Restored", Action: "Restore", Note: "Re-created from a backup (" + reference + "); the custody chain carries on from entry " + fmt.Sprint(d.Spec.Custody.Head.Sequence) + "."}
	return c, nil
}

// Completed reports whether the device's history holds its chain head
// (nothing for Complete to do).
func Completed(d *custodyv1alpha1.Device) bool {
	return d.Spec.Custody == nil || complete(d)
}

// Head is the newest entry of the device's custody chain: spec.custody.head,
// or for a device written before spec.custody existed, the newest entry of
// status.history. Nil for a device with no history.
func Head(d *custodyv1alpha1.Device) *custodyv1alpha1.CustodyRecord {
	if d.Spec.Custody != nil {
		return &d.Spec.Custody.Head
	}
	if n := len(d.Status.History); n > 0 {
		return &d.Status.History[n-1]
	}
	return nil
}

// Recorded reports whether the device's history (status.history or the
// head not yet copied there) holds an entry matching match.
func Recorded(d *custodyv1alpha1.Device, match func(custodyv1alpha1.CustodyRecord) bool) bool {
	return slices.ContainsFunc(Records(d), match)
}

// Records returns the device's history entries: status.history, followed
// by the chain head when status.history does not hold it yet.
func Records(d *custodyv1alpha1.Device) []custodyv1alpha1.CustodyRecord {
	if Completed(d) {
		return d.Status.History
	}
	return append(slices.Clip(d.Status.History), d.Spec.Custody.Head)
}

// appendBounded adds v to list once, keeping the newest MaxConsumed.
func appendBounded(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	list = append(list, v)
	if len(list) > MaxConsumed {
		list = list[len(list)-MaxConsumed:]
	}
	return list
}

func timeRef(t time.Time) *metav1.Time {
	m := metav1.NewTime(t)
	return &m
}
