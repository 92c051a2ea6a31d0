package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestTenantProvisioning: a Tenant gets its namespace, RoleBindings, a
// self-signed root CA of its own issued by cert-manager after the manager
// approved it, an
// Issuer and a trust bundle; it is Ready only when all of them hold.
func TestTenantProvisioning(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t,
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: "alice@acme.example", Role: custodyv1alpha1.TenantRoleAdmin},
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindGroup, Name: "acme:field", Role: custodyv1alpha1.TenantRoleOperator},
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindServiceAccount, Name: "dash", Namespace: "acme-apps", Role: custodyv1alpha1.TenantRoleViewer},
	)
	ns := tn.Status.Namespace
	// A tenant without devices counts 0 (kubectl's DEVICES column), not nothing.
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(custodyv1alpha1.GroupVersion.WithKind("Tenant"))
	if err := admin.Get(ctx, client.ObjectKey{Name: tn.Name}, u); err != nil {
		t.Fatal(err)
	}
	if n, found, err := unstructured.NestedInt64(u.Object, "status", "boundDevices"); err != nil || !found || n != 0 {
		t.Fatalf("a ready tenant without devices has status.boundDevices %d (found %v, %v), want 0", n, found, err)
	}
	for _, typ := range []string{custodyv1alpha1.TenantConditionNamespaceReady, custodyv1alpha1.TenantConditionMembersBound, custodyv1alpha1.TenantConditionCertificateAuthorityReady, custodyv1alpha1.TenantConditionTrustBundleReady} {
		c := meta.FindStatusCondition(tn.Status.Conditions, typ)
		if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != tn.Generation {
			t.Fatalf("condition %s: %+v", typ, c)
		}
	}

	namespace := &corev1.Namespace{}
	if err := admin.Get(ctx, client.ObjectKey{Name: ns}, namespace); err != nil || namespace.Labels[custodyv1alpha1.LabelTenant] != tn.Name {
		t.Fatalf("namespace %s: %v, labels %v", ns, err, namespace.Labels)
	}
	for role, subject := range map[string]rbacv1.Subject{
		"custody-tenant-admin":    {Kind: "User", APIGroup: rbacv1.GroupName, Name: "alice@acme.example"},
		"custody-tenant-operator": {Kind: "Group", APIGroup: rbacv1.GroupName, Name: "acme:field"},
		"custody-tenant-viewer":   {Kind: "ServiceAccount", Name: "dash", Namespace: "acme-apps"},
	} {
		rb := &rbacv1.RoleBinding{}
		if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: role}, rb); err != nil {
			t.Fatalf("RoleBinding %s: %v", role, err)
		}
		if rb.RoleRef.Name != role || len(rb.Subjects) != 1 || rb.Subjects[0] != subject {
			t.Fatalf("RoleBinding %s: %+v %+v", role, rb.RoleRef, rb.Subjects)
		}
	}

	// The CA was requested from the tenant-root self-signed Issuer and
	// approved by the manager.
	var crs cmapi.CertificateRequestList
	if err := admin.List(ctx, &crs, client.InNamespace(cp.OperatorNamespace)); err != nil {
		t.Fatal(err)
	}
	approved := false
	for _, cr := range crs.Items {
		if cr.Annotations[cmapi.CertificateNameKey] != controllers.TenantCAName(tn.Name) {
			continue
		}
		if cr.Spec.IssuerRef.Name != controllers.TenantRootIssuerName || cr.Spec.IssuerRef.Kind != cmapi.IssuerKind {
			t.Fatalf("the tenant CA was requested from %+v", cr.Spec.IssuerRef)
		}
		for _, c := range cr.Status.Conditions {
			if c.Type == cmapi.CertificateRequestConditionApproved && c.Status == cmmeta.ConditionTrue && c.Reason == controllers.ApproverReasonApproved {
				approved = true
			}
		}
	}
	if !approved {
		t.Fatal("the tenant CA's request was not approved by the Custody manager")
	}

	// The trust bundle is exactly the tenant's own self-signed root.
	bundle := &corev1.ConfigMap{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.TrustBundleName}, bundle); err != nil {
		t.Fatal(err)
	}
	caSecret := &corev1.Secret{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(tn.Name)}, caSecret); err != nil {
		t.Fatal(err)
	}
	if bundle.Data[controllers.TrustBundleKey] != string(caSecret.Data[corev1.TLSCertKey]) {
		t.Fatal("the trust bundle is not the tenant's CA certificate")
	}
	ca := parseCert(t, []byte(bundle.Data[controllers.TrustBundleKey]))
	if !ca.IsCA || ca.CheckSignatureFrom(ca) != nil || string(ca.RawSubject) != string(ca.RawIssuer) {
		t.Fatal("the tenant CA is not a self-signed root")
	}
	if certs, _ := protocol.ParseCertificatesPEM([]byte(bundle.Data[controllers.TrustBundleKey])); len(certs) != 1 {
		t.Fatalf("the trust bundle holds %d certificates, want the tenant's root alone", len(certs))
	}
	// No CA material lands in the tenant namespace.
	var secrets corev1.SecretList
	if err := admin.List(ctx, &secrets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 0 {
		t.Fatalf("secrets in the tenant namespace: %d", len(secrets.Items))
	}
}

// TestTenantBundlesDoNotCrossVerify: a certificate from tenant A's issuer
// verifies under A's trust bundle, with Go and with plain openssl, and not
// under tenant B's.
func TestTenantBundlesDoNotCrossVerify(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	a, b := newTenant(t), newTenant(t)
	leafFor := func(tn *custodyv1alpha1.Tenant) *x509.Certificate {
		caSecret := &corev1.Secret{}
		if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(tn.Name)}, caSecret); err != nil {
			t.Fatal(err)
		}
		caCert := parseCert(t, caSecret.Data[corev1.TLSCertKey])
		block, _ := pem.Decode(caSecret.Data[corev1.TLSPrivateKeyKey])
		caKey, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: new(big.Int).Add(caCert.SerialNumber, big.NewInt(1)), Subject: pkix.Name{CommonName: "device"}, NotBefore: caCert.NotBefore, NotAfter: caCert.NotAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	poolOf := func(tn *custodyv1alpha1.Tenant) *x509.CertPool {
		cm := &corev1.ConfigMap{}
		if err := admin.Get(ctx, client.ObjectKey{Namespace: tn.Status.Namespace, Name: controllers.TrustBundleName}, cm); err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM([]byte(cm.Data[controllers.TrustBundleKey]))
		return p
	}
	opts := func(p *x509.CertPool) x509.VerifyOptions {
		return x509.VerifyOptions{Roots: p, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	leafA := leafFor(a)
	if _, err := leafA.Verify(opts(poolOf(a))); err != nil {
		t.Fatalf("A's certificate does not verify under A's bundle: %v", err)
	}
	if _, err := leafA.Verify(opts(poolOf(b))); err == nil {
		t.Fatal("A's certificate verifies under B's bundle")
	}
	// Plain openssl (no -partial_chain) agrees: the bundle is a complete
	// trust anchor for A's certificates and for nobody else's.
	leafFile := writeTemp(t, "leaf-a.crt", string(pemCert(leafA.Raw)))
	if out, err := opensslVerify(t, trustBundle(t, a), leafFile); err != nil {
		t.Fatalf("openssl rejected A's certificate under A's bundle: %v\n%s", err, out)
	}
	if out, err := opensslVerify(t, trustBundle(t, b), leafFile); err == nil {
		t.Fatalf("openssl accepted A's certificate under B's bundle:\n%s", out)
	}
}

// TestTenantNotReadyOnNamespaceConflict: a Tenant whose namespace belongs
// to someone else is not Ready and says why.
func TestTenantNotReadyOnNamespaceConflict(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	taken := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: uniq("taken")}}
	if err := admin.Create(ctx, taken); err != nil {
		t.Fatal(err)
	}
	tn := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: uniq("tenant")}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "x", Namespace: taken.Name}}
	if err := admin.Create(ctx, tn); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the conflict to be reported", func() bool {
		_ = admin.Get(ctx, client.ObjectKeyFromObject(tn), tn)
		c := meta.FindStatusCondition(tn.Status.Conditions, custodyv1alpha1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == custodyv1alpha1.TenantReasonNamespaceConflict
	})
}

// TestRogueCertificateRequestsAreDenied: a request to a custody issuer that
// the manager did not make is denied and never signed.
func TestRogueCertificateRequestsAreDenied(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "rogue"}}, key)
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	for name, ref := range map[string]cmmeta.IssuerReference{
		"root":        {Name: cp.RootIssuer, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"},
		"tenant-root": {Name: controllers.TenantRootIssuerName, Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
		"tenant":      {Name: controllers.TenantIssuerName(tn.Name), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
	} {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("rogue-" + name), Namespace: cp.OperatorNamespace},
			Spec:       cmapi.CertificateRequestSpec{Request: csr, IssuerRef: ref, IsCA: name != "tenant"},
		}
		if name == "tenant-root" {
			// The self-signed issuer signs with the key of the Secret this
			// annotation names: here, the tenant's own CA key.
			cr.Annotations = map[string]string{cmapi.CertificateRequestPrivateKeyAnnotationKey: controllers.TenantCAName(tn.Name)}
		}
		if err := admin.Create(ctx, cr); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the rogue request to be denied", func() bool {
			_ = admin.Get(ctx, client.ObjectKeyFromObject(cr), cr)
			for _, c := range cr.Status.Conditions {
				if c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue {
					return true
				}
			}
			return false
		})
		for _, c := range cr.Status.Conditions {
			if c.Type == cmapi.CertificateRequestConditionApproved {
				t.Fatalf("%s: rogue request approved", name)
			}
		}
		if len(cr.Status.Certificate) > 0 {
			t.Fatalf("%s: rogue request signed", name)
		}
	}
}

// TestTenantDeletionReleasesDevices: deleting a Tenant releases every
// device bound to it, whatever the release policy of its Claims.
func TestTenantDeletionReleasesDevices(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	var devices []string
	for range 2 {
		rec := newDevice(t)
		cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
		waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
		devices = append(devices, rec.Device.Name)
	}
	if err := admin.Delete(ctx, tn); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tenant to be gone", func() bool {
		return apierrors.IsNotFound(admin.Get(ctx, client.ObjectKeyFromObject(tn), &custodyv1alpha1.Tenant{}))
	})
	for _, name := range devices {
		d := getDevice(t, name)
		if d.Spec.ClaimRef != nil {
			t.Fatalf("device %s still bound to %+v", name, d.Spec.ClaimRef)
		}
		last := d.Status.History[len(d.Status.History)-1]
		if last.Type != custodyv1alpha1.CustodyEventReleased || last.Tenant != tn.Name {
			t.Fatalf("device %s history ends with %+v", name, last)
		}
	}
	for _, obj := range []client.Object{
		&cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Namespace: cp.OperatorNamespace, Name: controllers.TenantIssuerName(tn.Name)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: cp.OperatorNamespace, Name: controllers.TenantCAName(tn.Name)}},
	} {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(obj), obj); !apierrors.IsNotFound(err) {
			t.Fatalf("%T %s survived the tenant: %v", obj, obj.GetName(), err)
		}
	}
	var claims custodyv1alpha1.ClaimList
	if err := admin.List(ctx, &claims, client.InNamespace(tn.Status.Namespace)); err != nil || len(claims.Items) != 0 {
		t.Fatalf("claims left: %d (%v)", len(claims.Items), err)
	}
}

func parseCert(t testing.TB, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBoundDevicesAreCountedFromTheIndex: Tenant.status.boundDevices is
// counted from the manager's cache index without listing (copying) the
// tenant's Devices (controllers.CountBoundDevices), and the count is each
// tenant's own.
func TestBoundDevicesAreCountedFromTheIndex(t *testing.T) {
	m := startManager(t)
	ctx := context.Background()
	acme, globex := newTenant(t), newTenant(t)
	for _, owner := range []string{acme.Name, acme.Name, acme.Name, globex.Name} {
		soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant = owner })
	}
	newDevice(t) // unsold, unbound
	for tn, want := range map[*custodyv1alpha1.Tenant]int32{acme: 3, globex: 1} {
		waitFor(t, fmt.Sprintf("tenant %s to count %d bound devices", tn.Name, want), func() bool {
			if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tn); err != nil {
				t.Fatal(err)
			}
			return tn.Status.BoundDevices == want
		})
		n, indexed, err := controllers.CountBoundDevices(ctx, m.Manager.GetCache(), tn.Name)
		if err != nil || !indexed || n != want {
			t.Fatalf("tenant %s: counted %d from the index (indexed %v, %v), want %d", tn.Name, n, indexed, err, want)
		}
	}
}
