package est

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custody-dev/custody/pkg/protocol"
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
// wants. The client is the estclient CLI of github.com/globalsign/est,
// pinned in hack/tools/estclient (the main module cannot import the library:
// its TPM code does not build against the go-tpm the main module needs); it
// fetches csrattrs from a TLS server that serves EncodeCSRAttrs the way the
// gateway does, and prints what it parsed, OIDs first, then attributes.
func TestCSRAttrs(t *testing.T) {
	der, err := EncodeCSRAttrs()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != protocol.PathESTCSRAttrs {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ContentTypeCSRAttrs)
		w.Header().Set("Content-Transfer-Encoding", TransferEncodingBase64)
		_, _ = w.Write(EncodeBase64(der))
	}))
	defer srv.Close()

	dir := t.TempDir()
	bin := filepath.Join(dir, "estclient")
	build := exec.Command("go", "build", "-o", bin, "github.com/globalsign/est/cmd/estclient")
	build.Dir = filepath.Join("..", "..", "hack", "tools", "estclient")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the pinned estclient: %v\n%s", err, out)
	}
	anchor := filepath.Join(dir, "anchor.pem")
	if err := os.WriteFile(anchor, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "csrattrs", "-server", strings.TrimPrefix(srv.URL, "https://"), "-explicit", anchor).CombinedOutput()
	if err != nil {
		t.Fatalf("github.com/globalsign/est cannot fetch or parse it: %v\n%s", err, out)
	}

	// The CLI prints "OID     : <oid>" for each OID, then for each
	// attribute "Type    : <type>" followed by its values, the first as
	// " Value  : <value>" (" Values : " when there are several), the others
	// as "        : <value>".
	type attribute struct {
		typ    string
		values []string
	}
	var oids []string
	var attrs []attribute
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		label, value, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("estclient csrattrs printed %q:\n%s", line, out)
		}
		label, value = strings.TrimSpace(label), strings.TrimSpace(value)
		switch {
		case label == "OID" && len(attrs) == 0:
			oids = append(oids, value)
		case label == "Type":
			attrs = append(attrs, attribute{typ: value})
		case (label == "Value" || label == "Values" || label == "") && len(attrs) > 0:
			attrs[len(attrs)-1].values = append(attrs[len(attrs)-1].values, value)
		default:
			t.Fatalf("estclient csrattrs printed %q:\n%s", line, out)
		}
	}
	if len(oids) != 2 || oids[0] != oidECDSAWithSHA256.String() || oids[1] != oidCommonName.String() {
		t.Fatalf("OIDs %v\n%s", oids, out)
	}
	if len(attrs) != 2 || attrs[0].typ != oidECPublicKey.String() || attrs[1].typ != oidExtensionRequest.String() {
		t.Fatalf("attributes %+v\n%s", attrs, out)
	}
	if len(attrs[1].values) == 0 || attrs[1].values[0] != oidSubjectAltName.String() {
		t.Fatalf("extensionRequest asks for %v, want subjectAltName\n%s", attrs[1].values, out)
	}
}
