package controllers

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
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
// request only if it is genuine (a tenant's root CA, requested by
// cert-manager itself from the tenant-root Issuer for the Certificate the
// Tenant controller owns, with the private key cert-manager holds for it; or
// a device certificate, requested by the enrollment controller for a
// verified DeviceProof) and denies every other request to those issuers.
// Approved and Denied are final; a decided request is never looked at again.
type ApproverReconciler struct {
	Client client.Client
	// APIReader reads past the cache where a stale object would deny a
	// genuine request for good.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Options   Options
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

// decide approves exactly the genuine requests for tenant CAs and for
// device certificates; it denies every other request to custody issuers.
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
	ok, msg, err := r.genuineTenantCARequest(ctx, cr)
	if err != nil || !ok {
		return false, ApproverReasonDenied, msg, err
	}
	return true, ApproverReasonApproved, msg, nil
}

// genuineTenantCARequest reports whether cr is the request cert-manager made
// for a tenant's CA Certificate, judged only on facts a requester cannot
// write: who created the request (spec.username, which cert-manager's
// admission stamps from the authenticated user and keeps immutable) must be
// cert-manager itself (Options.CertManagerUsernames), and the CSR's public
// key must be the key cert-manager holds for that Certificate's issuance (the
// Secret named by status.nextPrivateKeySecretName, owned by the Certificate;
// cert-manager's keymanager creates it and its requestmanager signs the CSR
// with it). The annotation and ownerReference a requester can copy only say
// which Certificate to check against. The Certificate must be the CA
// Certificate the Tenant controller made for an existing Tenant, with the
// issuer the request names, and the CSR must ask for exactly the CA it
// defined: isCA, the subject one CN it set, no SANs.
// msg is the approval's message when ok, else the denial's. Everything is
// read from the API server, not the cache: a stale Certificate status would
// deny the genuine request for good.
func (r *ApproverReconciler) genuineTenantCARequest(ctx context.Context, cr *cmapi.CertificateRequest) (ok bool, msg string, err error) {
	reader := r.APIReader
	if reader == nil {
		reader = r.Client
	}
	if !slices.Contains(r.Options.CertManagerUsernames, cr.Spec.Username) {
		return false, "The request was not created by cert-manager: only cert-manager may request a tenant CA, for the tenant's CA Certificate.", nil
	}
	notOurs := "The request does not belong to a tenant CA Certificate of the Custody manager."
	certName := cr.Annotations[cmapi.CertificateNameKey]
	if certName == "" {
		return false, notOurs, nil
	}
	cert := &cmapi.Certificate{}
	if err := reader.Get(ctx, client.ObjectKey{Namespace: cr.Namespace, Name: certName}, cert); err != nil {
		if apierrors.IsNotFound(err) {
			return false, notOurs, nil
		}
		return false, "", err
	}
	tenantName := cert.Labels[custodyv1alpha1.LabelTenant]
	if tenantName == "" || cert.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue || certName != TenantCAName(tenantName) ||
		!ownedByController(cr, cert) || cert.Spec.IssuerRef != cr.Spec.IssuerRef {
		return false, notOurs, nil
	}
	tenant := &custodyv1alpha1.Tenant{}
	if err := reader.Get(ctx, client.ObjectKey{Name: tenantName}, tenant); err != nil {
		if apierrors.IsNotFound(err) {
			return false, "The tenant of this CA no longer exists.", nil
		}
		return false, "", err
	}
	csr, err := parseCSR(cr.Spec.Request)
	if err != nil {
		return false, "The request does not hold a valid CSR.", nil
	}
	if !cr.Spec.IsCA || !cert.Spec.IsCA || !onlyCommonName(csr.RawSubject, cert.Spec.CommonName) || hasSAN(csr) {
		return false, "The request asks for something other than the tenant CA the manager defined.", nil
	}
	wrongKey := "The request's public key is not the private key cert-manager holds for the tenant CA."
	if cert.Status.NextPrivateKeySecretName == nil {
		return false, wrongKey, nil
	}
	secret := &corev1.Secret{}
	if err := reader.Get(ctx, client.ObjectKey{Namespace: cr.Namespace, Name: *cert.Status.NextPrivateKeySecretName}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return false, wrongKey, nil
		}
		return false, "", err
	}
	if owner := metav1.GetControllerOf(secret); owner == nil || owner.UID != cert.UID || secret.Labels[cmapi.IsNextPrivateKeySecretLabelKey] != "true" {
		return false, wrongKey, nil
	}
	key, err := pki.DecodePrivateKeyBytes(secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil || !protocol.SameKey(csr.PublicKey, key.Public()) {
		return false, wrongKey, nil
	}
	return true, fmt.Sprintf("Root CA for tenant %s, requested by cert-manager (%s) for the tenant's CA Certificate, with the private key it holds for it.", tenantName, cr.Spec.Username), nil
}

// onlyCommonName reports whether a raw DER subject is exactly one RDN with
// one commonName attribute equal to cn.
func onlyCommonName(rawSubject []byte, cn string) bool {
	var rdns pkix.RDNSequence
	rest, err := asn1.Unmarshal(rawSubject, &rdns)
	if err != nil || len(rest) > 0 || len(rdns) != 1 || len(rdns[0]) != 1 {
		return false
	}
	atv := rdns[0][0]
	value, isString := atv.Value.(string)
	return atv.Type.Equal(oidCommonName) && isString && value == cn
}

var (
	oidCommonName     = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// hasSAN reports whether a CSR asks for any subject alternative name, in
// any form, including those Go's parser does not expose.
func hasSAN(csr *x509.CertificateRequest) bool {
	for _, ext := range csr.Extensions {
		if ext.Id.Equal(oidSubjectAltName) {
			return true
		}
	}
	return len(csr.DNSNames)+len(csr.URIs)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0
}

// errUndecided: the request cannot be decided yet.
var errUndecided = errors.New("not decidable yet")

// decideDevice approves a device certificate request only if the manager
// made it for a verified DeviceProof of a device bound to the issuer's
// tenant, with exactly the CSR the device proved and the identity derived
// from the Device. Only the request's controller-owner proof counts: an
// Enroll proof that adopted the request of an earlier proof of the same
// device, binding and key (EnrollmentReconciler.requestFor) waits on a
// decision taken on the earlier proof alone.
func (r *ApproverReconciler) decideDevice(ctx context.Context, cr *cmapi.CertificateRequest) (bool, string, string, error) {
	deny := func(msg string) (bool, string, string, error) { return false, ApproverReasonDenied, msg, nil }
	owner := metav1.GetControllerOf(cr)
	if owner == nil || owner.Kind != "DeviceProof" || owner.APIVersion != custodyv1alpha1.GroupVersion.String() ||
		!slices.Contains(r.Options.ManagerUsernames, cr.Spec.Username) {
		// spec.username is stamped by cert-manager's admission from the
		// authenticated creator: an owner reference anyone can copy is not
		// enough.
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
