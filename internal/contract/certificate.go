package contract

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// CertificateVerdict is what AcceptCertificate decided about a client
// certificate. Every verdict but CertificateAccepted is refused with the same
// answer at the gateway; the verdicts exist for tests and the manager's proof
// status.
type CertificateVerdict string

const (
	// CertificateAccepted: a certificate of the device's current binding.
	CertificateAccepted CertificateVerdict = "Accepted"
	// CertificateNotBound: the device is not bound, or is decommissioned.
	CertificateNotBound CertificateVerdict = "NotBound"
	// CertificateWrongIdentity: the certificate does not carry exactly the
	// identity derived from the Device and its current tenant.
	CertificateWrongIdentity CertificateVerdict = "WrongIdentity"
	// CertificateUntrusted: it does not chain to the current tenant's CA
	// for client authentication.
	CertificateUntrusted CertificateVerdict = "Untrusted"
	// CertificateExpired: it, or a certificate of its chain, has expired.
	CertificateExpired CertificateVerdict = "Expired"
	// CertificateBeforeBinding: it was issued before the current binding
	// began (and is not listed for it).
	CertificateBeforeBinding CertificateVerdict = "BeforeBinding"
)

// AcceptCertificate decides whether leaf is a certificate of dev's current
// binding, the rule the gateway (every mutual-TLS request) and the manager
// (every renewal) apply alike. It accepts leaf when all of these hold:
//
//   - the device is bound and not decommissioned;
//   - leaf carries exactly the identity derived from the Device and the
//     tenant of its binding (trustDomain);
//   - leaf chains, for client authentication, to anchors, the current
//     tenant's published CA bundle (whatever that bundle holds: every
//     certificate in it is a trust anchor), as of leaf's own notBefore;
//   - neither leaf nor any certificate of that chain has expired at now;
//   - leaf was issued within the current binding: its notBefore (whole
//     seconds, cert-manager's clock) is not before spec.claimRef.boundAt
//     (whole seconds, the manager's clock), or its fingerprint is listed in
//     status.certificates for the binding's Claim UID.
//
// So a device keeps renewing with any unexpired certificate of its binding,
// however many newer ones it was issued and discarded, while release,
// transfer and decommission cut every earlier certificate off, including
// after a round trip back to the same tenant.
//
// The chain is built as of now (as of notBefore when now is earlier, so that
// a clock behind cert-manager's, such as the manager's injected clock, does
// not refuse a certificate as not yet valid), else as of notBefore to tell an
// expired certificate from an untrusted one; expiry is checked against now.
func AcceptCertificate(dev *custodyv1alpha1.Device, trustDomain string, leaf *x509.Certificate, anchors []*x509.Certificate, now time.Time) CertificateVerdict {
	ref := dev.Spec.ClaimRef
	if ref == nil || dev.Spec.Decommissioned {
		return CertificateNotBound
	}
	if protocol.CheckCertificateIdentity(leaf.Raw, protocol.DeriveIdentity(trustDomain, ref.Tenant, dev.Name, dev.Spec.SerialNumber)) != nil {
		return CertificateWrongIdentity
	}
	roots := x509.NewCertPool()
	for _, c := range anchors {
		roots.AddCert(c)
	}
	at := now
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	chains, err := leaf.Verify(opts)
	if err != nil {
		// Not valid now: was it at issuance? Then it has expired (itself
		// or its CA), which the check below names.
		opts.CurrentTime = leaf.NotBefore
		chains, err = leaf.Verify(opts)
	}
	if err != nil || len(chains) == 0 {
		return CertificateUntrusted
	}
	if !unexpired(chains, now) {
		return CertificateExpired
	}
	if CurrentCertificate(dev, protocol.CertFingerprint(leaf.Raw)) {
		return CertificateAccepted
	}
	if ref.BoundAt == nil || leaf.NotBefore.Truncate(time.Second).Before(ref.BoundAt.Truncate(time.Second)) {
		return CertificateBeforeBinding
	}
	return CertificateAccepted
}

// CurrentCertificate reports whether fingerprint is listed on the Device as
// a certificate the manager issued under the device's current binding: one
// of the ways AcceptCertificate finds a certificate of the binding.
func CurrentCertificate(dev *custodyv1alpha1.Device, fingerprint string) bool {
	ref := dev.Spec.ClaimRef
	if ref == nil || dev.Spec.Decommissioned {
		return false
	}
	for _, c := range dev.Status.Certificates {
		if c.ClaimUID == ref.UID && c.Tenant == ref.Tenant && c.Fingerprint == fingerprint {
			return true
		}
	}
	return false
}

// unexpired reports whether some chain has no certificate expired at now.
func unexpired(chains [][]*x509.Certificate, now time.Time) bool {
	for _, chain := range chains {
		ok := true
		for _, c := range chain {
			if !now.Before(c.NotAfter) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// ErrNoTrustBundle: a tenant's trust-bundle ConfigMap holds no parsable
// CA certificate.
var ErrNoTrustBundle = errors.New("the tenant's trust bundle holds no CA certificate")

// TenantTrustAnchors reads a tenant's published CA bundle (the ConfigMap
// TrustBundleName in its namespace): the anchors AcceptCertificate checks a
// device certificate against.
func TenantTrustAnchors(ctx context.Context, c client.Reader, namespace string) ([]*x509.Certificate, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: TrustBundleName}, cm); err != nil {
		return nil, err
	}
	return TrustAnchorsOf(cm)
}

// TrustAnchorsOf returns the certificates of a trust bundle ConfigMap,
// or ErrNoTrustBundle.
func TrustAnchorsOf(cm *corev1.ConfigMap) ([]*x509.Certificate, error) {
	certs, err := protocol.ParseCertificatesPEM([]byte(cm.Data[TrustBundleKey]))
	if err != nil {
		return nil, ErrNoTrustBundle
	}
	return certs, nil
}
