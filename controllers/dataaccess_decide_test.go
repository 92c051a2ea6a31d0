package controllers

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// accessState is what the DataAccess controller may find: the keys and
// certificates are real, so that the decision's key and fingerprint checks
// run.
type accessState struct {
	t      *testing.T
	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
	facts  accessFacts
}

func newAccessState(t *testing.T) *accessState {
	t.Helper()
	caKey := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "acme CA"}, NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(der)
	tenant := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}, Spec: custodyv1alpha1.TenantSpec{Namespace: "acme-ns"}}
	tenant.Status.Conditions = []metav1.Condition{{Type: custodyv1alpha1.ConditionReady, Status: metav1.ConditionTrue}}
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: "acme-ns", UID: "da-1", Generation: 1},
		Spec: custodyv1alpha1.DataAccessSpec{Duration: &metav1.Duration{Duration: 24 * time.Hour}}}
	return &accessState{t: t, caKey: caKey, caCert: caCert, facts: accessFacts{DataAccess: da, Tenant: tenant,
		TrustBundle: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})), Now: testNow}}
}

// key makes a pending key and returns it.
func (s *accessState) key() *ecdsa.PrivateKey {
	k := newKey(s.t)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	s.facts.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return k
}

// request adds a request for k, signed with a certificate from notBefore
// for 24h when issued.
func (s *accessState) request(k *ecdsa.PrivateKey, issued bool, notBefore time.Time) *cmapi.CertificateRequest {
	cr := cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: accessRequestName("da-1", k.Public()), Namespace: testNS},
		Spec: cmapi.CertificateRequestSpec{Request: csrPEM(s.t, k, "dash", false, testAccessURI)}}
	if issued {
		cr.Status.Certificate = s.leafPEM(k, notBefore)
	}
	s.facts.Requests = append(s.facts.Requests, cr)
	return &s.facts.Requests[len(s.facts.Requests)-1]
}

func (s *accessState) leafPEM(k *ecdsa.PrivateKey, notBefore time.Time) []byte {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "dash"}, URIs: []*url.URL{mustURL(s.t, testAccessURI)},
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, &k.PublicKey, s.caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// published makes the state after a publish of a certificate of k from
// notBefore: the credential Secret and the status name it.
func (s *accessState) published(k *ecdsa.PrivateKey, notBefore time.Time) []byte {
	certPEM := s.leafPEM(k, notBefore)
	s.facts.Output = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "dash-credentials", Namespace: "acme-ns",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "DataAccess", Name: "dash", UID: "da-1", Controller: ptr.To(true)}}},
		Data: accessSecretData(certPEM, []byte("key"), s.facts.TrustBundle)}
	s.setStatus(certPEM)
	return certPEM
}

func (s *accessState) setStatus(certPEM []byte) {
	block, _ := pem.Decode(certPEM)
	c, _ := x509.ParseCertificate(block.Bytes)
	s.facts.DataAccess.Status.Certificate = &custodyv1alpha1.DataAccessCertificate{Fingerprint: protocol.CertFingerprint(c.Raw), NotBefore: metav1.NewTime(c.NotBefore), NotAfter: metav1.NewTime(c.NotAfter)}
}

// TestDecideAccess: every state a kill between two writes can leave
// converges: a request without its key is deleted and redone, a published
// certificate is cleaned up, never published twice; renewal comes at two
// thirds of the lifetime; a refusing CA is asked again once a minute.
func TestDecideAccess(t *testing.T) {
	renewAt := testNow.Add(-time.Hour).Add(16 * time.Hour) // of a certificate from testNow-1h for 24h
	denied := func(cr *cmapi.CertificateRequest, at time.Time) {
		cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied, Status: cmmeta.ConditionTrue, LastTransitionTime: &metav1.Time{Time: at}}}
	}
	for _, tc := range []struct {
		name        string
		setup       func(s *accessState)
		step        accessStep
		ready       metav1.ConditionStatus
		reason      string
		delete      int // number of requests to delete
		dropKey     bool
		requeue     time.Duration
		requeueSome bool // RequeueAfter > 0, value not checked
	}{
		{"no tenant owns the namespace", func(s *accessState) { s.facts.Tenant = nil }, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonNotATenantNamespace, 0, false, 0, true},
		{"the tenant is not ready", func(s *accessState) { s.facts.Tenant.Status.Conditions = nil }, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonTenantNotReady, 0, false, 0, true},
		{"no trust bundle yet", func(s *accessState) { s.facts.TrustBundle = "" }, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonTenantNotReady, 0, false, 0, true},
		{"an invalid selector", func(s *accessState) {
			s.facts.DataAccess.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "site", Operator: "Near"}}}
		}, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonInvalidSelector, 0, false, 0, false},
		{"a Secret of that name the manager did not make", func(s *accessState) {
			s.facts.Output = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "dash-credentials", Namespace: "acme-ns"}}
		}, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonSecretConflict, 0, false, 0, false},
		{"new: a key first", func(*accessState) {}, accessNewKey, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, false, 0, false},
		{"a key, no request: request", func(s *accessState) { s.key() }, accessCreateRequest, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, false, 0, false},
		{"an unreadable key: dropped", func(s *accessState) { s.facts.KeyPEM = []byte("junk") }, accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, true, 0, false},
		{"a request whose key is lost: deleted first", func(s *accessState) { s.request(newKey(t), true, testNow) }, accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 1, false, 0, false},
		{"a request for another key than the pending one: deleted", func(s *accessState) {
			s.key()
			s.request(newKey(t), false, testNow)
		}, accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 1, false, 0, false},
		{"a request under a wrong name for the pending key: deleted", func(s *accessState) {
			s.request(s.key(), false, testNow).Name = "access-da-1-forged"
		}, accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 1, false, 0, false},
		{"the request is being signed", func(s *accessState) { s.request(s.key(), false, testNow) }, accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, false, 0, false},
		{"denied 10s ago: wait", func(s *accessState) { denied(s.request(s.key(), false, testNow), testNow.Add(-10*time.Second)) },
			accessWait, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonRequestFailed, 0, false, 50 * time.Second, false},
		{"denied a minute ago: start over with a fresh key", func(s *accessState) { denied(s.request(s.key(), false, testNow), testNow.Add(-time.Minute)) },
			accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonRequestFailed, 1, true, 0, false},
		{"signed: publish", func(s *accessState) { s.request(s.key(), true, testNow) }, accessPublish, "", "", 0, false, 0, false},
		{"signed with another key than asked: start over", func(s *accessState) {
			cr := s.request(s.key(), false, testNow)
			cr.Status.Certificate = s.leafPEM(newKey(t), testNow)
		}, accessDeleteRequests, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonRequestFailed, 1, true, 0, false},
		{"published (killed before the clean-up): clean up", func(s *accessState) {
			k := s.key()
			cr := s.request(k, false, testNow)
			cr.Status.Certificate = s.published(k, testNow)
		}, accessCleanUp, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, 0, false},
		{"the Secret written, the status not (killed in between): publish again", func(s *accessState) {
			k := s.key()
			cr := s.request(k, false, testNow)
			cr.Status.Certificate = s.published(k, testNow)
			s.facts.DataAccess.Status.Certificate = nil
		}, accessPublish, "", "", 0, false, 0, false},
		{"valid, before renewal: idle until the bundle check", func(s *accessState) { s.published(newKey(t), testNow.Add(-time.Hour)) },
			accessIdle, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, accessBundleRecheck, false},
		{"valid, renewal within the hour: idle until renewal", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.Now = renewAt.Add(-10 * time.Minute)
		}, accessIdle, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, 10 * time.Minute, false},
		{"at two thirds: a new key, still Ready", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.Now = renewAt
		}, accessNewKey, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, 0, false},
		{"renewing: the request is being signed, still Ready", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.Now = renewAt
			s.request(s.key(), false, renewAt)
		}, accessWait, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, 0, false},
		{"expired: Ready=False Expired and a new key", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.Now = testNow.Add(23 * time.Hour)
		}, accessNewKey, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonExpired, 0, false, 0, false},
		{"the Secret holds another certificate than the status: reissue", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.setStatus(s.leafPEM(newKey(t), testNow))
		}, accessNewKey, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, false, 0, false},
		{"the Secret was deleted: reissue", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.Output = nil
		}, accessNewKey, metav1.ConditionFalse, custodyv1alpha1.DataAccessReasonIssuing, 0, false, 0, false},
		{"the trust bundle changed: rewrite ca.crt", func(s *accessState) {
			s.published(newKey(t), testNow.Add(-time.Hour))
			s.facts.TrustBundle += s.facts.TrustBundle
		}, accessRefreshBundle, metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued, 0, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAccessState(t)
			tc.setup(s)
			d := decideAccess(s.facts)
			if d.Step != tc.step {
				t.Fatalf("step %d, want %d (%s: %s)", d.Step, tc.step, d.Reason, d.Message)
			}
			if d.Ready != tc.ready || d.Reason != tc.reason {
				t.Errorf("Ready %q %q (%s), want %q %q", d.Ready, d.Reason, d.Message, tc.ready, tc.reason)
			}
			if len(d.Delete) != tc.delete || d.DropKey != tc.dropKey {
				t.Errorf("delete %v dropKey %v, want %d requests, dropKey %v", d.Delete, d.DropKey, tc.delete, tc.dropKey)
			}
			for _, name := range d.Delete {
				if !slices.ContainsFunc(s.facts.Requests, func(cr cmapi.CertificateRequest) bool { return cr.Name == name }) {
					t.Errorf("deletes %q, which is not a request of the DataAccess", name)
				}
			}
			// Only a request the CA refused is reported as failed.
			if wantFailed := tc.name == "denied a minute ago: start over with a fresh key"; (d.Failed != nil) != wantFailed {
				t.Errorf("Failed %v, want a failed request: %v", d.Failed, wantFailed)
			}
			if tc.requeueSome && d.RequeueAfter <= 0 || !tc.requeueSome && d.RequeueAfter != tc.requeue {
				t.Errorf("RequeueAfter %v, want %v", d.RequeueAfter, tc.requeue)
			}
			if (tc.step == accessPublish || tc.step == accessCleanUp) && (d.Request == nil || d.Leaf == nil) {
				t.Errorf("no request or leaf to %d", tc.step)
			}
		})
	}
}
