package controllers

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// ApproverReconciler is the only approver of CertificateRequests that target
// a custody issuer: the root ClusterIssuer, the self-signed tenant-root
// Issuer and the tenants' Issuers in the operator namespace. It approves a
// request only if the manager made it (a tenant's root CA, requested from
// the tenant-root Issuer through the Certificate the Tenant
// controller owns; or a device certificate, requested by the enrollment
// controller for a verified DeviceProof) and denies every other request to
// those issuers.
// Approved and Denied are final; a decided request is never looked at again.
type ApproverReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Options  Options
}

// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests,verbs=get;list;watch
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests/status,verbs=update;patch
// +kubebuilder:rbac:groups=cert-manager.io,resources=signers,verbs=approve,resourceNames=clusterissuers.cert-manager.io/*;issuers.cert-manager.io/*

// Reconcile approves or denies one CertificateRequest.
func (r *ApproverReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	cr := &cmapi.CertificateRequest{}
	if err := r.Client.Get(ctx, req.NamespacedName, cr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if isDecided(cr) || !r.inScope(cr) {
		return reconcile.Result{}, nil
	}
	approve, reason, msg, err := r.decide(ctx, cr)
	if errors.Is(err, errUndecided) {
		// The manager has created the request but not yet recorded it on
		// its proof; the proof's update brings this request back.
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	cond := cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue, Reason: reason, Message: msg}
	eventType := corev1.EventTypeWarning
	if approve {
		cond.Type, eventType = cmapi.CertificateRequestConditionApproved, corev1.EventTypeNormal
	}
	now := metav1.NewTime(r.Options.Clock.Now())
	cond.LastTransitionTime = &now
	before := cr.DeepCopy()
	cr.Status.Conditions = append(cr.Status.Conditions, cond)
	if err := r.Client.Status().Patch(ctx, cr, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return reconcile.Result{RequeueAfter: conflictRetry}, nil
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	r.Recorder.Eventf(cr, nil, eventType, reason, "Approve", "%s", msg)
	return reconcile.Result{}, nil
}

func isDecided(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		if (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue {
			return true
		}
	}
	return false
}

// inScope reports whether the request targets a custody issuer.
func (r *ApproverReconciler) inScope(cr *cmapi.CertificateRequest) bool {
	ref := cr.Spec.IssuerRef
	if ref.Group != "" && ref.Group != "cert-manager.io" {
		return false
	}
	switch ref.Kind {
	case cmapi.ClusterIssuerKind:
		return ref.Name == r.Options.RootIssuer
	case "", cmapi.IssuerKind:
		return cr.Namespace == r.Options.OperatorNamespace && (ref.Name == TenantRootIssuerName || strings.HasPrefix(ref.Name, "tenant-"))
	}
	return false
}

// Reasons on CertificateRequest conditions.
const (
	ApproverReasonApproved = "CustodyApproved"
	ApproverReasonDenied   = "CustodyDenied"
)

// decide approves exactly the requests for tenant root CAs that the
// Tenant controller's Certificate made, with the subject it set.
func (r *ApproverReconciler) decide(ctx context.Context, cr *cmapi.CertificateRequest) (bool, string, string, error) {
	deny := func(msg string) (bool, string, string, error) { return false, ApproverReasonDenied, msg, nil }
	ref := cr.Spec.IssuerRef
	tenantRoot := ref.Kind != cmapi.ClusterIssuerKind && ref.Name == TenantRootIssuerName
	if ref.Kind != cmapi.ClusterIssuerKind && !tenantRoot && cr.Namespace == r.Options.OperatorNamespace {
		return r.decideDevice(ctx, cr)
	}
	// A tenant CA is a self-signed root: its request must target the
	// tenant-root Issuer. The shared root ClusterIssuer signs nothing for
	// Custody any more; every request to it is denied.
	if !tenantRoot || cr.Namespace != r.Options.OperatorNamespace {
		return deny("Only the Custody manager may request certificates from custody issuers.")
	}
	certName := cr.Annotations[cmapi.CertificateNameKey]
	cert := &cmapi.Certificate{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: cr.Namespace, Name: certName}, cert); err != nil {
		if apierrors.IsNotFound(err) {
			return deny("The request does not belong to a Certificate of the Custody manager.")
		}
		return false, "", "", err
	}
	tenantName := cert.Labels[custodyv1alpha1.LabelTenant]
	if tenantName == "" || certName != TenantCAName(tenantName) || !ownedByController(cr, cert) {
		return deny("The request does not belong to a tenant CA Certificate of the Custody manager.")
	}
	tenant := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: tenantName}, tenant); err != nil {
		if apierrors.IsNotFound(err) {
			return deny("The tenant of this CA no longer exists.")
		}
		return false, "", "", err
	}
	csr, err := parseCSR(cr.Spec.Request)
	if err != nil {
		return deny("The request does not hold a valid CSR.")
	}
	if !cr.Spec.IsCA || csr.Subject.CommonName != cert.Spec.CommonName || len(csr.DNSNames)+len(csr.URIs)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return deny("The request asks for something other than the tenant CA the manager defined.")
	}
	return true, ApproverReasonApproved, fmt.Sprintf("Root CA for tenant %s, requested by the Custody manager.", tenantName), nil
}

// errUndecided: the request cannot be decided yet.
var errUndecided = errors.New("not decidable yet")

// decideDevice approves a device certificate request only if the manager
// made it for a verified DeviceProof of a device bound to the issuer's
// tenant, with exactly the CSR the device proved and the identity derived
// from the Device.
func (r *ApproverReconciler) decideDevice(ctx context.Context, cr *cmapi.CertificateRequest) (bool, string, string, error) {
	deny := func(msg string) (bool, string, string, error) { return false, ApproverReasonDenied, msg, nil }
	owner := metav1.GetControllerOf(cr)
	if owner == nil || owner.Kind != "DeviceProof" || owner.APIVersion != custodyv1alpha1.GroupVersion.String() {
		return deny("Only the Custody manager may request certificates from custody issuers.")
	}
	proof := &custodyv1alpha1.DeviceProof{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: cr.Namespace, Name: owner.Name}, proof); err != nil {
		if apierrors.IsNotFound(err) {
			return deny("The request does not belong to a device proof.")
		}
		return false, "", "", err
	}
	if proof.UID != owner.UID {
		return deny("The request does not belong to a device proof.")
	}
	rec := proof.Status.CertificateRequest
	if rec == nil {
		if proof.Status.Phase == "" || proof.Status.Phase == custodyv1alpha1.DeviceProofPhasePending {
			return false, "", "", errUndecided
		}
		return deny("The device proof did not lead to this request.")
	}
	if rec.Name != cr.Name || rec.UID != cr.UID {
		return deny("The device proof names another request: this one was not made by the Custody manager.")
	}
	dev := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: proof.Spec.DeviceName}, dev); err != nil {
		if apierrors.IsNotFound(err) {
			return deny("The device no longer exists.")
		}
		return false, "", "", err
	}
	bound := dev.Spec.ClaimRef
	if bound == nil || dev.Spec.Decommissioned || bound.UID != proof.Status.ClaimUID || TenantIssuerName(bound.Tenant) != cr.Spec.IssuerRef.Name {
		return deny("The device is not bound to this issuer's tenant (any more).")
	}
	if string(cr.Spec.Request) != proof.Spec.CSR || cr.Spec.IsCA {
		return deny("The request is not the one the device proved.")
	}
	csr, err := protocol.ParseCSRPEM(cr.Spec.Request)
	if err != nil {
		return deny("The request's CSR does not parse or verify.")
	}
	if err := protocol.CheckCSRIdentity(csr.Raw, protocol.DeriveIdentity(r.Options.TrustDomain, bound.Tenant, dev.Name, dev.Spec.SerialNumber)); err != nil {
		return deny("The request must ask for exactly the identity derived from the Device and nothing else: " + err.Error() + ".")
	}
	for _, u := range cr.Spec.Usages {
		if u != cmapi.UsageDigitalSignature && u != cmapi.UsageClientAuth {
			return deny("The request asks for key usages a device certificate does not have.")
		}
	}
	return true, ApproverReasonApproved, fmt.Sprintf("Certificate for device %s of tenant %s, proven through the Custody gateway.", dev.Name, bound.Tenant), nil
}

func ownedByController(cr *cmapi.CertificateRequest, cert *cmapi.Certificate) bool {
	for _, o := range cr.OwnerReferences {
		if o.UID == cert.UID && o.Controller != nil && *o.Controller {
			return true
		}
	}
	return false
}

func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(der)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("no CSR PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	return csr, csr.CheckSignature()
}

// SetupWithManager registers the controller.
func (r *ApproverReconciler) SetupWithManager(mgr manager.Manager) error {
	// A device request waits for its proof to record it: the proof's
	// update brings the request back.
	byProof := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		if ref := o.(*custodyv1alpha1.DeviceProof).Status.CertificateRequest; ref != nil {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: ref.Name}}}
		}
		return nil
	})
	return ctrl.ControllerManagedBy(mgr).
		For(&cmapi.CertificateRequest{}).
		Watches(&custodyv1alpha1.DeviceProof{}, byProof).
		Named("certificaterequest-approver").
		Complete(r)
}
