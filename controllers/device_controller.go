package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
)

// maxHistory bounds Device.status.history (the CRD's MaxItems).
const maxHistory = 32

// DeviceReconciler keeps a Device's phase, conditions and summary in line
// with its spec.
type DeviceReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Options  Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=devices,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=devices/status,verbs=get;update;patch

// Reconcile computes one Device's status.
func (r *DeviceReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	device := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, req.NamespacedName, device); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
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
	case d.Spec.ClaimRef != nil:
		d.Status.Phase = custodyv1alpha1.DevicePhaseBound
		set(custodyv1alpha1.DeviceConditionClaimable, false, custodyv1alpha1.DeviceReasonBound, "The device is bound to tenant "+d.Spec.ClaimRef.Tenant+".")
		if tenant == nil {
			ready, readyReason, readyMsg = false, custodyv1alpha1.DeviceReasonTenantMissing, "The device is bound to Tenant "+d.Spec.ClaimRef.Tenant+", which does not exist. Support staff must release it."
		}
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

// appendHistory adds rec to d's history unless an entry of the same type
// for the same Claim is already there (retried reconciles), keeping the
// newest maxHistory entries. It reports whether it added anything.
func appendHistory(d *custodyv1alpha1.Device, rec custodyv1alpha1.CustodyRecord) bool {
	for _, h := range d.Status.History {
		if h.Type == rec.Type && h.ClaimUID == rec.ClaimUID && h.Tenant == rec.Tenant {
			return false
		}
	}
	d.Status.History = append(d.Status.History, rec)
	if n := len(d.Status.History); n > maxHistory {
		d.Status.History = d.Status.History[n-maxHistory:]
	}
	return true
}

// recordHistory appends rec to the history of Device name, re-reading the
// Device on conflict (the device controller writes its status too). It is
// idempotent: appendHistory ignores an entry that is already there.
func recordHistory(ctx context.Context, c client.Client, name string, rec custodyv1alpha1.CustodyRecord) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &custodyv1alpha1.Device{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, d); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := d.DeepCopy()
		if !appendHistory(d, rec) {
			return nil
		}
		return c.Status().Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	})
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
	}); err != nil {
		// The binding is already gone; the Event below records the change.
		rec.Eventf(d, nil, corev1.EventTypeWarning, "HistoryNotRecorded", "Release", "Could not record the release in status.history: %v", err)
	}
	rec.Eventf(d, nil, corev1.EventTypeNormal, "Released", "Release", "Released from tenant %s (claim %s/%s): %s.", released.Tenant, released.Namespace, released.Name, why)
	return nil
}

// SetupWithManager registers the controller.
func (r *DeviceReconciler) SetupWithManager(mgr manager.Manager) error {
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Device{}).
		Named("device").
		Complete(r)
}
