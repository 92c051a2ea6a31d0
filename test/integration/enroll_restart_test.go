package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/gateway"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestEnrollmentRestartIssuesOneCertificate: a device that starts its
// enrollment over with a fresh challenge and the same key (as the agent does
// when the gateway drops the connection), or whose first proof was cut off
// by a manager killed between creating the CertificateRequest and recording
// it, gets one certificate: one signed CertificateRequest, the same
// certificate for both proofs. A different key, or a restart once half the
// certificate's lifetime is spent, gets a certificate of its own.
func TestEnrollmentRestartIssuesOneCertificate(t *testing.T) {
	ctx := context.Background()
	var target atomic.Pointer[client.ObjectKey]
	var hit atomic.Bool
	crashed := make(chan struct{})
	m := startManager(t, func(o *controllers.Options) {
		o.FailPoint = func(p string, k client.ObjectKey) error {
			if tk := target.Load(); p != controllers.FailPointCertificateRequested || tk == nil || k != *tk {
				return nil
			}
			if hit.CompareAndSwap(false, true) {
				close(crashed)
			}
			// "Killed" here: no progress on this proof until restarted.
			return errors.New("injected crash at " + p)
		}
	})
	// The gateway answers "pending" at once: the device's connection is
	// gone before the certificate comes, and it starts over.
	g := startGateway(t, func(o *gateway.Options) { o.Wait = time.Nanosecond })
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	claimUID := getDevice(t, name).Spec.ClaimRef.UID
	idKey := deviceKey(t, rec)
	uri, _ := url.Parse(identityOf(serial, acme.Name, name).URI)
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{uri}}

	// The agent's restart, through the gateway: two enrollments with fresh
	// challenges and two CSRs (ECDSA signatures differ) for one key.
	key := newKey(t)
	csr1, csr2 := csrFor(t, key, tmpl), csrFor(t, key, tmpl)
	if bytes.Equal(csr1, csr2) {
		t.Fatal("the two CSRs should differ in their bytes")
	}
	ticket1 := startEnrollment(t, g, idKey, serial, model, csr1)
	// The second may find the first's certificate issued already.
	second := enroll(t, g, idKey, serial, model, csr2)
	first := awaitEnrollment(t, g, ticket1)
	if !bytes.Equal(first.Leaf.Raw, second.Leaf.Raw) {
		t.Fatalf("a restarted enrollment got a second certificate (serials %x and %x)", first.Leaf.SerialNumber, second.Leaf.SerialNumber)
	}
	requestsAre(t, name, 1)

	// Another key is another enrollment.
	other := enroll(t, g, idKey, serial, model, csrFor(t, newKey(t), tmpl))
	if bytes.Equal(other.Leaf.Raw, first.Leaf.Raw) || protocol.SameKey(other.Leaf.PublicKey, first.Leaf.PublicKey) {
		t.Fatal("a CSR for another key got the first key's certificate")
	}
	requestsAre(t, name, 2)

	// Killed between creating the request and recording it on the proof;
	// the device starts over while the manager is down.
	key3 := newKey(t)
	csr3 := csrFor(t, key3, tmpl)
	p3 := enrollProof(t, g, rec, idKey, csr3)
	target.Store(&client.ObjectKey{Namespace: p3.Namespace, Name: p3.Name})
	if err := admin.Create(ctx, p3); err != nil {
		t.Fatal(err)
	}
	<-crashed
	m.stop()
	parsed3, err := x509.ParseCertificateRequest(csr3)
	if err != nil {
		t.Fatal(err)
	}
	shared := controllers.EnrollRequestName(name, claimUID, parsed3)
	if err := admin.Get(ctx, client.ObjectKeyFromObject(p3), p3); err != nil || p3.Status.CertificateRequest != nil {
		t.Fatalf("the fail point should stop before the request is recorded: %v, %+v", err, p3.Status.CertificateRequest)
	}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: shared}, &cmapi.CertificateRequest{}); err != nil {
		t.Fatalf("the request should exist at the fail point: %v", err)
	}
	p4 := enrollProof(t, g, rec, idKey, csrFor(t, key3, tmpl))
	if err := admin.Create(ctx, p4); err != nil {
		t.Fatal(err)
	}
	m2 := startManager(t)
	p3, p4 = awaitProof(t, p3), awaitProof(t, p4)
	if p3.Status.Certificate != p4.Status.Certificate || p4.Status.CertificateRequest.Name != shared {
		t.Fatalf("the proofs after the restart got different certificates (requests %s and %s)", p3.Status.CertificateRequest.Name, p4.Status.CertificateRequest.Name)
	}
	requestsAre(t, name, 3)

	// Once half the certificate's lifetime is spent, a new proof with the
	// same key gets a new certificate, under a request named after it.
	leaf := mustLeaf(t, p3.Status.Certificate)
	m2.Clock.SetTime(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 3 / 5))
	p5 := enrollProof(t, g, rec, idKey, csrFor(t, key3, tmpl))
	if err := admin.Create(ctx, p5); err != nil {
		t.Fatal(err)
	}
	p5 = awaitProof(t, p5)
	if p5.Status.Certificate == p3.Status.Certificate || p5.Status.CertificateRequest.Name != p5.Name {
		t.Fatalf("a half-spent certificate was handed out again (request %s)", p5.Status.CertificateRequest.Name)
	}
	requestsAre(t, name, 4)
}

// startEnrollment sends an enrollment the gateway answers "pending", and
// returns its ticket.
func startEnrollment(t testing.TB, g *gw, idKey *ecdsa.PrivateKey, serial, model string, csrDER []byte) string {
	t.Helper()
	_, err := g.client().Enroll(context.Background(), idKey, serial, model, csrDER)
	var pending *device.ErrPending
	if !errors.As(err, &pending) {
		t.Fatalf("want a pending enrollment, got %v", err)
	}
	return pending.Ticket
}

// enroll enrols through the gateway and returns the certificate, at once
// or after polling while it is pending.
func enroll(t testing.TB, g *gw, idKey *ecdsa.PrivateKey, serial, model string, csrDER []byte) *device.Issued {
	t.Helper()
	iss, err := g.client().Enroll(context.Background(), idKey, serial, model, csrDER)
	var pending *device.ErrPending
	switch {
	case errors.As(err, &pending):
		return awaitEnrollment(t, g, pending.Ticket)
	case err != nil:
		t.Fatalf("enrollment: %v", err)
	}
	return iss
}

// awaitEnrollment polls a pending enrollment until it is issued.
func awaitEnrollment(t testing.TB, g *gw, ticket string) *device.Issued {
	t.Helper()
	var got *device.Issued
	var failed error
	waitFor(t, "enrollment "+ticket+" to be issued", func() bool {
		iss, err := g.client().Enrollment(context.Background(), ticket)
		var pending *device.ErrPending
		if errors.As(err, &pending) {
			return false
		}
		got, failed = iss, err
		return true
	})
	if failed != nil {
		t.Fatalf("enrollment %s: %v", ticket, failed)
	}
	return got
}

// enrollProof builds (without creating it) the DeviceProof the gateway
// records for an enrollment with csrDER, signed by the device.
func enrollProof(t testing.TB, g *gw, rec *factory.Record, idKey *ecdsa.PrivateKey, csrDER []byte) *custodyv1alpha1.DeviceProof {
	t.Helper()
	tok, _, err := g.Challenges.Issue(protocol.PurposeEnroll, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := protocol.Sign(idKey, protocol.EnrollPayload(tok, csrDER))
	if err != nil {
		t.Fatal(err)
	}
	return &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(tokenNonce(t, tok)), Namespace: cp.OperatorNamespace,
			Labels: map[string]string{contract.LabelDevice: rec.Device.Name}},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: rec.Device.Name, Challenge: tok,
			Signature: base64.StdEncoding.EncodeToString(sig), CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))},
	}
}

// awaitProof waits until the proof is issued, failing on a rejection.
func awaitProof(t testing.TB, p *custodyv1alpha1.DeviceProof) *custodyv1alpha1.DeviceProof {
	t.Helper()
	waitFor(t, "proof "+p.Name+" to be decided", func() bool {
		err := admin.Get(context.Background(), client.ObjectKeyFromObject(p), p)
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("reading %s: %v", p.Name, err)
		}
		return err == nil && p.Status.Phase != "" && p.Status.Phase != custodyv1alpha1.DeviceProofPhasePending
	})
	if p.Status.Phase != custodyv1alpha1.DeviceProofPhaseIssued {
		t.Fatalf("proof %s: %s %s: %s", p.Name, p.Status.Phase, p.Status.Reason, p.Status.Message)
	}
	return p
}

// requestsAre checks that the device has exactly n CertificateRequests, all
// signed, each with its own certificate.
func requestsAre(t testing.TB, deviceName string, n int) {
	t.Helper()
	var crs cmapi.CertificateRequestList
	if err := admin.List(context.Background(), &crs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: deviceName}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, cr := range crs.Items {
		if len(cr.Status.Certificate) == 0 || seen[string(cr.Status.Certificate)] {
			t.Fatalf("request %s is not signed, or signed twice", cr.Name)
		}
		seen[string(cr.Status.Certificate)] = true
	}
	if len(crs.Items) != n {
		names := make([]string, 0, len(crs.Items))
		for _, cr := range crs.Items {
			names = append(names, cr.Name)
		}
		t.Fatalf("%d signed CertificateRequests %v, want %d", len(crs.Items), names, n)
	}
}

func mustLeaf(t testing.TB, chainPEM string) *x509.Certificate {
	t.Helper()
	chain, err := protocol.ParseCertificatesPEM([]byte(chainPEM))
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}
