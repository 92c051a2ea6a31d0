package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
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
	Options   Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=claims,verbs=get;list;watch;update;patch;delete;deletecollection
// +kubebuilder:rbac:groups=custody.dev,resources=claims/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=claims/finalizers,verbs=update

// Reconcile decides one Claim.
func (r *ClaimReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	c := &custodyv1alpha1.Claim{}
	if err := r.Client.Get(ctx, req.NamespacedName, c); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if c.DeletionTimestamp.IsZero() && controllerutil.AddFinalizer(c, custodyv1alpha1.FinalizerName) {
		return reconcile.Result{}, r.Client.Update(ctx, c)
	}
	if !c.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, c)
	}

	in, err := r.observe(ctx, c)
	if err != nil {
		return reconcile.Result{}, err
	}
	d := claim.Decide(in, r.Options.Verifier)
	if d.Message == claim.MsgAttemptSpent && in.Tenant != nil {
		// "Spent" is final, so it is never concluded from the cache: a
		// cached Tenant may still show this Claim's reservation after a
		// right code took it back (claim.Unreserve). Decide again from the
		// API server's Tenant.
		fresh := &custodyv1alpha1.Tenant{}
		if err := r.APIReader.Get(ctx, client.ObjectKey{Name: in.Tenant.Name}, fresh); err != nil {
			return reconcile.Result{}, err
		}
		in.Tenant = fresh
		d = claim.Decide(in, r.Options.Verifier)
	}
	if d.Action == claim.ActionReserve {
		// Count the attempt before verifying the code, then decide again.
		if err := r.reserve(ctx, c, &in); err != nil {
			if apierrors.IsConflict(err) {
				return reconcile.Result{RequeueAfter: conflictRetry}, nil
			}
			return reconcile.Result{}, err
		}
		d = claim.Decide(in, r.Options.Verifier)
		if in.Reserved && d.CodeProven {
			// The code is right: the attempt is no failure.
			if err := retry.RetryOnConflict(unreserveBackoff, func() error {
				return r.mutateTenantStatus(ctx, in.Tenant.Name, func(s *custodyv1alpha1.TenantStatus) bool {
					return claim.Unreserve(s, c.DeviceName(), c.UID)
				})
			}); err != nil {
				return reconcile.Result{}, err
			}
		}
	}

	if err := r.act(ctx, c, in, d); err != nil {
		if apierrors.IsConflict(err) {
			// Someone else wrote the Device or Tenant first: look again.
			return reconcile.Result{RequeueAfter: conflictRetry}, nil
		}
		return reconcile.Result{}, err
	}
	changed, err := r.writeStatus(ctx, c, d, in.Reserved)
	if err != nil {
		if apierrors.IsConflict(err) {
			// Decided from a stale read: decide again from a fresh one, so
			// that each outcome is recorded (Event, metric) exactly once.
			return reconcile.Result{RequeueAfter: conflictRetry}, nil
		}
		return reconcile.Result{}, err
	}
	if changed && d.Action == claim.ActionReportDispute {
		r.reportCompetingClaim(in)
	}
	if d.IssuePairing {
		// Another look when the new pairing code expires.
		d.RequeueAfter = r.Options.PairingTTL
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

// act performs the Decision's side effects, in an order that keeps every
// crash point safe: the binding is written before anything that depends on
// it, and failures are counted before the Claim says Denied.
func (r *ClaimReconciler) act(ctx context.Context, c *custodyv1alpha1.Claim, in claim.Input, d claim.Decision) error {
	switch d.Action {
	case claim.ActionRecordFailure:
		return r.recordFailure(ctx, in)
	case claim.ActionBind:
		if err := r.failPoint("verified", c); err != nil {
			return err
		}
		dev := in.Device
		before := dev.DeepCopy()
		dev.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: in.Tenant.Name, Namespace: c.Namespace, Name: c.Name, UID: c.UID, BoundAt: boundAt(in.Now)}
		dev.Spec.PendingClaim = nil
		if d.ConsumeCode {
			dev.Spec.ConsumedClaimCodes = appendBounded(dev.Spec.ConsumedClaimCodes, claimcode.Digest(dev.Spec.ClaimCode.Verifier))
		}
		if d.ConsumeSale {
			dev.Spec.ConsumedSaleRecords = appendBounded(dev.Spec.ConsumedSaleRecords, dev.Spec.Sale.OrderReference)
		}
		// The resourceVersion in the patch makes this the exactly-once step.
		if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
		if err := r.failPoint("bound", c); err != nil {
			return err
		}
		return r.finishBind(ctx, c, in, dev, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventBound, Proof: d.Proof})
	case claim.ActionTransfer:
		dev := in.Device
		before := dev.DeepCopy()
		from := dev.Spec.ClaimRef.Tenant
		dev.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: in.Tenant.Name, Namespace: c.Namespace, Name: c.Name, UID: c.UID, BoundAt: boundAt(in.Now)}
		// The resourceVersion makes the move one step: the offering Claim
		// held the device in the version read, and nobody wrote since.
		if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
		return r.finishBind(ctx, c, in, dev, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventTransferred, Proof: d.Proof, FromTenant: from,
			Reference: in.Offer.Namespace + "/" + in.Offer.Name})
	case claim.ActionReattach:
		dev := in.Device
		before := dev.DeepCopy()
		dev.Spec.ClaimRef.Name, dev.Spec.ClaimRef.UID, dev.Spec.ClaimRef.BoundAt = c.Name, c.UID, boundAt(in.Now)
		if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
		return r.finishBind(ctx, c, in, dev, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventReattached, Proof: "RetainedByTenant"})
	case claim.ActionFinishBind:
		if c.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
			return nil // steady state: nothing to repair
		}
		rec := custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventBound, Proof: boundProof(in.Device, c)}
		if tr := c.Spec.Transfer; tr != nil && rec.Proof == claim.ProofTransfer {
			// An accepted transfer whose history entry was not written:
			// record it as the transfer it was, so that its Transfer
			// completes.
			rec.Type, rec.FromTenant = custodyv1alpha1.CustodyEventTransferred, tr.FromTenant
			if in.Offer != nil {
				rec.Reference = in.Offer.Namespace + "/" + in.Offer.Name
			}
		}
		return r.finishBind(ctx, c, in, in.Device, rec)
	case claim.ActionStartCoolingOff:
		dev := in.Device
		before := dev.DeepCopy()
		dev.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{
			DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{Tenant: in.Tenant.Name, Namespace: c.Namespace, Name: c.Name, UID: c.UID},
			Proof:                d.Proof, Until: metav1.NewTime(d.CoolingOffUntil),
		}
		// Optimistic: of two claims starting at once, one waits and the
		// other finds it and disputes.
		if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
		r.Recorder.Eventf(dev, c, corev1.EventTypeNormal, "CoolingOff", "Claim", "Tenant %s proved ownership (%s) with Claim %s/%s; it binds at %s unless another claim competes.",
			in.Tenant.Name, d.Proof, c.Namespace, c.Name, d.CoolingOffUntil.UTC().Format(time.RFC3339))
		return r.record(ctx, dev, c, in, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventClaimed, Proof: d.Proof})
	case claim.ActionDispute:
		dev := in.Device
		before := dev.DeepCopy()
		me := custodyv1alpha1.DisputedClaim{DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{Tenant: in.Tenant.Name, Namespace: c.Namespace, Name: c.Name, UID: c.UID}, Proof: d.Proof}
		if dev.Spec.Dispute == nil {
			dev.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(in.Now)}
			if p := dev.Spec.PendingClaim; p != nil {
				dev.Spec.Dispute.Claims = append(dev.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: p.DeviceClaimReference, Proof: p.Proof})
			}
		}
		if len(dev.Spec.Dispute.Claims) >= claim.MaxDisputeClaims {
			// Decide saw room; look again rather than write a status the
			// Device does not show.
			return apierrors.NewConflict(custodyv1alpha1.GroupVersion.WithResource("devices").GroupResource(), dev.Name, errors.New("the dispute is full"))
		}
		dev.Spec.Dispute.Claims = append(dev.Spec.Dispute.Claims, me)
		dev.Spec.PendingClaim = nil
		if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
		r.Recorder.Eventf(dev, c, corev1.EventTypeWarning, "Disputed", "Claim", "Tenant %s proved ownership (%s) with Claim %s/%s while another claim competes: support staff must resolve the dispute.",
			in.Tenant.Name, d.Proof, c.Namespace, c.Name)
		return r.record(ctx, dev, c, in, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventDisputed, Proof: d.Proof})
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

// record appends a history entry about Claim c to the device's history,
// filling in what c says (tenant, Claim, actor).
func (r *ClaimReconciler) record(ctx context.Context, dev *custodyv1alpha1.Device, c *custodyv1alpha1.Claim, in claim.Input, rec custodyv1alpha1.CustodyRecord) error {
	rec.Time = metav1.NewTime(r.Options.Clock.Now())
	rec.Tenant = in.Tenant.Name
	rec.Claim, rec.ClaimUID = c.Namespace+"/"+c.Name, c.UID
	rec.Actor = r.claimActor(dev, c, rec.Proof, rec.Tenant)
	return recordHistory(ctx, r.Client, dev.Name, rec)
}

// claimActor says who caused a change made for Claim c, for the history:
//   - a pairing token: the device, which proved possession with the token
//     of tenant (the manager made the Claim on its behalf);
//   - a direct sale: the ERP that recorded the sale (the manager made the
//     Claim for the owner, as the sale asked), as its Sold entry names it;
//   - a support award: the support user of the SupportAction;
//   - otherwise (a code, possession, a custodian's or owner's sale-record
//     Claim, a transfer accepted): the user who created the Claim, as the
//     API server authenticated it (spec.requestedBy).
func (r *ClaimReconciler) claimActor(dev *custodyv1alpha1.Device, c *custodyv1alpha1.Claim, proof, tenant string) string {
	switch {
	case proof == claim.ProofPairingToken && c.Spec.PairingToken != nil:
		return "device:" + dev.Name + " with the pairing token " + c.Namespace + "/" + c.Spec.PairingToken.SecretName + " of tenant " + tenant
	case proof == claim.ProofSupportAward:
		// Support staff bound it: the Resolved entry names who.
		for _, h := range dev.Status.History {
			if h.Type == custodyv1alpha1.CustodyEventResolved && h.ClaimUID == c.UID && h.Actor != "" {
				return h.Actor
			}
		}
		return "support"
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

// boundProof is the proof that bound c, as recorded in the device's
// history, for repairing an interrupted binding.
func boundProof(dev *custodyv1alpha1.Device, c *custodyv1alpha1.Claim) string {
	for _, h := range dev.Status.History {
		if h.ClaimUID == c.UID {
			switch h.Type {
			case custodyv1alpha1.CustodyEventBound, custodyv1alpha1.CustodyEventTransferred:
				return h.Proof
			case custodyv1alpha1.CustodyEventResolved:
				return claim.ProofSupportAward
			}
		}
	}
	switch {
	case c.Spec.SaleRecord != nil:
		return claim.ProofSaleRecord
	case c.Spec.Transfer != nil:
		return claim.ProofTransfer
	}
	if c.Spec.ClaimCode == nil {
		return claim.ProofPossession
	}
	return claim.ProofCode
}

// finishBind does everything that follows a binding; each step is
// idempotent. The history entry and the consumed Secret are repaired if an
// earlier reconcile stopped after binding.
func (r *ClaimReconciler) finishBind(ctx context.Context, c *custodyv1alpha1.Claim, in claim.Input, dev *custodyv1alpha1.Device, rec custodyv1alpha1.CustodyRecord) error {
	tenantName := dev.Spec.ClaimRef.Tenant
	typ, proof := rec.Type, rec.Proof
	rec.Time = metav1.NewTime(r.Options.Clock.Now())
	rec.Tenant = tenantName
	rec.Claim, rec.ClaimUID = c.Namespace+"/"+c.Name, c.UID
	rec.Actor = r.claimActor(dev, c, proof, tenantName)
	if err := recordHistory(ctx, r.Client, dev.Name, rec); err != nil {
		return err
	}
	if c.Status.Phase != custodyv1alpha1.ClaimPhaseBound {
		r.Recorder.Eventf(dev, c, corev1.EventTypeNormal, string(typ), "Bind", "%s to tenant %s by Claim %s/%s (proof: %s).", typ, tenantName, c.Namespace, c.Name, proof)
	}
	if in.Tenant != nil {
		if err := r.updateTenantStatus(ctx, in.Tenant.Name, func(s *custodyv1alpha1.TenantStatus) bool {
			return claim.RecordSuccess(s, c.DeviceName())
		}); err != nil {
			return err
		}
	}
	// The code is good for one binding: remove it from the cluster.
	if (typ == custodyv1alpha1.CustodyEventBound || typ == custodyv1alpha1.CustodyEventTransferred) && c.Spec.ClaimCode != nil {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Spec.ClaimCode.SecretRef.Name}}
		if err := r.Client.Delete(ctx, secret); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// reserve counts the Claim's attempt on its Tenant before any code is
// verified (claim.Reserve). The Tenant is read from the API server, never
// from the cache, and written with its resourceVersion; a conflict means
// another reservation came first, so it reads again. in.Tenant becomes the
// fresh Tenant, and in.Reserved reports whether this call counted the
// attempt (only then may the code be verified).
func (r *ClaimReconciler) reserve(ctx context.Context, c *custodyv1alpha1.Claim, in *claim.Input) error {
	return retry.RetryOnConflict(historyBackoff, func() error {
		t := &custodyv1alpha1.Tenant{}
		if err := r.APIReader.Get(ctx, client.ObjectKey{Name: in.Tenant.Name}, t); err != nil {
			return err
		}
		before := t.DeepCopy()
		in.Reserved = claim.Reserve(&t.Status, c.DeviceName(), c.UID, in.Now, in.Policy) == claim.Reserved
		if in.Reserved {
			if err := r.Client.Status().Patch(ctx, t, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
				in.Reserved = false
				return err
			}
		}
		in.Tenant = t
		return nil
	})
}

// unreserveBackoff retries taking back a right code's reservation longer
// than other writes: giving up would leave the owner's attempt counted.
var unreserveBackoff = wait.Backoff{Steps: 30, Duration: 10 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Cap: time.Second}

// recordFailure records a verified, failed attempt: it is already counted on
// the Tenant (its reservation), so it is counted on the Device (which
// support staff read) and in the metric.
func (r *ClaimReconciler) recordFailure(ctx context.Context, in claim.Input) error {
	claimFailures.WithLabelValues(in.Tenant.Name).Inc()
	if in.Device == nil {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		dev := &custodyv1alpha1.Device{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: in.Device.Name}, dev); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := dev.DeepCopy()
		dev.Status.FailedClaimAttempts++
		t := metav1.NewTime(in.Now)
		dev.Status.LastFailedClaimTime = &t
		if err := r.Client.Status().Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return err
		}
		// Related to the Tenant, with a note that holds for every failure
		// of that tenant, so that the events API aggregates them.
		r.Recorder.Eventf(dev, in.Tenant, corev1.EventTypeWarning, "ClaimFailed", "Claim",
			"A claim by tenant %s failed verification; status.failedClaimAttempts counts the failed attempts on this device from all tenants.", in.Tenant.Name)
		return nil
	})
}

// updateTenantStatus applies mutate to the Tenant's status with optimistic
// concurrency, retrying on conflict with a fresh read.
func (r *ClaimReconciler) updateTenantStatus(ctx context.Context, name string, mutate func(*custodyv1alpha1.TenantStatus) bool) error {
	return retry.RetryOnConflict(historyBackoff, func() error { return r.mutateTenantStatus(ctx, name, mutate) })
}

// mutateTenantStatus applies mutate to a fresh read of the Tenant's status
// and writes it with the Tenant's resourceVersion, once.
func (r *ClaimReconciler) mutateTenantStatus(ctx context.Context, name string, mutate func(*custodyv1alpha1.TenantStatus) bool) error {
	t := &custodyv1alpha1.Tenant{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: name}, t); err != nil {
		return err
	}
	before := t.DeepCopy()
	if !mutate(&t.Status) {
		return nil
	}
	return r.Client.Status().Patch(ctx, t, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
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
	if err := r.Client.Status().Patch(ctx, c, patch); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if changed {
		claimDecisions.WithLabelValues(string(d.Phase), d.Reason).Inc()
		if d.Event != nil {
			r.Recorder.Eventf(c, nil, d.Event.Type, d.Event.Reason, "Verify", "%s", d.Event.Message)
		}
	}
	return changed, nil
}

// reconcileDelete applies the Claim's release policy, then lets it go.
func (r *ClaimReconciler) reconcileDelete(ctx context.Context, c *custodyv1alpha1.Claim) (reconcile.Result, error) {
	dev := &custodyv1alpha1.Device{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: c.DeviceName()}, dev)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	if err == nil && (claim.InDispute(dev, c.UID) || (dev.Spec.PendingClaim != nil && dev.Spec.PendingClaim.UID == c.UID)) {
		if err := r.withdraw(ctx, dev, c); err != nil {
			if apierrors.IsConflict(err) {
				return reconcile.Result{RequeueAfter: conflictRetry}, nil
			}
			return reconcile.Result{}, err
		}
	}
	if err == nil && dev.Spec.ClaimRef != nil && dev.Spec.ClaimRef.UID == c.UID {
		tenantGone, err := r.tenantDeleting(ctx, dev.Spec.ClaimRef.Tenant)
		if err != nil {
			return reconcile.Result{}, err
		}
		if c.Spec.ReleasePolicy == custodyv1alpha1.ReleasePolicyRelease || tenantGone {
			if err := releaseDevice(ctx, r.Client, r.Recorder, dev, c, "ClaimDeleted", r.Options.Clock.Now()); err != nil {
				if apierrors.IsConflict(err) {
					return reconcile.Result{RequeueAfter: conflictRetry}, nil
				}
				return reconcile.Result{}, err
			}
		} else {
			r.Recorder.Eventf(dev, c, corev1.EventTypeNormal, "Retained", "Release",
				"Claim %s/%s was deleted with policy Retain: the device stays with tenant %s until a new Claim takes it over or it is released.", c.Namespace, c.Name, dev.Spec.ClaimRef.Tenant)
		}
	}
	if controllerutil.RemoveFinalizer(c, custodyv1alpha1.FinalizerName) {
		if err := r.Client.Update(ctx, c); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	return reconcile.Result{}, nil
}

// withdraw takes a deleted Claim out of the device's cooling-off or dispute.
// A dispute stays open with the remaining claims until support staff
// resolve it: the party that withdraws may be the one that started it.
func (r *ClaimReconciler) withdraw(ctx context.Context, dev *custodyv1alpha1.Device, c *custodyv1alpha1.Claim) error {
	before := dev.DeepCopy()
	if p := dev.Spec.PendingClaim; p != nil && p.UID == c.UID {
		dev.Spec.PendingClaim = nil
	}
	if dp := dev.Spec.Dispute; dp != nil {
		kept := dp.Claims[:0:0]
		for _, p := range dp.Claims {
			if p.UID != c.UID {
				kept = append(kept, p)
			}
		}
		dp.Claims = kept
		if len(kept) == 0 {
			dev.Spec.Dispute = nil
		}
	}
	if err := r.Client.Patch(ctx, dev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	r.Recorder.Eventf(dev, c, corev1.EventTypeNormal, "ClaimWithdrawn", "Claim", "Claim %s/%s was deleted while cooling off or disputed; it no longer competes for the device.", c.Namespace, c.Name)
	return nil
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

// maxConsumed bounds the manager's lists of used proofs (the CRD's MaxItems
// of both; TestBoundsAreTheAPIs checks they are the same).
const maxConsumed = custodyv1alpha1.MaxConsumedClaimCodes

// appendBounded adds v to list once, keeping the newest maxConsumed.
func appendBounded(list []string, v string) []string {
	for _, x := range list {
		if x == v {
			return list
		}
	}
	list = append(list, v)
	if len(list) > maxConsumed {
		list = list[len(list)-maxConsumed:]
	}
	return list
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
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Claim{}).
		Watches(&custodyv1alpha1.Device{}, byDevice).
		Watches(&custodyv1alpha1.Device{}, byDeviceName, ctrl.WithPredicates(ownershipChanged)).
		Watches(&custodyv1alpha1.Transfer{}, byTransfer).
		Watches(&custodyv1alpha1.Tenant{}, byTenant, ctrl.WithPredicates(readinessChanged)).
		WatchesMetadata(&corev1.Secret{}, bySecret).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentClaims}).
		Named("claim").
		Complete(r)
}

// boundAt is the start of a new binding, written with every new claimRef:
// only certificates issued from then on are accepted (AcceptCertificate).
func boundAt(now time.Time) *metav1.Time {
	t := metav1.NewTime(now)
	return &t
}
