package controllers

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/scheme"
)

const (
	testNS         = "custody-system"
	testManager    = "system:serviceaccount:custody-system:custody-manager"
	testDeviceName = "xr200.sn-0042"
	testSerial     = "SN-0042"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testOptions() *Options {
	return &Options{OperatorNamespace: testNS, RootIssuer: "custody-root", ManagerUsernames: []string{testManager},
		CertManagerUsernames: []string{DefaultCertManagerUsername}, TrustDomain: contract.DefaultTrustDomain,
		Clock: clocktesting.NewFakePassiveClock(testNow)}
}

// csrPEM makes a CSR with key for the subject common name cn and the URI
// SANs uris.
func csrPEM(t *testing.T, key crypto.Signer, cn string, isCA bool, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	if isCA {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: []int{2, 5, 29, 19}, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// deviceScene is a genuine device certificate request and what it names:
// device testDeviceName bound to tenant acme by Claim UID claim-1, its
// Enroll proof, which recorded the request.
type deviceScene struct {
	cr    *cmapi.CertificateRequest
	proof *custodyv1alpha1.DeviceProof
	dev   *custodyv1alpha1.Device
}

func newDeviceScene(t *testing.T) deviceScene {
	t.Helper()
	spiffe := "spiffe://custody.dev/tenants/acme/devices/" + testDeviceName
	csr := csrPEM(t, newKey(t), testSerial, false, spiffe)
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: "proof-0123", Namespace: testNS, UID: "proof-uid"},
		Spec:       custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: testDeviceName, CSR: string(csr)},
		Status: custodyv1alpha1.DeviceProofStatus{Phase: custodyv1alpha1.DeviceProofPhasePending, ClaimUID: "claim-1", Tenant: "acme",
			CertificateRequest: &custodyv1alpha1.ObjectReference{Name: "enroll-1", UID: "cr-uid"}},
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "enroll-1", Namespace: testNS, UID: "cr-uid", OwnerReferences: []metav1.OwnerReference{{
			APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "DeviceProof", Name: proof.Name, UID: proof.UID, Controller: ptr.To(true)}}},
		Spec: cmapi.CertificateRequestSpec{Request: csr, Username: testManager, Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth},
			IssuerRef: cmmeta.IssuerReference{Name: "tenant-acme", Kind: cmapi.IssuerKind, Group: "cert-manager.io"}},
	}
	dev := &custodyv1alpha1.Device{
		ObjectMeta: metav1.ObjectMeta{Name: testDeviceName},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: testSerial, Model: "XR200",
			ClaimRef: &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: testDeviceName, UID: "claim-1"}},
	}
	return deviceScene{cr, proof, dev}
}

// TestDecideDeviceRequest: the approver approves a device certificate only
// for the request the manager made for a verified proof of a device bound
// to the issuer's tenant, with the CSR the device proved; every other
// request gets the exact denial below.
func TestDecideDeviceRequest(t *testing.T) {
	const approved = "Certificate for device xr200.sn-0042 of tenant acme, proven through the Custody gateway."
	for _, tc := range []struct {
		name    string
		change  func(t *testing.T, s *deviceScene)
		verdict approverVerdict
		message string // exact, or a prefix ending in ": "
	}{
		{"genuine", func(*testing.T, *deviceScene) {}, approverApprove, approved},
		{"already approved", func(_ *testing.T, s *deviceScene) {
			s.cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue}}
		}, approverIgnore, ""},
		{"already denied", func(_ *testing.T, s *deviceScene) {
			s.cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue}}
		}, approverIgnore, ""},
		{"another issuer", func(_ *testing.T, s *deviceScene) { s.cr.Spec.IssuerRef.Name = "letsencrypt" }, approverIgnore, ""},
		{"another group", func(_ *testing.T, s *deviceScene) { s.cr.Spec.IssuerRef.Group = "example.com" }, approverIgnore, ""},
		{"a tenant issuer in another namespace", func(_ *testing.T, s *deviceScene) { s.cr.Namespace = "acme" }, approverIgnore, ""},
		{"the shared root", func(_ *testing.T, s *deviceScene) {
			s.cr.Spec.IssuerRef = cmmeta.IssuerReference{Name: "custody-root", Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"}
		}, approverDeny, approverMsgNotManager},
		{"created by someone else with a copied owner", func(_ *testing.T, s *deviceScene) { s.cr.Spec.Username = "system:admin" }, approverDeny, approverMsgNotManager},
		{"owned by something else", func(_ *testing.T, s *deviceScene) { s.cr.OwnerReferences[0].Kind = "Certificate" }, approverDeny, approverMsgNotManager},
		{"not a controller owner", func(_ *testing.T, s *deviceScene) { s.cr.OwnerReferences[0].Controller = nil }, approverDeny, approverMsgNotManager},
		{"the proof is gone", func(_ *testing.T, s *deviceScene) { s.proof = nil }, approverDeny, approverMsgNoProof},
		{"a proof of the same name, recreated", func(_ *testing.T, s *deviceScene) { s.proof.UID = "other" }, approverDeny, approverMsgNoProof},
		{"the proof has not recorded it yet", func(_ *testing.T, s *deviceScene) { s.proof.Status.CertificateRequest = nil }, approverWait, ""},
		{"the proof finished without it", func(_ *testing.T, s *deviceScene) {
			s.proof.Status.CertificateRequest, s.proof.Status.Phase = nil, custodyv1alpha1.DeviceProofPhaseRejected
		}, approverDeny, approverMsgNotLed},
		{"the proof names another request", func(_ *testing.T, s *deviceScene) { s.proof.Status.CertificateRequest.UID = "other" }, approverDeny, approverMsgOtherRequest},
		{"the device is gone", func(_ *testing.T, s *deviceScene) { s.dev = nil }, approverDeny, approverMsgDeviceGone},
		{"the device was released", func(_ *testing.T, s *deviceScene) { s.dev.Spec.ClaimRef = nil }, approverDeny, approverMsgNotBound},
		{"the device was decommissioned", func(_ *testing.T, s *deviceScene) { s.dev.Spec.Decommissioned = true }, approverDeny, approverMsgNotBound},
		{"the device changed hands", func(_ *testing.T, s *deviceScene) { s.dev.Spec.ClaimRef.UID = "claim-2" }, approverDeny, approverMsgNotBound},
		{"another tenant's issuer", func(_ *testing.T, s *deviceScene) { s.cr.Spec.IssuerRef.Name = "tenant-evil" }, approverDeny, approverMsgNotBound},
		{"a CSR the device did not prove", func(t *testing.T, s *deviceScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), testSerial, false, "spiffe://custody.dev/tenants/acme/devices/"+testDeviceName)
		}, approverDeny, approverMsgNotProved},
		{"a CA", func(_ *testing.T, s *deviceScene) { s.cr.Spec.IsCA = true }, approverDeny, approverMsgNotProved},
		{"a CSR that does not parse", func(_ *testing.T, s *deviceScene) {
			s.cr.Spec.Request = []byte("garbage")
			s.proof.Spec.CSR = "garbage"
		}, approverDeny, approverMsgBadDeviceCSR},
		{"another identity", func(t *testing.T, s *deviceScene) {
			csr := csrPEM(t, newKey(t), testSerial, false, "spiffe://custody.dev/tenants/evil/devices/"+testDeviceName)
			s.cr.Spec.Request, s.proof.Spec.CSR = csr, string(csr)
		}, approverDeny, "The request must ask for exactly the identity derived from the Device and nothing else: "},
		{"server auth", func(_ *testing.T, s *deviceScene) { s.cr.Spec.Usages = append(s.cr.Spec.Usages, cmapi.UsageServerAuth) }, approverDeny, approverMsgUsages},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDeviceScene(t)
			tc.change(t, &s)
			d := decideRequest(s.cr, approverFacts{Proof: s.proof, Device: s.dev}, testOptions())
			checkDecision(t, d, tc.verdict, tc.message)
		})
	}
}

func checkDecision(t *testing.T, d approverDecision, verdict approverVerdict, message string) {
	t.Helper()
	if d.Verdict != verdict {
		t.Fatalf("verdict %v (%q), want %v", d.Verdict, d.Message, verdict)
	}
	wantReason := map[approverVerdict]string{approverApprove: ApproverReasonApproved, approverDeny: ApproverReasonDenied}[verdict]
	if d.Reason != wantReason {
		t.Errorf("reason %q, want %q", d.Reason, wantReason)
	}
	if strings.HasSuffix(message, ": ") {
		if !strings.HasPrefix(d.Message, message) || len(d.Message) == len(message) {
			t.Errorf("message %q, want %q and why", d.Message, message)
		}
	} else if d.Message != message {
		t.Errorf("message %q, want %q", d.Message, message)
	}
}

// caScene is a genuine tenant CA request: cert-manager's, for tenant acme's
// CA Certificate, with the key cert-manager holds for it.
type caScene struct {
	cr     *cmapi.CertificateRequest
	cert   *cmapi.Certificate
	tenant *custodyv1alpha1.Tenant
	secret *corev1.Secret
}

func newCAScene(t *testing.T) caScene {
	t.Helper()
	key := newKey(t)
	keyPEM, err := pki.EncodePKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	issuer := cmmeta.IssuerReference{Name: contract.TenantRootIssuerName, Kind: cmapi.IssuerKind, Group: "cert-manager.io"}
	cert := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant-acme-ca", Namespace: testNS, UID: "cert-uid",
			Labels: map[string]string{custodyv1alpha1.LabelTenant: "acme", custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}},
		Spec:   cmapi.CertificateSpec{IsCA: true, CommonName: "Custody tenant acme CA", IssuerRef: issuer},
		Status: cmapi.CertificateStatus{NextPrivateKeySecretName: ptr.To("tenant-acme-ca-next")},
	}
	return caScene{
		cr: &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: "tenant-acme-ca-1", Namespace: testNS, UID: "cr-uid",
				Annotations:     map[string]string{cmapi.CertificateNameKey: cert.Name},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "cert-manager.io/v1", Kind: "Certificate", Name: cert.Name, UID: cert.UID, Controller: ptr.To(true)}}},
			Spec: cmapi.CertificateRequestSpec{Request: csrPEM(t, key, "Custody tenant acme CA", true), IsCA: true, Username: DefaultCertManagerUsername, IssuerRef: issuer},
		},
		cert:   cert,
		tenant: &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}},
		secret: &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "tenant-acme-ca-next", Namespace: testNS, Labels: map[string]string{cmapi.IsNextPrivateKeySecretLabelKey: "true"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "cert-manager.io/v1", Kind: "Certificate", Name: cert.Name, UID: cert.UID, Controller: ptr.To(true)}}},
			Data: map[string][]byte{corev1.TLSPrivateKeyKey: keyPEM},
		},
	}
}

// TestDecideTenantCARequest: a tenant CA is approved only for the request
// cert-manager made for the tenant's CA Certificate with the key it holds
// for it, asking for exactly that CA.
func TestDecideTenantCARequest(t *testing.T) {
	const approved = "Root CA for tenant acme, requested by cert-manager (" + DefaultCertManagerUsername + ") for the tenant's CA Certificate, with the private key it holds for it."
	for _, tc := range []struct {
		name    string
		change  func(t *testing.T, s *caScene)
		verdict approverVerdict
		message string
	}{
		{"genuine", func(*testing.T, *caScene) {}, approverApprove, approved},
		{"not created by cert-manager", func(_ *testing.T, s *caScene) { s.cr.Spec.Username = "system:admin" }, approverDeny, approverMsgNotCertManager},
		{"in another namespace", func(_ *testing.T, s *caScene) { s.cr.Namespace = "acme" }, approverIgnore, ""},
		{"no Certificate annotation", func(_ *testing.T, s *caScene) { delete(s.cr.Annotations, cmapi.CertificateNameKey) }, approverDeny, approverMsgNotTenantCA},
		{"no such Certificate", func(_ *testing.T, s *caScene) { s.cert = nil }, approverDeny, approverMsgNotTenantCA},
		{"a Certificate the manager did not make", func(_ *testing.T, s *caScene) { delete(s.cert.Labels, custodyv1alpha1.LabelManagedBy) }, approverDeny, approverMsgNotTenantCA},
		{"another tenant's name", func(_ *testing.T, s *caScene) { s.cert.Labels[custodyv1alpha1.LabelTenant] = "evil" }, approverDeny, approverMsgNotTenantCA},
		{"a copied owner of another UID", func(_ *testing.T, s *caScene) { s.cr.OwnerReferences[0].UID = "other" }, approverDeny, approverMsgNotTenantCA},
		{"another issuer than the Certificate's", func(_ *testing.T, s *caScene) { s.cert.Spec.IssuerRef.Kind = cmapi.ClusterIssuerKind }, approverDeny, approverMsgNotTenantCA},
		{"the tenant is gone", func(_ *testing.T, s *caScene) { s.tenant = nil }, approverDeny, approverMsgTenantGone},
		{"a CSR that does not parse", func(_ *testing.T, s *caScene) { s.cr.Spec.Request = []byte("garbage") }, approverDeny, approverMsgBadCSR},
		{"not a CA", func(_ *testing.T, s *caScene) { s.cr.Spec.IsCA = false }, approverDeny, approverMsgNotTheCA},
		{"another CN", func(t *testing.T, s *caScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "Custody tenant evil CA", true)
		}, approverDeny, approverMsgNotTheCA},
		{"a SAN", func(t *testing.T, s *caScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "Custody tenant acme CA", true, "spiffe://custody.dev/x")
		}, approverDeny, approverMsgNotTheCA},
		{"no key issued yet", func(_ *testing.T, s *caScene) { s.cert.Status.NextPrivateKeySecretName = nil }, approverDeny, approverMsgWrongKey},
		{"the key Secret is gone", func(_ *testing.T, s *caScene) { s.secret = nil }, approverDeny, approverMsgWrongKey},
		{"a key Secret of another owner", func(_ *testing.T, s *caScene) { s.secret.OwnerReferences[0].UID = "other" }, approverDeny, approverMsgWrongKey},
		{"a key Secret without cert-manager's label", func(_ *testing.T, s *caScene) { delete(s.secret.Labels, cmapi.IsNextPrivateKeySecretLabelKey) }, approverDeny, approverMsgWrongKey},
		{"another key", func(t *testing.T, s *caScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "Custody tenant acme CA", true)
		}, approverDeny, approverMsgWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newCAScene(t)
			tc.change(t, &s)
			d := decideRequest(s.cr, approverFacts{Certificate: s.cert, Tenant: s.tenant, KeySecret: s.secret}, testOptions())
			checkDecision(t, d, tc.verdict, tc.message)
		})
	}
}

// TestApproverReconcile: the reconciler reads what the request names,
// writes the decision's condition at the injected clock's time and reports
// a denial in exactly one event, an approval of a device certificate in
// none.
func TestApproverReconcile(t *testing.T) {
	s := newDeviceScene(t)
	other := newDeviceScene(t)
	other.cr.Name, other.cr.UID = "forged", "forged-uid"
	other.cr.Spec.Username = "system:admin"
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(s.cr, s.proof, s.dev, other.cr).
		WithStatusSubresource(&cmapi.CertificateRequest{}).Build()
	rec := events.NewFakeRecorder(10)
	r := &ApproverReconciler{Client: c, APIReader: c, Recorder: rec, Options: *testOptions()}
	for _, tc := range []struct {
		cr        *cmapi.CertificateRequest
		condition cmapi.CertificateRequestConditionType
		event     string
	}{
		// Approving a device certificate is said by its condition only.
		{s.cr, cmapi.CertificateRequestConditionApproved, ""},
		{other.cr, cmapi.CertificateRequestConditionDenied, "Warning CustodyDenied " + approverMsgNotManager},
	} {
		key := client.ObjectKeyFromObject(tc.cr)
		if _, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatal(err)
		}
		got := &cmapi.CertificateRequest{}
		if err := c.Get(context.Background(), key, got); err != nil {
			t.Fatal(err)
		}
		if n := len(got.Status.Conditions); n != 1 {
			t.Fatalf("%s: %d conditions", key.Name, n)
		}
		cond := got.Status.Conditions[0]
		if cond.Type != tc.condition || cond.Status != cmmeta.ConditionTrue || !cond.LastTransitionTime.Time.Equal(testNow) {
			t.Errorf("%s: condition %+v", key.Name, cond)
		}
		select {
		case e := <-rec.Events:
			if e != tc.event {
				t.Errorf("%s: event %q, want %q", key.Name, e, tc.event)
			}
		default:
			if tc.event != "" {
				t.Errorf("%s: no event", key.Name)
			}
		}
		// Decided is final: a second pass changes nothing and says nothing.
		if _, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-rec.Events:
			t.Errorf("%s: a decided request was decided again: %q", key.Name, e)
		default:
		}
	}
}
