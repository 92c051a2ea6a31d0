package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/custody-dev/custody/pkg/protocol"
)

func trustBundleCA(t *testing.T, cn string, isCA bool, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: notAfter.Add(-365 * 24 * time.Hour), NotAfter: notAfter,
		IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestNextTrustBundle: a replaced CA of the tenant stays for the retention
// period after the change is first seen (or until it expires), then leaves;
// nothing but the tenant's own CAs is carried over from an earlier bundle.
func TestNextTrustBundle(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	keep := 24 * time.Hour
	year := now.Add(365 * 24 * time.Hour)
	current := trustBundleCA(t, "Custody tenant acme CA", true, year)
	old := trustBundleCA(t, "Custody tenant acme CA", true, year)   // the intermediate of an earlier version
	older := trustBundleCA(t, "Custody tenant acme CA", true, year) // replaced before
	expiring := trustBundleCA(t, "Custody tenant acme CA", true, now.Add(time.Hour))
	sharedRoot := trustBundleCA(t, "Custody root CA", true, year)           // never carried over
	otherTenant := trustBundleCA(t, "Custody tenant globex CA", true, year) // never carried over
	notCA := trustBundleCA(t, "Custody tenant acme CA", false, year)
	fp := func(c *x509.Certificate) string { return protocol.CertFingerprint(c.Raw) }

	for name, tc := range map[string]struct {
		previous *TrustBundle
		want     []*x509.Certificate
		until    map[string]time.Time
	}{
		"first bundle": {nil, []*x509.Certificate{current}, map[string]time.Time{}},
		"unchanged":    {&TrustBundle{Certificates: []*x509.Certificate{current}}, []*x509.Certificate{current}, map[string]time.Time{}},
		"replaced: kept for the retention period": {
			&TrustBundle{Certificates: []*x509.Certificate{old}},
			[]*x509.Certificate{current, old}, map[string]time.Time{fp(old): now.Add(keep)}},
		"recorded deadline kept": {
			&TrustBundle{Certificates: []*x509.Certificate{old}, Retained: map[string]time.Time{fp(old): now.Add(time.Hour)}},
			[]*x509.Certificate{current, old}, map[string]time.Time{fp(old): now.Add(time.Hour)}},
		"deadline passed: dropped": {
			&TrustBundle{Certificates: []*x509.Certificate{old, older}, Retained: map[string]time.Time{fp(old): now, fp(older): now.Add(-time.Hour)}},
			[]*x509.Certificate{current}, map[string]time.Time{}},
		"a replaced CA expiring sooner leaves when it expires": {
			&TrustBundle{Certificates: []*x509.Certificate{expiring}},
			[]*x509.Certificate{current, expiring}, map[string]time.Time{fp(expiring): now.Add(time.Hour)}},
		"shared root, other tenant and non-CA never carried over": {
			&TrustBundle{Certificates: []*x509.Certificate{old, sharedRoot, otherTenant, notCA, current}},
			[]*x509.Certificate{current, old}, map[string]time.Time{fp(old): now.Add(keep)}},
	} {
		t.Run(name, func(t *testing.T) {
			got := NextTrustBundle(current, tc.previous, now, keep)
			if len(got.Certificates) != len(tc.want) {
				t.Fatalf("%d certificates, want %d", len(got.Certificates), len(tc.want))
			}
			for i := range tc.want {
				if !got.Certificates[i].Equal(tc.want[i]) {
					t.Fatalf("certificate %d is %s", i, got.Certificates[i].Subject)
				}
			}
			if len(got.Retained) != len(tc.until) {
				t.Fatalf("retained %v, want %v", got.Retained, tc.until)
			}
			for k, v := range tc.until {
				if !got.Retained[k].Equal(v) {
					t.Fatalf("retained %s until %v, want %v", k, got.Retained[k], v)
				}
			}
			// The published form reads back to the same bundle.
			back, err := ParseTrustBundle(got.PEM(), got.RetainedAnnotation())
			if err != nil || len(back.Certificates) != len(got.Certificates) || len(back.Retained) != len(got.Retained) {
				t.Fatalf("round trip: %v %d %d", err, len(back.Certificates), len(back.Retained))
			}
			for k, v := range got.Retained {
				if !back.Retained[k].Equal(v) {
					t.Fatalf("round trip: %s until %v, want %v", k, back.Retained[k], v)
				}
			}
		})
	}
}
