package integration

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/est"
	"github.com/custody-dev/custody/pkg/protocol"
)

// estDevice is a device bound to a tenant and enrolled with its first
// certificate, for the EST tests.
type estDevice struct {
	rec    *factory.Record
	tenant *custodyv1alpha1.Tenant
	claim  *custodyv1alpha1.Claim
	agent  *device.Agent
	cert   tls.Certificate
	leaf   *x509.Certificate
	id     protocol.Identity
}

func newESTDevice(t *testing.T, g *gw, tn *custodyv1alpha1.Tenant) *estDevice {
	t.Helper()
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	cl := waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	cert, leaf := agent.Certificate()
	return &estDevice{rec: rec, tenant: tn, claim: cl, agent: agent, cert: *cert, leaf: leaf, id: identityOf(serial, tn.Name, name)}
}

// csr makes a fresh CSR (a new ECDSA signature, so a new renewal) for the
// device's key and identity.
func (d *estDevice) csr(t testing.TB) *x509.CertificateRequest {
	t.Helper()
	u, err := url.Parse(d.id.URI)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.id.CommonName}, URIs: []*url.URL{u}},
		d.cert.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// estBinaries are the third-party EST client programs, built from the
// module pinned in hack/tools/estclient (github.com/globalsign/est v1.0.6):
// its estclient CLI, and estprobe, which drives the library's Client. The
// main module does not import the library: its TPM code does not build
// against the go-tpm the main module needs.
type estBinaries struct {
	cli, probe string
}

var (
	estBinariesOnce sync.Once
	estBinariesDir  string
	estBinariesErr  error
)

// estclientBinaries builds the estclient CLI and estprobe once per test
// binary, into a directory TestMain removes (removeESTClientBinaries).
func estclientBinaries(t testing.TB) estBinaries {
	t.Helper()
	estBinariesOnce.Do(func() {
		dir, err := os.MkdirTemp("", "custody-estclient-")
		if err != nil {
			estBinariesErr = err
			return
		}
		estBinariesDir = dir
		build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "github.com/globalsign/est/cmd/estclient", "./estprobe")
		build.Dir = filepath.Join("..", "..", "hack", "tools", "estclient")
		if out, err := build.CombinedOutput(); err != nil {
			estBinariesErr = fmt.Errorf("building the pinned estclient and estprobe: %v\n%s", err, out)
		}
	})
	if estBinariesErr != nil {
		t.Fatal(estBinariesErr)
	}
	return estBinaries{cli: filepath.Join(estBinariesDir, "estclient"), probe: filepath.Join(estBinariesDir, "estprobe")}
}

// removeESTClientBinaries removes what estclientBinaries built, if anything.
func removeESTClientBinaries() {
	if estBinariesDir != "" {
		_ = os.RemoveAll(estBinariesDir)
	}
}

// estProbe is the third-party EST client library (github.com/globalsign/est
// Client, run through estprobe) for the gateway under a label, presenting a
// client certificate when it has one.
type estProbe struct {
	bin, host, label, anchor string
	// cert and key are the PEM files of the client certificate (the leaf
	// only, as est.Client.Certificates holds it) and its PKCS#8 key, or "".
	cert, key string
}

// estClient is the third-party EST client for the gateway, under label,
// presenting cert when it is not nil.
func (g *gw) estClient(t testing.TB, label string, cert *tls.Certificate) *estProbe {
	t.Helper()
	p := &estProbe{
		bin:    estclientBinaries(t).probe,
		host:   strings.TrimPrefix(g.URL, "https://"),
		label:  label,
		anchor: writeTemp(t, "anchor.pem", string(pemCert(g.srv.Certificate().Raw))),
	}
	if cert != nil {
		priv := cert.PrivateKey
		if fk, ok := priv.(*device.FileKey); ok {
			priv = fk.Signer // the key the agent keeps in its file
		}
		key, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		p.cert = writeTemp(t, "client.pem", string(pemCert(cert.Certificate[0])))
		p.key = writeTemp(t, "client.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})))
	}
	return p
}

// estStatusError is an answer other than 200 that the library reported as
// an est.Error (202 Accepted included); estprobe prints its status.
type estStatusError struct {
	status int
	detail string
}

func (e *estStatusError) Error() string { return fmt.Sprintf("EST status %d: %s", e.status, e.detail) }

// isESTStatus reports whether err is the library's est.Error with status.
func isESTStatus(err error, status int) bool {
	var e *estStatusError
	return errors.As(err, &e) && e.status == status
}

// run runs one library operation and returns what estprobe wrote to -out.
func (p *estProbe) run(t testing.TB, op string, args ...string) ([]byte, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), op+".out")
	args = append([]string{"-op", op, "-host", p.host, "-label", p.label, "-anchor", p.anchor, "-out", out}, args...)
	if p.cert != "" {
		args = append(args, "-cert", p.cert, "-key", p.key)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(p.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		var status int
		if _, err := fmt.Sscanf(stdout.String(), "status %d", &status); err != nil {
			t.Fatalf("estprobe exited 2 without a status: %q %s", stdout.String(), stderr.String())
		}
		return nil, &estStatusError{status: status, detail: strings.TrimSpace(stderr.String())}
	}
	if err != nil {
		return nil, fmt.Errorf("estprobe %s: %v: %s", op, err, strings.TrimSpace(stderr.String()))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data, nil
}

// CACerts is Client.CACerts.
func (p *estProbe) CACerts(t testing.TB) ([]*x509.Certificate, error) {
	t.Helper()
	data, err := p.run(t, "cacerts")
	if err != nil {
		return nil, err
	}
	return protocol.ParseCertificatesPEM(data)
}

// estCSRAttrs is what Client.CSRAttrs parsed: the OIDs, and the attributes
// as "<type> <value>...".
type estCSRAttrs struct {
	OIDs, Attributes []string
}

// CSRAttrs is Client.CSRAttrs.
func (p *estProbe) CSRAttrs(t testing.TB) (estCSRAttrs, error) {
	t.Helper()
	data, err := p.run(t, "csrattrs")
	if err != nil {
		return estCSRAttrs{}, err
	}
	var attrs estCSRAttrs
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if oid, ok := strings.CutPrefix(line, "oid "); ok {
			attrs.OIDs = append(attrs.OIDs, oid)
		} else if attr, ok := strings.CutPrefix(line, "attribute "); ok {
			attrs.Attributes = append(attrs.Attributes, attr)
		} else if line != "" {
			t.Fatalf("estprobe csrattrs wrote %q", line)
		}
	}
	return attrs, nil
}

// Reenroll is Client.Reenroll with csr.
func (p *estProbe) Reenroll(t testing.TB, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	t.Helper()
	csrFile := writeTemp(t, "renewal.csr", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})))
	data, err := p.run(t, "reenroll", "-csr", csrFile)
	if err != nil {
		return nil, err
	}
	certs, err := protocol.ParseCertificatesPEM(data)
	if err != nil || len(certs) != 1 {
		t.Fatalf("estprobe reenroll wrote %s: %v", data, err)
	}
	return certs[0], nil
}

// reenroll renews with the third-party client, asking again (the same CSR,
// so the same renewal) while the gateway answers 202.
func reenroll(t testing.TB, c *estProbe, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	t.Helper()
	for i := 0; i < 30; i++ {
		cert, err := c.Reenroll(t, csr)
		if isESTStatus(err, http.StatusAccepted) {
			continue
		}
		return cert, err
	}
	t.Fatal("the renewal stayed pending")
	return nil, nil
}

// assertIssuedFor checks that a renewed certificate chains to the tenant's
// published bundle for client authentication and names the device.
func assertIssuedFor(t testing.TB, cert *x509.Certificate, d *estDevice) {
	t.Helper()
	bundle, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, d.tenant)))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the renewed certificate does not chain to tenant %s's bundle: %v", d.tenant.Name, err)
	}
	if cert.Subject.CommonName != d.id.CommonName || len(cert.URIs) != 1 || cert.URIs[0].String() != d.id.URI {
		t.Fatalf("the renewed certificate names %s %v, want %s %s", cert.Subject.CommonName, cert.URIs, d.id.CommonName, d.id.URI)
	}
	if !protocol.SameKey(cert.PublicKey, d.leaf.PublicKey) {
		t.Fatal("the renewed certificate has another key")
	}
}

// TestThirdPartyESTClientRenews: github.com/globalsign/est, an EST client
// library Custody did not write (driven by estprobe), fetches a tenant's CA certificates under the
// tenant's label without a client certificate, reads csrattrs, and renews a
// device certificate over mutual TLS; the renewed certificate chains to the
// tenant's published bundle.
func TestThirdPartyESTClientRenews(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	tn := newTenant(t)
	d := newESTDevice(t, g, tn)

	cas, err := g.estClient(t, tn.Name, nil).CACerts(t)
	if err != nil {
		t.Fatalf("cacerts under the tenant's label, without a client certificate: %v", err)
	}
	bundle, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, tn)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cas) != len(bundle) {
		t.Fatalf("cacerts returned %d certificates, the bundle holds %d", len(cas), len(bundle))
	}
	for i := range cas {
		if !bytes.Equal(cas[i].Raw, bundle[i].Raw) {
			t.Fatalf("cacerts certificate %d is not the bundle's", i)
		}
	}

	attrs, err := g.estClient(t, tn.Name, nil).CSRAttrs(t)
	if err != nil {
		t.Fatalf("csrattrs: %v", err)
	}
	if len(attrs.OIDs) == 0 || len(attrs.Attributes) == 0 {
		t.Fatalf("csrattrs says nothing: %+v", attrs)
	}

	for _, label := range []string{tn.Name, ""} {
		renewed, err := reenroll(t, g.estClient(t, label, &d.cert), d.csr(t))
		if err != nil {
			t.Fatalf("simplereenroll (label %q) with the device's certificate: %v", label, err)
		}
		assertIssuedFor(t, renewed, d)
	}
}

// estRequest sends a raw EST request, with cert as the client certificate
// when it is not nil, and returns the status, headers and body.
func estRequest(t testing.TB, g *gw, cert *tls.Certificate, method, path string, header map[string]string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(g.srv.Certificate())
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: time.Minute}
	req, err := http.NewRequest(method, g.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, out
}

// TestESTOnTheWire crafts the EST requests by hand: the headers of every
// answer, a body with and without Content-Transfer-Encoding, bad base64, a
// wrong media type, cacerts for labels that name no tenant (one answer,
// whether or not the tenant exists), and csrattrs as DER.
func TestESTOnTheWire(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	tn, other := newTenant(t), newTenant(t)
	d := newESTDevice(t, g, tn)
	bundle, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, tn)))
	if err != nil {
		t.Fatal(err)
	}

	// cacerts under the label, no client certificate: base64 with the
	// header RFC 7030 §4 asks for.
	status, h, body := estRequest(t, g, nil, http.MethodGet, protocol.ESTPath(tn.Name, "cacerts"), nil, nil)
	if status != http.StatusOK || h.Get("Content-Type") != est.ContentTypeCertsOnly || h.Get("Content-Transfer-Encoding") != "base64" {
		t.Fatalf("cacerts: %d %q %q %s", status, h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"), body)
	}
	der, err := est.DecodeBase64(body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := est.DecodeCertsOnly(der)
	if err != nil || len(got) != len(bundle) || !bytes.Equal(got[0].Raw, bundle[0].Raw) {
		t.Fatalf("cacerts body is not the tenant's bundle: %v", err)
	}

	// Every label that names no tenant, and no label without a client
	// certificate, get one answer: a 404 that does not depend on what exists.
	_, _, unknownBody := estRequest(t, g, nil, http.MethodGet, protocol.ESTPath("no-such-tenant-"+tn.Name, "cacerts"), nil, nil)
	for _, path := range []string{
		protocol.ESTPath("no-such-tenant-"+tn.Name, "cacerts"),
		protocol.ESTPath(strings.ToUpper(tn.Name), "cacerts"),
		protocol.ESTPath("a_b", "cacerts"),
		protocol.ESTPath(strings.Repeat("a", 64), "cacerts"),
		protocol.ESTPath("%2e%2e", "cacerts"),
		protocol.PathESTCACerts,
	} {
		status, _, body := estRequest(t, g, nil, http.MethodGet, path, nil, nil)
		if status != http.StatusNotFound || !bytes.Equal(body, unknownBody) {
			t.Fatalf("GET %s without a client certificate: %d %s, want the one 404 %s", path, status, body, unknownBody)
		}
	}

	// csrattrs: one answer for every label, a DER CsrAttrs.
	_, _, attrsBody := estRequest(t, g, nil, http.MethodGet, protocol.PathESTCSRAttrs, nil, nil)
	for _, path := range []string{protocol.PathESTCSRAttrs, protocol.ESTPath(tn.Name, "csrattrs"), protocol.ESTPath("no-such-tenant", "csrattrs")} {
		status, h, body := estRequest(t, g, nil, http.MethodGet, path, nil, nil)
		if status != http.StatusOK || h.Get("Content-Type") != est.ContentTypeCSRAttrs || h.Get("Content-Transfer-Encoding") != "base64" || !bytes.Equal(body, attrsBody) {
			t.Fatalf("GET %s: %d %q %q %s", path, status, h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"), body)
		}
	}
	attrsDER, err := est.DecodeBase64(attrsBody)
	if err != nil {
		t.Fatal(err)
	}
	var seq []asn1.RawValue
	if rest, err := asn1.Unmarshal(attrsDER, &seq); err != nil || len(rest) > 0 || len(seq) == 0 {
		t.Fatalf("csrattrs is not a DER SEQUENCE: %v (%d trailing bytes)", err, len(rest))
	}
	var oids []string
	for _, item := range seq {
		var oid asn1.ObjectIdentifier
		if item.Tag == asn1.TagOID {
			_, _ = asn1.Unmarshal(item.FullBytes, &oid)
		} else {
			var attr struct {
				Type   asn1.ObjectIdentifier
				Values []asn1.ObjectIdentifier `asn1:"set"`
			}
			if _, err := asn1.Unmarshal(item.FullBytes, &attr); err != nil {
				t.Fatalf("csrattrs item is neither an OID nor an attribute: %v", err)
			}
			oid = attr.Type
			for _, v := range attr.Values {
				oids = append(oids, v.String())
			}
		}
		oids = append(oids, oid.String())
	}
	for _, want := range []string{"1.2.840.10045.4.3.2", "1.2.840.10045.2.1", "1.2.840.10045.3.1.7", "1.2.840.113549.1.9.14", "2.5.29.17", "2.5.4.3"} {
		if !contains(strings.Join(oids, " ")+" ", want+" ") {
			t.Fatalf("csrattrs %v lacks %s", oids, want)
		}
	}

	// Renewal bodies: base64 with or without Content-Transfer-Encoding
	// (RFC 8951 ignores it), with or without line breaks.
	pkcs10 := map[string]string{"Content-Type": "application/pkcs10"}
	for _, tc := range []struct {
		name   string
		header map[string]string
		body   func([]byte) []byte
	}{
		{"no Content-Transfer-Encoding", pkcs10, est.EncodeBase64},
		{"Content-Transfer-Encoding base64", map[string]string{"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}, est.EncodeBase64},
		{"Content-Transfer-Encoding BASE64, one line", map[string]string{"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "BASE64"},
			func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }},
		{"an extra Content-Transfer-Encoding: binary, base64 body", map[string]string{"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "binary"}, est.EncodeBase64},
		{"media type parameters", map[string]string{"Content-Type": "application/pkcs10; name=device.p10"}, est.EncodeBase64},
	} {
		status, h, body := estRequest(t, g, &d.cert, http.MethodPost, protocol.ESTPath(tn.Name, "simplereenroll"), tc.header, tc.body(d.csr(t).Raw))
		if status == http.StatusAccepted {
			t.Fatalf("%s: pending; the gateway waits for cert-manager longer than that", tc.name)
		}
		if status != http.StatusOK || h.Get("Content-Transfer-Encoding") != "base64" || h.Get("Content-Type") != est.ContentTypeCertsOnly {
			t.Fatalf("%s: %d %q %s", tc.name, status, h.Get("Content-Transfer-Encoding"), body)
		}
		der, err := est.DecodeBase64(body)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := est.DecodeCertsOnly(der)
		if err != nil || len(certs) != 1 {
			t.Fatalf("%s: %v", tc.name, err)
		}
		assertIssuedFor(t, certs[0], d)
	}

	// What must fail.
	csrDER := d.csr(t).Raw
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		path   string
		header map[string]string
		body   []byte
		status int
		code   string
	}{
		{"bad base64", &d.cert, protocol.PathESTSimpleReenroll, pkcs10, []byte("MIIB!!!not*base64"), http.StatusBadRequest, protocol.ErrBadRequest},
		{"raw DER under Content-Transfer-Encoding: binary", &d.cert, protocol.PathESTSimpleReenroll,
			map[string]string{"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "binary"}, csrDER, http.StatusBadRequest, protocol.ErrBadRequest},
		{"base64 of no CSR", &d.cert, protocol.PathESTSimpleReenroll, pkcs10, est.EncodeBase64([]byte{0x30, 0x03, 0x02, 0x01, 0x01}), http.StatusBadRequest, protocol.ErrBadRequest},
		{"Content-Type application/json", &d.cert, protocol.PathESTSimpleReenroll, map[string]string{"Content-Type": "application/json"}, est.EncodeBase64(csrDER),
			http.StatusUnsupportedMediaType, protocol.ErrUnsupportedMediaType},
		{"no Content-Type", &d.cert, protocol.PathESTSimpleReenroll, nil, est.EncodeBase64(csrDER), http.StatusUnsupportedMediaType, protocol.ErrUnsupportedMediaType},
		{"Content-Type application/pkcs7-mime", &d.cert, protocol.PathESTSimpleReenroll, map[string]string{"Content-Type": "application/pkcs7-mime"}, est.EncodeBase64(csrDER),
			http.StatusUnsupportedMediaType, protocol.ErrUnsupportedMediaType},
		{"no client certificate", nil, protocol.ESTPath(tn.Name, "simplereenroll"), pkcs10, est.EncodeBase64(csrDER), http.StatusUnauthorized, protocol.ErrCertificateRefused},
		{"another tenant's label", &d.cert, protocol.ESTPath(other.Name, "simplereenroll"), pkcs10, est.EncodeBase64(csrDER), http.StatusForbidden, protocol.ErrCertificateRefused},
		{"simpleenroll under another tenant's label", &d.cert, protocol.ESTPath(other.Name, "simpleenroll"), pkcs10, est.EncodeBase64(csrDER), http.StatusForbidden, protocol.ErrCertificateRefused},
	} {
		status, _, body := estRequest(t, g, tc.cert, http.MethodPost, tc.path, tc.header, tc.body)
		if status != tc.status || !contains(string(body), `"error":"`+tc.code+`"`) {
			t.Fatalf("%s: %d %s, want %d %s", tc.name, status, body, tc.status, tc.code)
		}
	}
}

// TestDiscardedRenewalsKeepTheCertificate: a client that renews again and
// again and discards every answer still holds a certificate of its binding,
// and keeps renewing with it after it dropped out of the newest four listed
// on the Device; once expired (on the gateway's clock) it is refused.
func TestDiscardedRenewalsKeepTheCertificate(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	tn := newTenant(t)
	d := newESTDevice(t, g, tn)
	c := g.estClient(t, tn.Name, &d.cert)
	fp := protocol.CertFingerprint(d.leaf.Raw)

	for i := 0; i < 6; i++ {
		if _, err := reenroll(t, c, d.csr(t)); err != nil {
			t.Fatalf("renewal %d with the first certificate, earlier answers discarded: %v", i+1, err)
		}
	}
	dev := getDevice(t, d.claim.DeviceName())
	for _, listed := range dev.Status.Certificates {
		if listed.Fingerprint == fp {
			t.Fatal("the first certificate is still listed on the Device: the test proves nothing")
		}
	}
	if len(dev.Status.Certificates) != 4 {
		t.Fatalf("the Device lists %d certificates, want the newest 4", len(dev.Status.Certificates))
	}
	renewed, err := reenroll(t, c, d.csr(t))
	if err != nil {
		t.Fatalf("renewal with the first, unlisted, unexpired certificate: %v", err)
	}
	assertIssuedFor(t, renewed, d)
	if err := d.agent.Client.Heartbeat(ctx, d.cert, protocol.HeartbeatRequest{}); err != nil {
		t.Fatalf("heartbeat with the first certificate: %v", err)
	}

	// Expired on the gateway's clock: refused, like any other refusal.
	g.Clock.Step(time.Until(d.leaf.NotAfter) + time.Second)
	if _, err := reenroll(t, c, d.csr(t)); !isESTStatus(err, http.StatusForbidden) {
		t.Fatalf("renewal with the expired certificate: %v, want 403", err)
	}
	if err := d.agent.Client.Heartbeat(ctx, d.cert, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
		t.Fatalf("heartbeat with the expired certificate: %v, want CertificateRefused", err)
	}
}

// TestRoundTripDoesNotReviveOldCertificates: a device transferred from
// tenant A to B and back to A does not get A's old certificate accepted
// again: it was issued before the current binding began. The manager's clock
// is put on real time here, because cert-manager dates certificates with it.
func TestRoundTripDoesNotReviveOldCertificates(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	a, b := newTenant(t), newTenant(t)
	d := newESTDevice(t, g, a)
	c := g.estClient(t, a.Name, &d.cert)
	if _, err := reenroll(t, c, d.csr(t)); err != nil {
		t.Fatalf("renewal before the transfers: %v", err)
	}

	offer(t, admin, d.claim, b.Name)
	atB := waitPhase(t, proofClaim(t, admin, b.Status.Namespace, d.rec, acceptFrom(a.Name)), custodyv1alpha1.ClaimPhaseBound)
	// The binding back to A begins after every certificate of A's first
	// binding was issued: two seconds ahead of real time.
	m.Clock.SetTime(time.Now().Add(2 * time.Second))
	offer(t, admin, atB, a.Name)
	waitPhase(t, proofClaim(t, admin, a.Status.Namespace, d.rec, acceptFrom(b.Name)), custodyv1alpha1.ClaimPhaseBound)
	dev := getDevice(t, d.claim.DeviceName())
	if dev.Spec.ClaimRef == nil || dev.Spec.ClaimRef.Tenant != a.Name || dev.Spec.ClaimRef.BoundAt == nil || !dev.Spec.ClaimRef.BoundAt.After(d.leaf.NotBefore) {
		t.Fatalf("the device's binding: %+v", dev.Spec.ClaimRef)
	}

	if _, err := reenroll(t, c, d.csr(t)); !isESTStatus(err, http.StatusForbidden) {
		t.Fatalf("renewal with A's certificate from before the round trip: %v, want 403", err)
	}
	if err := d.agent.Client.Heartbeat(ctx, d.cert, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
		t.Fatalf("heartbeat with A's old certificate: %v, want CertificateRefused", err)
	}
	if v := contract.AcceptCertificate(dev, controllers.DefaultTrustDomain, d.leaf, mustBundle(t, a), time.Now()); v != contract.CertificateBeforeBinding {
		t.Fatalf("the rule says %s about A's old certificate, want %s", v, contract.CertificateBeforeBinding)
	}

	// The device enrols again and renews under A's new binding.
	enrollAgent(t, d.agent)
	cert, leaf := d.agent.Certificate()
	if leaf.Equal(d.leaf) {
		t.Fatal("the agent kept its old certificate")
	}
	if _, err := reenroll(t, g.estClient(t, a.Name, cert), d.csr(t)); err != nil {
		t.Fatalf("renewal with the certificate of the new binding: %v", err)
	}
}

func mustBundle(t testing.TB, tn *custodyv1alpha1.Tenant) []*x509.Certificate {
	t.Helper()
	certs, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, tn)))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestThirdPartyESTCLIRenews runs the third-party EST command-line client
// (github.com/globalsign/est/cmd/estclient, pinned in
// hack/tools/estclient/go.mod) as an operator would: cacerts under the
// tenant's label without a client certificate, then reenroll with the
// device's certificate and key, letting the client build the CSR from the
// certificate.
func TestThirdPartyESTCLIRenews(t *testing.T) {
	bin := estclientBinaries(t).cli
	dir := t.TempDir()
	startManager(t)
	g := startGateway(t)
	tn := newTenant(t)
	d := newESTDevice(t, g, tn)
	server := strings.TrimPrefix(g.URL, "https://")
	anchor := writeTemp(t, "anchor.pem", string(pemCert(g.srv.Certificate().Raw)))
	certFile := writeTemp(t, "device.pem", string(pemCert(d.leaf.Raw)))
	keyFile := writeTemp(t, "device.key", string(d.rec.PrivateKeyPEM))

	run := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("estclient %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	cacerts := filepath.Join(dir, "cacerts.pem")
	run("cacerts", "-server", server, "-aps", tn.Name, "-explicit", anchor, "-out", cacerts)
	got, err := os.ReadFile(cacerts)
	if err != nil {
		t.Fatal(err)
	}
	gotCerts, err := protocol.ParseCertificatesPEM(got)
	if err != nil || !bytes.Equal(gotCerts[0].Raw, mustBundle(t, tn)[0].Raw) {
		t.Fatalf("estclient cacerts wrote %s (%v), not the tenant's bundle", got, err)
	}

	renewed := filepath.Join(dir, "renewed.pem")
	for i := 0; ; i++ {
		out, err := exec.Command(bin, "reenroll", "-server", server, "-aps", tn.Name, "-explicit", anchor, "-certs", certFile, "-key", keyFile, "-out", renewed).CombinedOutput()
		if err == nil {
			break
		}
		if i > 20 || !contains(string(out), "202") {
			t.Fatalf("estclient reenroll: %v\n%s", err, out)
		}
	}
	pemData, err := os.ReadFile(renewed)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := protocol.ParseCertificatesPEM(pemData)
	if err != nil {
		t.Fatalf("estclient reenroll wrote %s: %v", pemData, err)
	}
	assertIssuedFor(t, certs[0], d)
}
