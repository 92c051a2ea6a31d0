package protocol

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
)

func TestSignVerify(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	sig, err := Sign(ec, EnrollPayload("tok", []byte("csr")))
	if err != nil || !Verify(&ec.PublicKey, EnrollPayload("tok", []byte("csr")), sig) {
		t.Fatal("ECDSA signature does not verify")
	}
	if Verify(&ec.PublicKey, PossessionPayload("tok", "csr"), sig) || Verify(&ec.PublicKey, EnrollPayload("tok", []byte("other")), sig) {
		t.Fatal("a signature verified for another purpose or body")
	}
	sig, err = Sign(ed, PossessionPayload("tok", "d"))
	if err != nil || !Verify(ed.Public(), PossessionPayload("tok", "d"), sig) {
		t.Fatal("Ed25519 signature does not verify")
	}
}

func TestSPIFFEIDRoundTrip(t *testing.T) {
	id := DeriveIdentity("custody.dev", "acme", "xr200.sn-1", "SN-1")
	u, _ := url.Parse(id.URI)
	tenant, dev, ok := ParseSPIFFEID("custody.dev", u)
	if !ok || tenant != "acme" || dev != "xr200.sn-1" {
		t.Fatalf("parsed %q %q %v", tenant, dev, ok)
	}
	for _, bad := range []string{"spiffe://evil.example/tenants/acme/devices/x", "spiffe://custody.dev/tenants/acme/devices/x/y", "https://custody.dev/tenants/acme/devices/x", "spiffe://custody.dev/tenants//devices/x"} {
		u, _ := url.Parse(bad)
		if _, _, ok := ParseSPIFFEID("custody.dev", u); ok {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzParsePublicKeyPEM(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		key, err := ParsePublicKeyPEM(b)
		if err == nil && CheckKeyType(key) != nil {
			t.Fatal("accepted a key of another type")
		}
	})
}

func FuzzParseCSRPEM(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := ParseCSRPEM(b)
		if err == nil && csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}

func FuzzParseLabelURL(f *testing.F) {
	l := Label{BaseURL: "https://claim.example/x", SerialNumber: "SN-1", Model: "XR200", Fingerprint: "sha256:" + strings.Repeat("0a", 32)}
	f.Add(l.URL())
	f.Add("https://claim.example/claim?serial=&fp=sha256:zz")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseLabelURL(s)
		if err != nil {
			return
		}
		again, err := ParseLabelURL(got.URL())
		if err != nil || again != got {
			t.Fatalf("label %+v does not round-trip: %+v, %v", got, again, err)
		}
	})
}

// A claim URL's base is kept in the form Label.URL writes; URLs a label
// never carries (a user name, a fragment) are refused rather than kept.
func TestParseLabelURLCanonicalBase(t *testing.T) {
	q := "/claim?serial=SN-1&model=XR200&fp=sha256:" + strings.Repeat("0a", 32)
	for in, base := range map[string]string{
		"https://claim.example" + q:       "https://claim.example",
		"https://claim.example/" + q:      "https://claim.example",
		"https://claim.example/x//" + q:   "https://claim.example/x",
		"https://claim.example/a%2Fb" + q: "https://claim.example/a%2Fb",
		"http://claim.example:8080/x" + q: "http://claim.example:8080/x",
	} {
		l, err := ParseLabelURL(in)
		if err != nil || l.BaseURL != base {
			t.Errorf("%s: base %q, %v; want %q", in, l.BaseURL, err, base)
		}
	}
	for _, in := range []string{
		"https://user@claim.example" + q,
		"https://claim.example" + q + "#frag",
		"ftp://claim.example" + q,
		"https:///claim.example" + q,
	} {
		if l, err := ParseLabelURL(in); err == nil {
			t.Errorf("%s: parsed to %+v", in, l)
		}
	}
}

// A pairing token parses only in its one canonical form, and formats back
// to it.
func FuzzParsePairingToken(f *testing.F) {
	f.Add("acme.abc123.0123456789abcdefghijklmnopqrstuv")
	f.Add("acme.abc123.0123456789abcdefghijklmnopqrstu")
	f.Add("-acme.abc123.0123456789abcdefghijklmnopqrstuv")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParsePairingToken(s)
		if err != nil {
			return
		}
		if tok.String() != strings.TrimSpace(s) || !ValidPairingTokenTenant(tok.Tenant) || !ValidPairingTokenID(tok.ID) || len(tok.Secret) != PairingTokenSecretLength {
			t.Fatalf("%q parsed to %+v", s, tok)
		}
	})
}

func TestPairingTokens(t *testing.T) {
	tok, err := GeneratePairingToken("acme")
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParsePairingToken(" " + tok.String() + "\n")
	if err != nil || back != tok {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	other, _ := GeneratePairingToken("acme")
	if other == tok || PairingTokenDigest("xr200.sn-1", tok) == PairingTokenDigest("xr200.sn-2", tok) || PairingTokenDigest("xr200.sn-1", tok) == PairingTokenDigest("xr200.sn-1", other) {
		t.Fatal("tokens or digests collide")
	}
	for _, bad := range []string{"", "acme", "acme.ABC123." + tok.Secret, "acme.abc12." + tok.Secret, "ac_me.abc123." + tok.Secret, "acme.abc123." + tok.Secret + "x", "acme.abc123." + tok.Secret + ".x"} {
		if _, err := ParsePairingToken(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
