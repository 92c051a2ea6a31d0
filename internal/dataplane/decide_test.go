package dataplane

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// request builds a server's authorization request, signed by a server key,
// carrying cert (PEM) as the client's certificate.
func request(t testing.TB, mutate func(*jwt.AuthorizationRequestClaims)) []byte {
	t.Helper()
	server, _ := nkeys.CreateServer()
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	spub, _ := server.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(spub)
	rc.UserNkey = pub
	rc.Server = jwt.ServerID{ID: "NSERVER", Name: "s1"}
	rc.ClientInformation.Type = "mqtt"
	rc.ClientInformation.MQTT = "xr200_sn-1"
	if mutate != nil {
		mutate(rc)
	}
	token, err := rc.Encode(server)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(token)
}

func testCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tenant CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func leafPEM(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial, uri string, notAfter time.Time) (string, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), c
}

func TestParseRequestFailsClosed(t *testing.T) {
	ca, caKey := testCA(t)
	good, _ := leafPEM(t, ca, caKey, "SN-1", "spiffe://custody.dev/tenants/acme/devices/xr200.sn-1", time.Now().Add(time.Hour))
	withCert := func(certs ...string) func(*jwt.AuthorizationRequestClaims) {
		return func(rc *jwt.AuthorizationRequestClaims) { rc.TLS = &jwt.ClientTLS{Certs: certs} }
	}
	req, _, err := ParseRequest(request(t, withCert(good)))
	if err != nil || req.Leaf == nil || req.MQTTClientID != "xr200_sn-1" || req.ServerID != "NSERVER" || req.Type != "mqtt" {
		t.Fatalf("a good request: %+v, %v", req, err)
	}
	unsigned := request(t, withCert(good))
	parts := strings.Split(string(unsigned), ".")
	for name, data := range map[string][]byte{
		"empty":                   nil,
		"oversized":               bytes.Repeat([]byte("a"), MaxRequestSize+1),
		"not a JWT":               []byte("{\"user_nkey\":\"U\"}"),
		"bad signature":           []byte(parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))),
		"no user key":             request(t, func(rc *jwt.AuthorizationRequestClaims) { rc.UserNkey = "" }),
		"no server":               request(t, func(rc *jwt.AuthorizationRequestClaims) { rc.Server.ID = "" }),
		"certificate not PEM":     request(t, withCert("MIIB garbage")),
		"PEM of something else":   request(t, withCert(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})))),
		"PEM with trailing bytes": request(t, withCert(good+"trailing")),
		"PEM of no certificate":   request(t, withCert(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}})))),
		"a user JWT, not a request": func() []byte {
			u, _ := nkeys.CreateUser()
			a, _ := nkeys.CreateAccount()
			p, _ := u.PublicKey()
			tok, _ := jwt.NewUserClaims(p).Encode(a)
			return []byte(tok)
		}(),
	} {
		if req, _, err := ParseRequest(data); err == nil {
			t.Errorf("%s: parsed as %+v", name, req)
		}
	}
}

// FuzzParseRequest: whatever a server (or anyone who can publish on the
// callout subject) sends, ParseRequest never panics, and what it accepts
// names a user key and a server and, if it has a certificate, a parsed one.
func FuzzParseRequest(f *testing.F) {
	ca, caKey := testCA(f)
	good, _ := leafPEM(f, ca, caKey, "SN-1", "spiffe://custody.dev/tenants/acme/devices/xr200.sn-1", time.Now().Add(time.Hour))
	f.Add(request(f, nil))
	f.Add(request(f, func(rc *jwt.AuthorizationRequestClaims) { rc.TLS = &jwt.ClientTLS{Certs: []string{good}} }))
	f.Add(request(f, func(rc *jwt.AuthorizationRequestClaims) {
		rc.TLS = &jwt.ClientTLS{VerifiedChains: []jwt.StringList{{good}}}
	}))
	f.Add([]byte("eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.AAAA"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, claims, err := ParseRequest(data)
		if err != nil {
			return
		}
		if req.UserNkey == "" || req.ServerID == "" || claims == nil {
			t.Fatalf("accepted without user key or server: %+v", req)
		}
		if claims.TLS != nil && (len(claims.TLS.Certs) > 0 || len(claims.TLS.VerifiedChains) > 0) && req.Leaf == nil {
			t.Fatal("accepted a certificate it did not parse")
		}
	})
}

func device(name, serial string, ref *custodyv1alpha1.DeviceClaimReference) *custodyv1alpha1.Device {
	d := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: name}}
	d.Spec.SerialNumber, d.Spec.Model = serial, strings.ToUpper(strings.SplitN(name, ".", 2)[0])
	d.Spec.ClaimRef = ref
	return d
}

// TestDecideDevice: the grant is the device's own subject space and
// commands, in its tenant's account, until its certificate expires; every
// other case is refused with its reason.
func TestDecideDevice(t *testing.T) {
	ca, caKey := testCA(t)
	const td = "custody.dev"
	expires := time.Now().Add(30 * time.Minute).Truncate(time.Second)
	_, leaf := leafPEM(t, ca, caKey, "SN-1", "spiffe://custody.dev/tenants/acme/devices/xr200.sn-1", expires)
	bound := &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c", UID: "u1", BoundAt: &metav1.Time{Time: time.Now().Add(-time.Hour)}}
	dev := device("xr200.sn-1", "SN-1", bound)
	anchors := []*x509.Certificate{ca}
	now := time.Now()

	g, r := DecideDevice(&Request{Type: "mqtt", MQTTClientID: "xr200_sn-1", Leaf: leaf}, dev, td, anchors, now)
	if r != Admitted || g.Tenant != "acme" || g.User != "device/xr200.sn-1" || !g.Expires.Equal(expires) ||
		strings.Join(g.Publish, ",") != "devices.xr200.sn-1.>" || strings.Join(g.Subscribe, ",") != "devices.xr200.sn-1.commands,devices.xr200.sn-1.commands.>" {
		t.Fatalf("grant %+v, %s", g, r)
	}
	if _, r := DecideDevice(&Request{Type: "nats", Leaf: leaf}, dev, td, anchors, now); r != Admitted {
		t.Fatalf("over NATS: %s", r)
	}
	decommissioned := dev.DeepCopy()
	decommissioned.Spec.Decommissioned = true
	otherCA, _ := testCA(t)
	for name, c := range map[string]struct {
		req     *Request
		dev     *custodyv1alpha1.Device
		anchors []*x509.Certificate
		want    Reason
	}{
		"no certificate":          {&Request{Type: "nats"}, dev, anchors, ReasonNoCertificate},
		"no such device":          {&Request{Type: "nats", Leaf: leaf}, nil, anchors, ReasonUnknownIdentity},
		"unbound":                 {&Request{Type: "nats", Leaf: leaf}, device("xr200.sn-1", "SN-1", nil), anchors, "NotBound"},
		"decommissioned":          {&Request{Type: "nats", Leaf: leaf}, decommissioned, anchors, "NotBound"},
		"bound to another tenant": {&Request{Type: "nats", Leaf: leaf}, device("xr200.sn-1", "SN-1", &custodyv1alpha1.DeviceClaimReference{Tenant: "globex", UID: "u2", BoundAt: bound.BoundAt}), anchors, "WrongIdentity"},
		"another tenant's CA":     {&Request{Type: "nats", Leaf: leaf}, dev, []*x509.Certificate{otherCA}, "Untrusted"},
		"after expiry":            {&Request{Type: "nats", Leaf: leaf}, dev, anchors, "Expired"},
		"MQTT, another client ID": {&Request{Type: "mqtt", MQTTClientID: "xr200_sn-2", Leaf: leaf}, dev, anchors, ReasonClientID},
		"MQTT, the device's name": {&Request{Type: "mqtt", MQTTClientID: "xr200.sn-1", Leaf: leaf}, dev, anchors, ReasonClientID},
		"MQTT, no client ID":      {&Request{Type: "mqtt", Leaf: leaf}, dev, anchors, ReasonClientID},
	} {
		at := now
		if name == "after expiry" {
			at = expires.Add(time.Second)
		}
		if g, r := DecideDevice(c.req, c.dev, td, c.anchors, at); r != c.want {
			t.Errorf("%s: %s %+v, want %s", name, r, g, c.want)
		}
	}
}

func TestKeysAreDerivedFromTheMasterSecret(t *testing.T) {
	if _, err := NewKeys(make([]byte, 31)); err == nil {
		t.Fatal("a 31-byte master secret was accepted")
	}
	a1, _ := NewKeys(bytes.Repeat([]byte{1}, 32))
	a2, _ := NewKeys(bytes.Repeat([]byte{1}, 32))
	b, _ := NewKeys(bytes.Repeat([]byte{2}, 32))
	t1, _ := a1.Tenant("uid-1")
	t1again, _ := a2.Tenant("uid-1")
	t2, _ := a1.Tenant("uid-2")
	tb, _ := b.Tenant("uid-1")
	if PublicKey(t1) != PublicKey(t1again) || PublicKey(a1.Operator()) != PublicKey(a2.Operator()) {
		t.Fatal("the same secret derives different keys")
	}
	seen := map[string]bool{}
	for _, kp := range []nkeys.KeyPair{t1, t2, tb, a1.Operator(), a1.System(), a1.Auth(), a1.SystemUser(), a1.CalloutUser(), a1.Sentinel(), b.Operator()} {
		if seen[PublicKey(kp)] {
			t.Fatalf("two roles or secrets share key %s", PublicKey(kp))
		}
		seen[PublicKey(kp)] = true
	}
	if _, err := a1.Tenant(""); err == nil {
		t.Fatal("a tenant account without a UID")
	}
}

func TestNATSSubjectToMQTTTopic(t *testing.T) {
	for subj, topic := range map[string]string{
		"devices.xr200.sn-1.state": "devices/xr200/sn-1/state",
		"devices.xr200.sn-1.a//b":  "devices/xr200/sn-1/a.b",
		"/.devices":                "/devices", // an empty first level
	} {
		if got := natsSubjectToMQTTTopic(subj); got != topic {
			t.Errorf("%s: %s, want %s", subj, got, topic)
		}
	}
}

// TestRenderConfig: the configuration Custody renders is one nats-server
// reads, in operator mode with the callout's sentinel, and with a client CA
// file it verifies client certificates on both listeners.
func TestRenderConfig(t *testing.T) {
	keys, _ := NewKeys(bytes.Repeat([]byte{7}, 32))
	dir := t.TempDir()
	ca, caKey := testCA(t)
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})) // a key pair nats-server loads
	keyDER, _ := x509.MarshalPKCS8PrivateKey(caKey)
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := ServerConfig{Name: "s1", Host: "127.0.0.1", Port: 4222, MQTTPort: 8883, StoreDir: dir,
		CertFile: write("tls.crt", certPEM), KeyFile: write("tls.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))),
		ClientCAFile: write("ca.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})))}
	text, err := keys.RenderConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(write("nats.conf", text))
	if err != nil {
		t.Fatalf("nats-server cannot read the rendered configuration: %v\n%s", err, text)
	}
	if len(opts.TrustedOperators) != 1 || opts.SystemAccount != PublicKey(keys.System()) || opts.DefaultSentinel == "" {
		t.Fatalf("operator %d, system account %s, sentinel %q", len(opts.TrustedOperators), opts.SystemAccount, opts.DefaultSentinel)
	}
	if opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || !opts.MQTT.TLSConfig.ClientCAs.Equal(opts.TLSConfig.ClientCAs) || opts.MQTT.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("with a client CA file the listeners do not verify client certificates: nats %v, mqtt %v, cas equal %v", opts.TLSConfig.ClientAuth, opts.MQTT.TLSConfig.ClientAuth, opts.MQTT.TLSConfig.ClientCAs.Equal(opts.TLSConfig.ClientCAs))
	}
	if !opts.JetStream || opts.MQTT.Port != 8883 || opts.AuthTimeout != 2 {
		t.Fatalf("jetstream %v, mqtt port %d, authorization timeout %v", opts.JetStream, opts.MQTT.Port, opts.AuthTimeout)
	}
	if opts.Cluster.Name != "" || opts.Cluster.Port != 0 || len(opts.Routes) != 0 {
		t.Fatalf("without a cluster name the server is clustered: %+v, routes %v", opts.Cluster, opts.Routes)
	}

	// Clustered: the cluster block routes the server to its peers.
	cfg.ClusterName, cfg.ClusterPort, cfg.Routes = "custody", 6222, []string{"nats-route://10.0.0.1:6222", "nats-route://10.0.0.2:6222"}
	text, err = keys.RenderConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts, err = server.ProcessConfigFile(write("nats-cluster.conf", text))
	if err != nil {
		t.Fatalf("nats-server cannot read the rendered cluster configuration: %v\n%s", err, text)
	}
	if opts.Cluster.Name != "custody" || opts.Cluster.Host != "127.0.0.1" || opts.Cluster.Port != 6222 || len(opts.Routes) != 2 || opts.Routes[1].Host != "10.0.0.2:6222" || !opts.JetStream || opts.ServerName != "s1" {
		t.Fatalf("cluster %+v, routes %v, jetstream %v, server name %q", opts.Cluster, opts.Routes, opts.JetStream, opts.ServerName)
	}
	cfg.ClusterName = ""
	if _, err := keys.RenderConfig(cfg); err == nil {
		t.Fatal("routes without a cluster name were rendered")
	}
}

// TestAccessGrantsRaceTheCutOff: a grant computed before the cut-off looks
// and recorded after is refused (to be decided again); what was recorded
// before a look is what the look takes; a process that never looked knows
// nothing of the connections open.
func TestAccessGrantsRaceTheCutOff(t *testing.T) {
	s := &Service{}
	wide, narrow := []string{"devices", "devices.>"}, []string{"devices.a.b", "devices.a.b.>"}
	if !s.StaleAccessGrants("acme", "dash", narrow) {
		t.Fatal("a first look found nothing stale: connections granted before a restart would stay")
	}
	if s.StaleAccessGrants("acme", "dash", narrow) {
		t.Fatal("a look with no grant since found something stale")
	}
	e := s.grants.epoch("acme/dash")
	if !s.grants.record("acme/dash", e, ScopeHash(wide)) {
		t.Fatal("a grant at the current epoch was refused")
	}
	stale := s.grants.epoch("acme/dash")
	if !s.StaleAccessGrants("acme", "dash", narrow) {
		t.Fatal("a wide grant before the narrowing was not found stale")
	}
	if s.grants.record("acme/dash", stale, ScopeHash(wide)) {
		t.Fatal("a grant computed before the look was recorded after it")
	}
	if s.StaleAccessGrants("acme", "dash", narrow) {
		t.Fatal("the refused grant was kept")
	}
	e = s.grants.epoch("acme/dash")
	s.grants.record("acme/dash", e, ScopeHash(narrow))
	if s.StaleAccessGrants("acme", "dash", narrow) {
		t.Fatal("a grant of the current scope was found stale")
	}
}
