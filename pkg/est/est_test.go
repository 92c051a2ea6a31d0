package est

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	globalsign "github.com/globalsign/est"
)

func selfSigned(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertsOnlyRoundTrip(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	der, err := EncodeCertsOnly([]*x509.Certificate{a, b})
	if err != nil {
		t.Fatal(err)
	}
	body := EncodeBase64(der)
	back, err := DecodeBase64(body)
	if err != nil || !bytes.Equal(back, der) {
		t.Fatalf("base64 round trip: %v", err)
	}
	certs, err := DecodeCertsOnly(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[0].Equal(a) || !certs[1].Equal(b) {
		t.Fatalf("got %d certificates back", len(certs))
	}
	if _, err := EncodeCertsOnly(nil); err == nil {
		t.Fatal("encoded an empty bundle")
	}
}

// TestOpenSSLReadsCertsOnly checks the encoding against an independent
// implementation when openssl is installed.
func TestOpenSSLReadsCertsOnly(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	der, err := EncodeCertsOnly([]*x509.Certificate{selfSigned(t, "device-a"), selfSigned(t, "ca-b")})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "certs.p7")
	if err := os.WriteFile(p, der, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "pkcs7", "-inform", "DER", "-in", p, "-print_certs", "-noout").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	if !strings.Contains(strings.ReplaceAll(string(out), " ", ""), "subject=CN=device-a") || !strings.Contains(strings.ReplaceAll(string(out), " ", ""), "subject=CN=ca-b") {
		t.Fatalf("openssl did not see both certificates:\n%s", out)
	}
}

func FuzzDecodeCertsOnly(f *testing.F) {
	der, _ := EncodeCertsOnly([]*x509.Certificate{selfSigned(f, "seed")})
	f.Add(der)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := DecodeCertsOnly(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("accepted a bundle without certificates")
		}
	})
}

// TestCSRAttrs: the CsrAttrs is DER a third-party EST client parses, and
// names the key, signature, subject and SAN the gateway's identity check
// wants.
func TestCSRAttrs(t *testing.T) {
	der, err := EncodeCSRAttrs()
	if err != nil {
		t.Fatal(err)
	}
	var attrs globalsign.CSRAttrs
	if err := attrs.Unmarshal(der); err != nil {
		t.Fatalf("github.com/globalsign/est cannot parse it: %v", err)
	}
	if len(attrs.OIDs) != 2 || !attrs.OIDs[0].Equal(oidECDSAWithSHA256) || !attrs.OIDs[1].Equal(oidCommonName) {
		t.Fatalf("OIDs %v", attrs.OIDs)
	}
	if len(attrs.Attributes) != 2 || !attrs.Attributes[0].Type.Equal(oidECPublicKey) || !attrs.Attributes[1].Type.Equal(oidExtensionRequest) {
		t.Fatalf("attributes %+v", attrs.Attributes)
	}
	if v, ok := attrs.Attributes[1].Values[0].(asn1.ObjectIdentifier); !ok || !v.Equal(oidSubjectAltName) {
		t.Fatalf("extensionRequest asks for %v, want subjectAltName", attrs.Attributes[1].Values)
	}
}
