package controllers

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/scheme"
)

// accessScene is a genuine DataAccess certificate request and what it
// names: DataAccess dash (UID da-1) in tenant acme's namespace acme-ns, the
// manager's key Secret for it, and the request for that key to acme's
// Issuer.
type accessScene struct {
	cr     *cmapi.CertificateRequest
	da     *custodyv1alpha1.DataAccess
	tenant *custodyv1alpha1.Tenant
	key    *corev1.Secret
}

const testAccessURI = "spiffe://custody.dev/tenants/acme/access/dash"

func newAccessScene(t *testing.T) accessScene {
	t.Helper()
	key := newKey(t)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: "acme-ns", UID: "da-1"}}
	return accessScene{
		cr: &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: accessRequestName(da.UID, key.Public()), Namespace: testNS, UID: "cr-uid",
				Labels:      map[string]string{custodyv1alpha1.LabelDataAccess: "da-1"},
				Annotations: map[string]string{custodyv1alpha1.AnnotationDataAccess: "acme-ns/dash"}},
			Spec: cmapi.CertificateRequestSpec{Request: csrPEM(t, key, "dash", false, testAccessURI), Username: testManager,
				Duration: &metav1.Duration{Duration: 24 * time.Hour}, Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth},
				IssuerRef: cmmeta.IssuerReference{Name: "tenant-acme", Kind: cmapi.IssuerKind, Group: "cert-manager.io"}},
		},
		da:     da,
		tenant: &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}, Spec: custodyv1alpha1.TenantSpec{Namespace: "acme-ns"}},
		key: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: accessKeySecretName("da-1"), Namespace: testNS, Labels: map[string]string{custodyv1alpha1.LabelDataAccess: "da-1"}},
			Data: map[string][]byte{accessKeyData: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}},
	}
}

// TestApproverAccessAttacks: the approver approves a DataAccess certificate
// only for the request the manager made for an existing DataAccess in the
// namespace of the tenant whose Issuer it targets, with the key the manager
// holds for it, exactly the derived identity, client usages and a lifetime
// of 1h to 720h; every forgery gets the exact denial below.
func TestApproverAccessAttacks(t *testing.T) {
	const approved = "Certificate for DataAccess acme-ns/dash of tenant acme, requested by the Custody manager."
	now := metav1.Now()
	for _, tc := range []struct {
		name    string
		change  func(t *testing.T, s *accessScene)
		verdict approverVerdict
		message string
	}{
		{"genuine", func(*testing.T, *accessScene) {}, approverApprove, approved},
		{"720h", func(_ *testing.T, s *accessScene) { s.cr.Spec.Duration.Duration = 720 * time.Hour }, approverApprove, approved},
		{"1h", func(_ *testing.T, s *accessScene) { s.cr.Spec.Duration.Duration = time.Hour }, approverApprove, approved},
		{"created by a tenant user", func(_ *testing.T, s *accessScene) { s.cr.Spec.Username = "alice" }, approverDeny, approverMsgAccessNotManager},
		{"forged label with another DataAccess's UID", func(_ *testing.T, s *accessScene) { s.cr.Labels[custodyv1alpha1.LabelDataAccess] = "da-2" }, approverDeny, approverMsgAccessGone},
		{"an empty label", func(_ *testing.T, s *accessScene) { s.cr.Labels[custodyv1alpha1.LabelDataAccess] = "" }, approverDeny, approverMsgAccessGone},
		{"the DataAccess was re-created", func(_ *testing.T, s *accessScene) { s.da.UID = "da-3" }, approverDeny, approverMsgAccessGone},
		{"the DataAccess is gone", func(_ *testing.T, s *accessScene) { s.da = nil }, approverDeny, approverMsgAccessGone},
		{"the DataAccess is being deleted", func(_ *testing.T, s *accessScene) { s.da.DeletionTimestamp = &now }, approverDeny, approverMsgAccessGone},
		{"an annotation naming another DataAccess", func(_ *testing.T, s *accessScene) {
			s.cr.Annotations[custodyv1alpha1.AnnotationDataAccess] = "globex/dash"
		}, approverDeny, approverMsgAccessGone},
		{"another tenant's issuer", func(_ *testing.T, s *accessScene) {
			s.cr.Spec.IssuerRef.Name = "tenant-globex"
			s.tenant = &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "globex"}}
		}, approverDeny, approverMsgAccessTenant},
		{"an issuer of no tenant", func(_ *testing.T, s *accessScene) { s.cr.Spec.IssuerRef.Name, s.tenant = "tenant-nobody", nil }, approverDeny, approverMsgAccessTenant},
		{"the tenant is being deleted", func(_ *testing.T, s *accessScene) { s.tenant.DeletionTimestamp = &now }, approverDeny, approverMsgAccessTenant},
		{"a DataAccess of another namespace, to acme's issuer", func(_ *testing.T, s *accessScene) {
			s.da.Namespace = "globex-ns"
			s.cr.Annotations[custodyv1alpha1.AnnotationDataAccess] = "globex-ns/dash"
		}, approverDeny, approverMsgAccessTenant},
		{"a CA", func(_ *testing.T, s *accessScene) { s.cr.Spec.IsCA = true }, approverDeny, approverMsgAccessUsages},
		{"a CSR that does not parse", func(_ *testing.T, s *accessScene) { s.cr.Spec.Request = []byte("garbage") }, approverDeny, approverMsgBadCSR},
		{"an extra SAN", func(t *testing.T, s *accessScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "dash", false, testAccessURI, "spiffe://custody.dev/tenants/acme/devices/x")
		}, approverDeny, "The request must ask for exactly the identity derived from the DataAccess and nothing else: "},
		{"an extra DNS SAN", func(t *testing.T, s *accessScene) {
			k, _ := parseAccessKey(s.key.Data[accessKeyData])
			u := mustURL(t, testAccessURI)
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dash"}, URIs: []*url.URL{u}, DNSNames: []string{"nats.example"}}, k)
			if err != nil {
				t.Fatal(err)
			}
			s.cr.Spec.Request = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		}, approverDeny, "The request must ask for exactly the identity derived from the DataAccess and nothing else: "},
		{"another tenant's URI", func(t *testing.T, s *accessScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "dash", false, "spiffe://custody.dev/tenants/globex/access/dash")
		}, approverDeny, "The request must ask for exactly the identity derived from the DataAccess and nothing else: "},
		{"a device's URI", func(t *testing.T, s *accessScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "dash", false, "spiffe://custody.dev/tenants/acme/devices/dash")
		}, approverDeny, "The request must ask for exactly the identity derived from the DataAccess and nothing else: "},
		{"another CN", func(t *testing.T, s *accessScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "admin", false, testAccessURI)
		}, approverDeny, "The request must ask for exactly the identity derived from the DataAccess and nothing else: "},
		{"the right identity with another key", func(t *testing.T, s *accessScene) {
			s.cr.Spec.Request = csrPEM(t, newKey(t), "dash", false, testAccessURI)
		}, approverDeny, approverMsgAccessKey},
		{"no key Secret", func(_ *testing.T, s *accessScene) { s.key = nil }, approverDeny, approverMsgAccessKey},
		{"a key Secret of another DataAccess", func(_ *testing.T, s *accessScene) { s.key.Labels[custodyv1alpha1.LabelDataAccess] = "da-2" }, approverDeny, approverMsgAccessKey},
		{"too long", func(_ *testing.T, s *accessScene) { s.cr.Spec.Duration.Duration = 721 * time.Hour }, approverDeny, approverMsgAccessDuration},
		{"too short", func(_ *testing.T, s *accessScene) { s.cr.Spec.Duration.Duration = 59 * time.Minute }, approverDeny, approverMsgAccessDuration},
		{"no duration (the issuer's default)", func(_ *testing.T, s *accessScene) { s.cr.Spec.Duration = nil }, approverDeny, approverMsgAccessDuration},
		{"server auth", func(_ *testing.T, s *accessScene) { s.cr.Spec.Usages = append(s.cr.Spec.Usages, cmapi.UsageServerAuth) }, approverDeny, approverMsgAccessUsages},
		{"no usages (the issuer's default)", func(_ *testing.T, s *accessScene) { s.cr.Spec.Usages = nil }, approverDeny, approverMsgAccessUsages},
		{"cert sign", func(_ *testing.T, s *accessScene) { s.cr.Spec.Usages = append(s.cr.Spec.Usages, cmapi.UsageCertSign) }, approverDeny, approverMsgAccessUsages},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAccessScene(t)
			tc.change(t, &s)
			d := decideRequest(s.cr, approverFacts{DataAccess: s.da, Tenant: s.tenant, KeySecret: s.key}, testOptions())
			checkDecision(t, d, tc.verdict, tc.message)
		})
	}
}

// TestApproverAccessReconcile: the reconciler finds the DataAccess, the
// Tenant and the key a DataAccess request names, approves the genuine one
// and denies one whose label names another UID, or whose creator is not
// the manager.
func TestApproverAccessReconcile(t *testing.T) {
	s := newAccessScene(t)
	forged := newAccessScene(t)
	forged.cr.Name, forged.cr.UID = "forged-label", "forged-1"
	forged.cr.Labels[custodyv1alpha1.LabelDataAccess] = "da-other"
	forged.cr.Spec.Request = s.cr.Spec.Request
	user := newAccessScene(t)
	user.cr.Name, user.cr.UID = "by-user", "forged-2"
	user.cr.Spec.Username = "alice"
	user.cr.Spec.Request = s.cr.Spec.Request
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(s.cr, s.da, s.tenant, s.key, forged.cr, user.cr).
		WithStatusSubresource(&cmapi.CertificateRequest{}).Build()
	r := &ApproverReconciler{Client: c, APIReader: c, Recorder: events.NewFakeRecorder(10), Options: *testOptions()}
	for _, tc := range []struct {
		cr   *cmapi.CertificateRequest
		want cmapi.CertificateRequestConditionType
		msg  string
	}{
		{s.cr, cmapi.CertificateRequestConditionApproved, "Certificate for DataAccess acme-ns/dash of tenant acme, requested by the Custody manager."},
		{forged.cr, cmapi.CertificateRequestConditionDenied, approverMsgAccessGone},
		{user.cr, cmapi.CertificateRequestConditionDenied, approverMsgAccessNotManager},
	} {
		key := client.ObjectKeyFromObject(tc.cr)
		if _, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: key}); err != nil {
			t.Fatal(err)
		}
		got := &cmapi.CertificateRequest{}
		if err := c.Get(context.Background(), key, got); err != nil {
			t.Fatal(err)
		}
		if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Type != tc.want || got.Status.Conditions[0].Message != tc.msg {
			t.Errorf("%s: conditions %+v, want %s %q", key.Name, got.Status.Conditions, tc.want, tc.msg)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
