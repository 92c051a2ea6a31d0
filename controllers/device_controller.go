package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/custody"
)

// DeviceReconciler keeps a Device's phase, conditions and summary in line
// with its spec, records sales in its history, ends the binding of a
// decommissioned device, and opens the Claim of a direct sale.
type DeviceReconciler struct {
	Client client.Client
	// APIReader reads Devices with their managedFields (the cache strips
	// them), to record which ERP field manager wrote a sale.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Custody writes every ownership change of a Device.
	Custody *custody.Applier
	Options Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=devices,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=devices/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=claims,verbs=create

// Reconcile keeps one Device's custody chain complete (the one crash-repair
// rule, custody.Complete), records what the ERP changed (a restore, a sale,
// a decommissioning) through the custody core, opens a direct sale's Claim,
// and computes the Device's status.
func (r *DeviceReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	device := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, req.NamespacedName, device); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if r.Custody.Applying(device.Name) {
		// Another controller of this manager is writing a change of this
		// Device and completes it itself; look after it has.
		return reconcile.Result{RequeueAfter: applyingRecheck}, nil
	}
	if err := r.Custody.Complete(ctx, device); err != nil {
		return reconcile.Result{}, err
	}
	if waiting, err := r.restore(ctx, device); err != nil || waiting {
		if err == nil {
			return reconcile.Result{RequeueAfter: restoreRecheck}, nil
		}
		return reconcile.Result{}, err
	}
	for _, step := range []func(context.Context, *custodyv1alpha1.Device) error{r.recordSale, r.decommission, r.recommission} {
		if err := step(ctx, device); err != nil {
			return reconcile.Result{}, err
		}
	}
	if err := r.openDirectSale(ctx, device); err != nil {
		return reconcile.Result{}, err
	}
	before := device.DeepCopy()
	if err := DeriveDeviceStatus(r.Client)(ctx, device); err != nil {
		return reconcile.Result{}, err
	}
	if equality.Semantic.DeepEqual(before.Status, device.Status) {
		return reconcile.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, device, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	return reconcile.Result{}, nil
}

// RestoreGrace is how long after a Device was re-created from a backup the
// manager waits for the Claims it refers to to be re-created too, before it
// records the restore without them (their tenants' new Claims then
// reattach). Until the restore is recorded no change applies to the device.
const RestoreGrace = 2 * time.Minute

// applyingRecheck is how soon the Device controller looks again at a
// Device another controller was changing (its writes' events usually come
// first).
const applyingRecheck = 100 * time.Millisecond

// lookingAgain wraps a reconciler that changes Devices (custody.Apply):
// a Device read from a cache that has not yet seen this manager's own
// last write of it (custody.ErrCompleting) is looked at again shortly,
// as that write's event would bring it, rather than retried with
// back-off and logged as a failure.
func lookingAgain(r reconcile.Reconciler) reconcile.Reconciler {
	return reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
		res, err := r.Reconcile(ctx, req)
		if errors.Is(err, custody.ErrCompleting) {
			return reconcile.Result{RequeueAfter: applyingRecheck}, nil
		}
		return res, err
	})
}

// restoreRecheck is how often a restored Device looks for its Claims.
const restoreRecheck = 2 * time.Second

// restore records that the Device was re-created from a backup
// (custody.Restore): the Claims it refers to were re-created by the same
// restore with new UIDs, and its binding, cooling-off and dispute follow
// them by namespace and name. It reports waiting while a referenced Claim
// is missing and RestoreGrace has not passed.
func (r *DeviceReconciler) restore(ctx context.Context, d *custodyv1alpha1.Device) (waiting bool, err error) {
	if !custody.RestorePending(d) {
		return false, nil
	}
	current := map[string]types.UID{}
	refs := []custodyv1alpha1.DeviceClaimReference{}
	if d.Spec.ClaimRef != nil {
		refs = append(refs, *d.Spec.ClaimRef)
	}
	if d.Spec.PendingClaim != nil {
		refs = append(refs, d.Spec.PendingClaim.DeviceClaimReference)
	}
	if d.Spec.Dispute != nil {
		for _, p := range d.Spec.Dispute.Claims {
			refs = append(refs, p.DeviceClaimReference)
		}
	}
	missing := false
	for _, ref := range refs {
		c := &custodyv1alpha1.Claim{}
		if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, c); err != nil {
			if !apierrors.IsNotFound(err) {
				return false, err
			}
			missing = true
			continue
		}
		if c.DeviceName() == d.Name && c.DeletionTimestamp.IsZero() {
			current[ref.Namespace+"/"+ref.Name] = c.UID
		}
	}
	if missing && r.Options.Clock.Since(d.CreationTimestamp.Time) < RestoreGrace {
		return true, nil
	}
	full := &custodyv1alpha1.Device{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(d), full); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	tool := fieldManagerOf(full, "f:spec", "f:custody")
	ch, err := custody.Restore(d, current, tool, custody.By{Actor: "restore:" + tool, Time: r.Options.Clock.Now()})
	if err != nil {
		return false, err
	}
	return false, r.Custody.Apply(ctx, d, ch)
}

// recordSale records the ERP's sale in the device's history, once per
// order reference, with the ERP's field manager as the actor.
func (r *DeviceReconciler) recordSale(ctx context.Context, d *custodyv1alpha1.Device) error {
	if !custody.SaleToRecord(d) {
		return nil
	}
	full := &custodyv1alpha1.Device{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(d), full); err != nil {
		return client.IgnoreNotFound(err)
	}
	ch, err := custody.RecordSale(d, custody.By{Actor: "erp:" + fieldManagerOf(full, "f:spec", "f:sale"), Time: r.Options.Clock.Now()})
	if err != nil {
		return err
	}
	return r.Custody.Apply(ctx, d, ch)
}

// decommission ends the binding, cooling-off and dispute of a
// decommissioned device, and records it, in one change.
func (r *DeviceReconciler) decommission(ctx context.Context, d *custodyv1alpha1.Device) error {
	if !custody.DecommissionPending(d) {
		return nil
	}
	ch, err := custody.Decommission(d, custody.By{Actor: "erp:" + r.decommissionedBy(ctx, d), Time: r.Options.Clock.Now()})
	if err != nil {
		return err
	}
	ch.Record.Reference = fmt.Sprintf("generation/%d", d.Generation)
	return r.Custody.Apply(ctx, d, ch)
}

// recommission records that the ERP returned a decommissioned device to
// service.
func (r *DeviceReconciler) recommission(ctx context.Context, d *custodyv1alpha1.Device) error {
	if !custody.RecommissionPending(d) {
		return nil
	}
	ch, err := custody.Recommission(d, custody.By{Actor: "erp:" + r.decommissionedBy(ctx, d), Time: r.Options.Clock.Now()})
	if err != nil {
		return err
	}
	return r.Custody.Apply(ctx, d, ch)
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
	if err := r.Client.Create(ctx, c, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// DeriveDeviceStatus returns the function that sets a Device's phase,
// conditions and observed generation from its spec, its history and
// whether its bound Tenant exists (read through c). The device controller
// writes them when they differ; the custody core writes them with each
// history entry (custody.Applier.DeriveStatus), so that an ownership
// change costs one status write, not two.
func DeriveDeviceStatus(c client.Reader) func(context.Context, *custodyv1alpha1.Device) error {
	return func(ctx context.Context, d *custodyv1alpha1.Device) error {
		var tenant *custodyv1alpha1.Tenant
		if ref := d.Spec.ClaimRef; ref != nil {
			tenant = &custodyv1alpha1.Tenant{}
			if err := c.Get(ctx, client.ObjectKey{Name: ref.Tenant}, tenant); apierrors.IsNotFound(err) {
				tenant = nil
			} else if err != nil {
				return err
			}
		}
		DeviceStatus(d, tenant)
		d.Status.ObservedGeneration = d.Generation
		return nil
	}
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

// auditLog receives one line per custody history entry, with the whole
// entry: the complete, verifiable chain (`custodyctl history verify
// --audit-log`), where the Device keeps only the newest entries. The
// custody core writes it (custody.Applier).
var auditLog = ctrl.Log.WithName("audit")

// SetupWithManager registers the controller.
func (r *DeviceReconciler) SetupWithManager(mgr manager.Manager) error {
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Device{}).
		WithOptions(controllerOptions(r.Options.workers("device"))).
		Named("device").
		Complete(lookingAgain(r))
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
