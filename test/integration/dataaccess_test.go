package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// waitAccessIssued waits until da is Ready with a certificate other than
// not (a fingerprint, "" for any) and returns it.
func waitAccessIssued(t *testing.T, da *custodyv1alpha1.DataAccess, not string) *custodyv1alpha1.DataAccess {
	t.Helper()
	got := &custodyv1alpha1.DataAccess{}
	waitFor(t, "DataAccess "+da.Name+" to be issued", func() bool {
		if err := admin.Get(context.Background(), client.ObjectKeyFromObject(da), got); err != nil {
			return false
		}
		c := got.Status.Certificate
		return meta.IsStatusConditionTrue(got.Status.Conditions, custodyv1alpha1.ConditionReady) && c != nil && c.Fingerprint != not
	})
	return got
}

// accessRequests lists the CertificateRequests of a DataAccess.
func accessRequests(t *testing.T, uid string) []cmapi.CertificateRequest {
	t.Helper()
	var list cmapi.CertificateRequestList
	if err := admin.List(context.Background(), &list, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{custodyv1alpha1.LabelDataAccess: uid}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// TestDataAccessIssuesTenantCredentials: a tenant Admin creates a
// DataAccess; the manager writes a Secret with a certificate of the
// tenant's CA carrying the derived identity, its key and the trust bundle,
// which the data-access contract accepts; Viewers cannot read it; renewal
// at two thirds keeps the replaced certificate as previous; deleting the
// DataAccess removes the Secret, the manager's key and every request.
func TestDataAccessIssuesTenantCredentials(t *testing.T) {
	m := startManager(t)
	ctx := context.Background()
	adminUser, viewerUser := uniq("da-admin"), uniq("da-viewer")
	tenant := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: adminUser, Role: custodyv1alpha1.TenantRoleAdmin},
		custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: viewerUser, Role: custodyv1alpha1.TenantRoleViewer})
	ns := tenant.Status.Namespace
	asAdmin, asViewer := userClient(t, adminUser), userClient(t, viewerUser)

	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dashboard", Namespace: ns},
		Spec: custodyv1alpha1.DataAccessSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"site": "berlin"}}}}
	if err := asAdmin.Create(ctx, da); err != nil {
		t.Fatal(err)
	}
	if da.Spec.Duration == nil || da.Spec.Duration.Duration != 24*time.Hour {
		t.Fatalf("default duration %v, want 24h", da.Spec.Duration)
	}
	got := waitAccessIssued(t, da, "")
	if got.Status.SecretName != "dashboard-credentials" || got.Status.ObservedGeneration != got.Generation || got.Status.RenewAt == nil {
		t.Fatalf("status %+v", got.Status)
	}

	secret := &corev1.Secret{}
	if err := asAdmin.Get(ctx, client.ObjectKey{Namespace: ns, Name: got.Status.SecretName}, secret); err != nil {
		t.Fatalf("the Admin cannot read the credential Secret: %v", err)
	}
	if secret.Type != corev1.SecretTypeTLS || !metav1.IsControlledBy(secret, got) {
		t.Fatalf("Secret type %q, owners %+v", secret.Type, secret.OwnerReferences)
	}
	pair, err := tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatalf("tls.crt and tls.key do not make a key pair: %v", err)
	}
	leaf := pair.Leaf
	if protocol.CertFingerprint(leaf.Raw) != got.Status.Certificate.Fingerprint || !leaf.NotAfter.Equal(got.Status.Certificate.NotAfter.Time) {
		t.Fatalf("status certificate %+v is not the Secret's", got.Status.Certificate)
	}
	if err := protocol.CheckCertificateIdentity(leaf.Raw, protocol.DeriveAccessIdentity(contract.DefaultTrustDomain, tenant.Name, "dashboard")); err != nil {
		t.Fatalf("identity: %v", err)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 24*time.Hour {
		t.Errorf("lifetime %v, want 24h", d)
	}
	bundle := &corev1.ConfigMap{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: contract.TrustBundleName}, bundle); err != nil {
		t.Fatal(err)
	}
	if string(secret.Data["ca.crt"]) != bundle.Data[contract.TrustBundleKey] {
		t.Fatal("ca.crt is not the tenant's trust bundle")
	}
	anchors, err := protocol.ParseCertificatesPEM(secret.Data["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	if v := contract.AcceptAccessCertificate(got, tenant, contract.DefaultTrustDomain, leaf, anchors, time.Now()); v != contract.AccessAccepted {
		t.Fatalf("the data-access contract says %s", v)
	}
	// Another tenant's bundle does not trust it.
	other := newTenant(t)
	otherAnchors, err := contract.TenantTrustAnchors(ctx, admin, other.Status.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	if v := contract.AcceptAccessCertificate(got, tenant, contract.DefaultTrustDomain, leaf, otherAnchors, time.Now()); v != contract.AccessUntrusted {
		t.Fatalf("under another tenant's bundle: %s", v)
	}

	// Only Admins read the Secret.
	if err := asViewer.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a Viewer reading the credential Secret: %v, want forbidden", err)
	}
	if err := asViewer.Get(ctx, client.ObjectKeyFromObject(got), &custodyv1alpha1.DataAccess{}); err != nil {
		t.Fatalf("a Viewer cannot read the DataAccess: %v", err)
	}

	// The key and request are cleaned up once the certificate is
	// published.
	uid := string(got.UID)
	waitFor(t, "the request and the manager's key to be cleaned up", func() bool {
		err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: "access-" + uid + "-key"}, &corev1.Secret{})
		return apierrors.IsNotFound(err) && len(accessRequests(t, uid)) == 0
	})

	// Renewal at two thirds of the lifetime: a new certificate, the
	// replaced one kept as previous, both accepted.
	first := got.Status.Certificate
	m.Clock.SetTime(got.Status.RenewAt.Time)
	poke(t, got)
	renewed := waitAccessIssued(t, got, first.Fingerprint)
	if p := renewed.Status.PreviousCertificate; p == nil || p.Fingerprint != first.Fingerprint {
		t.Fatalf("previousCertificate %+v, want %s", p, first.Fingerprint)
	}
	if v := contract.AcceptAccessCertificate(renewed, tenant, contract.DefaultTrustDomain, leaf, anchors, time.Now()); v != contract.AccessAccepted {
		t.Fatalf("the replaced certificate: %s", v)
	}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(secret), secret); err != nil {
		t.Fatal(err)
	}
	pair, err = tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil || protocol.CertFingerprint(pair.Leaf.Raw) != renewed.Status.Certificate.Fingerprint {
		t.Fatalf("the Secret does not hold the renewed certificate and its key: %v", err)
	}

	// Deleting the DataAccess revokes everything at once.
	if err := asAdmin.Delete(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the DataAccess, its Secret, key and requests to be gone", func() bool {
		daErr := admin.Get(ctx, client.ObjectKeyFromObject(da), &custodyv1alpha1.DataAccess{})
		secErr := admin.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{})
		keyErr := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: "access-" + uid + "-key"}, &corev1.Secret{})
		return apierrors.IsNotFound(daErr) && apierrors.IsNotFound(secErr) && apierrors.IsNotFound(keyErr) && len(accessRequests(t, uid)) == 0
	})
	if v := contract.AcceptAccessCertificate(nil, tenant, contract.DefaultTrustDomain, pair.Leaf, anchors, time.Now()); v != contract.AccessRevoked {
		t.Fatalf("after deletion: %s", v)
	}
}

// poke changes an annotation of da so that the manager looks at it again
// (after the fake clock moved).
func poke(t *testing.T, da *custodyv1alpha1.DataAccess) {
	t.Helper()
	patch := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"annotations":{"test.custody.dev/poke":"`+uniq("p")+`"}}}`))
	if err := admin.Patch(context.Background(), da.DeepCopy(), patch); err != nil {
		t.Fatal(err)
	}
}

// TestDataAccessWaitsForItsTenant: a DataAccess outside any tenant
// namespace is not issued and says why.
func TestDataAccessWaitsForItsTenant(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: uniq("no-tenant")}}
	if err := admin.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: ns.Name}}
	if err := admin.Create(ctx, da); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Ready=False NotATenantNamespace", func() bool {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(da), da); err != nil {
			return false
		}
		c := meta.FindStatusCondition(da.Status.Conditions, custodyv1alpha1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == custodyv1alpha1.DataAccessReasonNotATenantNamespace
	})
	if len(accessRequests(t, string(da.UID))) != 0 || da.Status.Certificate != nil {
		t.Fatal("a certificate was requested for a DataAccess outside any tenant")
	}
	if err := admin.Delete(ctx, da); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the DataAccess to go", func() bool { return apierrors.IsNotFound(admin.Get(ctx, client.ObjectKeyFromObject(da), da)) })
}

// TestDataAccessValidation: the API server refuses a duration outside 1h to
// 720h and a name that is not a DNS label, saying so.
func TestDataAccessValidation(t *testing.T) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: uniq("da-valid")}}
	if err := admin.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, d time.Duration) *custodyv1alpha1.DataAccess {
		da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns.Name}}
		if d != 0 {
			da.Spec.Duration = &metav1.Duration{Duration: d}
		}
		return da
	}
	const durationMsg = "duration must be between 1h and 720h (30 days)"
	const nameMsg = "DataAccess names must be DNS labels"
	for _, tc := range []struct {
		name string
		obj  *custodyv1alpha1.DataAccess
		want string
	}{
		{"valid, 1h", mk("ok-1h", time.Hour), ""},
		{"valid, 720h", mk("ok-720h", 720*time.Hour), ""},
		{"valid, default", mk("ok-default", 0), ""},
		{"59 minutes", mk("short", 59*time.Minute), durationMsg},
		{"721 hours", mk("long", 721*time.Hour), durationMsg},
		{"name with a dot", mk("dash.board", time.Hour), nameMsg},
		{"name with upper case", mk("Dashboard", time.Hour), nameMsg},
		{"name of 64 characters", mk(strings.Repeat("a", 64), time.Hour), nameMsg},
		{"name of 63 characters", mk(strings.Repeat("b", 63), time.Hour), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := admin.Create(ctx, tc.obj, client.DryRunAll)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatal("accepted")
			case tc.want != "" && (!apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want Invalid with %q", err, tc.want)
			}
		})
	}
	// A duration that is not one.
	u := []byte(`{"apiVersion":"custody.dev/v1alpha1","kind":"DataAccess","metadata":{"name":"garbage","namespace":"` + ns.Name + `"},"spec":{"duration":"forever"}}`)
	obj := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "garbage", Namespace: ns.Name}}
	err := admin.Patch(ctx, obj, client.RawPatch("application/apply-patch+yaml", u), client.FieldOwner("test"), client.DryRunAll)
	if !apierrors.IsInvalid(err) {
		t.Fatalf("a duration of \"forever\": %v, want Invalid", err)
	}
}

// TestDataAccessForgedRequestsAreDenied: on the real stack, requests to a
// tenant's Issuer labelled with a genuine DataAccess's UID and asking for
// exactly its identity are denied and never signed when cluster-admin makes
// them, or when the manager's own identity makes one with a key the manager
// does not hold for that DataAccess, or for a DataAccess of another tenant.
func TestDataAccessForgedRequestsAreDenied(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tenant, other := newTenant(t), newTenant(t)
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: tenant.Status.Namespace}}
	if err := admin.Create(ctx, da); err != nil {
		t.Fatal(err)
	}
	da = waitAccessIssued(t, da, "")
	asManager := managerClient(t)
	forge := func(issuerTenant string, id protocol.Identity) *cmapi.CertificateRequest {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id.URI)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.CommonName}, URIs: []*url.URL{u}}, key)
		if err != nil {
			t.Fatal(err)
		}
		return &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("forged-access"), Namespace: cp.OperatorNamespace,
				// The attacker's finalizer keeps the evidence of what was
				// decided and signed: the DataAccess controller deletes
				// requests it did not make.
				Finalizers:  []string{"attacker.example/keep"},
				Labels:      map[string]string{custodyv1alpha1.LabelDataAccess: string(da.UID)},
				Annotations: map[string]string{custodyv1alpha1.AnnotationDataAccess: da.Namespace + "/" + da.Name}},
			Spec: cmapi.CertificateRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
				IssuerRef: cmmeta.IssuerReference{Name: controllers.TenantIssuerName(issuerTenant), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
				Duration:  &metav1.Duration{Duration: time.Hour}, Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageClientAuth}},
		}
	}
	id := protocol.DeriveAccessIdentity(contract.DefaultTrustDomain, tenant.Name, da.Name)
	attempts := []struct {
		name string
		as   client.Client
		cr   *cmapi.CertificateRequest
	}{
		{"cluster-admin, the exact identity", admin, forge(tenant.Name, id)},
		{"the manager's identity, a key it does not hold", asManager, forge(tenant.Name, id)},
		{"the manager's identity, another tenant's issuer", asManager, forge(other.Name, protocol.DeriveAccessIdentity(contract.DefaultTrustDomain, other.Name, da.Name))},
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
		if !caHasCondition(cr, cmapi.CertificateRequestConditionDenied) || caHasCondition(cr, cmapi.CertificateRequestConditionApproved) {
			t.Errorf("%s: not denied: %+v", a.name, cr.Status.Conditions)
		}
	}
	// The forged requests carry the DataAccess's label: the controller
	// deletes them as requests it did not make for its pending key.
	waitFor(t, "the forged requests to be deleted", func() bool {
		for _, a := range attempts {
			cr := &cmapi.CertificateRequest{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(a.cr), cr); err != nil || cr.DeletionTimestamp.IsZero() {
				return false
			}
		}
		return true
	})
	// A genuine request is signed within this window: a forged one that
	// had been approved would have been signed.
	for _, a := range attempts {
		cr := &cmapi.CertificateRequest{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(a.cr), cr); err != nil {
			t.Fatal(err)
		}
		if len(cr.Status.Certificate) > 0 {
			t.Errorf("%s: signed", a.name)
		}
	}
}

// TestDataAccessCrashAfterRequest stops the manager right after it created
// a DataAccess's CertificateRequest, and restarts it: with the key kept the
// credential is issued for it; with the key lost (deleted while the manager
// was down) the orphan request is deleted and a new key and request made.
// Either way the Secret's key matches its certificate and nothing is left
// behind.
func TestDataAccessCrashAfterRequest(t *testing.T) {
	for _, lose := range []bool{false, true} {
		t.Run(map[bool]string{false: "key kept", true: "key lost"}[lose], func(t *testing.T) {
			ctx := context.Background()
			var target atomic.Pointer[client.ObjectKey]
			var hit atomic.Bool
			crashed := make(chan struct{})
			m := startManager(t, func(o *controllers.Options) {
				o.FailPoint = func(p string, k client.ObjectKey) error {
					if tk := target.Load(); tk == nil || k != *tk {
						return nil
					}
					if p == controllers.FailPointAccessRequested && hit.CompareAndSwap(false, true) {
						close(crashed)
					}
					if !hit.Load() {
						return nil
					}
					// From here on this manager makes no progress on the
					// DataAccess: it is "killed", and stopped below.
					return errors.New("injected crash at " + p)
				}
			})
			tenant := newTenant(t)
			name := uniq("crash")
			target.Store(&client.ObjectKey{Namespace: tenant.Status.Namespace, Name: name})
			da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tenant.Status.Namespace}}
			if err := admin.Create(ctx, da); err != nil {
				t.Fatal(err)
			}
			<-crashed
			m.stop()
			keyName := client.ObjectKey{Namespace: cp.OperatorNamespace, Name: "access-" + string(da.UID) + "-key"}
			crs := accessRequests(t, string(da.UID))
			if len(crs) != 1 {
				t.Fatalf("%d requests at the crash, want 1", len(crs))
			}
			if err := admin.Get(ctx, keyName, &corev1.Secret{}); err != nil {
				t.Fatalf("the key was not persisted before the request: %v", err)
			}
			orphan := crs[0].Name
			if lose {
				if err := admin.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: keyName.Namespace, Name: keyName.Name}}); err != nil {
					t.Fatal(err)
				}
			}

			startManager(t)
			got := waitAccessIssued(t, da, "")
			secret := &corev1.Secret{}
			if err := admin.Get(ctx, client.ObjectKey{Namespace: da.Namespace, Name: got.Status.SecretName}, secret); err != nil {
				t.Fatal(err)
			}
			pair, err := tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
			if err != nil || protocol.CertFingerprint(pair.Leaf.Raw) != got.Status.Certificate.Fingerprint {
				t.Fatalf("the Secret's key does not match its certificate: %v", err)
			}
			waitFor(t, "the key and every request to be cleaned up", func() bool {
				return apierrors.IsNotFound(admin.Get(ctx, keyName, &corev1.Secret{})) && len(accessRequests(t, string(da.UID))) == 0
			})
			if lose {
				// The orphan, whose key is gone, was never published.
				if err := admin.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: orphan}, &cmapi.CertificateRequest{}); !apierrors.IsNotFound(err) {
					t.Fatalf("the orphan request is still there: %v", err)
				}
			}
		})
	}
}

// TestDataAccessIssuedOnceItsTenantIsReady: a DataAccess created while its
// Tenant is still being provisioned is issued when the Tenant becomes Ready
// (the Tenant watch brings it back; its own recheck is minutes away).
func TestDataAccessIssuedOnceItsTenantIsReady(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: uniq("tenant")}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "Late tenant"}}
	if err := admin.Create(ctx, tn); err != nil {
		t.Fatal(err)
	}
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "early", Namespace: tn.TargetNamespace()}}
	waitFor(t, "the DataAccess to be created in the tenant's new namespace", func() bool { return admin.Create(ctx, da) == nil })
	cur := &custodyv1alpha1.Tenant{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), cur); err != nil {
		t.Fatal(err)
	}
	if meta.IsStatusConditionTrue(cur.Status.Conditions, custodyv1alpha1.ConditionReady) {
		t.Skip("the tenant was Ready before the DataAccess existed: nothing to wait for")
	}
	got := waitAccessIssued(t, da, "")
	if got.Status.SecretName != "early-credentials" {
		t.Fatalf("status %+v", got.Status)
	}
}
