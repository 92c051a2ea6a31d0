package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/custody"
)

// ClaimReconciler verifies Claims and binds Devices to them.
//
// Binding is exactly-once: the Device is written with optimistic
// concurrency (its resourceVersion), so of any number of concurrent valid
// claims exactly one write succeeds; the others re-read the Device and find
// it bound. Every step after the binding is idempotent, so a crash or retry
// anywhere converges to one binding and one history entry.
type ClaimReconciler struct {
	Client client.Client
	// APIReader reads claim-code Secrets straight from the API server, so
	// that Secret data is never cached in the manager.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Custody writes every ownership change of a Device.
	Custody *custody.Applier
	Options Options

	// written keeps the Claims' writes until the cache has them.
	written ownWrites
	// tenants writes the Tenants' claim bookkeeping, many Claims' at once.
	tenants tenantBatcher
	// proven keeps, by Claim, the record of a right code whose attempt
	// could not be taken back and whose status.codeVerified is not written
	// yet (provenCode): until either write succeeds, this is all that
	// tells the next reconcile the code was right.
	proven sync.Map
}

// provenCode is a record of a right code kept in memory (see proven).
type provenCode struct {
	uid    types.UID
	record custodyv1alpha1.ClaimCodeVerification
}

// +kubebuilder:rbac:groups=custody.dev,resources=claims,verbs=get;list;watch;update;patch;delete;deletecollection
// +kubebuilder:rbac:groups=custody.dev,resources=claims/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=claims/finalizers,verbs=update

// Reconcile decides one Claim.
func (r *ClaimReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	c := &custodyv1alpha1.Claim{}
	if err := r.Client.Get(ctx, req.NamespacedName, c); err != nil {
		if apierrors.IsNotFound(err) {
			r.proven.Delete(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if r.written.stale(c) {
		// The cache has not seen this controller's last write of the
		// Claim yet (a Device's or Tenant's event queued it meanwhile):
		// deciding again from the older Claim would only be refused by
		// the optimistic lock. The write's own event brings it back.
		return reconcile.Result{}, nil
	}
	if r.Custody.Applying(c.DeviceName()) {
		// Another controller of this manager (the device controller
		// recording a restore or a sale, or this one for another Claim)
		// is writing a change of this Claim's Device and completes it
		// itself; its write brings this Claim back. Deciding now, from a
		// Device that shows that change unfinished, would race it to the
		// same status append: a restore of 10,000 Devices lost about one
		// such race per binding, each a refused write and a read.
		return reconcile.Result{RequeueAfter: applyingRecheck}, nil
	}
	if c.DeletionTimestamp.IsZero() && controllerutil.AddFinalizer(c, custodyv1alpha1.FinalizerName) {
		rv := c.ResourceVersion
		if err := r.Client.Update(ctx, c, client.FieldOwner(FieldOwner)); err != nil {
			return reconcile.Result{}, err
		}
		r.written.wrote(c, rv)
		return reconcile.Result{}, nil
	}
	if !c.DeletionTimestamp.IsZero() {
		r.proven.Delete(req.NamespacedName)
		return r.reconcileDelete(ctx, c)
	}

	recordPending := r.recallCodeVerified(c)
	in, err := r.observe(ctx, c)
	if err != nil {
		return reconcile.Result{}, err
	}
	d := claim.Decide(in, r.Options.Verifier)
	if d.Action == claim.ActionNone && !in.Reserved && c.Status.Phase != d.Phase &&
		(d.Phase == custodyv1alpha1.ClaimPhaseDenied || d.Phase == custodyv1alpha1.ClaimPhaseLost) {
		// Denied is final and Lost tells the user the device is gone, so
		// neither is concluded from the cache, which may not yet show the
		// manager's own last write: a Device this Claim just joined the
		// dispute of, or a Tenant that still shows a reservation a right
		// code took back (claim.Unreserve). Decide again from the API
		// server's Device and Tenant.
		if err := r.observeFresh(ctx, &in); err != nil {
			return reconcile.Result{}, err
		}
		d = claim.Decide(in, r.Options.Verifier)
	}
	if d.Action == claim.ActionReserve {
		// Count the attempt before verifying the code, then decide again.
		if err := r.reserve(ctx, c, &in); err != nil {
			return reconcile.Result{}, err
		}
		d = claim.Decide(in, r.Options.Verifier)
	}
	if d.CodeProven && in.Tenant != nil && claim.Counted(&in.Tenant.Status, c.DeviceName(), c.UID) {
		// The code is right: the attempt is no failure.
		if err := r.takeBackAttempt(ctx, c, in, recordPending); err != nil {
			return reconcile.Result{}, err
		}
	}

	if err := r.act(ctx, c, in, d); err != nil {
		if errors.Is(err, custody.ErrRestorePending) {
			// The Device was re-created from a backup and the device
			// controller has not recorded the restore yet (it waits up to
			// RestoreGrace for the Claims it names). That write changes
			// the Device's spec, which brings this Claim back
			// (byDeviceName); retrying meanwhile would only spin: a
			// restore of 10,000 Devices made 430,000 failed reconciles.
			return reconcile.Result{}, nil
		}
		// Someone else wrote the Device or Tenant first: look again.
		return reconcile.Result{}, err
	}
	changed, err := r.writeStatus(ctx, c, d, in.Reserved)
	if err != nil {
		return reconcile.Result{}, err
	}
	if d.Phase != custodyv1alpha1.ClaimPhasePending {
		r.proven.Delete(req.NamespacedName) // decided: its attempt was taken back
	}
	if changed && d.Action == claim.ActionReportDispute {
		r.reportCompetingClaim(in)
	}
	return reconcile.Result{RequeueAfter: d.RequeueAfter}, nil
}

// observe gathers the inputs of claim.Decide.
func (r *ClaimReconciler) observe(ctx context.Context, c *custodyv1alpha1.Claim) (claim.Input, error) {
	in := claim.Input{Claim: c, Now: r.Options.Clock.Now(), PairingTTL: r.Options.PairingTTL}

	var tenants custodyv1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.MatchingFields{indexTenantNamespace: c.Namespace}); err != nil {
		return in, err
	}
	if len(tenants.Items) == 1 {
		in.Tenant = &tenants.Items[0]
		in.TenantReady = tenantUsable(in.Tenant)
	}

	device := &custodyv1alpha1.Device{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: c.DeviceName()}, device)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return in, err
	default:
		in.Device = device
	}
	if in.Device != nil && in.Device.Spec.ClaimRef != nil && in.Device.Spec.ClaimRef.UID != c.UID && in.Device.Spec.ClaimRef.Namespace == c.Namespace {
		held := &custodyv1alpha1.Claim{}
		err := r.Client.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: in.Device.Spec.ClaimRef.Name}, held)
		if err != nil && !apierrors.IsNotFound(err) {
			return in, err
		}
		in.BoundClaimExists = err == nil && held.UID == in.Device.Spec.ClaimRef.UID && held.DeletionTimestamp.IsZero()
	}

	if tr := c.Spec.Transfer; tr != nil && in.Device != nil {
		if err := r.findOffer(ctx, c, &in); err != nil {
			return in, err
		}
	}

	in.Policy = r.Options.claimPolicy(c.Spec.Model, in.Tenant, in.Device)

	// A decided Claim needs no code: do not read Secrets for it.
	if claimDecided(c) {
		return in, nil
	}
	in.Code, in.CodeErr = r.readCode(ctx, c)
	if in.CodeErr != nil && !isCodeError(in.CodeErr) {
		return in, in.CodeErr
	}
	return in, nil
}

// observeFresh replaces the cached Device and Tenant of in with the API
// server's.
func (r *ClaimReconciler) observeFresh(ctx context.Context, in *claim.Input) error {
	if in.Tenant != nil {
		fresh := &custodyv1alpha1.Tenant{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(in.Tenant), fresh); err != nil {
			return err
		}
		in.Tenant = fresh
	}
	if in.Device != nil {
		fresh := &custodyv1alpha1.Device{}
		switch err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(in.Device), fresh); {
		case apierrors.IsNotFound(err):
			in.Device = nil
		case err != nil:
			return err
		default:
			in.Device = fresh
		}
	}
	return nil
}

// findOffer looks for the Transfer that c accepts: in the namespace of the
// Tenant spec.transfer.fromTenant names, offering this device to c's
// tenant. Decide checks the rest (phase, expiry, that the offering Claim
// still holds the device).
func (r *ClaimReconciler) findOffer(ctx context.Context, c *custodyv1alpha1.Claim, in *claim.Input) error {
	from := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: c.Spec.Transfer.FromTenant}, from); err != nil {
		return client.IgnoreNotFound(err)
	}
	in.OfferingNamespace = from.TargetNamespace()
	if in.Tenant == nil {
		return nil
	}
	var offers custodyv1alpha1.TransferList
	if err := r.Client.List(ctx, &offers, client.InNamespace(in.OfferingNamespace), client.MatchingFields{indexTransferRecipient: in.Tenant.Name}); err != nil {
		return err
	}
	for i := range offers.Items {
		o := &offers.Items[i]
		if o.Status.DeviceName == c.DeviceName() && o.Status.Phase == custodyv1alpha1.TransferPhaseOffered && o.DeletionTimestamp.IsZero() {
			in.Offer = o
			return nil
		}
	}
	return nil
}

// claimDecided reports whether the Claim's outcome no longer depends on a code.
func claimDecided(c *custodyv1alpha1.Claim) bool {
	switch c.Status.Phase {
	case custodyv1alpha1.ClaimPhaseBound, custodyv1alpha1.ClaimPhaseLost, custodyv1alpha1.ClaimPhaseDenied, custodyv1alpha1.ClaimPhaseDisputed:
		return true
	}
	return false
}

// tenantUsable reports whether a Tenant's Claims may bind: it is Ready and
// not being deleted.
func tenantUsable(t *custodyv1alpha1.Tenant) bool {
	return t.DeletionTimestamp.IsZero() && meta.IsStatusConditionTrue(t.Status.Conditions, custodyv1alpha1.ConditionReady)
}

func isCodeError(err error) bool {
	return errors.Is(err, claim.ErrSecretNotFound) || errors.Is(err, claim.ErrSecretKeyMissing) || errors.Is(err, claimcode.ErrMalformed)
}

// readCode reads and parses the claim code from the Claim's Secret. The code
// is returned to the caller only; it is never logged or written anywhere.
func (r *ClaimReconciler) readCode(ctx context.Context, c *custodyv1alpha1.Claim) (claimcode.Code, error) {
	if c.Spec.ClaimCode == nil {
		return "", claim.ErrSecretNotFound
	}
	ref := c.Spec.ClaimCode.SecretRef
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return "", claim.ErrSecretNotFound
		}
		return "", fmt.Errorf("reading the claim-code Secret: %w", err)
	}
	key := ref.Key
	if key == "" {
		key = "code"
	}
	raw, ok := secret.Data[key]
	if !ok {
		return "", claim.ErrSecretKeyMissing
	}
	return claimcode.Parse(string(raw))
}

// act performs the Decision's side effects. Every ownership change goes
// through the custody core (internal/custody): the Device's new spec and its
// history entry are one optimistic write, so of concurrent claims exactly
// one changes the device, and a crash anywhere converges (custody.Complete).
// Failures are counted before the Claim says Denied.
func (r *ClaimReconciler) act(ctx context.Context, c *custodyv1alpha1.Claim, in claim.Input, d claim.Decision) error {
	var ch custody.Change
	var err error
	switch d.Action {
	case claim.ActionRecordFailure:
		return r.recordFailure(ctx, in)
	case claim.ActionFinishBind:
		return r.finishBind(ctx, c, in)
	case claim.ActionBind, claim.ActionTransfer, claim.ActionReattach, claim.ActionStartCoolingOff, claim.ActionDispute:
	default:
		return nil
	}
	dev := in.Device
	me := custody.Holder{Tenant: in.Tenant.Name, Namespace: c.Namespace, Name: c.Name, UID: c.UID}
	by := custody.By{Time: in.Now, Actor: r.claimActor(dev, c, d.Proof, in.Tenant.Name)}
	switch d.Action {
	case claim.ActionBind:
		if err := r.failPoint("verified", c); err != nil {
			return err
		}
		ch, err = custody.Bind(dev, me, d.Proof, custody.Consume{Code: d.ConsumeCode, Sale: d.ConsumeSale}, by)
	case claim.ActionTransfer:
		by.Actor = r.claimActor(dev, c, claim.ProofTransfer, in.Tenant.Name)
		ch, err = custody.Transfer(dev, custody.HolderOf(*dev.Spec.ClaimRef), me, in.Offer.Namespace+"/"+in.Offer.Name, by)
	case claim.ActionReattach:
		by.Actor = r.claimActor(dev, c, "", in.Tenant.Name)
		proof := custody.ProofRetained
		if ref := dev.Spec.ClaimRef; ref != nil && ref.Name == c.Name && custody.Recorded(dev, func(h custodyv1alpha1.CustodyRecord) bool { return h.Type == custodyv1alpha1.CustodyEventRestored }) {
			// The Claim re-created by a restore, after its Device's restore
			// was recorded without it.
			proof = custody.ProofRestore
		}
		ch, err = custody.Reattach(dev, me, proof, by)
	case claim.ActionStartCoolingOff:
		ch, err = custody.StartCoolingOff(dev, me, d.Proof, d.CoolingOffUntil, by)
	case claim.ActionDispute:
		ch, err = custody.Dispute(dev, me, d.Proof, by)
	}
	if err != nil {
		return err
	}
	ch.Event.Related = c
	if err := r.Custody.Apply(ctx, dev, ch); err != nil {
		return err
	}
	if err := r.failPoint("bound", c); err != nil {
		return err
	}
	switch d.Action {
	case claim.ActionBind, claim.ActionTransfer, claim.ActionReattach:
		return r.finishBind(ctx, c, in)
	}
	return nil
}

// reportCompetingClaim tells support staff, on the Device, that a tenant
// proved ownership of a device that is held or claimed by another. It runs
// once per Claim decision (after its status is written). The Event is
// related to the claimant's Tenant, not the Claim, and its note names only
// that tenant, so that the events API aggregates a burst of competing
// Claims into one Event per tenant (a series) whose note stays true.
func (r *ClaimReconciler) reportCompetingClaim(in claim.Input) {
	r.Recorder.Eventf(in.Device, in.Tenant, corev1.EventTypeWarning, "CompetingClaim", "Claim",
		"Tenant %s proved ownership of this device while it is held or claimed by another claim (spec.claimRef, spec.pendingClaim or spec.dispute), which stands. "+
			"Its competing Claims are Disputed with reason %s (kubectl get events -n %s --field-selector reason=%s); a SupportAction can award the device to one of them.",
		in.Tenant.Name, custodyv1alpha1.ClaimReasonHeldByAnotherTenant, in.Tenant.TargetNamespace(), custodyv1alpha1.ClaimReasonHeldByAnotherTenant)
}

// claimActor says who caused a change made for Claim c, for the history:
//   - a pairing token: the device, which proved possession with the token
//     of tenant (the manager made the Claim on its behalf);
//   - a direct sale: the ERP that recorded the sale (the manager made the
//     Claim for the owner, as the sale asked), as its Sold entry names it;
//   - otherwise (a code, possession, a custodian's or owner's sale-record
//     Claim, a transfer accepted): the user who created the Claim, as the
//     API server authenticated it (spec.requestedBy).
func (r *ClaimReconciler) claimActor(dev *custodyv1alpha1.Device, c *custodyv1alpha1.Claim, proof, tenant string) string {
	switch {
	case proof == claim.ProofPairingToken && c.Spec.PairingToken != nil:
		return "device:" + dev.Name + " with the pairing token " + c.Namespace + "/" + c.Spec.PairingToken.SecretName + " of tenant " + tenant
	case proof == claim.ProofSaleRecord && r.managerMade(c):
		for _, h := range dev.Status.History {
			if h.Type == custodyv1alpha1.CustodyEventSold && dev.Spec.Sale != nil && h.Reference == dev.Spec.Sale.OrderReference {
				return h.Actor
			}
		}
		return "erp"
	case c.Spec.RequestedBy != "":
		return "user:" + c.Spec.RequestedBy
	}
	return "tenant:" + c.Namespace
}

// managerMade reports whether the manager created Claim c (a direct sale's
// Claim): the API server authenticated the manager as its creator. A
// tenant user's Claim carrying the manager's label is still the user's.
func (r *ClaimReconciler) managerMade(c *custodyv1alpha1.Claim) bool {
	if c.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue {
		return false
	}
	if len(r.Options.ManagerUsernames) == 0 {
		return true
	}
	return slices.Contains(r.Options.ManagerUsernames, c.Spec.RequestedBy)
}

// finishBind does everything that follows a binding of c; each step is
// idempotent, so an earlier reconcile that stopped after binding is
// repaired: the device's history is completed (custody.Complete), the
// tenant's failures on the device are forgotten, and a claim code that
// bound the device is removed from the cluster.
func (r *ClaimReconciler) finishBind(ctx context.Context, c *custodyv1alpha1.Claim, in claim.Input) error {
	dev := in.Device
	if c.Status.Phase == custodyv1alpha1.ClaimPhaseBound && custody.Completed(dev) {
		return nil // steady state: nothing to repair
	}
	if err := r.Custody.Complete(ctx, dev); err != nil {
		return err
	}
	if in.Tenant != nil {
		if err := r.updateTenantStatus(ctx, in.Tenant.Name, func(s *custodyv1alpha1.TenantStatus) bool {
			return claim.RecordSuccess(s, c.DeviceName())
		}); err != nil {
			return err
		}
	}
	// The code is good for one binding: remove it from the cluster.
	usedCode := custody.Recorded(dev, func(h custodyv1alpha1.CustodyRecord) bool {
		return h.ClaimUID == c.UID && (h.Type == custodyv1alpha1.CustodyEventBound || h.Type == custodyv1alpha1.CustodyEventTransferred)
	})
	if usedCode && c.Spec.ClaimCode != nil {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Spec.ClaimCode.SecretRef.Name}}
		if err := r.Client.Delete(ctx, secret); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// reserve counts the Claim's attempt on its Tenant before any code is
// verified (claim.Reserve), in a write of the Tenant read from the API
// server, never from the cache, with its resourceVersion (tenantBatcher).
// in.Tenant becomes the Tenant as written, and in.Reserved reports whether
// this call counted the attempt (only then may the code be verified).
func (r *ClaimReconciler) reserve(ctx context.Context, c *custodyv1alpha1.Claim, in *claim.Input) error {
	var reserved bool
	t, err := r.tenants.apply(ctx, in.Tenant.Name, func(s *custodyv1alpha1.TenantStatus) bool {
		reserved = claim.Reserve(s, c.DeviceName(), c.UID, in.Now, in.Policy) == claim.Reserved
		return reserved
	})
	if err != nil {
		in.Reserved = false
		return err
	}
	in.Reserved, in.Tenant = reserved, t
	return nil
}

// takeBackAttempt takes back the attempt counted on the Tenant for Claim c,
// whose code proved right (claim.Unreserve). If the Tenant cannot be
// written, the proof is kept: the next reconcile would otherwise find the
// attempt counted and the Claim unverifiable ("attempt spent"), and deny
// the rightful owner. It is kept in memory first (proven) and then written
// on the Claim (status.codeVerified), both before the error is returned;
// with either, the next reconcile takes the attempt back and binds without
// verifying the code again. recordPending says that c's record came from
// memory, not from the API server: it is written again.
func (r *ClaimReconciler) takeBackAttempt(ctx context.Context, c *custodyv1alpha1.Claim, in claim.Input, recordPending bool) error {
	err := r.updateTenantStatus(ctx, in.Tenant.Name, func(s *custodyv1alpha1.TenantStatus) bool {
		return claim.Unreserve(s, c.DeviceName(), c.UID)
	})
	key := client.ObjectKeyFromObject(c)
	if err == nil {
		r.proven.Delete(key)
		return nil
	}
	holds := claim.CodeVerifiedHolds(c, in.Device, in.Tenant.Name)
	if holds && !recordPending {
		return err // recorded on the Claim already
	}
	rec := custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.NewTime(in.Now), Verifier: claim.CodeVerifiedDigest(c.UID, in.Device)}
	if holds {
		rec = *c.Status.CodeVerified
	}
	r.proven.Store(key, provenCode{uid: c.UID, record: rec})
	if rerr := r.recordCodeVerified(ctx, c, rec); rerr != nil {
		return fmt.Errorf("taking back the attempt of a right claim code: %w; recording that the code is right (kept in memory, retried): %w", err, rerr)
	}
	return fmt.Errorf("taking back the attempt of a right claim code (recorded on the Claim, retried): %w", err)
}

// recallCodeVerified gives c the record of a right code kept in memory
// when its status has none yet, and reports whether it did; a record the
// API server has is kept, and the memory forgotten.
func (r *ClaimReconciler) recallCodeVerified(c *custodyv1alpha1.Claim) bool {
	key := client.ObjectKeyFromObject(c)
	v, ok := r.proven.Load(key)
	if !ok {
		return false
	}
	p := v.(provenCode)
	if p.uid != c.UID || c.Status.CodeVerified != nil {
		r.proven.Delete(key)
		return false
	}
	c.Status.CodeVerified = p.record.DeepCopy()
	return true
}

// recordCodeVerified writes rec as status.codeVerified of Claim c. The
// write carries no resourceVersion: the proof stands whatever was written
// to the Claim meanwhile (only the manager writes its status).
func (r *ClaimReconciler) recordCodeVerified(ctx context.Context, c *custodyv1alpha1.Claim, rec custodyv1alpha1.ClaimCodeVerification) error {
	rv := c.ResourceVersion
	raw, err := json.Marshal(map[string]any{"status": map[string]any{"codeVerified": rec}})
	if err != nil {
		return err
	}
	patched := c.DeepCopy()
	if err := r.Client.Status().Patch(ctx, patched, client.RawPatch(types.MergePatchType, raw), client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	r.written.wrote(patched, rv)
	return nil
}

// tenantBackoff retries the failed-attempt count on a Device that lost to
// another write of it.
var tenantBackoff = wait.Backoff{Steps: 10, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.2, Cap: time.Second}

// unreserveBackoff retries a write of a Tenant's claim bookkeeping that
// lost to another writer of the Tenant (tenantBatcher), for long: giving
// up on taking back a right code's reservation would leave the owner's
// attempt counted.
var unreserveBackoff = wait.Backoff{Steps: 30, Duration: 10 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Cap: time.Second}

// recordFailure records a verified, failed attempt: it is already counted on
// the Tenant (its reservation), so it is counted on the Device (which
// support staff read) and in the metric.
func (r *ClaimReconciler) recordFailure(ctx context.Context, in claim.Input) error {
	claimFailures.WithLabelValues(in.Tenant.Name).Inc()
	if in.Claim != nil && claim.LockedUntil(&in.Tenant.Status, in.Claim.DeviceName(), in.Now).After(in.Now) {
		claimLockouts.WithLabelValues(in.Tenant.Name).Inc()
	}
	if in.Device == nil {
		return nil
	}
	// The counter is the claim controller's alone: the write is conditional
	// on the count it read (a JSON-patch test), so heartbeats, certificates
	// and history entries written meanwhile never make it fail.
	dev := in.Device.DeepCopy()
	err := retry.OnError(tenantBackoff, custody.IsStale, func() error {
		n := dev.Status.FailedClaimAttempts
		ops := []map[string]any{
			{"op": "test", "path": "/metadata/resourceVersion", "value": dev.ResourceVersion},
			{"op": "add", "path": "/status/failedClaimAttempts", "value": n + 1},
			{"op": "add", "path": "/status/lastFailedClaimTime", "value": metav1.NewTime(in.Now)},
		}
		if n > 0 {
			ops[0] = map[string]any{"op": "test", "path": "/status/failedClaimAttempts", "value": n}
		}
		raw, err := json.Marshal(ops)
		if err != nil {
			return err
		}
		err = r.Client.Status().Patch(ctx, dev, client.RawPatch(types.JSONPatchType, raw), client.FieldOwner(FieldOwner))
		if custody.IsStale(err) {
			if gerr := r.APIReader.Get(ctx, client.ObjectKeyFromObject(dev), dev); gerr != nil {
				return gerr
			}
		}
		return err
	})
	if err != nil {
		return client.IgnoreNotFound(err)
	}
	// Related to the Tenant, with a note that holds for every failure of
	// that tenant, so that the events API aggregates them.
	r.Recorder.Eventf(dev, in.Tenant, corev1.EventTypeWarning, "ClaimFailed", "Claim",
		"A claim by tenant %s failed verification; status.failedClaimAttempts counts the failed attempts on this device from all tenants.", in.Tenant.Name)
	return nil
}

// updateTenantStatus applies mutate to the Tenant's status in a write of
// the Tenant read from the API server, with its resourceVersion, retried
// on conflict (tenantBatcher).
func (r *ClaimReconciler) updateTenantStatus(ctx context.Context, name string, mutate func(*custodyv1alpha1.TenantStatus) bool) error {
	_, err := r.tenants.apply(ctx, name, mutate)
	return err
}

// writeStatus writes the Decision into the Claim's status and records its
// Event when the outcome changes. A code verified under a fresh
// reservation (reserved) that failed is written without the Claim's
// resourceVersion: the attempt is spent, and an edit of the Claim meanwhile
// must not turn its true answer into "cannot be verified again".
func (r *ClaimReconciler) writeStatus(ctx context.Context, c *custodyv1alpha1.Claim, d claim.Decision, reserved bool) (bool, error) {
	before := c.DeepCopy()
	prev := meta.FindStatusCondition(c.Status.Conditions, custodyv1alpha1.ConditionReady)
	changed := c.Status.Phase != d.Phase || prev == nil || prev.Reason != d.Reason

	c.Status.Phase = d.Phase
	c.Status.ObservedGeneration = c.Generation
	switch {
	case d.IssuePairing:
		// Decide chose to issue and when it expires; only the code's
		// randomness is drawn here.
		code, err := claimcode.GeneratePairingCode()
		if err != nil {
			return false, err
		}
		c.Status.Pairing = &custodyv1alpha1.Pairing{Code: code, ExpiresAt: metav1.NewTime(d.PairingExpiresAt)}
	case d.DropPairing:
		c.Status.Pairing = nil
	}
	if d.Phase != custodyv1alpha1.ClaimPhaseBound {
		c.Status.Certificate = nil
	}
	c.Status.CoolingOffUntil = nil
	if !d.CoolingOffUntil.IsZero() {
		t := metav1.NewTime(d.CoolingOffUntil)
		c.Status.CoolingOffUntil = &t
	}
	c.Status.RetryAfter = nil
	if !d.RetryAfter.IsZero() {
		t := metav1.NewTime(d.RetryAfter)
		c.Status.RetryAfter = &t
	}
	switch d.Phase {
	case custodyv1alpha1.ClaimPhaseBound:
		c.Status.DeviceName = c.DeviceName()
		if c.Status.BoundAt == nil {
			t := metav1.NewTime(r.Options.Clock.Now())
			c.Status.BoundAt = &t
		}
	case custodyv1alpha1.ClaimPhaseLost:
	default:
		c.Status.DeviceName = ""
		c.Status.BoundAt = nil
	}
	status := metav1.ConditionFalse
	if d.Ready {
		status = metav1.ConditionTrue
	}
	cond := metav1.Condition{Type: custodyv1alpha1.ConditionReady, Status: status, Reason: d.Reason, Message: d.Message, ObservedGeneration: c.Generation}
	if prev == nil || prev.Status != cond.Status || prev.Reason != cond.Reason || prev.Message != cond.Message {
		cond.LastTransitionTime = metav1.NewTime(r.Options.Clock.Now())
		meta.RemoveStatusCondition(&c.Status.Conditions, cond.Type)
		c.Status.Conditions = append(c.Status.Conditions, cond)
	}
	if equality.Semantic.DeepEqual(before.Status, c.Status) {
		return false, nil
	}
	patch := client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})
	if reserved && d.Action == claim.ActionRecordFailure {
		patch = client.MergeFrom(before)
	}
	if err := r.Client.Status().Patch(ctx, c, patch, client.FieldOwner(FieldOwner)); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	r.written.wrote(c, before.ResourceVersion)
	if changed {
		claimDecisions.WithLabelValues(string(d.Phase), d.Reason).Inc()
		if d.Event != nil {
			r.Recorder.Eventf(c, nil, d.Event.Type, d.Event.Reason, "Verify", "%s", d.Event.Message)
		}
	}
	return changed, nil
}

// reconcileDelete applies the Claim's release policy, then lets it go: a
// Claim that cooled off or disputed withdraws; a bound Claim releases the
// device (policy Release, or its Tenant is being deleted) or leaves it
// with its tenant (Retain).
func (r *ClaimReconciler) reconcileDelete(ctx context.Context, c *custodyv1alpha1.Claim) (reconcile.Result, error) {
	dev := &custodyv1alpha1.Device{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: c.DeviceName()}, dev)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	found := err == nil
	by := custody.By{Time: r.Options.Clock.Now()}
	if found && (claim.InDispute(dev, c.UID) || (dev.Spec.PendingClaim != nil && dev.Spec.PendingClaim.UID == c.UID)) {
		// Who deleted the Claim is not known to the manager; the entry
		// names the tenant whose claim it was.
		ch, err := custody.Withdraw(dev, c.UID, by)
		if err == nil {
			ch.Event.Related = c
			err = r.Custody.Apply(ctx, dev, ch)
		}
		if err != nil {
			return reconcile.Result{}, err
		}
	}
	if found && dev.Spec.ClaimRef != nil && dev.Spec.ClaimRef.UID == c.UID {
		tenantGone, err := r.tenantDeleting(ctx, dev.Spec.ClaimRef.Tenant)
		if err != nil {
			return reconcile.Result{}, err
		}
		if c.Spec.ReleasePolicy == custodyv1alpha1.ReleasePolicyRelease || tenantGone {
			by.Actor = "tenant:" + dev.Spec.ClaimRef.Tenant
			ch, err := custody.Release(dev, custody.HolderOf(*dev.Spec.ClaimRef), "ClaimDeleted", "", "", by)
			if err == nil {
				ch.Event.Related = c
				err = r.Custody.Apply(ctx, dev, ch)
			}
			if err != nil {
				return reconcile.Result{}, err
			}
		} else {
			r.Recorder.Eventf(dev, c, corev1.EventTypeNormal, "Retained", "Release",
				"Claim %s/%s was deleted with policy Retain: the device stays with tenant %s until a new Claim takes it over or it is released.", c.Namespace, c.Name, dev.Spec.ClaimRef.Tenant)
		}
	}
	if controllerutil.RemoveFinalizer(c, custodyv1alpha1.FinalizerName) {
		if err := r.Client.Update(ctx, c, client.FieldOwner(FieldOwner)); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	return reconcile.Result{}, nil
}

func (r *ClaimReconciler) tenantDeleting(ctx context.Context, name string) (bool, error) {
	t := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, t); err != nil {
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	}
	return !t.DeletionTimestamp.IsZero(), nil
}

func (r *ClaimReconciler) failPoint(point string, c *custodyv1alpha1.Claim) error {
	if r.Options.FailPoint == nil {
		return nil
	}
	if err := r.Options.FailPoint(point, client.ObjectKeyFromObject(c)); err != nil {
		log.Log.Info("fail point triggered", "point", point)
		return err
	}
	return nil
}

// SetupWithManager registers the controller. Claims are re-examined when
// their Device, their Tenant or their claim-code Secret changes; Secrets are
// watched as metadata only, so their data never enters the cache.
func (r *ClaimReconciler) SetupWithManager(mgr manager.Manager) error {
	claimsFor := func(ctx context.Context, opts ...client.ListOption) []reconcile.Request {
		var list custodyv1alpha1.ClaimList
		if err := r.Client.List(ctx, &list, opts...); err != nil {
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for _, c := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&c)})
		}
		return reqs
	}
	bySecret := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return claimsFor(ctx, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexClaimSecret: o.GetName()})
	})
	byDevice := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		d := o.(*custodyv1alpha1.Device)
		if ref := d.Spec.ClaimRef; ref != nil {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}}}
		}
		return nil
	})
	// When the ownership fields change, every Claim for the device looks
	// again: those cooling off or disputed, and those that lost it.
	byDeviceName := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return claimsFor(ctx, client.MatchingFields{indexClaimDevice: o.GetName()})
	})
	byTransfer := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		tr := o.(*custodyv1alpha1.Transfer)
		if tr.Status.DeviceName == "" {
			return nil
		}
		return claimsFor(ctx, client.MatchingFields{indexClaimDevice: tr.Status.DeviceName})
	})
	// Only changes of ownership fields concern waiting Claims; heartbeats
	// and certificates do not.
	ownershipChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*custodyv1alpha1.Device), e.ObjectNew.(*custodyv1alpha1.Device)
			return !equality.Semantic.DeepEqual(o.Spec, n.Spec)
		},
	}
	byTenant := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return claimsFor(ctx, client.InNamespace(o.(*custodyv1alpha1.Tenant).TargetNamespace()))
	})
	// Claims wait for their Tenant to become ready; other Tenant changes
	// (its throttle bookkeeping, written on every attempt) do not concern
	// the tenant's other Claims.
	readinessChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*custodyv1alpha1.Tenant), e.ObjectNew.(*custodyv1alpha1.Tenant)
			return tenantUsable(o) != tenantUsable(n)
		},
	}
	r.tenants.client, r.tenants.reader = r.Client, r.APIReader
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Claim{}).
		Watches(&custodyv1alpha1.Device{}, byDevice).
		Watches(&custodyv1alpha1.Device{}, byDeviceName, ctrl.WithPredicates(ownershipChanged)).
		Watches(&custodyv1alpha1.Transfer{}, byTransfer).
		Watches(&custodyv1alpha1.Tenant{}, byTenant, ctrl.WithPredicates(readinessChanged)).
		WatchesMetadata(&corev1.Secret{}, bySecret).
		WithOptions(controllerOptions(r.Options.workers("claim"))).
		Named("claim").
		Complete(lookingAgain(r))
}
