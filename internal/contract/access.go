package contract

import (
	"crypto/x509"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The data-access contract: what a tenant's data-plane credential (a
// DataAccess) is, for the manager that issues it, the approver that lets the
// tenant's CA sign it, and the data plane's auth callout that admits its
// holder. Pure functions of the objects read from the API server.

// AccessVerdict is what AcceptAccessCertificate decided about a client
// certificate presented as a DataAccess credential. Every verdict but
// AccessAccepted is refused with the same answer; the verdicts exist for
// tests and metrics.
type AccessVerdict string

const (
	// AccessAccepted: a current certificate of an existing DataAccess.
	AccessAccepted AccessVerdict = "Accepted"
	// AccessRevoked: the DataAccess (or its Tenant) no longer exists, is
	// being deleted, or is not in the Tenant's namespace.
	AccessRevoked AccessVerdict = "Revoked"
	// AccessWrongIdentity: the certificate does not carry exactly the
	// identity derived from the DataAccess and its Tenant.
	AccessWrongIdentity AccessVerdict = "WrongIdentity"
	// AccessUntrusted: it does not chain to the Tenant's CA for client
	// authentication.
	AccessUntrusted AccessVerdict = "Untrusted"
	// AccessExpired: it, or a certificate of its chain, has expired.
	AccessExpired AccessVerdict = "Expired"
	// AccessNotYetValid: its validity has not begun.
	AccessNotYetValid AccessVerdict = "NotYetValid"
	// AccessNotIssued: it is neither the DataAccess's current certificate
	// nor the one that certificate replaced (status.certificate,
	// status.previousCertificate): an older certificate, or one the manager
	// never handed out.
	AccessNotIssued AccessVerdict = "NotIssued"
)

// AccessTenantOwns reports whether da lives in tenant's namespace: the only
// tenant whose data it may read and whose CA may sign it.
func AccessTenantOwns(da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant) bool {
	return da != nil && tenant != nil && da.Namespace == tenant.TargetNamespace()
}

// AccessIdentity is the identity a certificate of da carries: derived from
// its name and its tenant (see protocol.DeriveAccessIdentity).
func AccessIdentity(da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, trustDomain string) protocol.Identity {
	return protocol.DeriveAccessIdentity(trustDomain, tenant.Name, da.Name)
}

// CheckAccessCSR checks, on the CSR's DER, that it asks for exactly the
// identity of da under tenant and nothing else (protocol.CheckCSRIdentity:
// one CN, one URI SAN, no other extension or attribute).
func CheckAccessCSR(da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, trustDomain string, csrDER []byte) error {
	return protocol.CheckCSRIdentity(csrDER, AccessIdentity(da, tenant, trustDomain))
}

// AcceptAccessCertificate decides whether leaf is a valid credential of da,
// the rule the data plane's auth callout applies to a tenant's user or
// service. It accepts leaf when all of these hold, and otherwise says the
// first that fails, in this order:
//
//   - da exists and is not being deleted, and it lives in the namespace of
//     tenant, which exists and is not being deleted (else AccessRevoked);
//   - leaf carries exactly the identity derived from da and tenant
//     (AccessWrongIdentity);
//   - leaf chains, for client authentication, to anchors, the tenant's
//     published CA bundle (AccessUntrusted);
//   - leaf and its chain are valid at now (AccessNotYetValid,
//     AccessExpired);
//   - leaf's fingerprint is da's status.certificate or
//     status.previousCertificate (AccessNotIssued).
//
// So deleting a DataAccess revokes every certificate it had at once, and a
// renewal ends every certificate but the new one and the one it replaced.
func AcceptAccessCertificate(da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, trustDomain string, leaf *x509.Certificate, anchors []*x509.Certificate, now time.Time) AccessVerdict {
	if da == nil || !da.DeletionTimestamp.IsZero() || tenant == nil || !tenant.DeletionTimestamp.IsZero() || !AccessTenantOwns(da, tenant) {
		return AccessRevoked
	}
	if leaf == nil || protocol.CheckCertificateIdentity(leaf.Raw, AccessIdentity(da, tenant, trustDomain)) != nil {
		return AccessWrongIdentity
	}
	roots := x509.NewCertPool()
	for _, c := range anchors {
		roots.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	chains, err := leaf.Verify(opts)
	if err != nil {
		// Not valid now: was it at issuance? Then it is expired or not
		// yet valid (itself or its CA), which the checks below name.
		opts.CurrentTime = leaf.NotBefore
		chains, err = leaf.Verify(opts)
	}
	if err != nil || len(chains) == 0 {
		return AccessUntrusted
	}
	if now.Before(leaf.NotBefore) {
		return AccessNotYetValid
	}
	if !unexpired(chains, now) {
		return AccessExpired
	}
	fp := protocol.CertFingerprint(leaf.Raw)
	for _, c := range []*custodyv1alpha1.DataAccessCertificate{da.Status.Certificate, da.Status.PreviousCertificate} {
		if c != nil && c.Fingerprint == fp {
			return AccessAccepted
		}
	}
	return AccessNotIssued
}

// BoundToTenant reports whether dev is bound to tenant now: bound (a
// claimRef) to that tenant and not decommissioned, the binding
// AcceptCertificate requires of a device's own certificate.
func BoundToTenant(dev *custodyv1alpha1.Device, tenant string) bool {
	ref := dev.Spec.ClaimRef
	return ref != nil && !dev.Spec.Decommissioned && ref.Tenant == tenant
}

// AccessScope returns, sorted, the names of the devices a credential of da
// may read: the devices currently bound to tenant (BoundToTenant) whose
// binding Claim (the Claim in claims with the UID, namespace and name of the
// device's claimRef) has labels matching da's selector. Without a selector
// (or with the empty one) every bound device is in scope, whether or not
// its Claim is in claims.
// A revoked DataAccess (see AcceptAccessCertificate) or a selector that does
// not parse has no scope at all.
func AccessScope(da *custodyv1alpha1.DataAccess, tenant *custodyv1alpha1.Tenant, devices []custodyv1alpha1.Device, claims []custodyv1alpha1.Claim) []string {
	if da == nil || !da.DeletionTimestamp.IsZero() || tenant == nil || !tenant.DeletionTimestamp.IsZero() || !AccessTenantOwns(da, tenant) {
		return nil
	}
	var sel labels.Selector
	if da.Spec.Selector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(da.Spec.Selector); err != nil {
			return nil
		}
		if sel.Empty() {
			sel = nil // {} selects everything, as no selector does
		}
	}
	var out []string
	for i := range devices {
		dev := &devices[i]
		if !BoundToTenant(dev, tenant.Name) {
			continue
		}
		if sel != nil {
			ref := dev.Spec.ClaimRef
			i := slices.IndexFunc(claims, func(c custodyv1alpha1.Claim) bool {
				return c.UID == ref.UID && c.Namespace == ref.Namespace && c.Name == ref.Name
			})
			if i < 0 || !sel.Matches(labels.Set(claims[i].Labels)) {
				continue
			}
		}
		out = append(out, dev.Name)
	}
	slices.Sort(out)
	return out
}
