package charts

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/custody-dev/custody/internal/controlplane"
)

// TestHelmInstallUpgradeUninstall runs the real helm against a fresh
// kube-apiserver that has only cert-manager's CRDs, as a platform engineer
// would: `helm install` creates every object, `helm upgrade` changes a
// value, and `helm uninstall` removes the release but keeps the CRDs (and
// so every Device, Claim and Tenant). Then config/default is applied as
// kustomize installs it, and Helm adopts it as docs/upgrading.md says,
// without recreating a Deployment.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "third_party", "cert-manager")},
		ErrorIfCRDPathMissing: true,
		Scheme:                s,
	}
	api := env.ControlPlane.GetAPIServer()
	api.Address = "127.0.0.1"
	api.Configure().Set("bind-address", "127.0.0.1")
	api.Configure().Set("advertise-address", "127.0.0.1")
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	user, err := env.AddUser(envtest.User{Name: "platform-engineer", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	helm := func(args ...string) string {
		t.Helper()
		out, err := tool(t, "helm", append(args, "--kubeconfig", kubeconfig)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return string(out)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	helm("install", "custody", "charts/custody", "--namespace", "custody-system", "--create-namespace")
	objs := mustRender(t)
	for _, o := range objs {
		got := o.DeepCopy()
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Errorf("after helm install, %s: %v", key(o), err)
		}
	}
	helm("upgrade", "custody", "charts/custody", "--namespace", "custody-system", "--set", "manager.replicas=3", "--set", "gateway.enabled=false")
	dep := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-manager"}, dep); err != nil || dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("after helm upgrade --set manager.replicas=3: %v, %v", dep.Spec.Replicas, err)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-gateway"}, &appsv1.Deployment{}); err == nil {
		t.Error("helm upgrade --set gateway.enabled=false left the gateway")
	}
	if out := helm("status", "custody", "--namespace", "custody-system"); !strings.Contains(out, "STATUS: deployed") || !strings.Contains(out, "REVISION: 2") {
		t.Errorf("helm status:\n%s", out)
	}
	helm("uninstall", "custody", "--namespace", "custody-system")
	if err := c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-manager"}, &appsv1.Deployment{}); err == nil {
		t.Error("helm uninstall left the manager")
	}
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if err := c.Get(ctx, client.ObjectKey{Name: o.GetName()}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
			t.Errorf("helm uninstall removed CRD %s (and with it every object of that kind): %v", o.GetName(), err)
		}
	}

	// A kustomize install, adopted by Helm (docs/upgrading.md).
	out, err := tool(t, "kustomize", "build", "config/default")
	if err != nil {
		t.Fatal(err)
	}
	kust, err := decode(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range kust {
		if err := c.Patch(ctx, o, client.Apply, client.FieldOwner("kubectl"), client.ForceOwnership); err != nil { //nolint:staticcheck // server-side apply of unstructured objects, as kubectl does
			t.Fatalf("kubectl apply -k config/default: %s: %v", key(o), err)
		}
	}
	before := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-manager"}, before); err != nil {
		t.Fatal(err)
	}
	if _, err := tool(t, "helm", "install", "custody", "charts/custody", "--namespace", "custody-system", "--kubeconfig", kubeconfig); err == nil {
		t.Fatal("helm installed over a kustomize install without adopting it; the adoption steps would be needless")
	}
	for _, o := range objs {
		got := o.DeepCopy()
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Fatalf("%s, installed by kustomize: %v", key(o), err)
		}
		labels, annotations := got.GetLabels(), got.GetAnnotations()
		if labels == nil {
			labels = map[string]string{}
		}
		if annotations == nil {
			annotations = map[string]string{}
		}
		labels["app.kubernetes.io/managed-by"] = "Helm"
		annotations["meta.helm.sh/release-name"], annotations["meta.helm.sh/release-namespace"] = "custody", "custody-system"
		got.SetLabels(labels)
		got.SetAnnotations(annotations)
		if err := c.Update(ctx, got); err != nil {
			t.Fatalf("labelling %s for Helm: %v", key(o), err)
		}
	}
	// Helm 4 applies server-side: fields kubectl applied are taken over.
	helm("install", "custody", "charts/custody", "--namespace", "custody-system", "--force-conflicts")
	after := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "custody-system", Name: "custody-manager"}, after); err != nil {
		t.Fatal(err)
	}
	if after.UID != before.UID {
		t.Error("adopting the kustomize install recreated the manager's Deployment")
	}
	if after.Labels["app.kubernetes.io/managed-by"] != "Helm" || after.Labels["helm.sh/chart"] == "" {
		t.Errorf("after adoption the manager's Deployment is labelled %v", after.Labels)
	}
}
