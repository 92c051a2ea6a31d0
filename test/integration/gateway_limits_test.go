package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/gateway"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestGatewayRateLimits: per serial number and per client address, on the
// gateway's clock; the limits lift when the window passes.
func TestGatewayRateLimits(t *testing.T) {
	g := startGateway(t, func(o *gateway.Options) { o.PerClientRate, o.PerSerialRate = 5, 3 })
	challenge := func(serial string) (int, string) {
		t.Helper()
		resp, err := g.srv.Client().Post(g.URL+protocol.PathChallenge, "application/json",
			jsonBody(t, protocol.ChallengeRequest{SerialNumber: serial, Model: "XR200", Purpose: protocol.PurposeEnroll}))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	for i := 0; i < 3; i++ {
		if status, _ := challenge("SN-LIMIT-A"); status != http.StatusOK {
			t.Fatalf("challenge %d for one serial: %d", i+1, status)
		}
	}
	if status, after := challenge("SN-LIMIT-A"); status != http.StatusTooManyRequests || after == "" {
		t.Fatalf("4th challenge for one serial: %d (Retry-After %q), want 429 with Retry-After", status, after)
	}
	// The fifth request from this client (the 429 counted) goes through on
	// another serial; the sixth is over the per-client limit.
	if status, _ := challenge("SN-LIMIT-B"); status != http.StatusOK {
		t.Fatalf("another serial: %d", status)
	}
	if status, _ := challenge("SN-LIMIT-C"); status != http.StatusTooManyRequests {
		t.Fatalf("over the per-client limit: %d, want 429", status)
	}
	g.Clock.Step(time.Minute)
	if status, _ := challenge("SN-LIMIT-A"); status != http.StatusOK {
		t.Fatalf("after the window: %d", status)
	}
}

// TestHeartbeatsAreCoalesced: a device's heartbeats write its Device at most
// once per interval unless what it reports changes.
func TestHeartbeatsAreCoalesced(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDevice(t)
	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	cert, _ := agent.Certificate()

	beat := func(fw string) string {
		t.Helper()
		if err := agent.Client.Heartbeat(ctx, *cert, protocol.HeartbeatRequest{FirmwareVersion: fw}); err != nil {
			t.Fatal(err)
		}
		return getDevice(t, rec.Device.Name).ResourceVersion
	}
	first := beat("1.0.0")
	if got := beat("1.0.0"); got != first {
		t.Fatal("a repeated heartbeat within the interval wrote the Device")
	}
	changed := beat("1.0.1")
	if changed == first {
		t.Fatal("a heartbeat reporting new firmware was not written")
	}
	g.Clock.Step(5 * time.Minute) // the default interval
	if got := beat("1.0.1"); got == changed {
		t.Fatal("a heartbeat after the interval was not written")
	}
	if d := getDevice(t, rec.Device.Name); d.Status.Reported.FirmwareVersion != "1.0.1" || d.Status.LastSeen == nil {
		t.Fatalf("reported %+v, lastSeen %v", d.Status.Reported, d.Status.LastSeen)
	}
}

// TestOperationalKeyAndTenantDuration: the identity key may endorse another
// key of the device, which is then certified, for the tenant's own
// certificate lifetime.
func TestOperationalKeyAndTenantDuration(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	tn := newTenantWith(t, func(tn *custodyv1alpha1.Tenant) {
		tn.Spec.Certificates = &custodyv1alpha1.CertificatePolicy{Duration: &metav1.Duration{Duration: 2 * time.Hour}}
	})
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	cl := claimWithCode(t, admin, tn.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)

	operational := newKey(t)
	u, _ := url.Parse(identityOf(serial, tn.Name, name).URI)
	csr := csrFor(t, operational, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}})
	iss, err := g.client().Enroll(context.Background(), deviceKey(t, rec), serial, model, csr)
	if err != nil {
		t.Fatal(err)
	}
	if !protocol.SameKey(iss.Leaf.PublicKey, operational.Public()) {
		t.Fatal("the certificate is not for the endorsed operational key")
	}
	if life := iss.Leaf.NotAfter.Sub(iss.Leaf.NotBefore); life < 2*time.Hour-2*time.Minute || life > 2*time.Hour+2*time.Minute {
		t.Fatalf("lifetime %v, want the tenant's 2h", life)
	}
	// The operational key authenticates the device from now on.
	c := tls.Certificate{Certificate: [][]byte{iss.Leaf.Raw}, PrivateKey: operational, Leaf: iss.Leaf}
	if err := g.client().Heartbeat(context.Background(), c, protocol.HeartbeatRequest{}); err != nil {
		t.Fatalf("heartbeat with the operational key's certificate: %v", err)
	}
}

// TestGatewayBodyLimit: bodies over protocol.MaxBodyBytes are refused
// before they are parsed.
func TestGatewayBodyLimit(t *testing.T) {
	g := startGateway(t)
	big := protocol.EnrollRequest{Challenge: strings.Repeat("A", protocol.MaxBodyBytes)}
	if status, _ := g.post(t, protocol.PathEnroll, big); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a %d-byte body: %d, want 413", protocol.MaxBodyBytes, status)
	}
}
