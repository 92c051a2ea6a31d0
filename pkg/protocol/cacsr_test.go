package protocol

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"strings"
	"testing"

	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// TestCheckCACSR: a tenant CA's CSR must have a subject of one RDN holding
// one CN equal to the Certificate's, judged on the raw DER, and no SAN
// extension in any form; it may request the key usages and basic
// constraints cert-manager encodes for a CA, and nothing else. (This was
// controllers.TestTenantCARequestShape, on the approver's own DER reader,
// now on the one reader the device CSR checks use too.)
func TestCheckCACSR(t *testing.T) {
	const caCN = "Custody tenant a CA"
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oidO := asn1.ObjectIdentifier{2, 5, 4, 10}
	ku := ext(oidKeyUsage, true, derOf(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})) // certSign, cRLSign
	bc := ext(oidBasicConstraints, true, derOf(struct{ IsCA bool }{true}))
	// An otherName SAN, which Go's parser does not expose.
	otherName := gn{cbasn1.Tag(0).Constructed().ContextSpecific(), derOf(asn1.ObjectIdentifier{1, 2, 3})}
	dnsName := gn{cbasn1.Tag(2).ContextSpecific(), []byte("evil.example")}
	for _, tc := range []struct {
		name  string
		der   []byte
		wantE string // "" accepted, else a substring of the error
	}{
		{"the CN alone", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{}), ""},
		{"the CN as PrintableString", rawCSR(t, key, 0, rawName([]atv{cn(caCN)}), [][]byte{}), ""},
		{"cert-manager's extensions", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ku, bc)}), ""},
		{"another CN", rawCSR(t, key, 0, rawName([]atv{utf8CN("Custody tenant b CA")}), [][]byte{}), "common name"},
		{"a repeated CN", rawCSR(t, key, 0, rawName([]atv{utf8CN("admin")}, []atv{utf8CN(caCN)}), [][]byte{}), "more than one RDN"},
		{"a multi-valued RDN", rawCSR(t, key, 0, rawName([]atv{utf8CN("x"), utf8CN(caCN)}), [][]byte{}), "multi-valued"},
		{"an organisation too", rawCSR(t, key, 0, rawName([]atv{{oidO, cbasn1.UTF8String, "Evil"}}, []atv{utf8CN(caCN)}), [][]byte{}), "more than one RDN"},
		{"no subject", rawCSR(t, key, 0, rawName(), [][]byte{}), "empty"},
		{"a DNS SAN", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(sanExt(dnsName))}), "subjectAltName"},
		{"an otherName SAN", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ku, sanExt(otherName))}), "subjectAltName"},
		{"a URI SAN", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(sanExt(uriName("spiffe://custody.dev/x")))}), "subjectAltName"},
		{"another extension", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ext(asn1.ObjectIdentifier{2, 5, 29, 30}, true, derOf(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true})))}), "nameConstraints"},
		{"keyUsage twice", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ku, ku)}), "more than once"},
		{"two extension requests", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ku), extRequest(bc)}), "more than one extensionRequest"},
		{"another attribute", rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{attribute(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}, derOf("x"))}), "challengePassword"},
		{"version 1", rawCSR(t, key, 1, rawName([]atv{utf8CN(caCN)}), [][]byte{}), "version"},
		{"trailing bytes", append(rawCSR(t, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{}), 0), "not a DER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCACSR(tc.der, caCN)
			switch {
			case tc.wantE == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantE != "" && err == nil:
				t.Fatal("accepted")
			case tc.wantE != "" && !strings.Contains(err.Error(), tc.wantE):
				t.Fatalf("error %q does not say %q", err, tc.wantE)
			}
		})
	}
	// What crypto/x509 makes, as cert-manager does: the CN and key usages
	// pass; a DNS name does not.
	for name, tmpl := range map[string]*x509.CertificateRequest{
		"none": {Subject: pkix.Name{CommonName: caCN}, ExtraExtensions: []pkix.Extension{{Id: oidKeyUsage, Critical: true, Value: derOf(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})}}},
		"DNS":  {Subject: pkix.Name{CommonName: caCN}, DNSNames: []string{"evil.example"}},
	} {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckCACSR(der, caCN); (err == nil) != (name == "none") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzCheckCACSR: whatever DER it is given, CheckCACSR never panics, and a
// CSR it accepts, as crypto/x509 reads it, asks for exactly the CA's common
// name and no subject alternative name of any kind.
func FuzzCheckCACSR(f *testing.F) {
	const caCN = "Custody tenant a CA"
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ku := ext(oidKeyUsage, true, derOf(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}))
	f.Add(rawCSR(f, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(ku)}))
	f.Add(rawCSR(f, key, 0, rawName([]atv{utf8CN(caCN)}), [][]byte{extRequest(sanExt(gn{cbasn1.Tag(2).ContextSpecific(), []byte("evil.example")}))}))
	f.Add(rawCSR(f, key, 0, rawName([]atv{utf8CN("admin")}, []atv{utf8CN(caCN)}), [][]byte{}))
	f.Fuzz(func(t *testing.T, der []byte) {
		if CheckCACSR(der, caCN) != nil {
			return
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		if len(csr.Subject.Names) != 1 || csr.Subject.CommonName != caCN || len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses)+len(csr.URIs) > 0 {
			t.Fatalf("accepted a CA CSR that asks for more: %+v", csr.Subject)
		}
	})
}
