// Package charts tests the Helm chart in charts/custody with the pinned
// helm (hack/tools/helm) and kustomize (hack/tools/kustomize): it lints,
// renders with every option, agrees object for object with config/default,
// and installs into a real kube-apiserver with cert-manager's CRDs.
package charts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// root is the repository, where `go tool -modfile=hack/tools/…` runs.
const root = ".."

// tool runs a pinned tool from hack/tools/<name> with args, from the
// repository root, and returns its standard output. name "helm3" runs
// Helm 3 (hack/tools/helm3), "helm" Helm 4.
func tool(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	bin := strings.TrimSuffix(name, "3")
	cmd := exec.Command("go", append([]string{"tool", "-modfile=hack/tools/" + name + "/go.mod", bin}, args...)...) //nolint:gosec // pinned tools, fixed names
	cmd.Dir = root
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out.Bytes(), nil
}

// render runs `helm template custody charts/custody -n custody-system`
// with extra arguments (--set, -f).
func render(t *testing.T, extra ...string) ([]*unstructured.Unstructured, error) {
	t.Helper()
	out, err := tool(t, "helm", append([]string{"template", "custody", "charts/custody", "--namespace", "custody-system"}, extra...)...)
	if err != nil {
		return nil, err
	}
	return decode(out)
}

func mustRender(t *testing.T, extra ...string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := render(t, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// decode splits a multi-document YAML stream into objects.
func decode(stream []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

func key(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// TestChartLints lints the chart with Helm 4 and Helm 3, and checks that
// Helm 3 renders exactly what Helm 4 does, with every option on: the chart
// is apiVersion v2, for both.
func TestChartLints(t *testing.T) {
	for _, helm := range []string{"helm", "helm3"} {
		if out, err := tool(t, helm, "lint", "--strict", "charts/custody"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	// --kube-version: a Helm built from source (not a release) assumes
	// Kubernetes 1.20 for `template`, below the chart's kubeVersion.
	args := []string{"template", "custody", "charts/custody", "--namespace", "custody-system", "--kube-version", "v1.36.3",
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true",
		"--set", "dataPlane.enabled=true", "--set", "dataPlane.url=tls://nats-0:4222", "--set", "dataPlane.mqttURL=ssl://nats-0:8883",
		"--set", "manager.podDisruptionBudget.enabled=true", "--set", "gateway.podDisruptionBudget.enabled=true"}
	var rendered [2][]*unstructured.Unstructured
	for i, helm := range []string{"helm", "helm3"} {
		out, err := tool(t, helm, args...)
		if err != nil {
			t.Fatal(err)
		}
		if rendered[i], err = decode(out); err != nil {
			t.Fatal(err)
		}
	}
	if len(rendered[0]) < 30 || len(rendered[0]) != len(rendered[1]) {
		t.Fatalf("Helm 4 renders %d objects, Helm 3 %d", len(rendered[0]), len(rendered[1]))
	}
	// The same objects; the order of kinds Helm does not know differs.
	helm3 := map[string]*unstructured.Unstructured{}
	for _, o := range rendered[1] {
		helm3[key(o)] = o
	}
	for _, o := range rendered[0] {
		if h3, ok := helm3[key(o)]; !ok || !reflect.DeepEqual(o.Object, h3.Object) {
			t.Errorf("Helm 3 renders %s differently from Helm 4 (or not at all)", key(o))
		}
	}
}

// helmLabels are the labels the chart adds to what config/ has.
var helmLabels = []string{"app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/part-of"}

// TestChartAgreesWithKustomize renders the chart with its defaults into
// custody-system and config/default with kustomize, and compares them
// object by object: the same objects, the same fields, except the labels
// Helm adds, the CRDs' keep annotation and the Namespace (Helm installs
// into an existing namespace).
func TestChartAgreesWithKustomize(t *testing.T) {
	chart := mustRender(t)
	out, err := tool(t, "kustomize", "build", "config/default")
	if err != nil {
		t.Fatal(err)
	}
	kust, err := decode(out)
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]*unstructured.Unstructured{}
	for _, o := range chart {
		if _, dup := byKey[key(o)]; dup {
			t.Errorf("the chart renders %s twice", key(o))
		}
		byKey[key(o)] = o
	}
	seen := map[string]bool{}
	for _, want := range kust {
		if want.GetKind() == "Namespace" {
			continue
		}
		k := key(want)
		seen[k] = true
		got, ok := byKey[k]
		if !ok {
			t.Errorf("config/default has %s; the chart does not", k)
			continue
		}
		got = comparable(t, got, want)
		if w := comparable(t, want, want); !reflect.DeepEqual(got.Object, w.Object) {
			g, _ := json.MarshalIndent(got.Object, "", " ")
			wj, _ := json.MarshalIndent(w.Object, "", " ")
			t.Errorf("%s differs between the chart and config/default:\nchart: %s\nkustomize: %s", k, firstDiff(g, wj), firstDiff(wj, g))
		}
	}
	for k := range byKey {
		if !seen[k] {
			t.Errorf("the chart renders %s, which config/default does not have", k)
		}
	}
	if len(seen) < 25 {
		t.Fatalf("compared only %d objects", len(seen))
	}
}

// comparable returns a JSON round trip of o in which the labels Helm adds
// (on the object and on a pod template) are those of want, and the CRDs'
// helm.sh/resource-policy annotation is gone. It fails when o lacks a
// label want has.
func comparable(t *testing.T, o, want *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	b, err := json.Marshal(o.Object)
	if err != nil {
		t.Fatal(err)
	}
	c := &unstructured.Unstructured{}
	if err := json.Unmarshal(b, &c.Object); err != nil {
		t.Fatal(err)
	}
	fix := func(path ...string) {
		got, _, _ := unstructured.NestedStringMap(c.Object, path...)
		exp, _, _ := unstructured.NestedStringMap(want.Object, path...)
		for k, v := range exp {
			if got[k] != v {
				t.Errorf("%s: label %s=%s of config/default is %q in the chart", key(want), k, v, got[k])
			}
		}
		for k := range got {
			if _, ok := exp[k]; !ok && slices.Contains(helmLabels, k) {
				delete(got, k)
			}
		}
		if len(got) == 0 {
			unstructured.RemoveNestedField(c.Object, path...)
			return
		}
		_ = unstructured.SetNestedStringMap(c.Object, got, path...)
	}
	fix("metadata", "labels")
	// A webhook configuration's webhooks are matched by name, not order
	// (kustomize's patches reorder them).
	if ws, ok, _ := unstructured.NestedSlice(c.Object, "webhooks"); ok {
		slices.SortFunc(ws, func(a, b any) int {
			return strings.Compare(fmt.Sprint(a.(map[string]any)["name"]), fmt.Sprint(b.(map[string]any)["name"]))
		})
		_ = unstructured.SetNestedSlice(c.Object, ws, "webhooks")
	}
	fix("spec", "template", "metadata", "labels")
	if c.GetKind() == "CustomResourceDefinition" {
		a := c.GetAnnotations()
		delete(a, "helm.sh/resource-policy")
		c.SetAnnotations(a)
		if len(a) == 0 {
			unstructured.RemoveNestedField(c.Object, "metadata", "annotations")
		}
	}
	return c
}

// firstDiff shows a where it starts to differ from b.
func firstDiff(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	start := max(0, i-300)
	return string(a[start:min(len(a), i+300)])
}

// TestChartOptions renders the chart with each option and checks what it
// changes; invalid values are refused with a message naming them.
func TestChartOptions(t *testing.T) {
	t.Run("namespace", func(t *testing.T) {
		objs := mustRender(t, "--namespace", "iot-custody")
		for _, o := range objs {
			if o.GetNamespace() != "" && o.GetNamespace() != "iot-custody" {
				t.Errorf("%s is in %s, not the release namespace", key(o), o.GetNamespace())
			}
		}
		b, _ := json.Marshal(objectsOf(objs))
		if bytes.Contains(b, []byte("custody-system")) {
			t.Errorf("rendered into iot-custody, the chart still names custody-system: %s", firstDiff(b[bytes.Index(b, []byte("custody-system")):], nil))
		}
		args := containerArgs(t, objs, "custody-manager")
		for _, want := range []string{"--operator-namespace=iot-custody", "--manager-usernames=system:serviceaccount:iot-custody:custody-manager", "--gateway-usernames=system:serviceaccount:iot-custody:custody-gateway"} {
			if !slices.Contains(args, want) {
				t.Errorf("manager args %v lack %s", args, want)
			}
		}
		vwc := find(objs, "ValidatingWebhookConfiguration", "custody-validating-webhook-configuration")
		if b, _ := json.Marshal(vwc.Object); !bytes.Contains(b, []byte("system:serviceaccount:iot-custody:custody-manager")) {
			t.Errorf("the webhooks' match conditions do not name the release's manager: %s", b)
		}
	})
	t.Run("no gateway", func(t *testing.T) {
		objs := mustRender(t, "--set", "gateway.enabled=false")
		for _, o := range objs {
			if strings.Contains(o.GetName(), "gateway") {
				t.Errorf("gateway disabled, the chart still renders %s", key(o))
			}
		}
	})
	t.Run("data plane", func(t *testing.T) {
		if _, err := render(t, "--set", "dataPlane.enabled=true"); err == nil || !strings.Contains(err.Error(), "dataPlane.url is required") {
			t.Errorf("a data plane without a URL rendered: %v", err)
		}
		objs := mustRender(t, "--set", "dataPlane.enabled=true", "--set", "dataPlane.url=tls://nats-0:4222", "--set", "dataPlane.mqttURL=ssl://nats-0:8883")
		args := containerArgs(t, objs, "custody-manager")
		for _, want := range []string{"--dataplane-url=tls://nats-0:4222", "--dataplane-mqtt-url=ssl://nats-0:8883", "--dataplane-master-secret-file=/etc/custody-dataplane/master/master-secret"} {
			if !slices.Contains(args, want) {
				t.Errorf("manager args %v lack %s", args, want)
			}
		}
		vols, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "custody-manager").Object, "spec", "template", "spec", "volumes")
		if b, _ := json.Marshal(vols); !bytes.Contains(b, []byte("custody-dataplane-master")) || !bytes.Contains(b, []byte("custody-dataplane-client")) {
			t.Errorf("the manager does not mount the data plane's Secrets: %s", b)
		}
		if gw := find(objs, "Deployment", "custody-gateway"); gw != nil {
			if b, _ := json.Marshal(gw.Object); bytes.Contains(b, []byte("dataplane")) {
				t.Error("the gateway mounts the data plane's Secrets; only the manager may")
			}
		}
	})
	t.Run("image digest and config", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(cfg, []byte("manager:\n  image:\n    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n  config:\n    claimPolicy:\n      coolingOff: 24h\n  kubeAPI: {qps: 50, burst: 100}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		objs := mustRender(t, "-f", cfg)
		dep := find(objs, "Deployment", "custody-manager")
		cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
		img := cs[0].(map[string]any)["image"].(string)
		if img != "ghcr.io/custody-dev/custody-manager@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" {
			t.Errorf("image %q", img)
		}
		args := containerArgs(t, objs, "custody-manager")
		for _, want := range []string{"--config=/etc/custody-manager/config.yaml", "--kube-api-qps=50", "--kube-api-burst=100"} {
			if !slices.Contains(args, want) {
				t.Errorf("manager args %v lack %s", args, want)
			}
		}
		cm := find(objs, "ConfigMap", "custody-manager-config")
		if data, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml"); !strings.Contains(data, "coolingOff: 24h") {
			t.Errorf("the manager's config is %q", data)
		}
	})
	t.Run("monitoring", func(t *testing.T) {
		objs := mustRender(t, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true")
		// The PrometheusRule holds exactly the groups promtool checks in
		// config/prometheus, Prometheus's templates untouched by Helm.
		rule := find(objs, "PrometheusRule", "custody")
		if rule == nil {
			t.Fatal("no PrometheusRule")
		}
		src, err := os.ReadFile(filepath.Join(root, "config", "prometheus", "custody.rules.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := decode(src)
		if err != nil {
			t.Fatal(err)
		}
		got, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
		wantGroups, _, _ := unstructured.NestedSlice(want[0].Object, "groups")
		if len(wantGroups) == 0 || !reflect.DeepEqual(got, wantGroups) {
			t.Errorf("the PrometheusRule's groups differ from config/prometheus/custody.rules.yaml:\n%v\n%v", got, wantGroups)
		}
		dash, err := os.ReadFile(filepath.Join(root, "config", "grafana", "custody.json"))
		if err != nil {
			t.Fatal(err)
		}
		cm := find(objs, "ConfigMap", "custody-grafana-dashboard")
		if data, _, _ := unstructured.NestedString(cm.Object, "data", "custody.json"); data != strings.TrimSuffix(string(dash), "\n") || cm.GetLabels()["grafana_dashboard"] != "1" {
			t.Errorf("the dashboard ConfigMap does not hold config/grafana/custody.json for the sidecar (labels %v)", cm.GetLabels())
		}
		for _, c := range []string{"manager", "gateway"} {
			if find(objs, "ServiceMonitor", "custody-"+c) == nil || find(objs, "Service", "custody-"+c+"-metrics") == nil {
				t.Errorf("no ServiceMonitor and metrics Service for the %s", c)
			}
		}
	})
	for _, bad := range [][]string{
		{"--set", "manager.replicas=two"},
		{"--set", "gateway.service.type=Public"},
		{"--set", "manager.image.digest=latest"},
		{"--set", "manager.replicas=-1"},
		{"--set", "webhook.port=99999"},
		{"--set", "no.such.value=1"},
	} {
		if _, err := render(t, bad...); err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
			t.Errorf("%v: rendered, or failed for another reason than the schema: %v", bad, err)
		}
	}
}

func objectsOf(objs []*unstructured.Unstructured) []map[string]any {
	out := make([]map[string]any, len(objs))
	for i, o := range objs {
		out[i] = o.Object
	}
	return out
}

// containerArgs returns the first container's args of a Deployment.
func containerArgs(t *testing.T, objs []*unstructured.Unstructured, name string) []string {
	t.Helper()
	dep := find(objs, "Deployment", name)
	if dep == nil {
		t.Fatalf("no Deployment %s", name)
	}
	cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	var args []string
	for _, a := range cs[0].(map[string]any)["args"].([]any) {
		args = append(args, a.(string))
	}
	return args
}

// TestChartGatewayReadyOnlyWithItsCache: the gateway answers devices 503
// until its Device cache has synced, and says so on /readyz (its metrics
// port). A readiness probe on the HTTPS socket is ready at once, so a new
// replica in a rollout or scale-up takes devices it can only refuse.
func TestChartGatewayReadyOnlyWithItsCache(t *testing.T) {
	dep := find(mustRender(t), "Deployment", "custody-gateway")
	cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	probe, _, _ := unstructured.NestedMap(cs[0].(map[string]any), "readinessProbe")
	if path, _, _ := unstructured.NestedString(probe, "httpGet", "path"); path != "/readyz" {
		t.Errorf("the gateway's readiness probe is %v, not /readyz", probe)
	}
}

// TestChartRefusesWebhooksWithoutACA: with webhook.certManager.enabled=false
// nothing fills in the webhooks' caBundle but the value; rendered without it,
// every Device, Claim and Tenant write fails at the API server.
func TestChartRefusesWebhooksWithoutACA(t *testing.T) {
	if _, err := render(t, "--set", "webhook.certManager.enabled=false"); err == nil {
		t.Error("webhooks without cert-manager and without webhook.caBundle rendered")
	}
}

// TestChartRefusesAnnotationsThatAreNotStrings: `prometheus.io/port: 8080`
// or `x: y` in a values file is a number or a boolean to YAML, which the
// API server refuses as an annotation only at apply time. The schema is
// there to refuse a mistyped value before anything is applied.
func TestChartRefusesAnnotationsThatAreNotStrings(t *testing.T) {
	for _, v := range []string{
		"manager:\n  podAnnotations:\n    prometheus.io/port: 8080\n",
		"gateway:\n  podAnnotations:\n    sidecar.istio.io/inject: false\n",
		"gateway:\n  service:\n    annotations:\n      x: y\n",
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := render(t, "-f", f); err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
			t.Errorf("%q: rendered, or failed for another reason than the schema: %v", v, err)
		}
	}
}

// TestChartRefusesTwoActiveManagers: without leader election every replica
// decides claims and approves certificates; the chart refuses it with more
// than one replica, and names the values to change.
func TestChartRefusesTwoActiveManagers(t *testing.T) {
	if _, err := render(t, "--set", "manager.leaderElect=false"); err == nil || !strings.Contains(err.Error(), "manager.replicas=1") {
		t.Errorf("two managers without leader election rendered, or the error does not say what to change: %v", err)
	}
	objs := mustRender(t, "--set", "manager.leaderElect=false", "--set", "manager.replicas=1", "--set", "manager.kubeAPI.qps=2.5")
	args := containerArgs(t, objs, "custody-manager")
	if slices.Contains(args, "--leader-elect") || !slices.Contains(args, "--kube-api-qps=2.5") {
		t.Errorf("manager args %v", args)
	}
	if _, err := render(t, "--set", "manager.kubeAPI.qps=fast"); err == nil {
		t.Error("manager.kubeAPI.qps=fast rendered")
	}
}
