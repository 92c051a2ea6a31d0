package controllers

import (
	"fmt"
	"slices"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The approver's decisions, pure: the CertificateRequest and the objects it
// names in, approve, deny or wait out, with the condition's reason and
// message. ApproverReconciler.Reconcile reads those objects and applies the
// decision.

// approverVerdict is what the approver does with a request.
type approverVerdict int

const (
	// approverIgnore: the request is decided already, or does not target
	// a custody issuer.
	approverIgnore approverVerdict = iota
	// approverWait: the manager made the request but has not recorded it
	// on its proof yet; the proof's update brings the request back.
	approverWait
	// approverApprove: add the Approved condition.
	approverApprove
	// approverDeny: add the Denied condition.
	approverDeny
)

// approverDecision is decideRequest's answer.
type approverDecision struct {
	Verdict approverVerdict
	// Reason and Message go on the condition and the event
	// (approverApprove and approverDeny).
	Reason, Message string
}

// approverFacts are the objects a request names, as read (nil: not found,
// or not named).
type approverFacts struct {
	// Proof is the request's controller-owner DeviceProof (device
	// certificates).
	Proof *custodyv1alpha1.DeviceProof
	// Device is the Proof's Device.
	Device *custodyv1alpha1.Device
	// Certificate is the Certificate the request's cert-manager.io
	// annotation names (tenant CAs), read from the API server.
	Certificate *cmapi.Certificate
	// Tenant is the Tenant the Certificate's label names.
	Tenant *custodyv1alpha1.Tenant
	// KeySecret is the Secret the Certificate's
	// status.nextPrivateKeySecretName names (tenant CAs), or the manager's
	// key Secret of the DataAccess (DataAccess certificates).
	KeySecret *corev1.Secret
	// DataAccess is the DataAccess a DataAccess request's annotation names.
	DataAccess *custodyv1alpha1.DataAccess
}

// Approver messages.
const (
	approverMsgNotManager     = "Only the Custody manager may request certificates from custody issuers."
	approverMsgNotCertManager = "The request was not created by cert-manager: only cert-manager may request a tenant CA, for the tenant's CA Certificate."
	approverMsgNotTenantCA    = "The request does not belong to a tenant CA Certificate of the Custody manager."
	approverMsgTenantGone     = "The tenant of this CA no longer exists."
	approverMsgBadCSR         = "The request does not hold a valid CSR."
	approverMsgNotTheCA       = "The request asks for something other than the tenant CA the manager defined."
	approverMsgWrongKey       = "The request's public key is not the private key cert-manager holds for the tenant CA."
	approverMsgNoProof        = "The request does not belong to a device proof."
	approverMsgNotLed         = "The device proof did not lead to this request."
	approverMsgOtherRequest   = "The device proof names another request: this one was not made by the Custody manager."
	approverMsgDeviceGone     = "The device no longer exists."
	approverMsgNotBound       = "The device is not bound to this issuer's tenant (any more)."
	approverMsgNotProved      = "The request is not the one the device proved."
	approverMsgBadDeviceCSR   = "The request's CSR does not parse or verify."
	approverMsgUsages         = "The request asks for key usages a device certificate does not have."
)

// requestDecided reports whether a request is Approved or Denied: both are
// final.
func requestDecided(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		if (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue {
			return true
		}
	}
	return false
}

// requestInScope reports whether the request targets a custody issuer: the
// root ClusterIssuer, or the tenant-root or a tenant's Issuer in the
// operator namespace.
func requestInScope(cr *cmapi.CertificateRequest, o *Options) bool {
	ref := cr.Spec.IssuerRef
	if ref.Group != "" && ref.Group != "cert-manager.io" {
		return false
	}
	switch ref.Kind {
	case cmapi.ClusterIssuerKind:
		return ref.Name == o.RootIssuer
	case "", cmapi.IssuerKind:
		return cr.Namespace == o.OperatorNamespace && (ref.Name == contract.TenantRootIssuerName || contract.IsTenantIssuerName(ref.Name))
	}
	return false
}

// requestKind is which decision applies to an in-scope request.
type requestKind int

const (
	// requestForDevice: a request to a tenant's Issuer.
	requestForDevice requestKind = iota
	// requestForAccess: a request to a tenant's Issuer labelled
	// custody.dev/data-access.
	requestForAccess
	// requestForTenantCA: a request to the tenant-root Issuer in the
	// operator namespace.
	requestForTenantCA
	// requestRefused: any other request to a custody issuer (the root
	// ClusterIssuer signs nothing for Custody any more).
	requestRefused
)

// String is the kind's label in custody_certificate_request_decisions_total.
func (k requestKind) String() string {
	switch k {
	case requestForDevice:
		return "device"
	case requestForAccess:
		return "data-access"
	case requestForTenantCA:
		return "tenant-ca"
	}
	return "other"
}

// kindOfRequest says which decision applies to an in-scope request.
func kindOfRequest(cr *cmapi.CertificateRequest, o *Options) requestKind {
	ref := cr.Spec.IssuerRef
	tenantRoot := ref.Kind != cmapi.ClusterIssuerKind && ref.Name == contract.TenantRootIssuerName
	switch {
	case ref.Kind != cmapi.ClusterIssuerKind && !tenantRoot && cr.Namespace == o.OperatorNamespace && isAccessRequest(cr):
		return requestForAccess
	case ref.Kind != cmapi.ClusterIssuerKind && !tenantRoot && cr.Namespace == o.OperatorNamespace:
		return requestForDevice
	case tenantRoot && cr.Namespace == o.OperatorNamespace:
		return requestForTenantCA
	}
	return requestRefused
}

// decideRequest approves exactly the genuine requests for tenant CAs and
// for device certificates, and denies every other request to custody
// issuers; it ignores decided requests and those to other issuers.
func decideRequest(cr *cmapi.CertificateRequest, f approverFacts, o *Options) approverDecision {
	if requestDecided(cr) || !requestInScope(cr, o) {
		return approverDecision{Verdict: approverIgnore}
	}
	switch kindOfRequest(cr, o) {
	case requestForDevice:
		return decideDeviceRequest(cr, f.Proof, f.Device, o)
	case requestForAccess:
		return decideAccessRequest(cr, f.DataAccess, f.Tenant, f.KeySecret, o)
	case requestForTenantCA:
		return decideTenantCARequest(cr, f.Certificate, f.Tenant, f.KeySecret, o)
	}
	return deny(approverMsgNotManager)
}

func deny(msg string) approverDecision {
	return approverDecision{Verdict: approverDeny, Reason: ApproverReasonDenied, Message: msg}
}

func approve(msg string) approverDecision {
	return approverDecision{Verdict: approverApprove, Reason: ApproverReasonApproved, Message: msg}
}

// deviceProofOwner is the request's controller owner when it is a
// DeviceProof, and the request was created by the manager (spec.username,
// stamped by cert-manager's admission from the authenticated creator: an
// owner reference anyone can copy is not enough); nil otherwise.
func deviceProofOwner(cr *cmapi.CertificateRequest, o *Options) *metav1.OwnerReference {
	owner := metav1.GetControllerOf(cr)
	if owner == nil || owner.Kind != "DeviceProof" || owner.APIVersion != custodyv1alpha1.GroupVersion.String() ||
		!slices.Contains(o.ManagerUsernames, cr.Spec.Username) {
		return nil
	}
	return owner
}

// decideDeviceRequest approves a device certificate request only if the
// manager made it for a verified DeviceProof (proof, the request's
// controller owner; nil when there is none) of a device (dev, nil when it
// is gone) bound to the issuer's tenant, with exactly the CSR the device
// proved and the identity derived from the Device (the device contract's
// CheckDeviceCSR). Only the request's controller-owner proof counts: an
// Enroll proof that adopted the request of an earlier proof of the same
// device, binding and key (EnrollmentReconciler.requestFor) waits on a
// decision taken on the earlier proof alone.
func decideDeviceRequest(cr *cmapi.CertificateRequest, proof *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, o *Options) approverDecision {
	owner := deviceProofOwner(cr, o)
	if owner == nil {
		return deny(approverMsgNotManager)
	}
	if proof == nil || proof.UID != owner.UID {
		return deny(approverMsgNoProof)
	}
	rec := proof.Status.CertificateRequest
	if rec == nil {
		if proof.Status.Phase == "" || proof.Status.Phase == custodyv1alpha1.DeviceProofPhasePending {
			return approverDecision{Verdict: approverWait}
		}
		return deny(approverMsgNotLed)
	}
	if rec.Name != cr.Name || rec.UID != cr.UID {
		return deny(approverMsgOtherRequest)
	}
	if dev == nil {
		return deny(approverMsgDeviceGone)
	}
	bound := dev.Spec.ClaimRef
	if bound == nil || dev.Spec.Decommissioned || bound.UID != proof.Status.ClaimUID || contract.TenantIssuerName(bound.Tenant) != cr.Spec.IssuerRef.Name {
		return deny(approverMsgNotBound)
	}
	if string(cr.Spec.Request) != proof.Spec.CSR || cr.Spec.IsCA {
		return deny(approverMsgNotProved)
	}
	csr, err := protocol.ParseCSRPEM(cr.Spec.Request)
	if err != nil {
		return deny(approverMsgBadDeviceCSR)
	}
	if _, err := contract.CheckDeviceCSR(dev, o.TrustDomain, csr.Raw); err != nil {
		return deny("The request must ask for exactly the identity derived from the Device and nothing else: " + err.Error() + ".")
	}
	for _, u := range cr.Spec.Usages {
		if !slices.Contains(deviceCertificateUsages, u) {
			return deny(approverMsgUsages)
		}
	}
	return approve(fmt.Sprintf("Certificate for device %s of tenant %s, proven through the Custody gateway.", dev.Name, bound.Tenant))
}

// deviceCertificateUsages are the key usages of a device certificate: the
// enrollment controller requests them, the approver allows no other.
var deviceCertificateUsages = []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}

// decideTenantCARequest approves cr only if it is the request cert-manager
// made for a tenant's CA Certificate, judged only on facts a requester
// cannot write: who created the request (spec.username, which
// cert-manager's admission stamps from the authenticated user and keeps
// immutable) must be cert-manager itself (Options.CertManagerUsernames), and
// the CSR's public key must be the key cert-manager holds for that
// Certificate's issuance (keySecret, the Secret named by
// status.nextPrivateKeySecretName, owned by the Certificate; cert-manager's
// keymanager creates it and its requestmanager signs the CSR with it). The
// annotation and ownerReference a requester can copy only say which
// Certificate (cert) to check against. The Certificate must be the CA
// Certificate the Tenant controller made for an existing Tenant (tenant),
// with the issuer the request names, and the CSR must ask for exactly the
// CA it defined (the device contract's CheckTenantCACSR): isCA, the subject
// one CN it set, no SANs. The reconciler reads all three from the API
// server, not the cache: a stale Certificate status would deny the genuine
// request for good.
func decideTenantCARequest(cr *cmapi.CertificateRequest, cert *cmapi.Certificate, tenant *custodyv1alpha1.Tenant, keySecret *corev1.Secret, o *Options) approverDecision {
	if !slices.Contains(o.CertManagerUsernames, cr.Spec.Username) {
		return deny(approverMsgNotCertManager)
	}
	certName := cr.Annotations[cmapi.CertificateNameKey]
	if certName == "" || cert == nil || cert.Name != certName {
		return deny(approverMsgNotTenantCA)
	}
	tenantName := cert.Labels[custodyv1alpha1.LabelTenant]
	if tenantName == "" || cert.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue || certName != contract.TenantCAName(tenantName) ||
		!ownedByController(cr, cert) || cert.Spec.IssuerRef != cr.Spec.IssuerRef {
		return deny(approverMsgNotTenantCA)
	}
	if tenant == nil || tenant.Name != tenantName {
		return deny(approverMsgTenantGone)
	}
	csr, err := protocol.ParseCSRPEM(cr.Spec.Request)
	if err != nil {
		return deny(approverMsgBadCSR)
	}
	if !cr.Spec.IsCA || !cert.Spec.IsCA || contract.CheckTenantCACSR(csr, cert.Spec.CommonName) != nil {
		return deny(approverMsgNotTheCA)
	}
	if cert.Status.NextPrivateKeySecretName == nil || keySecret == nil || keySecret.Name != *cert.Status.NextPrivateKeySecretName {
		return deny(approverMsgWrongKey)
	}
	if owner := metav1.GetControllerOf(keySecret); owner == nil || owner.UID != cert.UID || keySecret.Labels[cmapi.IsNextPrivateKeySecretLabelKey] != "true" {
		return deny(approverMsgWrongKey)
	}
	key, err := pki.DecodePrivateKeyBytes(keySecret.Data[corev1.TLSPrivateKeyKey])
	if err != nil || !protocol.SameKey(csr.PublicKey, key.Public()) {
		return deny(approverMsgWrongKey)
	}
	return approve(fmt.Sprintf("Root CA for tenant %s, requested by cert-manager (%s) for the tenant's CA Certificate, with the private key it holds for it.", tenantName, cr.Spec.Username))
}

// approverCondition is the condition a decision to approve or deny adds to
// the request at now, and the type of the event that reports it.
func approverCondition(d approverDecision, now time.Time) (cmapi.CertificateRequestCondition, string) {
	t := metav1.NewTime(now)
	cond := cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue, Reason: d.Reason, Message: d.Message, LastTransitionTime: &t}
	if d.Verdict == approverApprove {
		cond.Type = cmapi.CertificateRequestConditionApproved
		return cond, corev1.EventTypeNormal
	}
	return cond, corev1.EventTypeWarning
}
