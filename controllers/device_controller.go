package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/history"
)

// maxHistory bounds Device.status.history (the CRD's MaxItems).
const maxHistory = custodyv1alpha1.MaxHistoryEntries

// DeviceReconciler keeps a Device's phase, conditions and summary in line
// with its spec, records sales in its history, ends the binding of a
// decommissioned device, and opens the Claim of a direct sale.
type DeviceReconciler struct {
	Client client.Client
	// APIReader reads Devices with their managedFields (the cache strips
	// them), to record which ERP field manager wrote a sale.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Options   Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=devices,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=devices/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=claims,verbs=create

// Reconcile computes one Device's status.
func (r *DeviceReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	device := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, req.NamespacedName, device); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if err := r.recordSale(ctx, device); err != nil {
		return reconcile.Result{}, err
	}
	if device.Spec.Decommissioned {
		if err := r.decommission(ctx, device); err != nil {
			if apierrors.IsConflict(err) {
				return reconcile.Result{RequeueAfter: conflictRetry}, nil
			}
			return reconcile.Result{}, err
		}
	}
	if err := r.openDirectSale(ctx, device); err != nil {
		return reconcile.Result{}, err
	}
	before := device.DeepCopy()

	var tenant *custodyv1alpha1.Tenant
	if ref := device.Spec.ClaimRef; ref != nil {
		tenant = &custodyv1alpha1.Tenant{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: ref.Tenant}, tenant); apierrors.IsNotFound(err) {
			tenant = nil
		} else if err != nil {
			return reconcile.Result{}, err
		}
	}
	DeviceStatus(device, tenant)
	device.Status.ObservedGeneration = device.Generation
	if equality.Semantic.DeepEqual(before.Status, device.Status) {
		return reconcile.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, device, client.MergeFrom(before)); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	return reconcile.Result{}, nil
}

// recordSale records the ERP's sale in the device's history, once per
// order reference, with the ERP's field manager as the actor.
func (r *DeviceReconciler) recordSale(ctx context.Context, d *custodyv1alpha1.Device) error {
	sale := d.Spec.Sale
	if sale == nil {
		return nil
	}
	for _, h := range d.Status.History {
		if h.Type == custodyv1alpha1.CustodyEventSold && h.Reference == sale.OrderReference {
			return nil
		}
	}
	full := &custodyv1alpha1.Device{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(d), full); err != nil {
		return client.IgnoreNotFound(err)
	}
	rec := custodyv1alpha1.CustodyRecord{Time: metav1.NewTime(r.Options.Clock.Now()), Type: custodyv1alpha1.CustodyEventSold,
		Tenant: claim.SaleHolder(d), Reference: sale.OrderReference, Actor: "erp:" + fieldManagerOf(full, "f:spec", "f:sale")}
	switch {
	case sale.CustodianTenant != "":
		rec.Proof = "Custodian"
	case sale.OwnerTenant != "":
		rec.Proof = "Owner"
	}
	return recordHistory(ctx, r.Client, d.Name, rec)
}

// decommission ends the binding, cooling-off and dispute of a
// decommissioned device. The history entry is written first, so that a
// crash in between still leaves the former holder on record.
func (r *DeviceReconciler) decommission(ctx context.Context, d *custodyv1alpha1.Device) error {
	n := len(d.Status.History)
	if n == 0 || d.Status.History[n-1].Type != custodyv1alpha1.CustodyEventDecommissioned {
		rec := custodyv1alpha1.CustodyRecord{Time: metav1.NewTime(r.Options.Clock.Now()), Type: custodyv1alpha1.CustodyEventDecommissioned,
			Proof: "Decommissioned", Actor: "erp:" + r.decommissionedBy(ctx, d), Reference: fmt.Sprintf("generation/%d", d.Generation)}
		if ref := d.Spec.ClaimRef; ref != nil {
			rec.Tenant, rec.Claim, rec.ClaimUID = ref.Tenant, ref.Namespace+"/"+ref.Name, ref.UID
		}
		if err := recordHistory(ctx, r.Client, d.Name, rec); err != nil {
			return err
		}
	}
	if d.Spec.ClaimRef == nil && d.Spec.PendingClaim == nil && d.Spec.Dispute == nil {
		return nil
	}
	before := d.DeepCopy()
	released := d.Spec.ClaimRef
	d.Spec.ClaimRef, d.Spec.PendingClaim, d.Spec.Dispute = nil, nil, nil
	if err := r.Client.Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	if released != nil {
		r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, "Decommissioned", "Release", "Decommissioned: released from tenant %s (claim %s/%s); its certificates are refused from now on.", released.Tenant, released.Namespace, released.Name)
	}
	return nil
}

func (r *DeviceReconciler) decommissionedBy(ctx context.Context, d *custodyv1alpha1.Device) string {
	full := &custodyv1alpha1.Device{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(d), full); err != nil {
		return "unknown"
	}
	return fieldManagerOf(full, "f:spec", "f:decommissioned")
}

// openDirectSale creates the Claim of a direct sale in the owner tenant's
// namespace, named after the device; the claim controller binds it with the
// sale record as proof. Whether to open it is claim.DirectSaleTenant's and
// claim.DirectSaleClaim's decision.
func (r *DeviceReconciler) openDirectSale(ctx context.Context, d *custodyv1alpha1.Device) error {
	name := claim.DirectSaleTenant(d)
	if name == "" {
		return nil
	}
	t := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, t); err != nil {
		return client.IgnoreNotFound(err)
	}
	c := claim.DirectSaleClaim(d, t, tenantUsable(t), r.Options.claimPolicy(d.Spec.Model, t, d))
	if c == nil {
		return nil
	}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(c), &custodyv1alpha1.Claim{}); !apierrors.IsNotFound(err) {
		return client.IgnoreNotFound(err) // opened already, or a namesake the tenant made
	}
	if err := r.Client.Create(ctx, c); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// DeviceStatus sets a Device's phase and conditions from its spec and
// history. tenant is the bound Tenant, nil if unbound or missing.
func DeviceStatus(d *custodyv1alpha1.Device, tenant *custodyv1alpha1.Tenant) {
	set := func(typ string, ok bool, reason, msg string) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&d.Status.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: d.Generation})
	}
	ready, readyReason, readyMsg := true, custodyv1alpha1.DeviceReasonConsistent, "The device's record is consistent."

	switch {
	case d.Spec.Decommissioned:
		d.Status.Phase = custodyv1alpha1.DevicePhaseDecommissioned
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonDecommissioned, "The device is decommissioned.")
	case d.Spec.Dispute != nil:
		d.Status.Phase = custodyv1alpha1.DevicePhaseDisputed
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonDisputed, fmt.Sprintf("%d valid claims compete for the device; support staff resolve it with a SupportAction.", len(d.Spec.Dispute.Claims)))
	case d.Spec.PendingClaim != nil:
		d.Status.Phase = custodyv1alpha1.DevicePhasePending
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonCoolingOff, "A claim by tenant "+d.Spec.PendingClaim.Tenant+" waits out its cooling-off period until "+d.Spec.PendingClaim.Until.UTC().Format(time.RFC3339)+".")
	case d.Spec.ClaimRef != nil:
		d.Status.Phase = custodyv1alpha1.DevicePhaseBound
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonBound, "The device is bound to tenant "+d.Spec.ClaimRef.Tenant+".")
		if tenant == nil {
			ready, readyReason, readyMsg = false, custodyv1alpha1.DeviceReasonTenantMissing, "The device is bound to Tenant "+d.Spec.ClaimRef.Tenant+", which does not exist. Support staff must release it."
		}
	case claim.HeldUnderSale(d, ""):
		d.Status.Phase = custodyv1alpha1.DevicePhaseAvailable
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonInCustody, "The sale record names tenant "+claim.SaleHolder(d)+", which takes the device with a sale-record Claim; nobody else can claim it until that tenant transfers or releases it.")
	case d.Spec.ClaimCode == nil:
		d.Status.Phase = phaseUnbound(d)
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonNoClaimCode, "spec.claimCode is not set.")
	case claimcode.ValidateVerifier(d.Spec.ClaimCode.Verifier) != nil:
		d.Status.Phase = phaseUnbound(d)
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonNoClaimCode, "spec.claimCode.verifier is outside the accepted argon2id parameters; regenerate it with 'custody-device factory'.")
	case claim.Consumed(d, d.Spec.ClaimCode.Verifier):
		d.Status.Phase = custodyv1alpha1.DevicePhaseReleased
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonClaimCodeConsumed, "The claim code has already been used; set a new spec.claimCode.verifier to make the device claimable.")
	default:
		d.Status.Phase = custodyv1alpha1.DevicePhaseAvailable
		set(custodyv1alpha1.DeviceConditionClaimable, true, custodyv1alpha1.DeviceReasonClaimable, "The device can be claimed with its claim code.")
	}
	set(custodyv1alpha1.ConditionReady, ready, readyReason, readyMsg)
}

func phaseUnbound(d *custodyv1alpha1.Device) custodyv1alpha1.DevicePhase {
	if len(d.Status.History) > 0 {
		return custodyv1alpha1.DevicePhaseReleased
	}
	return custodyv1alpha1.DevicePhaseAvailable
}

// appendHistory adds rec to d's history as the next link of its hash
// chain, unless it is already there (retried reconciles), keeping the
// newest maxHistory entries. It returns the entry added, nil if none was.
func appendHistory(d *custodyv1alpha1.Device, rec custodyv1alpha1.CustodyRecord) *custodyv1alpha1.CustodyRecord {
	var added *custodyv1alpha1.CustodyRecord
	d.Status.History, added = history.Append(d.Status.History, rec, maxHistory)
	return added
}

// auditLog receives one line per custody history entry, with the whole
// entry: the complete, verifiable chain (`custodyctl history verify
// --audit-log`), where the Device keeps only the newest entries.
var auditLog = ctrl.Log.WithName("audit")

// historyBackoff outlasts the bursts of status writes around an ownership
// change (device, transfer, notification and enrollment controllers), so
// that the entry is written by the step that made the change.
var historyBackoff = wait.Backoff{Steps: 10, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.2, Cap: time.Second}

// recordHistory appends rec to the history of Device name, re-reading the
// Device on conflict (the device controller writes its status too). It is
// idempotent: appendHistory ignores an entry that is already there. Each
// entry written is logged to the audit log once the write succeeded.
func recordHistory(ctx context.Context, c client.Client, name string, rec custodyv1alpha1.CustodyRecord) error {
	var added *custodyv1alpha1.CustodyRecord
	err := retry.RetryOnConflict(historyBackoff, func() error {
		d := &custodyv1alpha1.Device{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, d); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := d.DeepCopy()
		if added = appendHistory(d, rec); added == nil {
			return nil
		}
		return c.Status().Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	})
	if err == nil && added != nil {
		auditLog.Info(history.AuditMessage, "device", name, "entry", added)
	}
	return err
}

// releaseDevice clears a Device's binding (only if it is still bound to
// onlyClaim, when given), records why in its history, and emits an Event.
// The write is optimistic: a conflict is returned for the caller to retry.
func releaseDevice(ctx context.Context, c client.Client, rec events.EventRecorder, d *custodyv1alpha1.Device, onlyClaim *custodyv1alpha1.Claim, why string, now time.Time) error {
	ref := d.Spec.ClaimRef
	if ref == nil || (onlyClaim != nil && ref.UID != onlyClaim.UID) {
		return nil
	}
	released := *ref
	before := d.DeepCopy()
	d.Spec.ClaimRef = nil
	if err := c.Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	if err := recordHistory(ctx, c, d.Name, custodyv1alpha1.CustodyRecord{
		Time: metav1.NewTime(now), Type: custodyv1alpha1.CustodyEventReleased, Tenant: released.Tenant,
		Claim: released.Namespace + "/" + released.Name, ClaimUID: released.UID, Proof: why,
		// Who deleted the Claim or Tenant is not known to the manager; the
		// entry names whose binding ended.
		Actor: "tenant:" + released.Tenant,
	}); err != nil {
		// The binding is already gone; the Event below records the change.
		rec.Eventf(d, nil, corev1.EventTypeWarning, "HistoryNotRecorded", "Release", "Could not record the release in status.history: %v", err)
	}
	rec.Eventf(d, nil, corev1.EventTypeNormal, "Released", "Release", "Released from tenant %s (claim %s/%s): %s.", released.Tenant, released.Namespace, released.Name, why)
	return nil
}

// SetupWithManager registers the controller.
func (r *DeviceReconciler) SetupWithManager(mgr manager.Manager) error {
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Device{}).
		Named("device").
		Complete(r)
}

// fieldManagerOf names the field manager that owns the field at path in
// obj's managedFields (for example the ERP's for spec.sale), "unknown" if
// none does.
func fieldManagerOf(obj metav1.Object, path ...string) string {
	for _, mf := range obj.GetManagedFields() {
		if mf.FieldsV1 == nil {
			continue
		}
		var tree map[string]any
		if err := json.Unmarshal(mf.FieldsV1.GetRawBytes(), &tree); err != nil {
			continue
		}
		found := true
		for _, p := range path {
			next, ok := tree[p].(map[string]any)
			if !ok {
				found = false
				break
			}
			tree = next
		}
		if found {
			return mf.Manager
		}
	}
	return "unknown"
}
