package controllers

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// DataAccessReconciler issues a tenant's data-plane credentials: for each
// DataAccess in a tenant namespace, a client certificate from the tenant's
// CA with the identity derived from the DataAccess (contract.AccessIdentity),
// its private key made by the manager, delivered with the tenant's trust
// bundle in the Secret <name>-credentials next to it, and renewed two thirds
// into its lifetime. decideAccess decides each step; Reconcile takes it.
// Deleting the DataAccess deletes the Secret, the pending key and every
// request at once.
//
// Secrets are read from the API server, never cached: the manager caches
// only their metadata.
type DataAccessReconciler struct {
	Client client.Client
	// APIReader reads Secrets, the trust bundle and the DataAccess's
	// requests past the cache: the steps must see their own writes.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Options   Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=dataaccesses,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=dataaccesses/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=custody.dev,resources=dataaccesses/finalizers,verbs=update
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get

// accessKeySecretName is the manager's Secret, in the operator namespace,
// holding the pending private key of the DataAccess with UID uid.
func accessKeySecretName(uid types.UID) string { return "access-" + string(uid) + "-key" }

// accessRequestName is the name of the CertificateRequest of the
// DataAccess with UID uid for public key pub: a retry finds the request it
// made before.
func accessRequestName(uid types.UID, pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "access-" + string(uid)
	}
	sum := sha256.Sum256(der)
	return "access-" + string(uid) + "-" + hex.EncodeToString(sum[:8])
}

// accessKeyData is the key Secret's key of the PEM private key.
const accessKeyData = corev1.TLSPrivateKeyKey

// parseAccessKey reads a PKCS#8 PEM ECDSA key.
func parseAccessKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an ECDSA key")
	}
	return ec, nil
}

// maxAccessSteps bounds the steps one reconcile takes; the next reconcile
// goes on.
const maxAccessSteps = 8

// Reconcile takes the steps decideAccess decides for one DataAccess, until
// it waits.
func (r *DataAccessReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	da := &custodyv1alpha1.DataAccess{}
	if err := r.Client.Get(ctx, req.NamespacedName, da); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !da.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, r.reconcileDelete(ctx, da)
	}
	if !controllerutil.ContainsFinalizer(da, custodyv1alpha1.FinalizerName) {
		before := da.DeepCopy()
		controllerutil.AddFinalizer(da, custodyv1alpha1.FinalizerName)
		if err := r.Client.Patch(ctx, da, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}

	before := da.DeepCopy()
	var d accessDecision
	defer func() {
		if d.Reason != "" {
			meta.SetStatusCondition(&da.Status.Conditions, metav1.Condition{Type: custodyv1alpha1.ConditionReady, Status: d.Ready,
				Reason: d.Reason, Message: d.Message, ObservedGeneration: da.Generation})
		}
		if retErr == nil {
			da.Status.ObservedGeneration = da.Generation
		}
		if err := r.patchStatus(ctx, da, before); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	for range maxAccessSteps {
		now := r.Options.Clock.Now()
		facts, err := r.observe(ctx, da, now)
		if err != nil {
			return reconcile.Result{}, err
		}
		d = decideAccess(facts)
		if d.Step == accessIdle || d.Step == accessWait {
			return reconcile.Result{RequeueAfter: d.RequeueAfter}, nil
		}
		if fp := r.Options.FailPoint; fp != nil {
			if err := fp(FailPointAccessStep, client.ObjectKeyFromObject(da)); err != nil {
				return reconcile.Result{}, err
			}
		}
		switch d.Step {
		case accessDeleteRequests:
			if d.DropKey {
				if err := r.deleteKey(ctx, da); err != nil {
					return reconcile.Result{}, err
				}
			}
			for _, name := range d.Delete {
				if err := r.deleteRequest(ctx, name); err != nil {
					return reconcile.Result{}, err
				}
			}
			if d.Failed != nil {
				r.Recorder.Eventf(da, nil, corev1.EventTypeWarning, "CertificateRequestFailed", "Issue",
					"The tenant's CA did not issue certificate request %s (%s); requesting again with a fresh key.", d.Failed.Name, failureReason(d.Failed))
			}
		case accessNewKey:
			if err := r.newKey(ctx, da, facts.Tenant); err != nil {
				return reconcile.Result{}, err
			}
		case accessCreateRequest:
			if err := r.createRequest(ctx, da, facts.Tenant, facts.KeyPEM); err != nil {
				return reconcile.Result{}, err
			}
			if fp := r.Options.FailPoint; fp != nil {
				if err := fp(FailPointAccessRequested, client.ObjectKeyFromObject(da)); err != nil {
					return reconcile.Result{}, err
				}
			}
		case accessPublish:
			if err := r.publishAccess(ctx, da, facts, d); err != nil {
				return reconcile.Result{}, err
			}
			// The status names the new certificate before the key and the
			// request go: a crash in between finds them published.
			if err := r.patchStatus(ctx, da, before); err != nil {
				return reconcile.Result{}, err
			}
			before = da.DeepCopy()
		case accessCleanUp:
			if err := r.deleteKey(ctx, da); err != nil {
				return reconcile.Result{}, err
			}
			if err := r.deleteRequest(ctx, d.Request.Name); err != nil {
				return reconcile.Result{}, err
			}
		case accessRefreshBundle:
			out := facts.Output.DeepCopy()
			out.Data[accessCAKey] = []byte(facts.TrustBundle)
			if err := r.Client.Update(ctx, out, client.FieldOwner(FieldOwner)); err != nil {
				return reconcile.Result{}, err
			}
		}
	}
	// More steps than one reconcile takes: go on shortly.
	return reconcile.Result{RequeueAfter: 100 * time.Millisecond}, nil
}

// failureReason is the reason of a failed request's deciding condition.
func failureReason(cr *cmapi.CertificateRequest) string {
	for _, c := range cr.Status.Conditions {
		if c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue {
			return "denied: " + c.Reason
		}
	}
	for _, c := range cr.Status.Conditions {
		if c.Type == cmapi.CertificateRequestConditionInvalidRequest || c.Type == cmapi.CertificateRequestConditionReady {
			return "failed: " + c.Reason
		}
	}
	return "failed"
}

// FailPointAccessStep is the fail point (Options.FailPoint, called with the
// DataAccess's key) before each step that writes.
const FailPointAccessStep = "access-step"

// FailPointAccessRequested is the fail point (Options.FailPoint, called with
// the DataAccess's key) right after a DataAccess's CertificateRequest is
// created.
const FailPointAccessRequested = "access-requested"

// patchStatus writes da's status if it changed since before.
func (r *DataAccessReconciler) patchStatus(ctx context.Context, da, before *custodyv1alpha1.DataAccess) error {
	if equality.Semantic.DeepEqual(before.Status, da.Status) {
		return nil
	}
	return client.IgnoreNotFound(r.Client.Status().Patch(ctx, da, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)))
}

// observe reads what decideAccess needs: the Tenant owning the namespace
// (cache), its trust bundle, the pending key, the requests and the
// credential Secret (API server).
func (r *DataAccessReconciler) observe(ctx context.Context, da *custodyv1alpha1.DataAccess, now time.Time) (accessFacts, error) {
	f := accessFacts{DataAccess: da, Now: now}
	var tenants custodyv1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.MatchingFields{indexTenantNamespace: da.Namespace}); err != nil {
		return f, err
	}
	for i := range tenants.Items {
		if t := &tenants.Items[i]; t.TargetNamespace() == da.Namespace && (f.Tenant == nil || t.CreationTimestamp.Before(&f.Tenant.CreationTimestamp)) {
			f.Tenant = t
		}
	}
	if f.Tenant == nil {
		return f, nil
	}
	cm := &corev1.ConfigMap{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: da.Namespace, Name: contract.TrustBundleName}, cm); err != nil && !apierrors.IsNotFound(err) {
		return f, err
	}
	f.TrustBundle = cm.Data[contract.TrustBundleKey]
	key := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: r.Options.OperatorNamespace, Name: accessKeySecretName(da.UID)}, key); {
	case err == nil:
		f.KeyPEM = key.Data[accessKeyData]
		if f.KeyPEM == nil {
			f.KeyPEM = []byte{}
		}
	case !apierrors.IsNotFound(err):
		return f, err
	}
	var crs cmapi.CertificateRequestList
	if err := r.APIReader.List(ctx, &crs, client.InNamespace(r.Options.OperatorNamespace), client.MatchingLabels{custodyv1alpha1.LabelDataAccess: string(da.UID)}); err != nil {
		return f, err
	}
	f.Requests = crs.Items
	out := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: da.Namespace, Name: custodyv1alpha1.DataAccessSecretName(da.Name)}, out); {
	case err == nil:
		f.Output = out
	case !apierrors.IsNotFound(err):
		return f, err
	}
	return f, nil
}

// newKey generates a P-256 key and writes it to the manager's key Secret
// in the operator namespace, before anything asks for a certificate of it.
func (r *DataAccessReconciler) newKey(ctx context.Context, da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: accessKeySecretName(da.UID), Namespace: r.Options.OperatorNamespace,
			Labels: map[string]string{custodyv1alpha1.LabelDataAccess: string(da.UID), custodyv1alpha1.LabelTenant: tenant.Name,
				custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
			Annotations: map[string]string{custodyv1alpha1.AnnotationDataAccess: da.Namespace + "/" + da.Name},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{accessKeyData: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	}
	// A key that exists already (a retry) is used as it is.
	return client.IgnoreAlreadyExists(r.Client.Create(ctx, s, client.FieldOwner(FieldOwner)))
}

// accessCertificateUsages are the key usages of a DataAccess certificate:
// those of a device certificate, a client's.
var accessCertificateUsages = deviceCertificateUsages

// createRequest asks the tenant's Issuer for a certificate of the pending
// key with exactly the derived identity.
func (r *DataAccessReconciler) createRequest(ctx context.Context, da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, keyPEM []byte) error {
	key, err := parseAccessKey(keyPEM)
	if err != nil {
		return err
	}
	id := contract.AccessIdentity(da, tenant, r.Options.TrustDomain)
	u, err := url.Parse(id.URI)
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.CommonName}, URIs: []*url.URL{u}}, key)
	if err != nil {
		return err
	}
	duration := 24 * time.Hour // the CRD's default, for an object older than it
	if da.Spec.Duration != nil {
		duration = da.Spec.Duration.Duration
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name: accessRequestName(da.UID, key.Public()), Namespace: r.Options.OperatorNamespace,
			Labels: map[string]string{custodyv1alpha1.LabelDataAccess: string(da.UID), custodyv1alpha1.LabelTenant: tenant.Name,
				custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
			Annotations: map[string]string{custodyv1alpha1.AnnotationDataAccess: da.Namespace + "/" + da.Name},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
			IssuerRef: cmmeta.IssuerReference{Name: TenantIssuerName(tenant.Name), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
			Duration:  &metav1.Duration{Duration: duration},
			Usages:    slices.Clone(accessCertificateUsages),
		},
	}
	if err := r.Client.Create(ctx, cr, client.FieldOwner(FieldOwner)); err != nil {
		return client.IgnoreAlreadyExists(err)
	}
	r.Recorder.Eventf(da, nil, corev1.EventTypeNormal, "CertificateRequested", "Issue", "Requested a certificate valid for %s from tenant %s's CA.", duration, tenant.Name)
	return nil
}

// publishAccess writes the credential Secret (certificate chain, pending
// key, trust bundle), owned by the DataAccess, and records the certificate
// in da's status (written by the caller), keeping the one it replaces.
func (r *DataAccessReconciler) publishAccess(ctx context.Context, da *custodyv1alpha1.DataAccess, f accessFacts, d accessDecision) error {
	data := accessSecretData(d.Request.Status.Certificate, f.KeyPEM, f.TrustBundle)
	if f.Output == nil {
		out := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: custodyv1alpha1.DataAccessSecretName(da.Name), Namespace: da.Namespace,
				Labels: map[string]string{custodyv1alpha1.LabelDataAccess: string(da.UID), custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}},
			Type: corev1.SecretTypeTLS,
			Data: data,
		}
		if err := controllerutil.SetControllerReference(da, out, r.Client.Scheme()); err != nil {
			return err
		}
		if err := r.Client.Create(ctx, out, client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
	} else {
		out := f.Output.DeepCopy()
		out.Data = data
		if err := r.Client.Update(ctx, out, client.FieldOwner(FieldOwner)); err != nil {
			return err
		}
	}
	leaf := d.Leaf
	summary := &custodyv1alpha1.DataAccessCertificate{Fingerprint: protocol.CertFingerprint(leaf.Raw), NotBefore: metav1.NewTime(leaf.NotBefore), NotAfter: metav1.NewTime(leaf.NotAfter)}
	if cur := da.Status.Certificate; cur != nil && cur.Fingerprint != summary.Fingerprint {
		da.Status.PreviousCertificate = cur
	}
	da.Status.Certificate = summary
	da.Status.SecretName = custodyv1alpha1.DataAccessSecretName(da.Name)
	renew := metav1.NewTime(accessRenewAt(leaf.NotBefore, leaf.NotAfter))
	da.Status.RenewAt = &renew
	meta.SetStatusCondition(&da.Status.Conditions, metav1.Condition{Type: custodyv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: custodyv1alpha1.DataAccessReasonIssued, ObservedGeneration: da.Generation,
		Message: fmt.Sprintf("Secret %s holds a certificate valid until %s.", da.Status.SecretName, leaf.NotAfter.UTC().Format(time.RFC3339))})
	r.Recorder.Eventf(da, nil, corev1.EventTypeNormal, "CertificateIssued", "Issue", "Certificate %s written to Secret %s, valid until %s; renewal at %s.",
		summary.Fingerprint, da.Status.SecretName, leaf.NotAfter.UTC().Format(time.RFC3339), renew.UTC().Format(time.RFC3339))
	return nil
}

// deleteKey deletes the pending key Secret of da, if any.
func (r *DataAccessReconciler) deleteKey(ctx context.Context, da *custodyv1alpha1.DataAccess) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.Options.OperatorNamespace, Name: accessKeySecretName(da.UID)}}
	return client.IgnoreNotFound(r.Client.Delete(ctx, s))
}

// deleteRequest deletes a CertificateRequest in the operator namespace.
func (r *DataAccessReconciler) deleteRequest(ctx context.Context, name string) error {
	cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Namespace: r.Options.OperatorNamespace, Name: name}}
	return client.IgnoreNotFound(r.Client.Delete(ctx, cr))
}

// reconcileDelete revokes a deleted DataAccess's credential: its Secret
// (not waiting for the garbage collector), its pending key and every request
// for it, then the finalizer.
func (r *DataAccessReconciler) reconcileDelete(ctx context.Context, da *custodyv1alpha1.DataAccess) error {
	if !controllerutil.ContainsFinalizer(da, custodyv1alpha1.FinalizerName) {
		return nil
	}
	out := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: da.Namespace, Name: custodyv1alpha1.DataAccessSecretName(da.Name)}, out); {
	case err == nil:
		if metav1.IsControlledBy(out, da) {
			if err := r.Client.Delete(ctx, out, client.Preconditions{UID: &out.UID}); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	case !apierrors.IsNotFound(err):
		return err
	}
	if err := r.deleteKey(ctx, da); err != nil {
		return err
	}
	var crs cmapi.CertificateRequestList
	if err := r.APIReader.List(ctx, &crs, client.InNamespace(r.Options.OperatorNamespace), client.MatchingLabels{custodyv1alpha1.LabelDataAccess: string(da.UID)}); err != nil {
		return err
	}
	for _, cr := range crs.Items {
		if err := r.deleteRequest(ctx, cr.Name); err != nil {
			return err
		}
	}
	before := da.DeepCopy()
	controllerutil.RemoveFinalizer(da, custodyv1alpha1.FinalizerName)
	if err := r.Client.Patch(ctx, da, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		return client.IgnoreNotFound(err)
	}
	r.Recorder.Eventf(da, nil, corev1.EventTypeNormal, "CredentialsRevoked", "Revoke", "Deleted Secret %s, the pending key and %d certificate request(s).",
		custodyv1alpha1.DataAccessSecretName(da.Name), len(crs.Items))
	return nil
}

// SetupWithManager registers the controller: DataAccesses, their requests
// (by annotation), their credential Secrets (metadata only, by owner) and
// their Tenants' readiness.
func (r *DataAccessReconciler) SetupWithManager(mgr manager.Manager) error {
	byRequest := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		ns, name, ok := strings.Cut(o.GetAnnotations()[custodyv1alpha1.AnnotationDataAccess], "/")
		if !ok || o.GetLabels()[custodyv1alpha1.LabelDataAccess] == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: ns, Name: name}}}
	})
	byTenant := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		var list custodyv1alpha1.DataAccessList
		if err := r.Client.List(ctx, &list, client.InNamespace(o.(*custodyv1alpha1.Tenant).TargetNamespace())); err != nil {
			return nil
		}
		out := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return out
	})
	readinessChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*custodyv1alpha1.Tenant), e.ObjectNew.(*custodyv1alpha1.Tenant)
			return tenantUsable(o) != tenantUsable(n)
		},
	}
	ours := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[custodyv1alpha1.LabelDataAccess] != "" })
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.DataAccess{}).
		Watches(&cmapi.CertificateRequest{}, byRequest, ctrl.WithPredicates(ours)).
		Watches(&custodyv1alpha1.Tenant{}, byTenant, ctrl.WithPredicates(readinessChanged)).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestForOwner(mgr.GetScheme(), mgr.GetRESTMapper(), &custodyv1alpha1.DataAccess{}, handler.OnlyControllerOwner()), ctrl.WithPredicates(ours)).
		WithOptions(controllerOptions(r.Options.workers("dataaccess"))).
		Named("dataaccess").
		Complete(r)
}
