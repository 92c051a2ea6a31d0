package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmac "github.com/cert-manager/cert-manager/pkg/client/applyconfigurations/certmanager/v1"
	cmmetaac "github.com/cert-manager/cert-manager/pkg/client/applyconfigurations/meta/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/client-go/tools/events"
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
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/custody"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Names of objects the Tenant controller owns, defined by the device
// contract (the gateway reads the trust bundle too).
const (
	// TrustBundleName is contract.TrustBundleName.
	TrustBundleName = contract.TrustBundleName
	// TrustBundleKey is contract.TrustBundleKey.
	TrustBundleKey = contract.TrustBundleKey
	// AnnotationRetainedCAs is contract.AnnotationRetainedCAs.
	AnnotationRetainedCAs = contract.AnnotationRetainedCAs
	// TenantRootIssuerName is contract.TenantRootIssuerName.
	TenantRootIssuerName = contract.TenantRootIssuerName
	// tenantCADuration is the lifetime of a tenant's root CA.
	tenantCADuration = 365 * 24 * time.Hour
	// caRetentionSlack is added to the device certificate lifetime when a
	// replaced CA is kept in the bundle: cert-manager may still sign with a
	// cached key shortly after the manager sees the new one.
	caRetentionSlack = 10 * time.Minute
)

// TenantCAName is contract.TenantCAName: the name of the Certificate and
// Secret of a tenant's root CA in the operator namespace.
func TenantCAName(tenant string) string { return contract.TenantCAName(tenant) }

// TenantIssuerName is contract.TenantIssuerName: the name of the tenant's
// Issuer in the operator namespace.
func TenantIssuerName(tenant string) string { return contract.TenantIssuerName(tenant) }

// tenantRoles maps a member role to the ClusterRole bound for it.
var tenantRoles = []struct {
	role        custodyv1alpha1.TenantRole
	clusterRole string
}{
	{custodyv1alpha1.TenantRoleAdmin, "custody-tenant-admin"},
	{custodyv1alpha1.TenantRoleOperator, "custody-tenant-operator"},
	{custodyv1alpha1.TenantRoleViewer, "custody-tenant-viewer"},
}

// TenantReconciler keeps a Tenant's namespace, RoleBindings, intermediate
// CA, Issuer and trust bundle in place, and releases its devices when the
// Tenant is deleted.
type TenantReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// Custody writes every ownership change of a Device.
	Custody *custody.Applier
	Options Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=tenants,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=tenants/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=tenants/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=bind,resourceNames=custody-tenant-admin;custody-tenant-operator;custody-tenant-viewer
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates;issuers,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one Tenant to its desired state.
func (r *TenantReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	tenant := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, req.NamespacedName, tenant); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if tenant.DeletionTimestamp.IsZero() && controllerutil.AddFinalizer(tenant, custodyv1alpha1.FinalizerName) {
		return reconcile.Result{}, r.Client.Update(ctx, tenant, client.FieldOwner(FieldOwner))
	}

	before := tenant.DeepCopy()
	defer func() {
		if err := r.patchStatus(ctx, before, tenant, retErr == nil); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()

	if !tenant.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, tenant)
	}
	return r.reconcileNormal(ctx, tenant)
}

func (r *TenantReconciler) patchStatus(ctx context.Context, before, tenant *custodyv1alpha1.Tenant, success bool) error {
	if success && tenant.DeletionTimestamp.IsZero() {
		tenant.Status.ObservedGeneration = tenant.Generation
	}
	if equality.Semantic.DeepEqual(before.Status, tenant.Status) {
		return nil
	}
	// The tenant controller owns the conditions, namespace, issuer and
	// observedGeneration; the claim bookkeeping (claimThrottles,
	// failedClaimAttempts) is the claim controller's, so this patch, which
	// carries only what changed here, needs no resourceVersion and never
	// collides with a reservation.
	if err := r.Client.Status().Patch(ctx, tenant, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	return nil
}

func (r *TenantReconciler) setCondition(t *custodyv1alpha1.Tenant, typ string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&t.Status.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: t.Generation})
}

func (r *TenantReconciler) reconcileNormal(ctx context.Context, t *custodyv1alpha1.Tenant) (reconcile.Result, error) {
	ns := t.TargetNamespace()
	t.Status.Namespace = ns
	t.Status.Issuer = TenantIssuerName(t.Name)

	var bundleChange time.Time // when a replaced CA leaves the trust bundle
	steps := []struct {
		condition string
		run       func(context.Context, *custodyv1alpha1.Tenant) (bool, string, string, error)
	}{
		{custodyv1alpha1.TenantConditionNamespaceReady, r.ensureNamespace},
		{custodyv1alpha1.TenantConditionMembersBound, r.ensureRoleBindings},
		{custodyv1alpha1.TenantConditionCertificateAuthorityReady, r.ensureCA},
		{custodyv1alpha1.TenantConditionTrustBundleReady, func(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, string, string, error) {
			ok, reason, msg, next, err := r.ensureTrustBundle(ctx, t)
			bundleChange = next
			return ok, reason, msg, err
		}},
	}
	ready, readyReason, readyMsg := true, custodyv1alpha1.TenantReasonReady, "The tenant's namespace, members, certificate authority and trust bundle are in place."
	for _, s := range steps {
		ok, reason, msg, err := s.run(ctx, t)
		if err != nil {
			r.setCondition(t, s.condition, false, custodyv1alpha1.TenantReasonReconcileError, "A transient error occurred; retrying.")
			r.setCondition(t, custodyv1alpha1.ConditionReady, false, custodyv1alpha1.TenantReasonReconcileError, s.condition+": a transient error occurred; retrying.")
			return reconcile.Result{}, err
		}
		r.setCondition(t, s.condition, ok, reason, msg)
		if !ok && ready {
			ready, readyReason, readyMsg = false, reason, s.condition+": "+msg
		}
		if !ok && s.condition == custodyv1alpha1.TenantConditionNamespaceReady {
			// Nothing else can be placed without the namespace.
			for _, rest := range steps[1:] {
				r.setCondition(t, rest.condition, false, custodyv1alpha1.TenantReasonWaitingForNamespace, "Waiting for the namespace.")
			}
			break
		}
	}
	r.setCondition(t, custodyv1alpha1.ConditionReady, ready, readyReason, readyMsg)

	// status.boundDevices is the TenantDevicesReconciler's.

	if !ready {
		// cert-manager's progress is watched; this only bounds the wait.
		return reconcile.Result{RequeueAfter: 30 * time.Second}, nil
	}
	if !bundleChange.IsZero() {
		return reconcile.Result{RequeueAfter: max(bundleChange.Sub(r.Options.Clock.Now()), time.Second)}, nil
	}
	return reconcile.Result{}, nil
}

func (r *TenantReconciler) ensureNamespace(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, string, string, error) {
	name := t.TargetNamespace()
	if name == r.Options.OperatorNamespace {
		return false, custodyv1alpha1.TenantReasonNamespaceReserved, fmt.Sprintf("Namespace %q is the Custody manager's own; choose another spec.namespace.", name), nil
	}
	existing := &corev1.Namespace{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: name}, existing)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, "", "", err
	case existing.Labels[custodyv1alpha1.LabelTenant] != t.Name:
		return false, custodyv1alpha1.TenantReasonNamespaceConflict, fmt.Sprintf("Namespace %q already exists and does not belong to this Tenant; choose another spec.namespace.", name), nil
	case !existing.DeletionTimestamp.IsZero():
		return false, custodyv1alpha1.TenantReasonNamespaceConflict, fmt.Sprintf("Namespace %q is being deleted; wait for it to go, then the Tenant recreates it.", name), nil
	}
	nsApply := corev1ac.Namespace(name).WithLabels(tenantLabels(t))
	if err := r.Client.Apply(ctx, nsApply, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, "", "", err
	}
	return true, custodyv1alpha1.TenantReasonReady, "Namespace " + name + " is the tenant's.", nil
}

func (r *TenantReconciler) ensureRoleBindings(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, string, string, error) {
	ns := t.TargetNamespace()
	for _, tr := range tenantRoles {
		var subjects []*rbacv1ac.SubjectApplyConfiguration
		for _, m := range t.Spec.Members {
			if m.Role != tr.role {
				continue
			}
			s := rbacv1ac.Subject().WithKind(string(m.Kind)).WithName(m.Name)
			if m.Kind == custodyv1alpha1.MemberKindServiceAccount {
				s.WithNamespace(m.Namespace)
			} else {
				s.WithAPIGroup(rbacv1.GroupName)
			}
			subjects = append(subjects, s)
		}
		name := tr.clusterRole
		if len(subjects) == 0 {
			rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
			if err := r.Client.Delete(ctx, rb); client.IgnoreNotFound(err) != nil {
				return false, "", "", err
			}
			continue
		}
		rb := rbacv1ac.RoleBinding(name, ns).
			WithLabels(tenantLabels(t)).
			WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName(tr.clusterRole)).
			WithSubjects(subjects...)
		if err := r.Client.Apply(ctx, rb, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			return false, "", "", err
		}
	}
	return true, custodyv1alpha1.TenantReasonReady, fmt.Sprintf("%d members are bound to their roles.", len(t.Spec.Members)), nil
}

func tenantLabels(t *custodyv1alpha1.Tenant) map[string]string {
	return map[string]string{custodyv1alpha1.LabelTenant: t.Name, custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}
}

func (r *TenantReconciler) ensureCA(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, string, string, error) {
	opNS := r.Options.OperatorNamespace
	caName := TenantCAName(t.Name)
	// Each tenant CA is a self-signed root: a bundle holding it alone is a
	// complete trust anchor for plain OpenSSL, and no other tenant's
	// certificate chains to it. A tenant made by an earlier version (an
	// intermediate under the shared root) is moved here by this apply:
	// cert-manager re-issues on the issuer change, with a new key
	// (rotation policy Always), and the trust bundle keeps the replaced CA
	// while certificates it signed may still be valid.
	selfSigned := cmac.Issuer(TenantRootIssuerName, opNS).
		WithLabels(map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}).
		WithSpec(cmac.IssuerSpec().WithSelfSigned(cmac.SelfSignedIssuer()))
	if err := r.Client.Apply(ctx, selfSigned, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, "", "", err
	}
	cert := cmac.Certificate(caName, opNS).
		WithLabels(tenantLabels(t)).
		WithSpec(cmac.CertificateSpec().
			WithIsCA(true).
			WithCommonName("Custody tenant " + t.Name + " CA").
			WithSecretName(caName).
			WithSecretTemplate(cmac.CertificateSecretTemplate().WithLabels(tenantLabels(t))).
			WithDuration(metav1.Duration{Duration: tenantCADuration}).
			WithPrivateKey(cmac.CertificatePrivateKey().WithAlgorithm(cmapi.ECDSAKeyAlgorithm).WithSize(256).WithRotationPolicy(cmapi.RotationPolicyAlways)).
			WithIssuerRef(cmmetaac.IssuerReference().WithName(TenantRootIssuerName).WithKind(cmapi.IssuerKind).WithGroup("cert-manager.io")))
	if err := r.Client.Apply(ctx, cert, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, "", "", err
	}
	issuer := cmac.Issuer(TenantIssuerName(t.Name), opNS).
		WithLabels(tenantLabels(t)).
		WithSpec(cmac.IssuerSpec().WithCA(cmac.CAIssuer().WithSecretName(caName)))
	if err := r.Client.Apply(ctx, issuer, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, "", "", err
	}

	current := &cmapi.Certificate{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: opNS, Name: caName}, current); err != nil {
		return false, "", "", err
	}
	if !certificateReady(current) {
		return false, custodyv1alpha1.TenantReasonCertificateAuthorityPending, "cert-manager has not issued the tenant's root CA yet.", nil
	}
	iss := &cmapi.Issuer{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: opNS, Name: TenantIssuerName(t.Name)}, iss); err != nil {
		return false, "", "", err
	}
	if !issuerReady(iss) {
		return false, custodyv1alpha1.TenantReasonCertificateAuthorityPending, "The tenant's Issuer is not ready yet.", nil
	}
	return true, custodyv1alpha1.TenantReasonReady, "The tenant's root CA is issued and its Issuer is ready.", nil
}

func certificateReady(c *cmapi.Certificate) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == cmapi.CertificateConditionReady {
			return cond.Status == cmmeta.ConditionTrue && cond.ObservedGeneration == c.Generation
		}
	}
	return false
}

func issuerReady(i *cmapi.Issuer) bool {
	for _, cond := range i.Status.Conditions {
		if cond.Type == cmapi.IssuerConditionReady {
			return cond.Status == cmmeta.ConditionTrue
		}
	}
	return false
}

// ensureTrustBundle publishes the tenant's CA, and the CAs it replaced while
// certificates they signed may still be valid (see NextTrustBundle), in the
// tenant namespace. It returns when a retained CA next leaves the bundle.
func (r *TenantReconciler) ensureTrustBundle(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, string, string, time.Time, error) {
	secret := &corev1.Secret{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: r.Options.OperatorNamespace, Name: TenantCAName(t.Name)}, secret)
	if apierrors.IsNotFound(err) {
		return false, custodyv1alpha1.TenantReasonCertificateAuthorityPending, "Waiting for the tenant's CA.", time.Time{}, nil
	}
	if err != nil {
		return false, "", "", time.Time{}, err
	}
	chain, err := protocol.ParseCertificatesPEM(secret.Data[corev1.TLSCertKey])
	if err != nil || len(chain) == 0 {
		return false, custodyv1alpha1.TenantReasonCertificateAuthorityPending, "Waiting for the tenant's CA.", time.Time{}, nil
	}
	var previous *contract.TrustBundle
	existing := &corev1.ConfigMap{}
	err = r.Client.Get(ctx, client.ObjectKey{Namespace: t.TargetNamespace(), Name: TrustBundleName}, existing)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, "", "", time.Time{}, err
	default:
		// An unreadable bundle is replaced by the current CA alone.
		previous, _ = contract.ParseTrustBundle(existing.Data[TrustBundleKey], existing.Annotations[AnnotationRetainedCAs])
	}
	keep := r.Options.CertificateDuration
	if c := t.Spec.Certificates; c != nil && c.Duration != nil && c.Duration.Duration > keep {
		keep = c.Duration.Duration
	}
	// Only the tenant's own CA (chain[0]) is a trust anchor: never the shared
	// root or anything above an earlier intermediate, which would make every
	// tenant's devices verify under every bundle.
	bundle := contract.NextTrustBundle(chain[0], previous, r.Options.Clock.Now(), keep+caRetentionSlack)
	cm := corev1ac.ConfigMap(TrustBundleName, t.TargetNamespace()).
		WithLabels(tenantLabels(t)).
		WithData(map[string]string{TrustBundleKey: bundle.PEM()})
	if a := bundle.RetainedAnnotation(); a != "" {
		cm.WithAnnotations(map[string]string{AnnotationRetainedCAs: a})
	}
	if err := r.Client.Apply(ctx, cm, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, "", "", time.Time{}, err
	}
	if n := len(bundle.Certificates) - 1; n > 0 {
		return true, custodyv1alpha1.TenantReasonReady, fmt.Sprintf("ConfigMap %s holds the tenant's root CA, and %d replaced CA(s) until %s.", TrustBundleName, n, bundle.NextChange().Format(time.RFC3339)), bundle.NextChange(), nil
	}
	return true, custodyv1alpha1.TenantReasonReady, "ConfigMap " + TrustBundleName + " holds the tenant's root CA.", time.Time{}, nil
}

// reconcileDelete ends every binding of the tenant before anything else
// goes: Claims in the namespace are deleted (their finalizers release what
// they hold), devices still bound to the tenant (policy Retain) are
// released, then the CA, Issuer and namespace are removed and the finalizer
// is dropped. Nothing is left half-bound.
func (r *TenantReconciler) reconcileDelete(ctx context.Context, t *custodyv1alpha1.Tenant) (reconcile.Result, error) {
	logger := log.FromContext(ctx)
	ns := t.TargetNamespace()
	r.setCondition(t, custodyv1alpha1.ConditionReady, false, custodyv1alpha1.TenantReasonDeleting, "The Tenant is being deleted; its devices are being released.")

	owned, err := r.namespaceOwned(ctx, t)
	if err != nil {
		return reconcile.Result{}, err
	}
	if owned {
		if err := r.Client.DeleteAllOf(ctx, &custodyv1alpha1.Claim{}, client.InNamespace(ns)); err != nil {
			return reconcile.Result{}, err
		}
		var claims custodyv1alpha1.ClaimList
		if err := r.Client.List(ctx, &claims, client.InNamespace(ns)); err != nil {
			return reconcile.Result{}, err
		}
		if len(claims.Items) > 0 {
			logger.V(1).Info("waiting for the tenant's Claims to be released", "remaining", len(claims.Items))
			return reconcile.Result{RequeueAfter: time.Second}, nil
		}
	}

	var devices custodyv1alpha1.DeviceList
	if err := r.Client.List(ctx, &devices, client.MatchingFields{indexDeviceTenant: t.Name}); err != nil {
		return reconcile.Result{}, err
	}
	for i := range devices.Items {
		d := &devices.Items[i]
		if d.Spec.ClaimRef == nil {
			continue
		}
		ch, err := custody.Release(d, custody.Holder{}, "TenantDeleted", "", "", custody.By{Actor: "tenant:" + t.Name, Time: r.Options.Clock.Now()})
		if err == nil {
			ch.Event.Related = t
			err = r.Custody.Apply(ctx, d, ch)
		}
		if err != nil {
			return reconcile.Result{}, err
		}
	}

	opNS := r.Options.OperatorNamespace
	for _, obj := range []client.Object{
		&cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: TenantIssuerName(t.Name)}},
		&cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: TenantCAName(t.Name)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: TenantCAName(t.Name)}},
	} {
		if err := r.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			return reconcile.Result{}, err
		}
	}
	if owned {
		if err := r.Client.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); client.IgnoreNotFound(err) != nil {
			return reconcile.Result{}, err
		}
	}
	r.Recorder.Eventf(t, nil, corev1.EventTypeNormal, "Deleted", "Delete", "Released %d devices and removed the tenant's CA and namespace.", len(devices.Items))
	if controllerutil.RemoveFinalizer(t, custodyv1alpha1.FinalizerName) {
		if err := r.Client.Update(ctx, t, client.FieldOwner(FieldOwner)); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	return reconcile.Result{}, nil
}

func (r *TenantReconciler) namespaceOwned(ctx context.Context, t *custodyv1alpha1.Tenant) (bool, error) {
	ns := &corev1.Namespace{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: t.TargetNamespace()}, ns)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil && ns.Labels[custodyv1alpha1.LabelTenant] == t.Name, err
}

// SetupWithManager registers the controller.
func (r *TenantReconciler) SetupWithManager(mgr manager.Manager) error {
	byTenantLabel := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		if name := o.GetLabels()[custodyv1alpha1.LabelTenant]; name != "" {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: name}}}
		}
		return nil
	})
	// The Tenant's status is written on every claim attempt (throttles);
	// only changes to what the Tenant asks for need a reconcile.
	specChanged := predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}, predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return !e.ObjectNew.GetDeletionTimestamp().Equal(e.ObjectOld.GetDeletionTimestamp()) ||
				len(e.ObjectNew.GetFinalizers()) != len(e.ObjectOld.GetFinalizers())
		},
	})
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Tenant{}, ctrl.WithPredicates(specChanged)).
		Watches(&cmapi.Certificate{}, byTenantLabel).
		Watches(&cmapi.Issuer{}, byTenantLabel).
		WithOptions(controllerOptions(r.Options.workers("tenant"))).
		Named("tenant").
		Complete(lookingAgain(r))
}
