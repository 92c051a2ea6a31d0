package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// TestTenantMigratesToItsOwnRoot: a tenant made by the previous version (an
// intermediate CA under the shared root ClusterIssuer, its Issuer, a bundle
// holding the intermediate) is moved by the Tenant controller to a
// self-signed root of its own with a new key. The bundle then holds the new
// root and, for the device-certificate lifetime, the replaced intermediate
// (certificates it signed keep verifying as the gateway verifies them); a
// device enrolled after the move verifies with plain openssl under the new
// bundle. Once the retention has passed, the intermediate leaves the bundle.
func TestTenantMigratesToItsOwnRoot(t *testing.T) {
	requireOpenSSL(t)
	ctx := context.Background()
	name := uniq("tenant")
	opNS := cp.OperatorNamespace
	labels := map[string]string{custodyv1alpha1.LabelTenant: name, custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}
	caName := controllers.TenantCAName(name)

	// What the previous version left, made without a manager running.
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
		t.Fatal(err)
	}
	oldCA := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: caName, Namespace: opNS, Labels: labels},
		Spec: cmapi.CertificateSpec{
			IsCA: true, CommonName: "Custody tenant " + name + " CA", SecretName: caName,
			SecretTemplate: &cmapi.CertificateSecretTemplate{Labels: labels},
			Duration:       &metav1.Duration{Duration: 365 * 24 * time.Hour},
			PrivateKey:     &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256, RotationPolicy: cmapi.RotationPolicyAlways},
			IssuerRef:      cmmeta.IssuerReference{Name: cp.RootIssuer, Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"},
		},
	}
	if err := admin.Create(ctx, oldCA); err != nil {
		t.Fatal(err)
	}
	// The previous manager approved the intermediate's request.
	waitFor(t, "the intermediate's request to be approved", func() bool {
		var crs cmapi.CertificateRequestList
		if err := admin.List(ctx, &crs, client.InNamespace(opNS)); err != nil {
			return false
		}
		for i := range crs.Items {
			cr := &crs.Items[i]
			if cr.Annotations[cmapi.CertificateNameKey] != caName {
				continue
			}
			now := metav1.Now()
			cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionApproved,
				Status: cmmeta.ConditionTrue, Reason: controllers.ApproverReasonApproved, Message: "previous version", LastTransitionTime: &now})
			return admin.Status().Update(ctx, cr) == nil
		}
		return false
	})
	secret := &corev1.Secret{}
	waitFor(t, "the intermediate to be issued", func() bool {
		return admin.Get(ctx, client.ObjectKey{Namespace: opNS, Name: caName}, secret) == nil && len(secret.Data[corev1.TLSCertKey]) > 0
	})
	intermediate := parseCert(t, secret.Data[corev1.TLSCertKey])
	sharedRoot := parseCert(t, secret.Data["ca.crt"])
	if intermediate.CheckSignatureFrom(sharedRoot) != nil || bytes.Equal(intermediate.RawIssuer, intermediate.RawSubject) {
		t.Fatal("the old-style tenant CA is not an intermediate under the shared root")
	}
	oldKeyPEM := secret.Data[corev1.TLSPrivateKeyKey]
	oldIssuer := &cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Name: controllers.TenantIssuerName(name), Namespace: opNS, Labels: labels},
		Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: caName}}}}
	if err := admin.Create(ctx, oldIssuer); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: controllers.TrustBundleName, Namespace: name, Labels: labels},
		Data: map[string]string{controllers.TrustBundleKey: string(secret.Data[corev1.TLSCertKey])}}); err != nil {
		t.Fatal(err)
	}
	// A device certificate the old intermediate signed, as its Issuer did.
	oldLeaf := signLeaf(t, intermediate, oldKeyPEM)

	m := startManager(t)
	g := startGateway(t)
	tn := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "Migrated"}}
	if err := admin.Create(ctx, tn); err != nil {
		t.Fatal(err)
	}
	var root *x509.Certificate
	waitFor(t, "the tenant to be Ready on a root of its own", func() bool {
		if admin.Get(ctx, client.ObjectKeyFromObject(tn), tn) != nil || !meta.IsStatusConditionTrue(tn.Status.Conditions, custodyv1alpha1.ConditionReady) {
			return false
		}
		certs, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, tn)))
		if err != nil || len(certs) == 0 {
			return false
		}
		root = certs[0]
		return bytes.Equal(root.RawIssuer, root.RawSubject)
	})

	// The CA Certificate moved to the self-signed issuer, with a new key.
	ca := &cmapi.Certificate{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(oldCA), ca); err != nil {
		t.Fatal(err)
	}
	if ca.Spec.IssuerRef.Name != controllers.TenantRootIssuerName || ca.Spec.IssuerRef.Kind != cmapi.IssuerKind {
		t.Fatalf("the tenant CA is issued by %+v", ca.Spec.IssuerRef)
	}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: opNS, Name: caName}, secret); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(secret.Data[corev1.TLSPrivateKeyKey], oldKeyPEM) || protocol.SameKey(root.PublicKey, intermediate.PublicKey) {
		t.Fatal("the tenant's root kept the intermediate's key")
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil || !root.Equal(parseCert(t, secret.Data[corev1.TLSCertKey])) {
		t.Fatal("the bundle's first certificate is not the tenant's self-signed root")
	}

	// The bundle keeps the replaced intermediate for the certificates it
	// signed, and says until when; nothing of the shared root.
	bundle := trustBundle(t, tn)
	certs, _ := protocol.ParseCertificatesPEM([]byte(bundle))
	if len(certs) != 2 || !certs[1].Equal(intermediate) {
		t.Fatalf("the bundle holds %d certificates, want the new root and the replaced intermediate", len(certs))
	}
	cm := &corev1.ConfigMap{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: name, Name: controllers.TrustBundleName}, cm); err != nil {
		t.Fatal(err)
	}
	published, err := contract.ParseTrustBundle(bundle, cm.Annotations[controllers.AnnotationRetainedCAs])
	if err != nil {
		t.Fatal(err)
	}
	until, ok := published.Retained[protocol.CertFingerprint(intermediate.Raw)]
	if !ok || until.Before(m.Clock.Now().Add(controllers.DefaultCertificateDuration)) {
		t.Fatalf("the intermediate is retained until %v (%v), want at least a device certificate's lifetime", until, ok)
	}
	pool := func(pemData string) x509.VerifyOptions {
		p := x509.NewCertPool()
		p.AppendCertsFromPEM([]byte(pemData))
		return x509.VerifyOptions{Roots: p, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	if _, err := oldLeaf.Verify(pool(bundle)); err != nil {
		t.Fatalf("a certificate of the replaced intermediate no longer verifies as the gateway verifies it: %v", err)
	}

	// A device enrols after the move: its certificate is signed by the new
	// root and verifies with plain openssl under the bundle.
	cert := enrolledDevice(t, g, tn)
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if leaf.CheckSignatureFrom(root) != nil {
		t.Fatal("the device certificate is not signed by the tenant's new root")
	}
	if out, err := opensslVerify(t, bundle, writeTemp(t, "device.crt", string(pemCert(leaf.Raw)))); err != nil {
		t.Fatalf("openssl rejected the device under the migrated bundle: %v\n%s", err, out)
	}

	// When the retention has passed, the intermediate leaves the bundle.
	m.Clock.Step(until.Sub(m.Clock.Now()) + time.Second)
	patch := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"labels":{"test.custody.dev/touch":"1"}}}`))
	if err := admin.Patch(ctx, tn, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the intermediate to leave the bundle", func() bool {
		certs, err := protocol.ParseCertificatesPEM([]byte(trustBundle(t, tn)))
		return err == nil && len(certs) == 1 && certs[0].Equal(root)
	})
	if err := admin.Get(ctx, client.ObjectKey{Namespace: name, Name: controllers.TrustBundleName}, cm); err != nil {
		t.Fatal(err)
	}
	if _, ok := cm.Annotations[controllers.AnnotationRetainedCAs]; ok {
		t.Fatal("the bundle still announces a retained CA")
	}
	if _, err := oldLeaf.Verify(pool(cm.Data[controllers.TrustBundleKey])); err == nil {
		t.Fatal("a certificate of the dropped intermediate still verifies")
	}
}

// signLeaf signs a client certificate with a CA's key, as a CA Issuer does.
func signLeaf(t testing.TB, ca *x509.Certificate, caKeyPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(caKeyPEM)
	caKey, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if caKey, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: "SN-OLD"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(controllers.DefaultCertificateDuration), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
