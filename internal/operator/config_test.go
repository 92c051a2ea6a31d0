package operator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
)

func write(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	key := write(t, "key", strings.Repeat("k", 32))
	cfg := write(t, "config.yaml", `
claimPolicy:
  coolingOff:
    period: 72h
  saleRecordProof: Forbidden
models:
  XR200:
    requiredProof: Possession
notifications:
- name: erp
  url: https://erp.example/custody
  signingKeyFile: `+key+`
`)
	opts := controllers.Options{} // custody-dev starts from the defaults
	if err := LoadConfig(cfg, &opts); err != nil {
		t.Fatal(err)
	}
	p := opts.ClaimPolicy
	if p.CoolingOff != 72*time.Hour || p.ImmediateProof != custodyv1alpha1.RequiredProofCodeAndPossession || !p.SaleRecordForbidden || p.MaxFailedAttempts != 5 {
		t.Fatalf("operator policy %+v", p)
	}
	if opts.ModelPolicies["XR200"].RequiredProof != custodyv1alpha1.RequiredProofPossession {
		t.Fatal("model policy not loaded")
	}
	if len(opts.Notifications) != 1 || opts.Notifications[0].URL != "https://erp.example/custody" || len(opts.Notifications[0].SigningKey) != 32 {
		t.Fatalf("notifications %+v", opts.Notifications)
	}
}

func TestLoadConfigRefusesMistakes(t *testing.T) {
	short := write(t, "short", "too short")
	for name, tc := range map[string]struct{ yaml, want string }{
		"misspelt field":   {"claimPolicy:\n  coolingof: {period: 1h}\n", "unknown field"},
		"http endpoint":    {"notifications:\n- {name: erp, url: http://erp.example/, signingKeyFile: " + short + "}\n", "https://"},
		"short key":        {"notifications:\n- {name: erp, url: https://erp.example/, signingKeyFile: " + short + "}\n", "at least 32 bytes"},
		"lower-case model": {"models:\n  xr200: {requiredProof: Code}\n", "upper case"},
		"long cooling-off": {"claimPolicy:\n  coolingOff: {period: 1000h}\n", "between 1m and 720h"},
	} {
		opts := controllers.Options{ClaimPolicy: claim.DefaultPolicy}
		err := LoadConfig(write(t, "c.yaml", tc.yaml), &opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}
