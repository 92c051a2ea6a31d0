package charts

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/custody-dev/custody/internal/controlplane"
)

// TestChartInstallsIntoARealAPIServer installs the rendered chart the way
// a platform engineer would, into the control plane custody-dev runs
// (kube-apiserver, etcd, cert-manager's controllers and admission):
//   - `helm template | kubectl apply --server-side --dry-run=server`
//     against the running control plane, which already has Custody's CRDs
//     and RBAC: every object is admitted;
//   - then for real, CRDs first: every object is created or updated, and
//     cert-manager issues the webhooks' serving certificate from the
//     chart's Issuer for the Service's DNS names;
//   - the same dry run again, as an upgrade, is admitted.
func TestChartInstallsIntoARealAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	objs := mustRender(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Log(err)
		}
	})
	if err := apiextensionsv1.AddToScheme(cp.Scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cp.Config, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(o *unstructured.Unstructured, opts ...client.PatchOption) error {
		return c.Patch(ctx, o.DeepCopy(), client.Apply, append([]client.PatchOption{client.FieldOwner("helm-test"), client.ForceOwnership}, opts...)...) //nolint:staticcheck // server-side apply of unstructured objects, as kubectl does
	}
	dryRun := func(stage string) {
		t.Helper()
		for _, o := range objs {
			if err := apply(o, client.DryRunAll); err != nil {
				t.Errorf("%s: %s was refused: %v", stage, key(o), err)
			}
		}
	}
	dryRun("dry run against the running control plane")

	// For real: CRDs first, established before anything that uses them.
	isCRD := func(o *unstructured.Unstructured) bool { return o.GetKind() == "CustomResourceDefinition" }
	for _, o := range objs {
		if isCRD(o) {
			if err := apply(o); err != nil {
				t.Fatalf("%s: %v", key(o), err)
			}
		}
	}
	for _, o := range objs {
		if !isCRD(o) {
			continue
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		poll(t, ctx, "CRD "+o.GetName()+" to be established", func() bool {
			if err := c.Get(ctx, client.ObjectKey{Name: o.GetName()}, crd); err != nil {
				return false
			}
			return slices.ContainsFunc(crd.Status.Conditions, func(c apiextensionsv1.CustomResourceDefinitionCondition) bool {
				return c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue
			})
		})
		if crd.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s is not kept on uninstall: %v", crd.Name, crd.Annotations)
		}
	}
	for _, o := range objs {
		if !isCRD(o) {
			if err := apply(o); err != nil {
				t.Errorf("%s: %v", key(o), err)
			}
		}
	}
	for _, o := range objs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Errorf("%s after the install: %v", key(o), err)
		}
	}

	// cert-manager issues the webhooks' serving certificate from the
	// chart's Issuer. Its built-in approver does not run here (the Custody
	// manager approves custody issuers' requests); approve as it would.
	var secret corev1.Secret
	poll(t, ctx, "cert-manager to issue custody-webhook-tls", func() bool {
		var crs cmapi.CertificateRequestList
		if err := c.List(ctx, &crs, client.InNamespace("custody-system")); err != nil {
			return false
		}
		for i := range crs.Items {
			cr := &crs.Items[i]
			if cr.Annotations[cmapi.CertificateNameKey] != "custody-webhook" || slices.ContainsFunc(cr.Status.Conditions, func(c cmapi.CertificateRequestCondition) bool {
				return c.Type == cmapi.CertificateRequestConditionApproved
			}) {
				continue
			}
			now := metav1.Now()
			cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
				Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue,
				Reason: "ChartTest", Message: "the approver of a cluster", LastTransitionTime: &now,
			})
			_ = c.Status().Update(ctx, cr)
		}
		return c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-webhook-tls"}, &secret) == nil && len(secret.Data["tls.crt"]) > 0
	})
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("custody-webhook-tls holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("custody-webhook.custody-system.svc"); err != nil {
		t.Errorf("the webhooks' serving certificate does not name their Service: %v", err)
	}

	dryRun("dry run of an upgrade")
}

func poll(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
