package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// TestDashboardsMatchGrafanaSchema reads every dashboard in config/grafana
// strictly (an unknown field fails) into the Grafana Foundation SDK's
// types, which are generated from Grafana's dashboard schema, and
// validates it; its panels' queries go to the dashboard's Prometheus data
// source variable. test/prometheus runs every query against a real
// Prometheus.
func TestDashboardsMatchGrafanaSchema(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	files, err := filepath.Glob(filepath.Join("grafana", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in config/grafana: %v", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f) //nolint:gosec // the repository's own files
		if err != nil {
			t.Fatal(err)
		}
		d := &dashboard.Dashboard{} //nolint:staticcheck // the classic model hack/dashboard writes (see there)
		if err := strict(d.UnmarshalJSONStrict(raw)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		// The strict reading refuses what the schema does not have.
		var doc map[string]any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		doc["panels"].([]any)[1].(map[string]any)["gridPoss"] = map[string]any{"h": 1}
		bad, _ := json.Marshal(doc)
		if err := strict((&dashboard.Dashboard{}).UnmarshalJSONStrict(bad)); err == nil { //nolint:staticcheck // as above
			t.Fatal("a panel with a misspelt field passed the strict reading")
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.Uid == nil || *d.Uid == "" || d.Title == nil {
			t.Errorf("%s has no uid or title", f)
		}
		// The SDK's strict reading of a panel that has no error returns
		// an empty error, so the dashboard above holds no panels (it does
		// report a panel's errors): read and validate each panel here.
		var raws struct {
			Panels []json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(raw, &raws); err != nil {
			t.Fatal(err)
		}
		queries := 0
		for i, pr := range raws.Panels {
			var kind struct{ Type string }
			if err := json.Unmarshal(pr, &kind); err != nil {
				t.Fatal(err)
			}
			if kind.Type == "row" {
				row := &dashboard.RowPanel{}
				if err := strict(row.UnmarshalJSONStrict(pr)); err != nil {
					t.Errorf("%s: panels[%d]: %v", f, i, err)
				} else if err := row.Validate(); err != nil {
					t.Errorf("%s: panels[%d]: %v", f, i, err)
				}
				continue
			}
			panel := &dashboard.Panel{}
			if err := strict(panel.UnmarshalJSONStrict(pr)); err != nil {
				t.Errorf("%s: panels[%d]: %v", f, i, err)
				continue
			}
			if err := panel.Validate(); err != nil {
				t.Errorf("%s: panels[%d]: %v", f, i, err)
			}
			if panel.Datasource == nil || panel.Datasource.Uid == nil || *panel.Datasource.Uid != "${datasource}" {
				t.Errorf("%s: panel %q does not query the dashboard's data source", f, deref(panel.Title))
			}
			if len(panel.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, deref(panel.Title))
			}
			queries += len(panel.Targets)
		}
		if queries < 10 {
			t.Errorf("%s: only %d queries", f, queries)
		}
	}
}

// strict turns the SDK's empty BuildErrors (a non-nil error holding
// nothing) into nil.
func strict(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// TestDashboardTargetsHaveQueries: the SDK reads a panel's targets as
// untyped data queries, so the strict reading passes a target whose expr
// is misspelt ("exprr") and Grafana shows an empty panel. Each target of
// every panel must carry a PromQL expression under "expr".
func TestDashboardTargetsHaveQueries(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("grafana", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in config/grafana: %v", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f) //nolint:gosec // the repository's own files
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Type    string           `json:"type"`
				Title   string           `json:"title"`
				Targets []map[string]any `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		for _, p := range d.Panels {
			for i, tg := range p.Targets {
				if e, _ := tg["expr"].(string); e == "" {
					t.Errorf("%s: panel %q target %d has no expr: %v", f, p.Title, i, tg)
				}
			}
		}
	}
}
