package controllers

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

const testSPIFFE = "spiffe://custody.dev/tenants/acme/devices/" + testDeviceName

// proofScene is a device bound to tenant acme since testNow-1h, its
// factory key, the key of its certificates, and the tenant's CA.
type proofScene struct {
	t         *testing.T
	dev       *custodyv1alpha1.Device
	devKey    *ecdsa.PrivateKey
	certKey   *ecdsa.PrivateKey
	ca        *x509.Certificate
	caKey     *ecdsa.PrivateKey
	challenge *challenge.Issuer
}

func newProofScene(t *testing.T) *proofScene {
	t.Helper()
	s := &proofScene{t: t, devKey: newKey(t), certKey: newKey(t), caKey: newKey(t)}
	spki, err := x509.MarshalPKIXPublicKey(&s.devKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	boundAt := metav1.NewTime(testNow.Add(-time.Hour))
	s.dev = &custodyv1alpha1.Device{
		ObjectMeta: metav1.ObjectMeta{Name: testDeviceName},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: testSerial, Model: "XR200",
			Identity: custodyv1alpha1.DeviceIdentity{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))},
			ClaimRef: &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: testDeviceName, UID: "claim-1", BoundAt: &boundAt}},
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Custody tenant acme CA"},
		NotBefore: testNow.Add(-24 * time.Hour), NotAfter: testNow.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	s.ca = s.sign(tmpl, &s.caKey.PublicKey, nil)
	if s.challenge, err = challenge.NewIssuer([][]byte{[]byte(strings.Repeat("k", 32))}, 5*time.Minute, clocktesting.NewFakePassiveClock(testNow)); err != nil {
		t.Fatal(err)
	}
	return s
}

// sign makes a certificate from tmpl for pub, signed by the tenant CA
// (self-signed when the CA is not made yet).
func (s *proofScene) sign(tmpl *x509.Certificate, pub any, parent *x509.Certificate) *x509.Certificate {
	s.t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, s.caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// leaf is a device certificate for key with the device's identity, issued
// at notBefore; mutate may change it.
func (s *proofScene) leaf(key *ecdsa.PrivateKey, notBefore time.Time, mutate func(*x509.Certificate)) *x509.Certificate {
	s.t.Helper()
	u, _ := url.Parse(testSPIFFE)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x42), Subject: pkix.Name{CommonName: testSerial}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if mutate != nil {
		mutate(tmpl)
	}
	return s.sign(tmpl, &key.PublicKey, s.ca)
}

func certPEM(certs ...*x509.Certificate) string {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return string(out)
}

// proof is a genuine proof of purpose, made at testNow: an Enroll proof
// with a CSR of certKey for the device's identity, a Possession proof of a
// pairing digest, or a Renew proof with a certificate of the binding.
func (s *proofScene) proof(purpose custodyv1alpha1.DeviceProofPurpose) *custodyv1alpha1.DeviceProof {
	s.t.Helper()
	csr := csrPEM(s.t, s.certKey, testSerial, false, testSPIFFE)
	p := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, CreationTimestamp: metav1.NewTime(testNow)},
		Spec:       custodyv1alpha1.DeviceProofSpec{Purpose: purpose, DeviceName: testDeviceName},
	}
	if purpose == custodyv1alpha1.DeviceProofRenew {
		p.Name = "renew-1"
		p.Spec.CSR = string(csr)
		p.Spec.ClientCertificate = certPEM(s.leaf(s.certKey, testNow.Add(-time.Minute), nil))
		return p
	}
	wire := protocol.PurposeEnroll
	if purpose == custodyv1alpha1.DeviceProofPossession {
		wire = protocol.PurposePossession
	}
	s.challengeFor(p, wire, testSerial, "XR200")
	if purpose == custodyv1alpha1.DeviceProofEnroll {
		p.Spec.CSR = string(csr)
	} else {
		p.Spec.PairingDigest = strings.Repeat("ab", 32)
	}
	s.signProof(p, s.devKey)
	return p
}

// challengeFor gives p a challenge for purpose, serial and model, and the
// name it makes.
func (s *proofScene) challengeFor(p *custodyv1alpha1.DeviceProof, purpose protocol.Purpose, serial, model string) {
	s.t.Helper()
	tok, _, err := s.challenge.Issue(purpose, serial, model)
	if err != nil {
		s.t.Fatal(err)
	}
	c, _, _, err := challenge.Parse(tok)
	if err != nil {
		s.t.Fatal(err)
	}
	p.Name, p.Spec.Challenge = contract.ProofName(c.Nonce), tok
}

// signProof signs p's payload with key.
func (s *proofScene) signProof(p *custodyv1alpha1.DeviceProof, key *ecdsa.PrivateKey) {
	s.t.Helper()
	var payload []byte
	if p.Spec.Purpose == custodyv1alpha1.DeviceProofPossession {
		payload = protocol.PossessionPayload(p.Spec.Challenge, p.Spec.PairingDigest)
	} else {
		csr, err := protocol.ParseCSRPEM([]byte(p.Spec.CSR))
		if err != nil {
			s.t.Fatal(err)
		}
		payload = protocol.EnrollPayload(p.Spec.Challenge, csr.Raw)
	}
	sig, err := protocol.Sign(key, payload)
	if err != nil {
		s.t.Fatal(err)
	}
	p.Spec.Signature = base64.StdEncoding.EncodeToString(sig)
}

// TestVerifyProof: the enrollment controller verifies every proof again,
// trusting nothing the gateway checked, and rejects with these exact
// reasons and messages.
func TestVerifyProof(t *testing.T) {
	const (
		invalid    = custodyv1alpha1.DeviceProofReasonInvalid
		notCurrent = custodyv1alpha1.DeviceProofReasonCertificateNotCurrent
		badChal    = "The challenge was not issued for this device and purpose, or had expired."
		badSig     = "The signature does not verify under the device's identity key."
	)
	enroll, possession, renew := custodyv1alpha1.DeviceProofEnroll, custodyv1alpha1.DeviceProofPossession, custodyv1alpha1.DeviceProofRenew
	for _, tc := range []struct {
		name    string
		purpose custodyv1alpha1.DeviceProofPurpose
		change  func(s *proofScene, p *custodyv1alpha1.DeviceProof)
		reason  string
		message string
	}{
		{"an enrollment", enroll, nil, "", ""},
		{"a possession proof", possession, nil, "", ""},
		{"a renewal", renew, nil, "", ""},
		{"made at the challenge's last second", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.CreationTimestamp = metav1.NewTime(testNow.Add(5*time.Minute + 999*time.Millisecond))
		}, "", ""},
		{"no such device", enroll, func(s *proofScene, _ *custodyv1alpha1.DeviceProof) { s.dev = nil }, invalid, "No such device."},
		{"a broken identity key", enroll, func(s *proofScene, _ *custodyv1alpha1.DeviceProof) { s.dev.Spec.Identity.PublicKey = "x" }, invalid, "The device's identity key cannot be parsed."},
		{"a broken CSR", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.CSR = "x" }, invalid, "The CSR is not valid."},
		{"a possession challenge used to enroll", enroll, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			s.challengeFor(p, protocol.PurposePossession, testSerial, "XR200")
			s.signProof(p, s.devKey)
		}, invalid, badChal},
		{"another serial number's challenge", enroll, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			s.challengeFor(p, protocol.PurposeEnroll, "SN-0043", "XR200")
			s.signProof(p, s.devKey)
		}, invalid, badChal},
		{"another model's challenge", possession, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			s.challengeFor(p, protocol.PurposePossession, testSerial, "XR300")
			s.signProof(p, s.devKey)
		}, invalid, badChal},
		{"named after another nonce", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Name = contract.ProofName("00") }, invalid, badChal},
		{"made after the challenge expired", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.CreationTimestamp = metav1.NewTime(testNow.Add(5*time.Minute + time.Second))
		}, invalid, badChal},
		{"not a challenge", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.Challenge = "x" }, invalid, badChal},
		{"a wrong challenge and a wrong signature", enroll, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.Name = contract.ProofName("00")
			s.signProof(p, newKey(t))
		}, invalid, badChal},
		{"signed by another key", enroll, func(s *proofScene, p *custodyv1alpha1.DeviceProof) { s.signProof(p, newKey(t)) }, invalid, badSig},
		{"a possession proof signed by another key", possession, func(s *proofScene, p *custodyv1alpha1.DeviceProof) { s.signProof(p, newKey(t)) }, invalid, badSig},
		{"another pairing digest than signed", possession, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.Spec.PairingDigest = strings.Repeat("cd", 32)
		}, invalid, badSig},
		{"a signature that is not base64", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.Signature = "!" }, invalid, badSig},
		{"no signature", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.Signature = "" }, invalid, badSig},
		{"a renewal without a certificate", renew, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.ClientCertificate = "x" }, notCurrent,
			"The certificate presented is not a current certificate of the device's binding."},
		{"a renewal of a released device", renew, func(s *proofScene, _ *custodyv1alpha1.DeviceProof) { s.dev.Spec.ClaimRef = nil }, notCurrent,
			"The certificate presented is not a current certificate of the device's binding (NotBound)."},
		{"a renewal of a certificate of another CA", renew, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			other := newProofScene(t)
			p.Spec.ClientCertificate = certPEM(other.leaf(s.certKey, testNow.Add(-time.Minute), nil))
		}, notCurrent, "The certificate presented is not a current certificate of the device's binding (Untrusted)."},
		{"a renewal of a certificate of an earlier binding", renew, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.Spec.ClientCertificate = certPEM(s.leaf(s.certKey, testNow.Add(-2*time.Hour), nil))
		}, notCurrent, "The certificate presented is not a current certificate of the device's binding (BeforeBinding)."},
		{"a renewal with another key", renew, func(s *proofScene, p *custodyv1alpha1.DeviceProof) {
			p.Spec.CSR = string(csrPEM(t, newKey(t), testSerial, false, testSPIFFE))
		}, invalid, "A renewal must keep the certificate's key; enroll with a fresh challenge to change keys."},
		{"an unknown purpose", enroll, func(_ *proofScene, p *custodyv1alpha1.DeviceProof) { p.Spec.Purpose = "Steal" }, invalid, "Unknown purpose."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newProofScene(t)
			p := s.proof(tc.purpose)
			if tc.change != nil {
				tc.change(s, p)
			}
			csr, v := verifyProof(p, s.dev, []*x509.Certificate{s.ca}, contract.DefaultTrustDomain, testNow)
			if v.Reason != tc.reason || v.Message != tc.message {
				t.Fatalf("got %q %q, want %q %q", v.Reason, v.Message, tc.reason, tc.message)
			}
			if wantCSR := tc.reason == "" && p.Spec.Purpose != possession; (csr != nil) != wantCSR {
				t.Errorf("CSR returned: %v, want %v", csr != nil, wantCSR)
			}
		})
	}
}

// TestDecideIssue: what the enrollment controller does with a verified
// Enroll or Renew proof, from the binding and the CertificateRequest it
// recorded.
func TestDecideIssue(t *testing.T) {
	const failed = custodyv1alpha1.DeviceProofReasonIssuanceFailed
	type scene struct {
		s     *proofScene
		p     *custodyv1alpha1.DeviceProof
		cr    *cmapi.CertificateRequest
		chain []*x509.Certificate
	}
	newScene := func(t *testing.T) *scene {
		s := newProofScene(t)
		p := s.proof(custodyv1alpha1.DeviceProofEnroll)
		p.Status.ClaimUID, p.Status.CertificateRequest = "claim-1", &custodyv1alpha1.ObjectReference{Name: "enroll-1", UID: "cr-uid"}
		chain := []*x509.Certificate{s.leaf(s.certKey, testNow, nil), s.ca}
		cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: "enroll-1", Namespace: testNS, UID: "cr-uid"},
			Status: cmapi.CertificateRequestStatus{Certificate: []byte(certPEM(chain...))}}
		return &scene{s, p, cr, chain}
	}
	for _, tc := range []struct {
		name     string
		change   func(t *testing.T, sc *scene)
		step     issueStep
		reason   string
		message  string // exact, or a prefix ending in ": "
		withheld bool
	}{
		{"signed", nil, issuePublish, "", "Certificate 42 issued, valid until " + testNow.Add(24*time.Hour).Format(time.RFC3339) + ".", false},
		{"no request yet", func(_ *testing.T, sc *scene) { sc.p.Status.CertificateRequest, sc.p.Status.ClaimUID = nil, "" }, issueRequest, "", "", false},
		{"not signed yet", func(_ *testing.T, sc *scene) { sc.cr.Status.Certificate = nil }, issueWait, "", "", false},
		{"released", func(_ *testing.T, sc *scene) { sc.s.dev.Spec.ClaimRef = nil }, issueReject, custodyv1alpha1.DeviceProofReasonNotBound, "The device is not bound to a tenant.", false},
		{"decommissioned", func(_ *testing.T, sc *scene) { sc.s.dev.Spec.Decommissioned = true }, issueReject, custodyv1alpha1.DeviceProofReasonNotBound, "The device is not bound to a tenant.", false},
		{"rebound while issuing", func(_ *testing.T, sc *scene) { sc.s.dev.Spec.ClaimRef.UID = "claim-2" }, issueReject, custodyv1alpha1.DeviceProofReasonNotBound,
			"The device's binding changed while its certificate was being issued.", false},
		{"another identity", func(_ *testing.T, sc *scene) { sc.s.dev.Spec.ClaimRef.Tenant = "globex" }, issueReject, custodyv1alpha1.DeviceProofReasonIdentityMismatch,
			"The CSR must ask for exactly the identity derived from the Device and nothing else: ", false},
		{"the request is gone", func(_ *testing.T, sc *scene) { sc.cr = nil }, issueReject, failed, "The CertificateRequest disappeared.", false},
		{"a request of the same name, recreated", func(_ *testing.T, sc *scene) { sc.cr.UID = "other" }, issueReject, failed, "The CertificateRequest was denied or failed.", false},
		{"denied", func(_ *testing.T, sc *scene) {
			sc.cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue}}
		}, issueReject, failed, "The CertificateRequest was denied or failed.", false},
		{"failed", func(_ *testing.T, sc *scene) {
			sc.cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionReady, Status: cmmeta.ConditionFalse, Reason: cmapi.CertificateRequestReasonFailed}}
		}, issueReject, failed, "The CertificateRequest was denied or failed.", false},
		{"an unparsable certificate", func(_ *testing.T, sc *scene) { sc.cr.Status.Certificate = []byte("x") }, issueReject, failed, "cert-manager returned an unparsable certificate.", false},
		{"a certificate for another key", func(t *testing.T, sc *scene) {
			sc.cr.Status.Certificate = []byte(certPEM(sc.s.leaf(newKey(t), testNow, nil)))
		}, issueReject, failed, "The certificate is not for the key this proof's CSR holds; it was not published to the device.", false},
		{"a certificate with more than the identity", func(_ *testing.T, sc *scene) {
			sc.cr.Status.Certificate = []byte(certPEM(sc.s.leaf(sc.s.certKey, testNow, func(c *x509.Certificate) { c.DNSNames = []string{"evil.example"} })))
		}, issueReject, failed, "The tenant CA issued a certificate that does not carry exactly the device's identity; it was not published to the device: ", true},
		{"denied, yet carrying a certificate with more than the identity", func(_ *testing.T, sc *scene) {
			sc.cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue}}
			sc.cr.Status.Certificate = []byte(certPEM(sc.s.leaf(sc.s.certKey, testNow, func(c *x509.Certificate) { c.DNSNames = []string{"evil.example"} })))
		}, issueReject, failed, "The tenant CA issued a certificate that does not carry exactly the device's identity; it was not published to the device: ", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newScene(t)
			if tc.change != nil {
				tc.change(t, sc)
			}
			csr, err := protocol.ParseCSRPEM([]byte(sc.p.Spec.CSR))
			if err != nil {
				t.Fatal(err)
			}
			var cr *cmapi.CertificateRequest
			if sc.p.Status.CertificateRequest != nil {
				cr = sc.cr
			}
			d := decideIssue(sc.p, sc.s.dev, csr, cr, contract.DefaultTrustDomain)
			if d.Step != tc.step || d.Rejection.Reason != tc.reason {
				t.Fatalf("step %v reason %q (%q), want %v %q", d.Step, d.Rejection.Reason, d.Rejection.Message, tc.step, tc.reason)
			}
			msg := d.Rejection.Message
			if tc.step == issuePublish {
				msg = d.Message
				if len(d.Chain) != 2 || !d.Chain[0].Equal(sc.chain[0]) {
					t.Errorf("publishes %d certificates, not the signed chain", len(d.Chain))
				}
			}
			if strings.HasSuffix(tc.message, ": ") {
				if !strings.HasPrefix(msg, tc.message) || len(msg) == len(tc.message) {
					t.Errorf("message %q, want %q and why", msg, tc.message)
				}
			} else if msg != tc.message {
				t.Errorf("message %q, want %q", msg, tc.message)
			}
			if (d.Withheld != nil) != tc.withheld {
				t.Errorf("withheld: %v", d.Withheld)
			}
		})
	}
}

// TestPairedClaim: a possession proof confirms only the Claim whose
// unexpired pairing code the device signed.
func TestPairedClaim(t *testing.T) {
	pairing := func(name, code string, expires time.Time) custodyv1alpha1.Claim {
		return custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "acme"},
			Status: custodyv1alpha1.ClaimStatus{Pairing: &custodyv1alpha1.Pairing{Code: code, ExpiresAt: metav1.NewTime(expires)}}}
	}
	deleting := pairing("deleting", "ABC123", testNow.Add(time.Hour))
	deleting.DeletionTimestamp = ptrTime(testNow)
	claims := []custodyv1alpha1.Claim{
		{ObjectMeta: metav1.ObjectMeta{Name: "unpaired", Namespace: "acme"}},
		pairing("expired", "EXP123", testNow),
		deleting,
		pairing("other", "OTH123", testNow.Add(time.Hour)),
		pairing("mine", "ABC123", testNow.Add(time.Second)),
	}
	for _, tc := range []struct {
		name, device, code, want string
	}{
		{"the code of a waiting Claim", testDeviceName, "ABC123", "mine"},
		{"another waiting Claim's code", testDeviceName, "OTH123", "other"},
		{"an expired pairing", testDeviceName, "EXP123", ""},
		{"a code no Claim waits for", testDeviceName, "ZZZ999", ""},
		{"the right code signed for another device", "xr200.sn-0043", "ABC123", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pairedClaim(claims, testDeviceName, protocol.PairingDigest(tc.device, tc.code), testNow)
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("confirmed %s", got.Name)
			case tc.want != "" && (got == nil || got.Name != tc.want):
				t.Fatalf("confirmed %v, want %s", got, tc.want)
			}
		})
	}
}

func ptrTime(t time.Time) *metav1.Time {
	m := metav1.NewTime(t)
	return &m
}

// TestAddCertificate: the Device lists the newest certificates of its
// current binding, unexpired, at most maxDeviceCertificates, each once.
func TestAddCertificate(t *testing.T) {
	cert := func(fp string, claimUID string, notAfter time.Time) custodyv1alpha1.DeviceCertificate {
		return custodyv1alpha1.DeviceCertificate{Fingerprint: fp, ClaimUID: types.UID(claimUID), NotAfter: metav1.NewTime(notAfter)}
	}
	later := testNow.Add(time.Hour)
	fps := func(list []custodyv1alpha1.DeviceCertificate) string {
		var out []string
		for _, c := range list {
			out = append(out, c.Fingerprint)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name string
		list []custodyv1alpha1.DeviceCertificate
		add  custodyv1alpha1.DeviceCertificate
		want string
	}{
		{"the first", nil, cert("a", "c1", later), "a"},
		{"again", []custodyv1alpha1.DeviceCertificate{cert("a", "c1", later)}, cert("a", "c1", later), "a"},
		{"expired ones leave", []custodyv1alpha1.DeviceCertificate{cert("a", "c1", testNow), cert("b", "c1", later)}, cert("c", "c1", later), "b,c"},
		{"an earlier binding's leave", []custodyv1alpha1.DeviceCertificate{cert("a", "c0", later)}, cert("b", "c1", later), "b"},
		{"the newest four stay", []custodyv1alpha1.DeviceCertificate{cert("a", "c1", later), cert("b", "c1", later), cert("c", "c1", later), cert("d", "c1", later)},
			cert("e", "c1", later), "b,c,d,e"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fps(addCertificate(tc.list, tc.add, testNow)); got != tc.want {
				t.Fatalf("%s, want %s", got, tc.want)
			}
		})
	}
}
