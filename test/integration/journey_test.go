package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestDeviceJourney follows one device from the factory to a working
// certificate and back out: made, sold, claimed, enrolled through the
// gateway, approved by Custody only, verified under its tenant's bundle and
// rejected under another's, heartbeat, EST cacerts and renewal, then
// released and cut off at once.
func TestDeviceJourney(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme, globex := newTenant(t), newTenant(t)

	rec := newDevice(t) // made at the factory and sold: the ERP applied it
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	agent := newAgent(t, g, rec)

	// Before the claim, the device proves itself but is not bound.
	if _, err := agent.Step(ctx); err == nil {
		t.Fatal("an unbound device enrolled")
	}
	if c, _ := agent.Certificate(); c != nil {
		t.Fatal("an unbound device holds a certificate")
	}

	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)

	enrollAgent(t, agent)
	tlsCert, leaf := agent.Certificate()

	// The identity comes from the Device: CN = serial, one SPIFFE URI.
	want := identityOf(serial, acme.Name, name)
	if leaf.Subject.CommonName != serial || len(leaf.URIs) != 1 || leaf.URIs[0].String() != want.URI || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		t.Fatalf("certificate identity CN=%q URIs=%v DNS=%v, want CN=%q URI=%s", leaf.Subject.CommonName, leaf.URIs, leaf.DNSNames, serial, want.URI)
	}
	if !protocol.SameKey(leaf.PublicKey, agent.Key.Public()) {
		t.Fatal("the certificate is not for the device's key")
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < controllers.DefaultCertificateDuration-2*60e9 || life > controllers.DefaultCertificateDuration+2*60e9 {
		t.Fatalf("certificate lifetime %v, want about %v", life, controllers.DefaultCertificateDuration)
	}

	// openssl verify: accepted under Acme's bundle, rejected under Globex's.
	certFile := writeTemp(t, "device.crt", string(tlsCertPEM(tlsCert)))
	if out, err := opensslVerify(t, trustBundle(t, acme), certFile); err != nil {
		t.Fatalf("openssl rejected the certificate under its tenant's bundle: %v\n%s", err, out)
	}
	if out, err := opensslVerify(t, trustBundle(t, globex), certFile); err == nil {
		t.Fatalf("openssl accepted the certificate under another tenant's bundle:\n%s", out)
	}

	// Custody, and only Custody, approved the request.
	var crs cmapi.CertificateRequestList
	if err := admin.List(ctx, &crs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: name}); err != nil {
		t.Fatal(err)
	}
	if len(crs.Items) != 1 {
		t.Fatalf("%d CertificateRequests for the device, want 1", len(crs.Items))
	}
	if !hasCondition(&crs.Items[0], cmapi.CertificateRequestConditionApproved, controllers.ApproverReasonApproved) {
		t.Fatalf("request not approved by Custody: %+v", crs.Items[0].Status.Conditions)
	}

	// Published to the Claim and the Device.
	fp := protocol.CertFingerprint(leaf.Raw)
	waitFor(t, "the certificate on the Claim", func() bool {
		got := &custodyv1alpha1.Claim{}
		return admin.Get(ctx, client.ObjectKeyFromObject(cl), got) == nil && got.Status.Certificate != nil && got.Status.Certificate.Fingerprint == fp
	})
	if d := getDevice(t, name); len(d.Status.Certificates) != 1 || d.Status.Certificates[0].Fingerprint != fp {
		t.Fatalf("device certificates %+v", d.Status.Certificates)
	}

	// Heartbeat.
	if _, err := agent.Step(ctx); err != nil {
		t.Fatalf("heartbeat step: %v", err)
	}
	d := getDevice(t, name)
	if d.Status.LastSeen == nil || d.Status.Reported == nil || d.Status.Reported.FirmwareVersion != "1.0.0" {
		t.Fatalf("heartbeat not recorded: lastSeen=%v reported=%+v", d.Status.LastSeen, d.Status.Reported)
	}

	// EST cacerts gives the tenant's CA; EST simplereenroll renews.
	cas, err := agent.Client.CACerts(ctx, *tlsCert)
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := protocol.ParseCertificatesPEM([]byte(trustBundle(t, acme)))
	if len(cas) != 1 || !cas[0].Equal(bundle[0]) {
		t.Fatal("EST cacerts did not return the tenant's CA")
	}
	csr, err := device.NewCSR(agent.Key, want)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := agent.Client.Reenroll(ctx, *tlsCert, csr)
	if err != nil {
		t.Fatalf("EST renewal: %v", err)
	}
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || renewed.URIs[0].String() != want.URI {
		t.Fatal("renewal did not return a new certificate with the same identity")
	}
	renewedTLS := tls.Certificate{Certificate: [][]byte{renewed.Raw}, PrivateKey: agent.Key, Leaf: renewed}
	if err := agent.Client.Heartbeat(ctx, renewedTLS, protocol.HeartbeatRequest{}); err != nil {
		t.Fatalf("the renewed certificate is refused: %v", err)
	}

	// Finished proofs are deleted an hour later (manager clock); a touch
	// makes the manager look at them again after the clock moved.
	var proofs custodyv1alpha1.DeviceProofList
	if err := admin.List(ctx, &proofs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: name}); err != nil || len(proofs.Items) < 2 {
		t.Fatalf("want the enrollment and renewal proofs, got %d (%v)", len(proofs.Items), err)
	}
	m.Clock.Step(controllers.DefaultProofRetention + time.Second)
	for i := range proofs.Items {
		p := &proofs.Items[i]
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"test/touch":"1"}}}`))
		if err := admin.Patch(ctx, p, patch); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "finished proofs to be deleted", func() bool {
		var left custodyv1alpha1.DeviceProofList
		return admin.List(ctx, &left, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: name}) == nil && len(left.Items) == 0
	})

	// Release: every certificate of the binding is refused at once.
	releaseClaim(t, cl)
	for label, c := range map[string]tls.Certificate{"first": *tlsCert, "renewed": renewedTLS} {
		if err := agent.Client.Heartbeat(ctx, c, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
			t.Fatalf("heartbeat with the %s certificate after release: %v, want CertificateRefused", label, err)
		}
		if _, err := agent.Client.Reenroll(ctx, c, csr); !device.IsCode(err, protocol.ErrCertificateRefused) {
			t.Fatalf("renewal with the %s certificate after release: %v, want CertificateRefused", label, err)
		}
	}
	if _, err := agent.Client.Enroll(ctx, agent.Key, serial, model, csr); !device.IsCode(err, protocol.ErrNotBound) {
		t.Fatalf("enrollment after release: %v, want NotBound", err)
	}
	// The agent notices, drops the certificate and waits for an owner.
	if _, err := agent.Step(ctx); err != nil {
		t.Fatalf("agent step after release: %v", err)
	}
	if c, _ := agent.Certificate(); c != nil {
		t.Fatal("the agent kept a refused certificate")
	}
}

func hasCondition(cr *cmapi.CertificateRequest, typ cmapi.CertificateRequestConditionType, reason string) bool {
	for _, c := range cr.Status.Conditions {
		if c.Type == typ && c.Status == cmmeta.ConditionTrue && (reason == "" || c.Reason == reason) {
			return true
		}
	}
	return false
}

func tlsCertPEM(c *tls.Certificate) []byte {
	var out []byte
	for _, der := range c.Certificate {
		out = append(out, pemCert(der)...)
	}
	return out
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func writeTemp(t testing.TB, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// opensslVerify runs plain `openssl verify` with the tenant bundle as the
// only trust store: no -partial_chain, as an OpenSSL-based TLS server
// (nginx, mosquitto) would verify. The tenant's CA is a self-signed root.
// When openssl is missing, Go's verifier stands in.
func opensslVerify(t testing.TB, bundle, certFile string) (string, error) {
	t.Helper()
	ca := writeTemp(t, "bundle.crt", bundle)
	if path, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command(path, "verify", "-purpose", "sslclient", "-CAfile", ca, certFile).CombinedOutput()
		return string(out), err
	}
	t.Log("openssl not installed: verifying with crypto/x509")
	data, _ := os.ReadFile(certFile) //nolint:gosec // a test file
	certs, err := protocol.ParseCertificatesPEM(data)
	if err != nil {
		return "", err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(bundle))
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return "", err
}
