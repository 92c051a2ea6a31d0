package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/controlplane"
)

// TestForgedTenantCARequestsAreDenied: a CertificateRequest for a tenant CA
// that copies everything a requester can copy from the genuine one (the
// cert-manager.io annotations, the controller ownerReference to the tenant's
// CA Certificate, the byte-exact subject, isCA, the issuer) but holds the
// attacker's key is Denied and never signed, whether cluster-admin or a
// tenant Admin given the right to create CertificateRequests in the operator
// namespace creates it; so is one claiming cert-manager's identity in
// spec.username (the real requester is stamped over it), and one holding the
// genuine CSR itself (right key) but not created by cert-manager.
func TestForgedTenantCARequestsAreDenied(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	attacker := uniq("ca-forger")
	tn := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: attacker, Role: custodyv1alpha1.TenantRoleAdmin})
	tenantAdmin := caRequestWriter(t, attacker)
	genuine := genuineTenantCARequest(t, tn.Name)
	genuineCSR := caParseCSR(t, genuine.Spec.Request)
	if genuine.Spec.Username != controlplane.CertManagerUsername {
		t.Fatalf("the genuine request was created by %q, not cert-manager", genuine.Spec.Username)
	}

	// The attacker's CSR: the genuine subject, byte for byte, its own key.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{RawSubject: genuineCSR.RawSubject}, key)
	if err != nil {
		t.Fatal(err)
	}
	forgedCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	forge := func(csr []byte, mutate func(*cmapi.CertificateRequest)) *cmapi.CertificateRequest {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{
				Name:            uniq("forged-ca"),
				Namespace:       cp.OperatorNamespace,
				Annotations:     map[string]string{},
				Labels:          genuine.Labels,
				OwnerReferences: genuine.OwnerReferences,
				// cert-manager garbage-collects all but the newest request
				// a Certificate owns; the attacker's finalizer keeps the
				// evidence of what was decided and signed.
				Finalizers: []string{"attacker.example/keep"},
			},
			Spec: cmapi.CertificateRequestSpec{
				Request: csr, IsCA: true, IssuerRef: genuine.Spec.IssuerRef, Usages: genuine.Spec.Usages, Duration: genuine.Spec.Duration,
			},
		}
		for k, v := range genuine.Annotations {
			if strings.HasPrefix(k, "cert-manager.io/") {
				cr.Annotations[k] = v
			}
		}
		if mutate != nil {
			mutate(cr)
		}
		return cr
	}

	type attempt struct {
		name   string
		as     client.Client
		cr     *cmapi.CertificateRequest
		wantBy string // the requester admission must record
	}
	attempts := []attempt{
		{"cluster-admin, attacker's key", admin, forge(forgedCSR, nil), caWhoAmI(t, admin)},
		{"tenant admin, attacker's key", tenantAdmin, forge(forgedCSR, nil), attacker},
		{"cluster-admin claiming cert-manager's identity", admin, forge(forgedCSR, func(cr *cmapi.CertificateRequest) {
			cr.Spec.Username = controlplane.CertManagerUsername
			cr.Spec.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:cert-manager", "system:authenticated"}
			cr.Spec.UID = "forged-uid"
		}), caWhoAmI(t, admin)},
		{"tenant admin claiming cert-manager's identity", tenantAdmin, forge(forgedCSR, func(cr *cmapi.CertificateRequest) {
			cr.Spec.Username = controlplane.CertManagerUsername
		}), attacker},
		{"cluster-admin replaying the genuine CSR", admin, forge(genuine.Spec.Request, nil), caWhoAmI(t, admin)},
	}
	for _, a := range attempts {
		if err := a.as.Create(ctx, a.cr); err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		t.Cleanup(func() {
			_ = admin.Patch(context.Background(), a.cr, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
		})
	}
	for _, a := range attempts {
		cr := caWaitDecided(t, a.cr)
		if cr.Spec.Username != a.wantBy {
			t.Errorf("%s: recorded requester %q, want %q", a.name, cr.Spec.Username, a.wantBy)
		}
		if !caHasCondition(cr, cmapi.CertificateRequestConditionDenied) || caHasCondition(cr, cmapi.CertificateRequestConditionApproved) {
			t.Errorf("%s: not denied: %+v", a.name, cr.Status.Conditions)
		}
	}

	// Within the same window cert-manager's CA controller signs a genuine
	// tenant CA under the same issuer: had a forged request been approved,
	// it would have been signed by now.
	newTenant(t)
	for _, a := range attempts {
		cr := &cmapi.CertificateRequest{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(a.cr), cr); err != nil {
			t.Fatal(err)
		}
		if len(cr.Status.Certificate) > 0 || caHasCondition(cr, cmapi.CertificateRequestConditionApproved) {
			t.Errorf("%s: forged CA request approved or signed", a.name)
		}
	}
}

// TestCertificateRequestDecisionsAreFinal: cert-manager's admission, as the
// control plane of custody-dev and of the tests enforces it, keeps a
// decision final and lets only approvers decide. A Denied request cannot be
// flipped to Approved (Denied replaced, or Approved added) by cluster-admin
// or by a tenant admin allowed to write CertificateRequest status; an
// undecided request cannot be approved by a user without `approve` on the
// issuer's signer; the recorded requester and the spec cannot change. None
// of them is signed, while a request an approver approves is.
func TestCertificateRequestDecisionsAreFinal(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	attacker := uniq("ca-flipper")
	newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: attacker, Role: custodyv1alpha1.TenantRoleAdmin})
	tenantAdmin := caRequestWriter(t, attacker)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	request := func(as client.Client, issuer cmmeta.IssuerReference) *cmapi.CertificateRequest {
		t.Helper()
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("flip"), Namespace: cp.OperatorNamespace},
			Spec:       cmapi.CertificateRequestSpec{Request: csr, IsCA: true, IssuerRef: issuer},
		}
		if err := as.Create(ctx, cr); err != nil {
			t.Fatal(err)
		}
		return cr
	}
	root := cmmeta.IssuerReference{Name: cp.RootIssuer, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"}
	// A CA issuer backed by the root's key that Custody does not approve
	// for: its requests stay undecided until someone decides them.
	other := &cmapi.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("other-ca")},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: cp.RootIssuer + "-ca"}}},
	}
	if err := admin.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Delete(context.Background(), other) })
	otherRef := cmmeta.IssuerReference{Name: other.Name, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"}

	approved := cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue, Reason: "Flipped", Message: "approved by someone else", LastTransitionTime: &metav1.Time{}}
	var unsigned []*cmapi.CertificateRequest
	refused := func(what string, as client.Client, cr *cmapi.CertificateRequest, mutate func(*cmapi.CertificateRequest), status bool) {
		t.Helper()
		// cert-manager's controllers write the request too (its Ready
		// condition): a conflict is no answer from admission, so try again
		// on the latest version.
		var err error
		for range 20 {
			cur := &cmapi.CertificateRequest{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(cr), cur); err != nil {
				t.Fatal(err)
			}
			mutate(cur)
			if status {
				err = as.Status().Update(ctx, cur)
			} else {
				err = as.Update(ctx, cur)
			}
			if !apierrors.IsConflict(err) {
				break
			}
		}
		if err == nil || !strings.Contains(err.Error(), "denied the request") {
			t.Errorf("%s: not refused by admission: %v", what, err)
		}
		unsigned = append(unsigned, cr)
	}

	for name, as := range map[string]client.Client{"cluster-admin": admin, "tenant admin": tenantAdmin} {
		denied := caWaitDecided(t, request(as, root))
		if !caHasCondition(denied, cmapi.CertificateRequestConditionDenied) {
			t.Fatalf("%s: request not denied: %+v", name, denied.Status.Conditions)
		}
		refused(name+" replaces Denied with Approved", as, denied, func(cr *cmapi.CertificateRequest) {
			for i := range cr.Status.Conditions {
				if cr.Status.Conditions[i].Type == cmapi.CertificateRequestConditionDenied {
					cr.Status.Conditions[i] = approved
				}
			}
		}, true)
		refused(name+" adds Approved next to Denied", as, denied, func(cr *cmapi.CertificateRequest) {
			cr.Status.Conditions = append(cr.Status.Conditions, approved)
		}, true)
		refused(name+" rewrites the recorded requester", as, denied, func(cr *cmapi.CertificateRequest) {
			cr.Spec.Username = controlplane.CertManagerUsername
		}, false)
		refused(name+" rewrites the CSR", as, denied, func(cr *cmapi.CertificateRequest) {
			cr.Spec.Request = append([]byte{}, cr.Spec.Request...)
			cr.Spec.Request[len(cr.Spec.Request)/2] ^= 1
		}, false)
	}
	undecided := request(tenantAdmin, otherRef)
	refused("tenant admin without approve on the signer approves", tenantAdmin, undecided, func(cr *cmapi.CertificateRequest) {
		cr.Status.Conditions = append(cr.Status.Conditions, approved)
	}, true)

	// The positive control: an approver's approval of a request to the
	// same issuer is accepted and signed, in the same window.
	control := request(admin, otherRef)
	if err := admin.Get(ctx, client.ObjectKeyFromObject(control), control); err != nil {
		t.Fatal(err)
	}
	control.Status.Conditions = append(control.Status.Conditions, approved)
	if err := admin.Status().Update(ctx, control); err != nil {
		t.Fatalf("cluster-admin, an approver, cannot approve: %v", err)
	}
	waitFor(t, "the approved control request to be signed", func() bool {
		return admin.Get(ctx, client.ObjectKeyFromObject(control), control) == nil && len(control.Status.Certificate) > 0
	})
	for _, cr := range unsigned {
		cur := &cmapi.CertificateRequest{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cr), cur); err != nil {
			t.Fatal(err)
		}
		if len(cur.Status.Certificate) > 0 || caHasCondition(cur, cmapi.CertificateRequestConditionApproved) {
			t.Errorf("request %s approved or signed: %+v", cur.Name, cur.Status.Conditions)
		}
	}
}

// caRequestWriter gives user, on top of its tenant role, the right to create
// CertificateRequests in the operator namespace and to write their status,
// and returns a client authenticated as user.
func caRequestWriter(t *testing.T, user string) client.Client {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("cr-writer"), Namespace: cp.OperatorNamespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get", "list", "watch", "update"}},
			{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests/status"}, Verbs: []string{"update", "patch"}},
		},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: cp.OperatorNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	for _, o := range []client.Object{role, binding} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Delete(context.Background(), o) })
	}
	c := userClient(t, user)
	waitFor(t, user+" to be allowed to create CertificateRequests", func() bool {
		return c.List(ctx, &cmapi.CertificateRequestList{}, client.InNamespace(cp.OperatorNamespace)) == nil
	})
	return c
}

// genuineTenantCARequest returns the approved request cert-manager made for
// a tenant's CA.
func genuineTenantCARequest(t *testing.T, tenant string) *cmapi.CertificateRequest {
	t.Helper()
	var list cmapi.CertificateRequestList
	if err := admin.List(context.Background(), &list, client.InNamespace(cp.OperatorNamespace)); err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		cr := &list.Items[i]
		if cr.Annotations[cmapi.CertificateNameKey] == controllers.TenantCAName(tenant) && caHasCondition(cr, cmapi.CertificateRequestConditionApproved) {
			return cr
		}
	}
	t.Fatalf("no approved CA request for tenant %s", tenant)
	return nil
}

func caWaitDecided(t *testing.T, cr *cmapi.CertificateRequest) *cmapi.CertificateRequest {
	t.Helper()
	cur := &cmapi.CertificateRequest{}
	var err error
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("request %s: %v, %+v", cr.Name, err, cur.Status.Conditions)
		}
	})
	waitFor(t, "request "+cr.Name+" to be decided", func() bool {
		err = admin.Get(context.Background(), client.ObjectKeyFromObject(cr), cur)
		return err == nil && (caHasCondition(cur, cmapi.CertificateRequestConditionApproved) || caHasCondition(cur, cmapi.CertificateRequestConditionDenied))
	})
	return cur
}

func caHasCondition(cr *cmapi.CertificateRequest, t cmapi.CertificateRequestConditionType) bool {
	for _, c := range cr.Status.Conditions {
		if c.Type == t && c.Status == cmmeta.ConditionTrue {
			return true
		}
	}
	return false
}

func caParseCSR(t *testing.T, data []byte) *x509.CertificateRequest {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no CSR PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// caWhoAmI is the username the API server authenticates c as.
func caWhoAmI(t *testing.T, c client.Client) string {
	t.Helper()
	r := &authenticationv1.SelfSubjectReview{}
	if err := c.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r.Status.UserInfo.Username
}
