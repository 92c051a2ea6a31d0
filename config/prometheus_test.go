package config

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/custody-dev/custody/internal/testtools"
)

// TestAlertRules checks the alert rules with Prometheus's own promtool:
// the file is valid, and its unit tests (each alert fires on the series
// that should raise it, with its labels and text, and stays quiet
// otherwise) pass.
func TestAlertRules(t *testing.T) {
	promtool := testtools.Need(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "custody.rules.yaml"},
		{"test", "rules", "custody.rules.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...) //nolint:gosec // fixed arguments
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestMonitoringNamesRealMetrics finds every custody_* metric the alert
// rules and the Grafana dashboard query, and checks that the code declares
// it: a renamed metric must not leave an alert that can never fire.
func TestMonitoringNamesRealMetrics(t *testing.T) {
	declared := map[string]bool{}
	decl := regexp.MustCompile(`(?:Name:\s*|NewDesc\()\s*"(custody_[a-z0-9_]+)"`)
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "hack" || d.Name() == "test") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path) //nolint:gosec // the repository's own files
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
			declared[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(declared) < 10 {
		t.Fatalf("found only %d declared metrics: %v", len(declared), declared)
	}
	used := regexp.MustCompile(`custody_[a-z0-9_]+`)
	files, _ := filepath.Glob(filepath.Join("grafana", "*.json"))
	files = append(files, filepath.Join("prometheus", "custody.rules.yaml"))
	var checked []string
	for _, f := range files {
		src, err := os.ReadFile(f) //nolint:gosec // the repository's own files
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range used.FindAllString(string(src), -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && declared[b] {
					base = b
				}
			}
			// Label values such as custody_dataplane… in prose are names
			// too: every custody_ word must be a metric.
			if !declared[base] {
				t.Errorf("%s queries %s, which no code declares", f, name)
			}
			if !slices.Contains(checked, base) {
				checked = append(checked, base)
			}
		}
	}
	if len(checked) < 8 {
		t.Errorf("the rules and dashboards query only %v", checked)
	}
}
