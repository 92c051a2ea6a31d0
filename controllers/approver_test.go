package controllers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
)

// TestTenantCARequestShape: the tenant CA's CSR must have a subject of one
// RDN holding one CN equal to the Certificate's, judged on the raw DER, and
// no SAN extension in any form.
func TestTenantCARequestShape(t *testing.T) {
	const cn = "Custody tenant a CA"
	oidCN, oidO := asn1.ObjectIdentifier{2, 5, 4, 3}, asn1.ObjectIdentifier{2, 5, 4, 10}
	atv := func(oid asn1.ObjectIdentifier, v string) pkix.AttributeTypeAndValue {
		return pkix.AttributeTypeAndValue{Type: oid, Value: v}
	}
	for _, tc := range []struct {
		name string
		rdns pkix.RDNSequence
		ok   bool
	}{
		{"the CN alone", pkix.RDNSequence{{atv(oidCN, cn)}}, true},
		{"another CN", pkix.RDNSequence{{atv(oidCN, "Custody tenant b CA")}}, false},
		{"a repeated CN", pkix.RDNSequence{{atv(oidCN, "admin")}, {atv(oidCN, cn)}}, false},
		{"a multi-valued RDN", pkix.RDNSequence{{atv(oidCN, "x"), atv(oidCN, cn)}}, false},
		{"an organisation too", pkix.RDNSequence{{atv(oidO, "Evil")}, {atv(oidCN, cn)}}, false},
		{"no subject", pkix.RDNSequence{}, false},
	} {
		raw, err := asn1.Marshal(tc.rdns)
		if err != nil {
			t.Fatal(err)
		}
		if got := onlyCommonName(raw, cn); got != tc.ok {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.ok)
		}
	}
	if onlyCommonName(append(caMustMarshal(t, pkix.RDNSequence{{atv(oidCN, cn)}}), 0), cn) {
		t.Error("trailing bytes accepted")
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// An otherName SAN, which Go's parser does not expose.
	otherName, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: caMustMarshal(t, asn1.ObjectIdentifier{1, 2, 3})})
	sans, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: otherName})
	for name, tmpl := range map[string]*x509.CertificateRequest{
		"none":      {Subject: pkix.Name{CommonName: cn}},
		"DNS":       {Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"evil.example"}},
		"otherName": {Subject: pkix.Name{CommonName: cn}, ExtraExtensions: []pkix.Extension{{Id: oidSubjectAltName, Value: sans}}},
	} {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if got := hasSAN(csr); got != (name != "none") {
			t.Errorf("%s: hasSAN %v", name, got)
		}
	}
}

func caMustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
