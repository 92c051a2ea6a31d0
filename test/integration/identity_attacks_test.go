package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Raw DER, as an attacker builds it: crypto/x509 cannot express these.

var (
	oidCN         = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidUID        = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	oidSAN        = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidNameConstr = asn1.ObjectIdentifier{2, 5, 29, 30}
	oidExtReq     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidChallenge  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}
)

type rdnAttr struct {
	oid   asn1.ObjectIdentifier
	value string
}

// rawSubject builds a Name, one SET per RDN, values as UTF8String.
func rawSubject(rdns ...[]rdnAttr) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, rdn := range rdns {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				for _, a := range rdn {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(a.oid)
						b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(a.value)) })
					})
				}
			})
		}
	})
	return b.BytesOrPanic()
}

// uriGN and otherNameGN are GeneralNames (full TLV).
func uriGN(u string) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(u)) })
	return b.BytesOrPanic()
}

func otherNameGN() []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte("admin@example.com")) })
		})
	})
	return b.BytesOrPanic()
}

func sanOf(names ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddBytes(n)
		}
	})
	return b.BytesOrPanic()
}

// nameConstraintsValue permits DNS example.com.
func nameConstraintsValue() []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte("example.com")) })
			})
		})
	})
	return b.BytesOrPanic()
}

type rawExt struct {
	oid      asn1.ObjectIdentifier
	critical bool
	value    []byte
}

// craftCSR builds and signs (ECDSA with SHA-256) a PKCS#10 request with
// the given subject, requested extensions and further attributes.
func craftCSR(t testing.TB, key *ecdsa.PrivateKey, subject []byte, exts []rawExt, attrs ...[]byte) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var ib cryptobyte.Builder
	ib.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddBytes(subject)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidExtReq)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						for _, e := range exts {
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
								b.AddASN1ObjectIdentifier(e.oid)
								if e.critical {
									b.AddASN1Boolean(true)
								}
								b.AddASN1OctetString(e.value)
							})
						}
					})
				})
			})
			for _, a := range attrs {
				b.AddBytes(a)
			}
		})
	})
	info := ib.BytesOrPanic()
	sum := sha256.Sum256(info)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(info)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2})
		})
		b.AddASN1BitString(sig)
	})
	der := b.BytesOrPanic()
	// Signed properly: only its content is wrong.
	if csr, err := x509.ParseCertificateRequest(der); err != nil || csr.CheckSignature() != nil {
		t.Fatalf("crafted CSR does not parse or verify: %v", err)
	}
	return der
}

// craftedCSRs are the attacks a bound device tried: each passed the old
// check on crypto/x509's view and was issued as-is.
func craftedCSRs(t testing.TB, key *ecdsa.PrivateKey, id protocol.Identity) map[string][]byte {
	cn := []rdnAttr{{oidCN, id.CommonName}}
	san := []rawExt{{oid: oidSAN, value: sanOf(uriGN(id.URI))}}
	challengePassword := func() []byte {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidChallenge)
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte("hunter2")) })
			})
		})
		return b.BytesOrPanic()
	}()
	return map[string][]byte{
		"/CN=admin/CN=<serial>":       craftCSR(t, key, rawSubject([]rdnAttr{{oidCN, "admin"}}, cn), san),
		"CN=x+CN=<serial>":            craftCSR(t, key, rawSubject([]rdnAttr{{oidCN, "x"}, {oidCN, id.CommonName}}), san),
		"extra UID":                   craftCSR(t, key, rawSubject(cn, []rdnAttr{{oidUID, "admin"}}), san),
		"otherName next to the URI":   craftCSR(t, key, rawSubject(cn), []rawExt{{oid: oidSAN, value: sanOf(uriGN(id.URI), otherNameGN())}}),
		"SPIFFE:// scheme":            craftCSR(t, key, rawSubject(cn), []rawExt{{oid: oidSAN, value: sanOf(uriGN(strings.Replace(id.URI, "spiffe://", "SPIFFE://", 1)))}}),
		"NameConstraints":             craftCSR(t, key, rawSubject(cn), append(san, rawExt{oidNameConstr, true, nameConstraintsValue()})),
		"challengePassword":           craftCSR(t, key, rawSubject(cn), san, challengePassword),
		"genuine, hand-built (check)": craftCSR(t, key, rawSubject(cn), san),
	}
}

// TestCraftedCSRsAreNeverIssued: a bound device sends CSRs that carry more
// than its identity — on enrollment, on EST renewal, and as proofs
// recorded behind the gateway's back. None leads to a CertificateRequest;
// the gateway tells the device what is wrong; the genuine CSR still works.
func TestCraftedCSRsAreNeverIssued(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	key := deviceKey(t, rec)
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	tlsCert, _ := agent.Certificate()
	want := identityOf(serial, acme.Name, name)

	crafted := craftedCSRs(t, key, want)
	genuineRaw := crafted["genuine, hand-built (check)"]
	delete(crafted, "genuine, hand-built (check)")
	for what, der := range crafted {
		// Enrollment through the gateway: told the identity, and why.
		_, err := g.client().Enroll(ctx, key, serial, model, der)
		if got, ok := device.IdentityFromMismatch(err); !ok || got != want {
			t.Errorf("enrollment with %s: %v, want IdentityMismatch naming %+v", what, err, want)
		}
		// EST renewal with the current certificate and its key.
		if _, err := agent.Client.Reenroll(ctx, *tlsCert, der); !device.IsCode(err, protocol.ErrIdentityMismatch) {
			t.Errorf("EST renewal with %s: %v, want IdentityMismatch", what, err)
		}
		// Behind the gateway's back: a proven Enroll proof and a Renew
		// proof with the current certificate.
		tok, _, err := g.Challenges.Issue(protocol.PurposeEnroll, serial, model)
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := protocol.Sign(key, protocol.EnrollPayload(tok, der))
		csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		sum := sha256.Sum256(append(append([]byte{}, tlsCert.Certificate[0]...), der...))
		proofs := []*custodyv1alpha1.DeviceProof{
			{ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(tokenNonce(t, tok)), Namespace: cp.OperatorNamespace},
				Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: name, Challenge: tok,
					Signature: base64.StdEncoding.EncodeToString(sig), CSR: csrPEM}},
			{ObjectMeta: metav1.ObjectMeta{Name: "renew-" + hex.EncodeToString(sum[:16]), Namespace: cp.OperatorNamespace},
				Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofRenew, DeviceName: name, CSR: csrPEM,
					ClientCertificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsCert.Certificate[0]}))}},
		}
		for _, p := range proofs {
			if err := admin.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "proof "+p.Name+" to be decided", func() bool {
				return admin.Get(ctx, client.ObjectKeyFromObject(p), p) == nil && p.Status.Phase != "" && p.Status.Phase != custodyv1alpha1.DeviceProofPhasePending
			})
			if p.Status.Phase != custodyv1alpha1.DeviceProofPhaseRejected || p.Status.Reason != custodyv1alpha1.DeviceProofReasonIdentityMismatch {
				t.Errorf("%s proof with %s: %s %s (%s), want Rejected IdentityMismatch", p.Spec.Purpose, what, p.Status.Phase, p.Status.Reason, p.Status.Message)
			}
		}
	}
	if n := countRequests(t, name); n != 1 {
		t.Fatalf("%d CertificateRequests for the device, want only the genuine enrollment's", n)
	}

	// The genuine renewal still works (a hand-built CSR with exactly the
	// identity, as another client library would make it), and what is
	// issued carries exactly the identity.
	var renewed *x509.Certificate
	waitFor(t, "the genuine renewal", func() bool {
		var err error
		renewed, err = agent.Client.Reenroll(ctx, *tlsCert, genuineRaw)
		var pending *device.ErrPending
		if err != nil && !errors.As(err, &pending) {
			t.Fatalf("genuine renewal: %v", err)
		}
		return err == nil
	})
	if err := protocol.CheckCertificateIdentity(renewed.Raw, want); err != nil {
		t.Fatalf("the renewed certificate: %v", err)
	}
	var crs cmapi.CertificateRequestList
	if err := admin.List(ctx, &crs, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: name}); err != nil {
		t.Fatal(err)
	}
	if len(crs.Items) != 2 {
		t.Fatalf("%d CertificateRequests, want the genuine enrollment and renewal", len(crs.Items))
	}
	for _, cr := range crs.Items {
		b, _ := pem.Decode(cr.Spec.Request)
		if err := protocol.CheckCSRIdentity(b.Bytes, want); err != nil {
			t.Errorf("CertificateRequest %s carries a CSR with more than the identity: %v", cr.Name, err)
		}
	}
}

// TestGatewayRefusesCertificatesWithExtraContent: certificates signed by
// the tenant's own CA (as an attacker who compromised issuance would sign
// them) and published on the Device are refused at the gateway when they
// carry more than the device's identity; the same certificate without the
// extra content is accepted, so the raw check is what refuses.
func TestGatewayRefusesCertificatesWithExtraContent(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	want := identityOf(serial, acme.Name, name)

	caSecret := &corev1.Secret{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(acme.Name)}, caSecret); err != nil {
		t.Fatal(err)
	}
	caCert := parseCert(t, caSecret.Data[corev1.TLSCertKey])
	block, _ := pem.Decode(caSecret.Data[corev1.TLSPrivateKeyKey])
	caKey, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leafKey := newKey(t)
	serialNo := int64(1000)
	sign := func(mutate func(*x509.Certificate)) tls.Certificate {
		serialNo++
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serialNo), RawSubject: rawSubject([]rdnAttr{{oidCN, serial}}),
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			ExtraExtensions: []pkix.Extension{{Id: oidSAN, Value: sanOf(uriGN(want.URI))}}}
		mutate(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &leafKey.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: leafKey, Leaf: leaf}
	}
	// publish lists the certificate on the Device as the manager would
	// after issuing it.
	publish := func(c tls.Certificate) {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d := getDevice(t, name)
			ref := d.Spec.ClaimRef
			d.Status.Certificates = []custodyv1alpha1.DeviceCertificate{{Fingerprint: protocol.CertFingerprint(c.Leaf.Raw),
				SerialNumber: protocol.CertSerial(c.Leaf.SerialNumber), NotAfter: metav1.NewTime(c.Leaf.NotAfter), Tenant: ref.Tenant, ClaimUID: ref.UID}}
			return admin.Status().Update(ctx, d)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	clean := sign(func(*x509.Certificate) {})
	publish(clean)
	if err := g.client().Heartbeat(ctx, clean, protocol.HeartbeatRequest{}); err != nil {
		t.Fatalf("the certificate without extra content is refused: %v", err)
	}
	for what, mutate := range map[string]func(*x509.Certificate){
		"/CN=admin/CN=<serial>": func(c *x509.Certificate) {
			c.RawSubject = rawSubject([]rdnAttr{{oidCN, "admin"}}, []rdnAttr{{oidCN, serial}})
		},
		"CN=x+CN=<serial>": func(c *x509.Certificate) { c.RawSubject = rawSubject([]rdnAttr{{oidCN, "x"}, {oidCN, serial}}) },
		"extra UID": func(c *x509.Certificate) {
			c.RawSubject = rawSubject([]rdnAttr{{oidCN, serial}}, []rdnAttr{{oidUID, "admin"}})
		},
		"otherName SAN": func(c *x509.Certificate) { c.ExtraExtensions[0].Value = sanOf(uriGN(want.URI), otherNameGN()) },
		"SPIFFE:// scheme": func(c *x509.Certificate) {
			c.ExtraExtensions[0].Value = sanOf(uriGN(strings.Replace(want.URI, "spiffe://", "SPIFFE://", 1)))
		},
		"NameConstraints": func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: oidNameConstr, Critical: true, Value: nameConstraintsValue()})
		},
		"serverAuth too": func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) },
	} {
		bad := sign(mutate)
		publish(bad)
		if err := g.client().Heartbeat(ctx, bad, protocol.HeartbeatRequest{}); !device.IsCode(err, protocol.ErrCertificateRefused) {
			t.Errorf("heartbeat with %s: %v, want CertificateRefused", what, err)
		}
		csr, err := device.NewCSR(leafKey, want)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.client().Reenroll(ctx, bad, csr); !device.IsCode(err, protocol.ErrCertificateRefused) {
			t.Errorf("EST renewal with %s: %v, want CertificateRefused", what, err)
		}
	}
	if n := countRequests(t, name); n != 0 {
		t.Fatalf("%d CertificateRequests from refused certificates", n)
	}
}

// TestIssuedCertificateWithExtraContentIsWithheld: defence in depth. The
// CertificateRequest of a genuine, proven enrollment comes back with a
// certificate that carries more than the identity (as a compromised or
// misbehaving issuer would sign it, here with the tenant CA's own key): the
// manager does not publish it to the Device or the Claim, rejects the proof
// saying so, and records a Warning Event on the Device.
func TestIssuedCertificateWithExtraContentIsWithheld(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	key := deviceKey(t, rec)
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	want := identityOf(serial, acme.Name, name)
	ref := getDevice(t, name).Spec.ClaimRef

	// With the manager stopped, record a genuine proof and the request the
	// manager would have made for it, already "signed" with extra content.
	m.stop()
	csrDER, err := device.NewCSR(key, want)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := g.Challenges.Issue(protocol.PurposeEnroll, serial, model)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := protocol.Sign(key, protocol.EnrollPayload(tok, csrDER))
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(tokenNonce(t, tok)), Namespace: cp.OperatorNamespace},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: name, Challenge: tok,
			Signature: base64.StdEncoding.EncodeToString(sig), CSR: string(csrPEM)},
	}
	if err := admin.Create(ctx, proof); err != nil {
		t.Fatal(err)
	}
	caSecret := &corev1.Secret{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(acme.Name)}, caSecret); err != nil {
		t.Fatal(err)
	}
	caCert := parseCert(t, caSecret.Data[corev1.TLSCertKey])
	block, _ := pem.Decode(caSecret.Data[corev1.TLSPrivateKeyKey])
	caKey, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), RawSubject: rawSubject([]rdnAttr{{oidCN, "admin"}}, []rdnAttr{{oidCN, serial}}),
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{{Id: oidSAN, Value: sanOf(uriGN(want.URI), otherNameGN())}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Name: proof.Name, Namespace: cp.OperatorNamespace,
			Labels: map[string]string{custodyv1alpha1.LabelTenant: acme.Name, contract.LabelDevice: name, custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "DeviceProof", Name: proof.Name, UID: proof.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: cmapi.CertificateRequestSpec{Request: csrPEM, IssuerRef: cmmeta.IssuerReference{Name: controllers.TenantIssuerName(acme.Name), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
			Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}},
	}
	if err := admin.Create(ctx, cr); err != nil {
		t.Fatal(err)
	}
	cr.Status.Certificate, cr.Status.CA = bad, caSecret.Data[corev1.TLSCertKey]
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionReady, Status: cmmeta.ConditionTrue, Reason: cmapi.CertificateRequestReasonIssued}}
	if err := admin.Status().Update(ctx, cr); err != nil {
		t.Fatal(err)
	}
	proof.Status = custodyv1alpha1.DeviceProofStatus{Phase: custodyv1alpha1.DeviceProofPhasePending, Tenant: ref.Tenant, ClaimUID: ref.UID,
		CertificateRequest: &custodyv1alpha1.ObjectReference{Name: cr.Name, UID: cr.UID}}
	if err := admin.Status().Update(ctx, proof); err != nil {
		t.Fatal(err)
	}

	startManager(t)
	waitFor(t, "the proof to be decided", func() bool {
		return admin.Get(ctx, client.ObjectKeyFromObject(proof), proof) == nil && proof.Status.Phase != custodyv1alpha1.DeviceProofPhasePending
	})
	if proof.Status.Phase != custodyv1alpha1.DeviceProofPhaseRejected || proof.Status.Reason != custodyv1alpha1.DeviceProofReasonIssuanceFailed ||
		!strings.Contains(proof.Status.Message, "not published") || proof.Status.Certificate != "" {
		t.Fatalf("proof: %s %s %q, want Rejected IssuanceFailed saying the certificate was not published", proof.Status.Phase, proof.Status.Reason, proof.Status.Message)
	}
	fp := protocol.CertFingerprint(der)
	for _, c := range getDevice(t, name).Status.Certificates {
		if c.Fingerprint == fp {
			t.Fatal("the certificate was published on the Device")
		}
	}
	got := &custodyv1alpha1.Claim{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Certificate != nil && got.Status.Certificate.Fingerprint == fp {
		t.Fatal("the certificate was published on the Claim")
	}
	waitFor(t, "a CertificateWithheld Event on the Device", func() bool {
		var evs corev1.EventList
		if err := admin.List(ctx, &evs); err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "CertificateWithheld" && e.InvolvedObject.Name == name && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	})
}

// TestForgedDeviceRequestsUnderComputedNamesAreNeverUsed: someone who may
// create CertificateRequests in the operator namespace (here cluster-admin)
// sees a new DeviceProof and creates requests under the names the manager
// will compute for it (the enrollment name and the proof's own name), with
// the proof as controller owner, the proven CSR and a lifetime of its
// choosing. The manager never takes them for its own: the proof is
// rejected, and neither request is approved or signed.
func TestForgedDeviceRequestsUnderComputedNamesAreNeverUsed(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	acme := newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	key := deviceKey(t, rec)
	cl := claimWithCode(t, admin, acme.Status.Namespace, serial, model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	want := identityOf(serial, acme.Name, name)
	ref := getDevice(t, name).Spec.ClaimRef

	m.stop()
	csrDER, err := device.NewCSR(key, want)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := g.Challenges.Issue(protocol.PurposeEnroll, serial, model)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := protocol.Sign(key, protocol.EnrollPayload(tok, csrDER))
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(tokenNonce(t, tok)), Namespace: cp.OperatorNamespace},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: name, Challenge: tok,
			Signature: base64.StdEncoding.EncodeToString(sig), CSR: string(csrPEM)},
	}
	if err := admin.Create(ctx, proof); err != nil {
		t.Fatal(err)
	}
	var forged []*cmapi.CertificateRequest
	for _, n := range []string{controllers.EnrollRequestName(name, ref.UID, csr), proof.Name} {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: cp.OperatorNamespace,
				Labels: map[string]string{custodyv1alpha1.LabelTenant: acme.Name, contract.LabelDevice: name, custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "DeviceProof", Name: proof.Name, UID: proof.UID,
					Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
			Spec: cmapi.CertificateRequestSpec{Request: csrPEM, IssuerRef: cmmeta.IssuerReference{Name: controllers.TenantIssuerName(acme.Name), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
				Duration: &metav1.Duration{Duration: 876000 * time.Hour},
				Usages:   []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}},
		}
		if err := admin.Create(ctx, cr); err != nil {
			t.Fatal(err)
		}
		forged = append(forged, cr)
	}

	startManager(t)
	waitFor(t, "the proof to be decided", func() bool {
		return admin.Get(ctx, client.ObjectKeyFromObject(proof), proof) == nil && proof.Status.Phase != custodyv1alpha1.DeviceProofPhasePending && proof.Status.Phase != ""
	})
	if proof.Status.Phase != custodyv1alpha1.DeviceProofPhaseRejected || proof.Status.Certificate != "" {
		t.Fatalf("proof: %s %s %q, want Rejected without a certificate", proof.Status.Phase, proof.Status.Reason, proof.Status.Message)
	}
	if r := proof.Status.CertificateRequest; r != nil {
		t.Fatalf("the proof recorded request %s, which the manager did not make", r.Name)
	}
	for _, cr := range forged {
		got := caWaitDecided(t, cr)
		if !caHasCondition(got, cmapi.CertificateRequestConditionDenied) || len(got.Status.Certificate) > 0 {
			t.Fatalf("forged request %s: %+v, certificate %d bytes: want Denied and unsigned", cr.Name, got.Status.Conditions, len(got.Status.Certificate))
		}
	}
}
