package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The approver's rule for a DataAccess credential: a request to a tenant's
// Issuer labelled custody.dev/data-access.

// Bounds of a DataAccess certificate's lifetime, as the CRD has them.
const (
	accessMinDuration = time.Hour
	accessMaxDuration = 720 * time.Hour
)

// Approver messages for DataAccess requests.
const (
	approverMsgAccessNotManager = "Only the Custody manager may request DataAccess certificates."
	approverMsgAccessGone       = "The request does not belong to an existing DataAccess (the one its label names is gone, being deleted, or another)."
	approverMsgAccessTenant     = "The DataAccess is not in the namespace of the tenant whose Issuer the request targets."
	approverMsgAccessKey        = "The request's public key is not the private key the manager holds for this DataAccess."
	approverMsgAccessDuration   = "The request's duration must be between 1h and 720h."
	approverMsgAccessUsages     = "The request asks for key usages a DataAccess certificate does not have."
)

// isAccessRequest reports whether cr is labelled as a DataAccess's request.
func isAccessRequest(cr *cmapi.CertificateRequest) bool {
	_, ok := cr.Labels[custodyv1alpha1.LabelDataAccess]
	return ok
}

// observeAccess reads what decideAccessRequest needs, from the API server
// (a stale cache must not deny a genuine request for good): the DataAccess
// the request's annotation names, the Tenant the targeted Issuer is named
// after, and the manager's key Secret of that DataAccess. Only requests the
// manager made are looked into.
func (r *ApproverReconciler) observeAccess(ctx context.Context, cr *cmapi.CertificateRequest, f *approverFacts) error {
	if !slices.Contains(r.Options.ManagerUsernames, cr.Spec.Username) {
		return nil
	}
	reader := r.APIReader
	if reader == nil {
		reader = r.Client
	}
	get := func(key client.ObjectKey, obj client.Object) (bool, error) {
		if err := reader.Get(ctx, key, obj); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return true, nil
	}
	ns, name, ok := strings.Cut(cr.Annotations[custodyv1alpha1.AnnotationDataAccess], "/")
	if !ok || ns == "" || name == "" {
		return nil
	}
	da := &custodyv1alpha1.DataAccess{}
	if ok, err := get(client.ObjectKey{Namespace: ns, Name: name}, da); !ok || err != nil {
		return err
	}
	f.DataAccess = da
	if tenantName, ok := strings.CutPrefix(cr.Spec.IssuerRef.Name, TenantIssuerName("")); ok && tenantName != "" {
		tenant := &custodyv1alpha1.Tenant{}
		ok, err := get(client.ObjectKey{Name: tenantName}, tenant)
		if err != nil {
			return err
		}
		if ok {
			f.Tenant = tenant
		}
	}
	key := &corev1.Secret{}
	ok, err := get(client.ObjectKey{Namespace: r.Options.OperatorNamespace, Name: accessKeySecretName(da.UID)}, key)
	if err != nil {
		return err
	}
	if ok {
		f.KeySecret = key
	}
	return nil
}

// decideAccessRequest approves a DataAccess certificate request only if
// all of these hold, judged on facts a requester cannot write:
//
//   - the manager created it (spec.username, stamped by cert-manager's
//     admission);
//   - the DataAccess its annotation names (da) exists, is not being
//     deleted, and has the UID its label names;
//   - da is in the namespace of the tenant (tenant) whose Issuer the
//     request targets;
//   - its CSR asks for exactly the identity derived from da and tenant
//     (one CN, one URI SAN, nothing else), with a key the device contract
//     allows, and that key is the one the manager holds for da (keySecret);
//   - it asks for a client certificate (digital signature, client auth; not
//     a CA) for 1h to 720h.
//
// It denies everything else.
func decideAccessRequest(cr *cmapi.CertificateRequest, da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, keySecret *corev1.Secret, o *Options) approverDecision {
	if !slices.Contains(o.ManagerUsernames, cr.Spec.Username) {
		return deny(approverMsgAccessNotManager)
	}
	if da == nil || !da.DeletionTimestamp.IsZero() || string(da.UID) != cr.Labels[custodyv1alpha1.LabelDataAccess] ||
		cr.Annotations[custodyv1alpha1.AnnotationDataAccess] != da.Namespace+"/"+da.Name {
		return deny(approverMsgAccessGone)
	}
	if tenant == nil || !tenant.DeletionTimestamp.IsZero() || TenantIssuerName(tenant.Name) != cr.Spec.IssuerRef.Name || !contract.AccessTenantOwns(da, tenant) {
		return deny(approverMsgAccessTenant)
	}
	if cr.Spec.IsCA {
		return deny(approverMsgAccessUsages)
	}
	csr, err := protocol.ParseCSRPEM(cr.Spec.Request)
	if err != nil {
		return deny(approverMsgBadCSR)
	}
	if err := contract.CheckAccessCSR(da, tenant, o.TrustDomain, csr.Raw); err != nil {
		return deny("The request must ask for exactly the identity derived from the DataAccess and nothing else: " + err.Error() + ".")
	}
	if keySecret == nil || keySecret.Labels[custodyv1alpha1.LabelDataAccess] != string(da.UID) {
		return deny(approverMsgAccessKey)
	}
	key, err := parseAccessKey(keySecret.Data[accessKeyData])
	if err != nil || !protocol.SameKey(csr.PublicKey, key.Public()) {
		return deny(approverMsgAccessKey)
	}
	if cr.Spec.Duration == nil || cr.Spec.Duration.Duration < accessMinDuration || cr.Spec.Duration.Duration > accessMaxDuration {
		return deny(approverMsgAccessDuration)
	}
	if len(cr.Spec.Usages) == 0 {
		return deny(approverMsgAccessUsages)
	}
	for _, u := range cr.Spec.Usages {
		if !slices.Contains(accessCertificateUsages, u) {
			return deny(approverMsgAccessUsages)
		}
	}
	return approve(fmt.Sprintf("Certificate for DataAccess %s/%s of tenant %s, requested by the Custody manager.", da.Namespace, da.Name, tenant.Name))
}
