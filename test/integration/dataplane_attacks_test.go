package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/dataplane"
)

// tenantCAKey reads a tenant's CA certificate and key from the operator
// namespace: what an attacker who stole another tenant's CA, or Custody's
// own issuer, could sign with.
func tenantCAKey(t testing.TB, tn *custodyv1alpha1.Tenant) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	s := &corev1.Secret{}
	if err := admin.Get(t.Context(), client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(tn.Name)}, s); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(s.Data[corev1.TLSPrivateKeyKey])
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, s.Data[corev1.TLSCertKey]), key
}

// forgeDeviceCert signs a client certificate naming serial and the SPIFFE
// ID uri with ca (self-signed when ca is nil), valid from notBefore to
// notAfter.
func forgeDeviceCert(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial, uri string, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	parent, signer := ca, caKey
	if ca == nil {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestDataPlaneRefusesCertificatesOfNoCurrentBinding: the callout refuses,
// over MQTT and NATS, a certificate of a device that is not bound (signed
// by the tenant's own CA), one naming a bound device but signed by another
// tenant's CA, an expired one, a self-signed one with the bound device's
// SPIFFE ID, and one of a device bound to another tenant naming this
// tenant; each refusal is the same "not authorized" and counted with its
// reason. No certificate at all fails the TLS handshake.
func TestDataPlaneRefusesCertificatesOfNoCurrentBinding(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	owner, other := newTenant(t), newTenant(t)
	bound, _, good := boundDevice(t, g, owner, nil)
	unbound := newDevice(t)
	elsewhere := newDevice(t)
	waitPhase(t, claimWithCode(t, admin, other.Status.Namespace, elsewhere.Device.Spec.SerialNumber, elsewhere.Device.Spec.Model, elsewhere.Code.String()), custodyv1alpha1.ClaimPhaseBound)

	ownerCA, ownerKey := tenantCAKey(t, owner)
	otherCA, otherKey := tenantCAKey(t, other)
	now := time.Now()
	if !ownerCA.NotBefore.Before(now.Add(-time.Second)) {
		t.Fatalf("the tenant's CA is valid from %v: too fresh to forge an expired certificate under it", ownerCA.NotBefore)
	}
	serial, name := bound.Device.Spec.SerialNumber, bound.Device.Name
	cases := []struct {
		what   string
		cert   *tls.Certificate
		client string
		reason string
	}{
		{"an unbound device's, signed by the tenant's CA", forgeDeviceCert(t, ownerCA, ownerKey, unbound.Device.Spec.SerialNumber, identityOf(unbound.Device.Spec.SerialNumber, owner.Name, unbound.Device.Name).URI, now.Add(-time.Minute), now.Add(time.Hour)), unbound.Device.Name, "NotBound"},
		{"the bound device's identity, signed by another tenant's CA", forgeDeviceCert(t, otherCA, otherKey, serial, identityOf(serial, owner.Name, name).URI, now.Add(-time.Minute), now.Add(time.Hour)), name, "Untrusted"},
		// Issued while the tenant's CA was valid (it is minutes old), and
		// expired since.
		{"the bound device's identity, expired", forgeDeviceCert(t, ownerCA, ownerKey, serial, identityOf(serial, owner.Name, name).URI, ownerCA.NotBefore, now.Add(-time.Second)), name, "Expired"},
		{"self-signed with the bound device's SPIFFE ID", forgeDeviceCert(t, nil, nil, serial, identityOf(serial, owner.Name, name).URI, now.Add(-time.Minute), now.Add(time.Hour)), name, "Untrusted"},
		{"another tenant's device, naming this tenant", forgeDeviceCert(t, ownerCA, ownerKey, elsewhere.Device.Spec.SerialNumber, identityOf(elsewhere.Device.Spec.SerialNumber, owner.Name, elsewhere.Device.Name).URI, now.Add(-time.Minute), now.Add(time.Hour)), elsewhere.Device.Name, "WrongIdentity"},
		{"a device of no trust domain Custody knows", forgeDeviceCert(t, ownerCA, ownerKey, serial, "spiffe://evil.example/tenants/"+owner.Name+"/devices/"+name, now.Add(-time.Minute), now.Add(time.Hour)), name, "UnknownIdentity"},
		{"the good certificate under another device's MQTT client ID", good, unbound.Device.Name, "ClientID"},
	}
	for _, c := range cases {
		before := admissions("refused", c.reason)
		mqttErr := func() error {
			m, err := dp.mqttAs(c.cert, dataplane.MQTTClientID(c.client), true)
			if err == nil {
				m.Disconnect(0)
			}
			return err
		}()
		if mqttErr == nil || !strings.Contains(mqttErr.Error(), "not Authorized") {
			t.Errorf("%s: MQTT connect: %v, want not authorized", c.what, mqttErr)
		}
		if c.reason != "ClientID" {
			nc, err := dp.natsAs(c.cert)
			if err == nil {
				nc.Close()
			}
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
				t.Errorf("%s: NATS connect: %v, want an authorization violation", c.what, err)
			}
		}
		want := 2.0
		if c.reason == "ClientID" {
			want = 1
		}
		if got := admissions("refused", c.reason) - before; got != want {
			t.Errorf("%s: refused with reason %s %v times, want %v", c.what, c.reason, got, want)
		}
	}
	// Without a client certificate the TLS handshake itself fails.
	if nc, err := dp.natsAs(nil); err == nil {
		nc.Close()
		t.Error("a NATS client without a certificate was admitted")
	}
	if m, err := dp.mqttAs(nil, dataplane.MQTTClientID(name), true); err == nil {
		m.Disconnect(0)
		t.Error("an MQTT client without a certificate was admitted")
	}
	// And the good certificate still works: the refusals above were not
	// a broken data plane.
	nc, err := dp.natsAs(good)
	if err != nil {
		t.Fatalf("the bound device's own certificate is refused: %v", err)
	}
	nc.Close()
}

// TestDataPlaneDeviceStaysInItsSubjects: an admitted device may publish
// only under devices.<device>.> and subscribe only to its command
// subjects: publishing to another device's subjects, to a wildcard or to
// anything else, and subscribing to another device's, to a wildcard above
// its commands or to its own telemetry are refused, over NATS and MQTT, and
// nothing reaches the owner.
func TestDataPlaneDeviceStaysInItsSubjects(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	owner := newTenant(t)
	rec, _, cert := boundDevice(t, g, owner, nil)
	name := rec.Device.Name
	ownerConn := dp.accountUser(t, owner)
	ownerIn := subscribe(t, ownerConn, ">")

	violations := make(chan error, 64)
	nc, err := dp.natsAs(cert, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	neighbour := "devices.xr200.sn-neighbour"
	for _, subj := range []string{neighbour + ".telemetry", "devices.*.telemetry", "devices.xr200.*", "devices." + strings.SplitN(name, ".", 2)[0] + ".other.telemetry", "devices", "telemetry", "$JS.API.STREAM.LIST", "_INBOX.x"} {
		if err := nc.Publish(subj, []byte("escape")); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("publish to %s: %v", subj, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("publish to %s: no permissions violation", subj)
		}
	}
	for _, subj := range []string{neighbour + ".commands", "devices.>", "devices.*.*.commands", ">", "devices." + name + ".telemetry", "devices." + name + ".*"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("subscribe to %s: %v", subj, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("subscribe to %s: no permissions violation", subj)
		}
	}
	// Its own commands: allowed.
	cmds, err := nc.SubscribeSync("devices." + name + ".commands.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if err := ownerConn.Publish("devices."+name+".commands.reboot", []byte("reboot")); err != nil {
		t.Fatal(err)
	}
	if m, err := cmds.NextMsg(10 * time.Second); err != nil || string(m.Data) != "reboot" {
		t.Fatalf("the device did not receive its own command: %v", err)
	}

	// MQTT: a subscription outside its commands is refused in the SUBACK;
	// a publish outside its space never arrives.
	m, err := dp.mqttAs(cert, dataplane.MQTTClientID(name), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Disconnect(0)
	for _, topic := range []string{"devices/#", "#", "devices/+/+/telemetry", strings.ReplaceAll(neighbour, ".", "/") + "/commands", topicOf(name, "telemetry")} {
		tok := m.Subscribe(topic, 1, nil)
		if !tok.WaitTimeout(10 * time.Second) {
			t.Fatalf("subscribe %s: no SUBACK", topic)
		}
		if r := tok.(interface{ Result() map[string]byte }).Result()[topic]; r != 0x80 {
			t.Errorf("MQTT subscribe to %s: SUBACK %#x, want 0x80 (failure)", topic, r)
		}
	}
	before := ownerIn.count()
	for _, topic := range []string{strings.ReplaceAll(neighbour, ".", "/") + "/telemetry", "telemetry", "devices/" + strings.SplitN(name, ".", 2)[0] + "/x/telemetry"} {
		m.Publish(topic, 1, false, []byte("escape")).WaitTimeout(5 * time.Second)
	}
	// The last publish is allowed: once the owner has it, the refused ones
	// before it would have arrived.
	if tok := m.Publish(topicOf(name, "telemetry"), 1, false, []byte("allowed")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("allowed publish: %v", tok.Error())
	}
	for {
		got := ownerIn.next(t, "the allowed publish")
		if string(got.Data) == "escape" && got.Subject != "devices."+name+".commands.reboot" {
			t.Fatalf("the owner received an escaped publish on %s", got.Subject)
		}
		if string(got.Data) == "allowed" {
			break
		}
	}
	_ = before
}
