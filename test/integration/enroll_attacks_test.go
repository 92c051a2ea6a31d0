package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

func csrFor(t testing.TB, key any, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func deviceKey(t testing.TB, rec *factory.Record) *ecdsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode(rec.PrivateKeyPEM)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// enrollBody builds an enrollment request: a challenge for (serial, model),
// csrDER, signed by signer over signedCSR (normally csrDER itself).
func enrollBody(t testing.TB, g *gw, serial, model string, signer *ecdsa.PrivateKey, csrDER, signedCSR []byte) protocol.EnrollRequest {
	t.Helper()
	tok, err := g.client().Challenge(context.Background(), serial, model, protocol.PurposeEnroll)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := protocol.Sign(signer, protocol.EnrollPayload(tok, signedCSR))
	if err != nil {
		t.Fatal(err)
	}
	return protocol.EnrollRequest{Challenge: tok, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})), Signature: sig}
}

func countRequests(t testing.TB, deviceName string) int {
	t.Helper()
	var crs cmapi.CertificateRequestList
	if err := admin.List(context.Background(), &crs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: deviceName}); err != nil {
		t.Fatal(err)
	}
	return len(crs.Items)
}

// TestProofsThatMustFail sends every kind of bad proof to the gateway.
// Each is refused with the one uniform answer, the answer for an unknown
// serial number is byte-identical, and no certificate is requested.
func TestProofsThatMustFail(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	acme := newTenant(t)
	rec, other := newDevice(t), newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	key := deviceKey(t, rec)

	// Unbound: a valid proof gets NotBound (only the proven device learns it).
	id := identityOf(serial, acme.Name, name)
	u, _ := url.Parse(id.URI)
	good := csrFor(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}})
	if status, body := g.post(t, protocol.PathEnroll, enrollBody(t, g, serial, model, key, good, good)); status != http.StatusConflict || !bytes.Contains(body, []byte(protocol.ErrNotBound)) {
		t.Fatalf("unbound device: %d %s", status, body)
	}
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)

	// The reference failure: a signature by the wrong key.
	refStatus, refBody := g.post(t, protocol.PathEnroll, enrollBody(t, g, serial, model, newKey(t), good, good))
	if refStatus != http.StatusForbidden || !bytes.Contains(refBody, []byte(protocol.ErrProofNotAccepted)) {
		t.Fatalf("wrong key: %d %s", refStatus, refBody)
	}

	otherCSR := csrFor(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}})
	replayed := enrollBody(t, g, serial, model, key, good, good)
	expired := enrollBody(t, g, serial, model, key, good, good)
	forged := enrollBody(t, g, serial, model, key, good, good)
	forged.Challenge = forged.Challenge[:len(forged.Challenge)-4] + "AAAA"
	otherSerial := enrollBody(t, g, other.Device.Spec.SerialNumber, other.Device.Spec.Model, key, good, good)
	unknownKey := newKey(t)
	unknown := enrollBody(t, g, "SN-NEVER-MADE", model, unknownKey, csrFor(t, unknownKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-NEVER-MADE"}}), nil)
	unknown.Signature, _ = protocol.Sign(unknownKey, protocol.EnrollPayload(unknown.Challenge, mustCSRDER(t, unknown.CSR)))

	// The genuine request succeeds once...
	if status, body := g.post(t, protocol.PathEnroll, replayed); status != http.StatusOK {
		t.Fatalf("genuine enrollment: %d %s", status, body)
	}
	cases := map[string]protocol.EnrollRequest{
		"replayed request":              replayed,
		"CSR swapped under a signature": enrollBody(t, g, serial, model, key, otherCSR, good),
		"unproven CSR key":              enrollBody(t, g, serial, model, newKey(t), otherCSR, otherCSR),
		"forged challenge":              forged,
		"other serial's challenge":      otherSerial,
		"unknown serial":                unknown,
	}
	// ...and a challenge used after its five minutes is refused.
	g.Clock.Step(5*time.Minute + time.Second)
	cases["expired challenge"] = expired
	for what, req := range cases {
		status, body := g.post(t, protocol.PathEnroll, req)
		if status != refStatus || !bytes.Equal(body, refBody) {
			t.Errorf("%s: got %d %s, want the uniform %d %s", what, status, body, refStatus, refBody)
		}
	}
	// The possession path answers an unknown serial the same way.
	ptok, err := g.client().Challenge(context.Background(), "SN-NEVER-MADE", model, protocol.PurposePossession)
	if err != nil {
		t.Fatal(err)
	}
	digest := protocol.PairingDigest(protocol.DeviceName(model, "SN-NEVER-MADE"), "ABCD-EFGH")
	psig, _ := protocol.Sign(unknownKey, protocol.PossessionPayload(ptok, digest))
	if status, body := g.post(t, protocol.PathPossession, protocol.PossessionRequest{Challenge: ptok, PairingDigest: digest, Signature: psig}); status != refStatus || !bytes.Equal(body, refBody) {
		t.Errorf("possession for an unknown serial: %d %s", status, body)
	}

	// A replayed challenge with a fresh body is refused too (single use).
	// The second genuine enrollment is for another key: one for the same
	// key and binding would share the first one's request (see
	// TestEnrollmentRestartIssuesOneCertificate).
	g.Clock.Step(-(5*time.Minute + time.Second))
	good2 := csrFor(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}})
	reuse := enrollBody(t, g, serial, model, key, good2, good2)
	if status, _ := g.post(t, protocol.PathEnroll, reuse); status != http.StatusOK {
		t.Fatalf("second genuine enrollment: %d", status)
	}
	reuse.CSR = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good2}))
	if status, body := g.post(t, protocol.PathEnroll, reuse); status != refStatus || !bytes.Equal(body, refBody) {
		t.Errorf("reused challenge: %d %s", status, body)
	}
	if n := countRequests(t, name); n != 2 {
		t.Fatalf("%d CertificateRequests for the device, want exactly the 2 genuine ones", n)
	}
	if n := countRequests(t, other.Device.Name) + countRequests(t, "xr200.sn-never-made"); n != 0 {
		t.Fatalf("%d CertificateRequests for devices that never proved themselves", n)
	}

	// Malformed requests are refused before any lookup, alike for all.
	status, body := g.post(t, protocol.PathEnroll, map[string]string{"challenge": "x"})
	if status != http.StatusBadRequest || bytes.Contains(body, []byte(serial)) {
		t.Fatalf("malformed: %d %s", status, body)
	}
}

func mustCSRDER(t testing.TB, p string) []byte {
	t.Helper()
	b, _ := pem.Decode([]byte(p))
	return b.Bytes
}

// TestCertificateIdentityIsDerived: a device asking for another common
// name, organisation, DNS name or SPIFFE ID is told the identity its Device
// gives it, and a proof carrying such a CSR, recorded behind the gateway's
// back, is rejected by the manager with no CertificateRequest made.
func TestCertificateIdentityIsDerived(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	key := deviceKey(t, rec)
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	want := identityOf(serial, acme.Name, name)
	wantURI, _ := url.Parse(want.URI)
	evil, _ := url.Parse("spiffe://custody.dev/tenants/other/devices/" + name)

	for what, tmpl := range map[string]*x509.CertificateRequest{
		"another CN":        {Subject: pkix.Name{CommonName: "admin"}, URIs: []*url.URL{wantURI}},
		"an organisation":   {Subject: pkix.Name{CommonName: serial, Organization: []string{"system:masters"}}, URIs: []*url.URL{wantURI}}, //nolint:misspell // crypto/x509/pkix's field name
		"a DNS name":        {Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{wantURI}, DNSNames: []string{"gateway.example"}},
		"an IP address":     {Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{wantURI}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}},
		"another SPIFFE ID": {Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{evil}},
	} {
		_, err := g.client().Enroll(context.Background(), key, serial, model, csrFor(t, key, tmpl))
		got, ok := device.IdentityFromMismatch(err)
		if !ok || got != want {
			t.Errorf("CSR with %s: %v, want IdentityMismatch naming %+v", what, err, want)
		}
	}
	if n := countRequests(t, name); n != 0 {
		t.Fatalf("%d CertificateRequests for mismatching CSRs", n)
	}

	// Behind the gateway's back: a correctly signed proof with a bad CSR.
	badCSR := csrFor(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{wantURI}, DNSNames: []string{"x.example"}})
	tok, _, err := g.Challenges.Issue(protocol.PurposeEnroll, serial, model)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := protocol.Sign(key, protocol.EnrollPayload(tok, badCSR))
	nonce := tokenNonce(t, tok)
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(nonce), Namespace: cp.OperatorNamespace},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: name, Challenge: tok,
			Signature: base64.StdEncoding.EncodeToString(sig), CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: badCSR}))},
	}
	if err := admin.Create(context.Background(), proof); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the proof to be rejected", func() bool {
		return admin.Get(context.Background(), client.ObjectKeyFromObject(proof), proof) == nil && proof.Status.Phase == custodyv1alpha1.DeviceProofPhaseRejected
	})
	if proof.Status.Reason != custodyv1alpha1.DeviceProofReasonIdentityMismatch {
		t.Fatalf("rejected with %s, want IdentityMismatch", proof.Status.Reason)
	}
	if n := countRequests(t, name); n != 0 {
		t.Fatalf("%d CertificateRequests after a rejected proof", n)
	}
}

// TestDeviceCertificateRequestsFromOthersAreDenied: a tenant admin given
// extra rights to create CertificateRequests in the operator namespace
// replays a device's genuine CSR against its tenant's Issuer three ways; all
// are Denied by Custody and none is signed.
func TestDeviceCertificateRequestsFromOthersAreDenied(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: "mallory", Role: custodyv1alpha1.TenantRoleAdmin})
	rec := newDevice(t)
	cl := claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	enrollAgent(t, newAgent(t, g, rec))

	var proofs custodyv1alpha1.DeviceProofList
	if err := admin.List(ctx, &proofs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: rec.Device.Name}); err != nil || len(proofs.Items) != 1 {
		t.Fatalf("want the genuine proof: %d, %v", len(proofs.Items), err)
	}
	genuine := proofs.Items[0]

	// The extra rights an attacker might obtain.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: uniq("cr-creator"), Namespace: cp.OperatorNamespace},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get"}}}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: cp.OperatorNamespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: "mallory"}}}
	for _, o := range []client.Object{role, rb} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	mallory := userClient(t, "mallory")
	owner := func(name string, uid string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "DeviceProof", Name: name, UID: types.UID(uid), Controller: ptr.To(true)}}
	}
	var made []*cmapi.CertificateRequest
	for what, refs := range map[string][]metav1.OwnerReference{
		"no owner":                              nil,
		"a forged owner reference to the proof": owner(genuine.Name, string(genuine.UID)),
		"a made-up proof":                       owner("proof-made-up", "00000000-0000-0000-0000-000000000000"),
	} {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "mint-", Namespace: cp.OperatorNamespace, OwnerReferences: refs},
			Spec: cmapi.CertificateRequestSpec{Request: []byte(genuine.Spec.CSR), IssuerRef: cmmeta.IssuerReference{Name: controllers.TenantIssuerName(acme.Name), Kind: "Issuer", Group: "cert-manager.io"},
				Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}},
		}
		if err := mallory.Create(ctx, cr); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		made = append(made, cr)
	}
	for _, cr := range made {
		waitFor(t, "request "+cr.Name+" to be denied", func() bool {
			return admin.Get(ctx, client.ObjectKeyFromObject(cr), cr) == nil && hasCondition(cr, cmapi.CertificateRequestConditionDenied, controllers.ApproverReasonDenied)
		})
		if hasCondition(cr, cmapi.CertificateRequestConditionApproved, "") || len(cr.Status.Certificate) > 0 {
			t.Fatalf("request %s was approved or signed", cr.Name)
		}
	}
}

func tokenNonce(t testing.TB, tok string) string {
	t.Helper()
	c, _, _, err := challenge.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	return c.Nonce
}

// userClient is a client authenticated as user (group system:authenticated),
// with only what RBAC grants that user.
func userClient(t testing.TB, user string) client.Client {
	t.Helper()
	cfg, err := cp.AddUser(user, "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
