package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string, notBefore, notAfter time.Time) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: notBefore, NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: c, key: key}
}

// issue signs a leaf shaped by mutate under ca.
func (ca testCA) issue(t *testing.T, id protocol.Identity, notBefore time.Time, mutate func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id.URI)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: id.CommonName}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAcceptCertificate is the certificate-acceptance rule: any unexpired
// certificate of the current binding, listed or not; nothing of an earlier
// binding, another identity or another CA.
func TestAcceptCertificate(t *testing.T) {
	const td = "custody.dev"
	bound := time.Date(2026, 11, 21, 12, 0, 0, 500e6, time.UTC) // half a second into the second
	now := bound.Add(6 * time.Hour)
	ca := newTestCA(t, "Custody tenant acme CA", bound.Add(-24*time.Hour), bound.Add(365*24*time.Hour))
	other := newTestCA(t, "Custody tenant globex CA", bound.Add(-24*time.Hour), bound.Add(365*24*time.Hour))
	shortCA := newTestCA(t, "Custody tenant acme CA", bound.Add(-24*time.Hour), bound.Add(time.Hour))
	// A CA made after the backdated notBefore of a certificate it signs.
	lateCA := newTestCA(t, "Custody tenant acme CA", bound.Add(2*time.Minute), bound.Add(365*24*time.Hour))

	dev := func(mutate func(*custodyv1alpha1.Device)) *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: "m1.sn-1"}, Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN-1", Model: "M1"}}
		at := metav1.NewTime(bound)
		d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c", UID: "uid-2", BoundAt: &at}
		if mutate != nil {
			mutate(d)
		}
		return d
	}
	id := protocol.DeriveIdentity(td, "acme", "m1.sn-1", "SN-1")
	good := ca.issue(t, id, bound.Add(time.Minute), nil)
	early := ca.issue(t, id, bound.Add(-time.Hour), nil)
	sameSecond := ca.issue(t, id, bound.Truncate(time.Second), nil)
	listed := func(c *x509.Certificate, uid string) func(*custodyv1alpha1.Device) {
		return func(d *custodyv1alpha1.Device) {
			d.Status.Certificates = []custodyv1alpha1.DeviceCertificate{{Fingerprint: protocol.CertFingerprint(c.Raw), Tenant: "acme", ClaimUID: types.UID(uid)}}
		}
	}

	cases := []struct {
		name    string
		dev     *custodyv1alpha1.Device
		leaf    *x509.Certificate
		anchors []*x509.Certificate
		now     time.Time
		want    CertificateVerdict
	}{
		{"issued after the binding began, not listed", dev(nil), good, []*x509.Certificate{ca.cert}, now, CertificateAccepted},
		{"issued in the second the binding began", dev(nil), sameSecond, []*x509.Certificate{ca.cert}, now, CertificateAccepted},
		{"issued before the binding began", dev(nil), early, []*x509.Certificate{ca.cert}, now, CertificateBeforeBinding},
		{"issued before, but listed for this binding", dev(listed(early, "uid-2")), early, []*x509.Certificate{ca.cert}, now, CertificateAccepted},
		{"issued before, listed for an earlier binding", dev(listed(early, "uid-1")), early, []*x509.Certificate{ca.cert}, now, CertificateBeforeBinding},
		{"binding without boundAt, not listed", dev(func(d *custodyv1alpha1.Device) { d.Spec.ClaimRef.BoundAt = nil }), good, []*x509.Certificate{ca.cert}, now, CertificateBeforeBinding},
		{"binding without boundAt, listed", dev(func(d *custodyv1alpha1.Device) { d.Spec.ClaimRef.BoundAt = nil; listed(good, "uid-2")(d) }), good, []*x509.Certificate{ca.cert}, now, CertificateAccepted},
		{"expired", dev(nil), good, []*x509.Certificate{ca.cert}, good.NotAfter, CertificateExpired},
		{"expired and listed", dev(listed(good, "uid-2")), good, []*x509.Certificate{ca.cert}, good.NotAfter.Add(time.Second), CertificateExpired},
		{"its CA expired", dev(nil), shortCA.issue(t, id, bound.Add(time.Minute), nil), []*x509.Certificate{shortCA.cert}, bound.Add(2 * time.Hour), CertificateExpired},
		{"not yet valid on a clock behind the signer's", dev(nil), good, []*x509.Certificate{ca.cert}, bound, CertificateAccepted},
		{"its CA made after its notBefore", dev(nil), lateCA.issue(t, id, bound.Add(time.Minute), nil), []*x509.Certificate{lateCA.cert}, now, CertificateAccepted},
		{"another tenant's CA", dev(nil), other.issue(t, id, bound.Add(time.Minute), nil), []*x509.Certificate{ca.cert}, now, CertificateUntrusted},
		{"no anchors", dev(nil), good, nil, now, CertificateUntrusted},
		// A device certificate's only extended key usage is clientAuth: the
		// DER identity check refuses serverAuth before the chain is built.
		{"server authentication only", dev(nil), ca.issue(t, id, bound.Add(time.Minute), func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"another tenant's identity", dev(nil), ca.issue(t, protocol.DeriveIdentity(td, "globex", "m1.sn-1", "SN-1"), bound.Add(time.Minute), nil), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"another device's identity", dev(nil), ca.issue(t, protocol.DeriveIdentity(td, "acme", "m1.sn-2", "SN-2"), bound.Add(time.Minute), nil), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"an extra DNS name", dev(nil), ca.issue(t, id, bound.Add(time.Minute), func(c *x509.Certificate) { c.DNSNames = []string{"admin"} }), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"a second URI", dev(nil), ca.issue(t, id, bound.Add(time.Minute), func(c *x509.Certificate) { c.URIs = append(c.URIs, c.URIs[0]) }), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"an extra subject attribute", dev(nil), ca.issue(t, id, bound.Add(time.Minute), func(c *x509.Certificate) { c.Subject.Organization = []string{"x"} }), []*x509.Certificate{ca.cert}, now, CertificateWrongIdentity},
		{"unbound", dev(func(d *custodyv1alpha1.Device) { d.Spec.ClaimRef = nil }), good, []*x509.Certificate{ca.cert}, now, CertificateNotBound},
		{"decommissioned", dev(func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }), good, []*x509.Certificate{ca.cert}, now, CertificateNotBound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := AcceptCertificate(tc.dev, td, tc.leaf, tc.anchors, tc.now); got != tc.want {
				t.Fatalf("AcceptCertificate = %s, want %s", got, tc.want)
			}
		})
	}
}
