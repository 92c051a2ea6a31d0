package controllers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestEnrollRequestName(t *testing.T) {
	csr := func(key *ecdsa.PrivateKey) *x509.CertificateRequest {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-1"}}, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	base := EnrollRequestName("xr200.sn-1", "uid-1", csr(k1))
	if errs := validation.IsDNS1123Subdomain(base); len(errs) > 0 {
		t.Fatalf("%q is not a valid object name: %v", base, errs)
	}
	if again := EnrollRequestName("xr200.sn-1", "uid-1", csr(k1)); again != base {
		t.Fatalf("another CSR for the same key got another name: %s, %s", again, base)
	}
	for what, other := range map[string]string{
		"another key":     EnrollRequestName("xr200.sn-1", "uid-1", csr(k2)),
		"another binding": EnrollRequestName("xr200.sn-1", "uid-2", csr(k1)),
		"another device":  EnrollRequestName("xr200.sn-2", "uid-1", csr(k1)),
		"shifted parts":   EnrollRequestName("xr200.sn-1u", "id-1", csr(k1)),
	} {
		if other == base {
			t.Errorf("%s gives the same request name", what)
		}
	}
}
