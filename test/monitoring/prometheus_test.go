// Package monitoring runs a real Prometheus (Debian's prometheus package)
// against custody-dev, with Custody's alert rules loaded: it scrapes the
// manager's and the gateway's metrics, evaluates every rule without error,
// sees a failed claim counted, and runs every query of the Grafana
// dashboard.
package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/scheme"
	"github.com/custody-dev/custody/internal/testtools"
)

// start runs a command in its own process group, logging to dir/name.log,
// and kills the group when the test ends.
func start(t *testing.T, dir, name string, cmd *exec.Cmd) string {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logs, err := os.Create(logPath) //nolint:gosec // the test's own directory
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		_ = logs.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil { //nolint:gosec // the test's own file
				t.Logf("last lines of %s:\n%s", name, tail(string(b), 30))
			}
		}
	})
	return logPath
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// poll calls cond until it returns "" (done) or the deadline passes, then
// fails with cond's last word.
func poll(t *testing.T, within time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// api calls Prometheus's HTTP API and decodes its data.
func api(base, path string, params url.Values, data any) error {
	resp, err := http.Get(base + path + "?" + params.Encode()) //nolint:noctx,gosec // a local test server
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		Error     string          `json:"error"`
		ErrorType string          `json:"errorType"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: HTTP %d: %w", path, resp.StatusCode, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, body.ErrorType, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func query(base, expr string) ([]sample, error) {
	var d struct {
		Result []sample `json:"result"`
	}
	err := api(base, "/api/v1/query", url.Values{"query": {expr}}, &d)
	return d.Result, err
}

func TestPrometheusScrapesCustodyDev(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run make test (it builds kube-apiserver and etcd with hack/envtest-assets.sh)")
	}
	prometheus := testtools.Need(t, "prometheus", "prometheus")
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := testtools.BuildCustodyDev(t, root, dir)

	data := filepath.Join(dir, "data")
	metrics, health := testtools.FreeAddr(t), testtools.FreeAddr(t)
	start(t, dir, "custody-dev", exec.Command(bin, "--data-dir", data, "--gateway-addr", testtools.FreeAddr(t), //nolint:gosec // the binary just built
		"--metrics-addr", metrics, "--health-addr", health, "--nats-addr", testtools.FreeAddr(t), "--mqtt-addr", testtools.FreeAddr(t)))

	// Prometheus, scraping every second and evaluating the rules every
	// second (their `for:` durations are longer than this test: the rules
	// are evaluated, not expected to fire; promtool's unit tests fire them).
	promAddr := testtools.FreeAddr(t)
	rules := filepath.Join(root, "config", "prometheus", "custody.rules.yaml")
	cfg := map[string]any{
		"global":     map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"rule_files": []string{rules},
		"scrape_configs": []any{map[string]any{
			"job_name": "custody-dev", "static_configs": []any{map[string]any{"targets": []string{metrics}}},
		}},
	}
	cfgYAML, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, cfgYAML, 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, dir, "prometheus", exec.Command(prometheus, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), //nolint:gosec // Debian's prometheus
		"--web.listen-address="+promAddr, "--storage.tsdb.retention.time=1h"))
	base := "http://" + promAddr

	poll(t, 3*time.Minute, "custody-dev to be ready", func() string {
		resp, err := http.Get("http://" + health + "/readyz") //nolint:noctx // a probe
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		return map[bool]string{true: "", false: resp.Status}[resp.StatusCode == http.StatusOK]
	})

	// A Device sold to acme, and a Claim in acme with a wrong code.
	cfgREST, err := clientcmd.BuildConfigFromFlags("", filepath.Join(data, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfgREST, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	code, err := claimcode.Generate()
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := claimcode.NewVerifier(code)
	if err != nil {
		t.Fatal(err)
	}
	tenant := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "Acme"}}
	dev := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: "xr200.sn-0001"}, Spec: custodyv1alpha1.DeviceSpec{
		SerialNumber: "SN-0001", Model: "XR200",
		Identity:  custodyv1alpha1.DeviceIdentity{PublicKey: "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEu57gQdg/K6H6P+Ftu883HJdH2m8d\nMX6Kr+u27316xS9DlauvnpEzkuadAuhxRiKvjb7UTGv6HgTbDP8jEpINYA==\n-----END PUBLIC KEY-----\n"},
		ClaimCode: &custodyv1alpha1.DeviceClaimCode{Verifier: verifier},
	}}
	for _, o := range []client.Object{tenant, dev} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, time.Minute, "tenant acme's namespace", func() string {
		if err := c.Get(ctx, client.ObjectKeyFromObject(tenant), tenant); err != nil {
			return err.Error()
		}
		return map[bool]string{true: "", false: "no namespace yet"}[tenant.Status.Namespace != ""]
	})
	wrong, err := claimcode.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ns := tenant.Status.Namespace
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "code"}, StringData: map[string]string{"code": wrong.String()}}
	claim := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "xr200-sn-0001"}, Spec: custodyv1alpha1.ClaimSpec{
		SerialNumber: "SN-0001", Model: "XR200",
		ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "code", Key: "code"}},
	}}
	for _, o := range []client.Object{secret, claim} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	// Prometheus scrapes custody-dev and sees what happened.
	poll(t, time.Minute, "Prometheus to scrape custody-dev", func() string {
		var d struct {
			ActiveTargets []struct {
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := api(base, "/api/v1/targets", nil, &d); err != nil {
			return err.Error()
		}
		if len(d.ActiveTargets) != 1 || d.ActiveTargets[0].Health != "up" {
			return fmt.Sprintf("targets %+v", d.ActiveTargets)
		}
		return ""
	})
	for _, want := range []struct{ expr, value string }{
		{`custody_claim_failures_total{tenant="acme"}`, "1"},
		{`sum(custody_claim_decisions_total{reason="ClaimNotVerified"})`, "1"},
		{`custody_devices{phase="Available"}`, "1"},
		{`custody_devices{phase="Bound"}`, "0"},
		{`sum(custody_claim_code_verifications_total)`, "1"},
		{`custody_gateway_cache_staleness_seconds`, "0"},
	} {
		poll(t, time.Minute, want.expr+" = "+want.value, func() string {
			res, err := query(base, want.expr)
			if err != nil {
				return err.Error()
			}
			if len(res) != 1 || res[0].Value[1] != want.value {
				return fmt.Sprintf("%+v", res)
			}
			return ""
		})
	}

	// Every rule loads and evaluates without error.
	poll(t, time.Minute, "every alert rule to be evaluated", func() string {
		var d struct {
			Groups []struct {
				Rules []struct {
					Name           string `json:"name"`
					Health         string `json:"health"`
					LastError      string `json:"lastError"`
					LastEvaluation string `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := api(base, "/api/v1/rules", nil, &d); err != nil {
			return err.Error()
		}
		n := 0
		for _, g := range d.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return fmt.Sprintf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
				}
				n++
			}
		}
		if n < 8 {
			return fmt.Sprintf("%d rules loaded", n)
		}
		return ""
	})

	// Every dashboard query runs ($__rate_interval is Grafana's).
	raw, err := os.ReadFile(filepath.Join(root, "config", "grafana", "custody.json")) //nolint:gosec // the repository's own file
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			if _, err := query(base, strings.ReplaceAll(q.Expr, "$__rate_interval", "1m")); err != nil {
				t.Errorf("dashboard panel %q: %v", p.Title, err)
			}
			ran++
		}
	}
	if ran < 10 {
		t.Errorf("ran only %d dashboard queries", ran)
	}
	// The bound-devices panel reads the fleet: 0 bound, 1 Available.
	if res, err := query(base, `sum(custody_devices)`); err != nil || len(res) != 1 || res[0].Value[1] != "1" {
		t.Errorf("sum(custody_devices) = %+v, %v", res, err)
	}
}
