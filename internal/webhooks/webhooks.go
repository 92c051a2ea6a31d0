// Package webhooks holds Custody's validating admission webhooks: the rules
// that need the requester's identity or code the CRD schema cannot run.
// Everything else is validated by the CRDs' CEL rules.
//
// Error messages never echo a secret: a plaintext claim code is reported by
// where it was found, not by what was found.
package webhooks

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Options configure the webhooks.
type Options struct {
	// ManagerUsernames are the users allowed to write the manager-only
	// Device fields (managerOnlyFields: the binding and the custody
	// bookkeeping): the manager's ServiceAccount.
	ManagerUsernames []string
	// GatewayUsernames are the gateway's users: on Devices they may change
	// status.lastSeen and status.reported, and nothing else.
	GatewayUsernames []string
	// RestoreGroups are the groups of the restore identity: a member may
	// re-create objects from a backup as they were, manager-only Device
	// fields, pairing-token Claims and the recorded requester of Claims
	// included (docs/operations.md, "Backup and restore"). It may not change
	// them afterwards, and may not create SupportActions (commands, which a
	// restore would apply again). DefaultRestoreGroup when nil; an
	// empty list turns restores off.
	RestoreGroups []string
}

// DefaultRestoreGroup is the restore identity's group unless configured:
// only a cluster administrator who may impersonate it (or an authenticator
// that grants it) acts as the restore identity.
const DefaultRestoreGroup = "custody.dev:restore"

// isRestore reports whether the request comes from the restore identity.
func (o Options) isRestore(ctx context.Context) bool {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return false
	}
	groups := o.RestoreGroups
	if groups == nil {
		groups = []string{DefaultRestoreGroup}
	}
	return slices.ContainsFunc(req.UserInfo.Groups, func(g string) bool { return slices.Contains(groups, g) })
}

// Setup registers the webhooks with mgr's webhook server.
func Setup(mgr ctrl.Manager, opts Options) error {
	if err := ctrl.NewWebhookManagedBy(mgr, &custodyv1alpha1.Device{}).WithValidator(&DeviceValidator{Options: opts}).Complete(); err != nil {
		return err
	}
	if err := ctrl.NewWebhookManagedBy(mgr, &custodyv1alpha1.Claim{}).WithValidator(&ClaimValidator{Options: opts}).WithDefaulter(&ClaimDefaulter{Options: opts}).Complete(); err != nil {
		return err
	}
	return ctrl.NewWebhookManagedBy(mgr, &custodyv1alpha1.SupportAction{}).WithDefaulter(&SupportActionDefaulter{Options: opts}).Complete()
}

// requester is the user the API server authenticated for this request.
func requester(ctx context.Context) (string, error) {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return "", apierrors.NewInternalError(err)
	}
	return req.UserInfo.Username, nil
}

// +kubebuilder:webhook:path=/mutate-custody-dev-v1alpha1-claim,mutating=true,failurePolicy=fail,sideEffects=None,groups=custody.dev,resources=claims,verbs=create,versions=v1alpha1,name=mclaim.custody.dev,admissionReviewVersions=v1

// ClaimDefaulter records who created a Claim in spec.requestedBy,
// overwriting whatever the request said, as cert-manager does for a
// CertificateRequest's spec.username. The CRD keeps it immutable. Only the
// restore identity re-creates a Claim with the requester it had. It also
// adds the manager's finalizer.
type ClaimDefaulter struct {
	Options Options
}

// Default sets spec.requestedBy on creation.
func (d ClaimDefaulter) Default(ctx context.Context, c *custodyv1alpha1.Claim) error {
	user, err := requester(ctx)
	if err != nil {
		return err
	}
	if c.Spec.RequestedBy == "" || !d.Options.isRestore(ctx) {
		c.Spec.RequestedBy = user
	}
	// The manager's finalizer comes with the Claim, saving the claim
	// controller a write per Claim (it still adds one that is missing).
	controllerutil.AddFinalizer(c, custodyv1alpha1.FinalizerName)
	return nil
}

// +kubebuilder:webhook:path=/mutate-custody-dev-v1alpha1-supportaction,mutating=true,failurePolicy=fail,sideEffects=None,groups=custody.dev,resources=supportactions,verbs=create,versions=v1alpha1,name=msupportaction.custody.dev,admissionReviewVersions=v1

// SupportActionDefaulter records who created a SupportAction. The restore
// identity may not create one: a SupportAction is a command, applied once
// when it is created; its decision is already in the Device's spec and its
// record in the history and the audit log, so re-creating it from a backup
// would apply it again.
type SupportActionDefaulter struct {
	Options Options
}

// Default sets spec.requestedBy on creation.
func (d SupportActionDefaulter) Default(ctx context.Context, a *custodyv1alpha1.SupportAction) error {
	user, err := requester(ctx)
	if err != nil {
		return err
	}
	if d.Options.isRestore(ctx) {
		return apierrors.NewForbidden(custodyv1alpha1.GroupVersion.WithResource("supportactions").GroupResource(), a.Name,
			errors.New("SupportActions are not restored: each was applied when it was created, its decision is in the Device's spec and its record in the custody history and audit log, and re-creating it would apply it again"))
	}
	a.Spec.RequestedBy = user
	return nil
}

// +kubebuilder:webhook:path=/validate-custody-dev-v1alpha1-device,mutating=false,failurePolicy=fail,sideEffects=None,groups=custody.dev,resources=devices;devices/status,verbs=create;update;delete,versions=v1alpha1,name=vdevice.custody.dev,admissionReviewVersions=v1

// DeviceValidator protects a Device's binding and identity.
type DeviceValidator struct {
	Options Options
}

var deviceGK = custodyv1alpha1.GroupVersion.WithKind("Device").GroupKind()

// isManager reports whether the request comes from the manager.
func (o Options) isManager(ctx context.Context) bool {
	req, err := admission.RequestFromContext(ctx)
	return err == nil && slices.Contains(o.ManagerUsernames, req.UserInfo.Username)
}

// ValidateCreate checks the identity key and that no manager-only field is
// preset, except by the manager and the restore identity.
func (v *DeviceValidator) ValidateCreate(ctx context.Context, d *custodyv1alpha1.Device) (admission.Warnings, error) {
	var errs field.ErrorList
	if _, err := protocol.ParsePublicKeyPEM([]byte(d.Spec.Identity.PublicKey)); err != nil {
		errs = append(errs, field.Invalid(field.NewPath("spec", "identity", "publicKey"), "(PEM)", err.Error()))
	}
	if !v.Options.isManager(ctx) && !v.Options.isRestore(ctx) {
		errs = append(errs, managerFieldsSet(&d.Spec)...)
	}
	return nil, invalid(d.Name, errs)
}

// ValidateUpdate rejects binding changes by anyone but the manager, and any
// change by the gateway but a heartbeat.
func (v *DeviceValidator) ValidateUpdate(ctx context.Context, oldD, newD *custodyv1alpha1.Device) (admission.Warnings, error) {
	var errs field.ErrorList
	if req, err := admission.RequestFromContext(ctx); err == nil && slices.Contains(v.Options.GatewayUsernames, req.UserInfo.Username) {
		o, n := oldD.DeepCopy(), newD.DeepCopy()
		o.Status.LastSeen, o.Status.Reported, n.Status.LastSeen, n.Status.Reported = nil, nil, nil, nil
		if req.SubResource != "status" || !reflect.DeepEqual(o.Spec, n.Spec) || !reflect.DeepEqual(o.Status, n.Status) || !reflect.DeepEqual(o.Labels, n.Labels) || !reflect.DeepEqual(o.Annotations, n.Annotations) {
			errs = append(errs, field.Forbidden(field.NewPath("status"), "the gateway may only record heartbeats (status.lastSeen, status.reported)"))
		}
		return nil, invalid(newD.Name, errs)
	}
	if !v.Options.isManager(ctx) {
		errs = append(errs, managerFieldsChanged(oldD, newD)...)
		errs = append(errs, resale(oldD, newD)...)
	}
	return nil, invalid(newD.Name, errs)
}

// managerField is a Device field only the Custody manager writes: the
// binding and the custody bookkeeping. Anyone else is refused on create
// and on update alike.
type managerField struct {
	// name is the field's JSON name under spec.
	name string
	// set reports whether spec holds a value for the field.
	set func(*custodyv1alpha1.DeviceSpec) bool
	// value is the field's value, compared on update.
	value func(*custodyv1alpha1.DeviceSpec) any
	// created and changed explain the refusal of a create that sets the
	// field and of an update that changes it.
	created, changed string
}

// managerOnlyFields is the one list of manager-only Device fields. A new
// DeviceSpec field must be added here or to userWritableFields in the tests
// (TestManagerOnlyFieldsCoverDeviceSpec fails otherwise).
//
// The restore identity (Options.RestoreGroups) may set them on create, to
// re-create a Device from a backup; only the manager changes them.
var managerOnlyFields = []managerField{
	{
		name: "claimRef", set: func(s *custodyv1alpha1.DeviceSpec) bool { return s.ClaimRef != nil },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.ClaimRef },
		created: "only the Custody manager binds devices; create the Device without claimRef and let the tenant claim it",
		changed: "only the Custody manager changes a device's binding; to release a device, delete its Claim (policy Release), create a Transfer, or ask support staff",
	},
	{
		name: "consumedClaimCodes", set: func(s *custodyv1alpha1.DeviceSpec) bool { return len(s.ConsumedClaimCodes) > 0 },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.ConsumedClaimCodes },
		created: "only the Custody manager records consumed claim codes; create the Device without consumedClaimCodes",
		changed: "only the Custody manager records consumed claim codes; set a new spec.claimCode.verifier to issue a new code",
	},
	{
		name: "consumedSaleRecords", set: func(s *custodyv1alpha1.DeviceSpec) bool { return len(s.ConsumedSaleRecords) > 0 },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.ConsumedSaleRecords },
		created: "only the Custody manager records used sale records; create the Device without consumedSaleRecords",
		changed: "only the Custody manager records used sale records",
	},
	{
		name: "pendingClaim", set: func(s *custodyv1alpha1.DeviceSpec) bool { return s.PendingClaim != nil },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.PendingClaim },
		created: "only the Custody manager records a claim's cooling-off; create the Device without pendingClaim",
		changed: "only the Custody manager records a claim's cooling-off",
	},
	{
		name: "custody", set: func(s *custodyv1alpha1.DeviceSpec) bool { return s.Custody != nil },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.Custody },
		created: "only the Custody manager writes the custody chain; create the Device without custody",
		changed: "only the Custody manager writes the custody chain (every ownership change records itself there)",
	},
	{
		name: "dispute", set: func(s *custodyv1alpha1.DeviceSpec) bool { return s.Dispute != nil },
		value:   func(s *custodyv1alpha1.DeviceSpec) any { return s.Dispute },
		created: "only the Custody manager records disputes; create the Device without dispute",
		changed: "only the Custody manager records disputes; support staff resolve them with a SupportAction",
	},
}

// managerFieldsSet rejects a new Device that presets a manager-only field.
func managerFieldsSet(spec *custodyv1alpha1.DeviceSpec) field.ErrorList {
	var errs field.ErrorList
	for _, f := range managerOnlyFields {
		if f.set(spec) {
			errs = append(errs, field.Forbidden(field.NewPath("spec", f.name), f.created))
		}
	}
	return errs
}

// managerFieldsChanged rejects changes to a manager-only field. An empty
// list and an absent one are the same.
func managerFieldsChanged(oldD, newD *custodyv1alpha1.Device) field.ErrorList {
	var errs field.ErrorList
	for _, f := range managerOnlyFields {
		o, n := &oldD.Spec, &newD.Spec
		if !f.set(o) && !f.set(n) {
			continue
		}
		if !reflect.DeepEqual(f.value(o), f.value(n)) {
			errs = append(errs, field.Forbidden(field.NewPath("spec", f.name), f.changed))
		}
	}
	return errs
}

// resale rejects a new sale of a device that is bound, cooling off or
// disputed (a double sale): the ERP must not move ownership silently. The
// holder hands the device on with a Transfer, or support staff reset it.
func resale(oldD, newD *custodyv1alpha1.Device) field.ErrorList {
	o, n := oldD.Spec.Sale, newD.Spec.Sale
	if o == nil || (n != nil && o.OrderReference == n.OrderReference && o.CustodianTenant == n.CustodianTenant && o.OwnerTenant == n.OwnerTenant) {
		return nil
	}
	var held string
	switch {
	case oldD.Spec.ClaimRef != nil:
		held = "is bound to tenant " + oldD.Spec.ClaimRef.Tenant
	case oldD.Spec.PendingClaim != nil:
		held = "is being claimed (cooling off) by tenant " + oldD.Spec.PendingClaim.Tenant
	case oldD.Spec.Dispute != nil:
		held = "is disputed"
	default:
		return nil
	}
	return field.ErrorList{field.Forbidden(field.NewPath("spec", "sale"), "conflict: the device "+held+
		"; a new sale (order reference, custodianTenant or ownerTenant) would move ownership silently. The holder hands it on with a Transfer, or support staff reset it; then record the sale")}
}

// ValidateDelete refuses to delete a bound device: ownership would vanish
// without a trace.
func (v *DeviceValidator) ValidateDelete(_ context.Context, d *custodyv1alpha1.Device) (admission.Warnings, error) {
	if d.Spec.ClaimRef != nil {
		return nil, invalid(d.Name, field.ErrorList{field.Forbidden(field.NewPath("spec", "claimRef"), "the device is bound to a tenant; release it before deleting it")})
	}
	return nil, nil
}

func invalid(name string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(deviceGK, name, errs)
}

// +kubebuilder:webhook:path=/validate-custody-dev-v1alpha1-claim,mutating=false,failurePolicy=fail,sideEffects=None,groups=custody.dev,resources=claims;claims/status,verbs=create;update,versions=v1alpha1,name=vclaim.custody.dev,admissionReviewVersions=v1

// ClaimValidator keeps plaintext claim codes out of Claims, and pairing-token
// proofs to the manager.
type ClaimValidator struct {
	Options Options
}

var claimGK = custodyv1alpha1.GroupVersion.WithKind("Claim").GroupKind()

// ValidateCreate rejects a Claim holding a claim code anywhere, and a
// pairing-token proof from anyone but the manager.
func (v ClaimValidator) ValidateCreate(ctx context.Context, c *custodyv1alpha1.Claim) (admission.Warnings, error) {
	if c.Spec.PairingToken != nil {
		if !v.Options.isManager(ctx) && !v.Options.isRestore(ctx) {
			return nil, apierrors.NewInvalid(claimGK, c.Name, field.ErrorList{field.Forbidden(field.NewPath("spec", "pairingToken"),
				"only the Custody manager creates pairing-token Claims, when a device presents the token; give the token to the device instead")})
		}
	}
	return nil, rejectPlaintext(c)
}

// ValidateUpdate rejects a Claim holding a claim code anywhere and, in its
// status, a record that its code was verified written by anyone but the
// manager: with one, the manager binds without verifying the code again.
func (v ClaimValidator) ValidateUpdate(ctx context.Context, oldC, c *custodyv1alpha1.Claim) (admission.Warnings, error) {
	if req, err := admission.RequestFromContext(ctx); err == nil && req.SubResource == "status" {
		if !v.Options.isManager(ctx) && !equality.Semantic.DeepEqual(oldC.Status.CodeVerified, c.Status.CodeVerified) {
			return nil, apierrors.NewInvalid(claimGK, c.Name, field.ErrorList{field.Forbidden(field.NewPath("status", "codeVerified"),
				"only the Custody manager records that a claim code was verified")})
		}
		return nil, nil // the manager's own writes; spec and metadata are kept as they were
	}
	return nil, rejectPlaintext(c)
}

// ValidateDelete allows every deletion.
func (ClaimValidator) ValidateDelete(context.Context, *custodyv1alpha1.Claim) (admission.Warnings, error) {
	return nil, nil
}

// PlaintextMessage is the rejection of a Claim holding a claim code. It
// names where, never what.
const PlaintextMessage = "appears to contain a claim code in plain text. Remove it, put the code in a Secret in this namespace and reference it with spec.claimCode.secretRef. Treat the code as exposed if this manifest was stored anywhere (for example in Git)."

func rejectPlaintext(c *custodyv1alpha1.Claim) error {
	// Only what a user writes is scanned: server-set metadata (uid,
	// resourceVersion, timestamps, managedFields) and status are not.
	obj := &custodyv1alpha1.Claim{Spec: c.Spec}
	obj.Name, obj.GenerateName = c.Name, c.GenerateName
	obj.Labels, obj.Annotations, obj.Finalizers = c.Labels, c.Annotations, c.Finalizers
	data, err := json.Marshal(obj)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	var tree any
	if err := json.Unmarshal(data, &tree); err != nil {
		return apierrors.NewInternalError(err)
	}
	var errs field.ErrorList
	walk(tree, nil, func(p *field.Path, s string) {
		if claimcode.Contains(s) {
			errs = append(errs, field.Forbidden(p, PlaintextMessage))
		}
	})
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(claimGK, c.Name, errs)
}

// walk calls fn on every string in v: map keys and values, list items. Paths
// stop at map keys so that a key holding a secret is not echoed.
func walk(v any, p *field.Path, fn func(*field.Path, string)) {
	switch t := v.(type) {
	case string:
		fn(p, t)
	case []any:
		for i, x := range t {
			walk(x, p.Index(i), fn)
		}
	case map[string]any:
		free := p != nil && (p.String() == "metadata.annotations" || p.String() == "metadata.labels")
		for k, x := range t {
			var child *field.Path
			switch {
			case p == nil:
				child = field.NewPath(k)
			case free:
				child = p
			default:
				child = p.Child(k)
			}
			fn(child, k)
			walk(x, child, fn)
		}
	}
}
