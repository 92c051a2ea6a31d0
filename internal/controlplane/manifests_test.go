package controlplane

import (
	"strings"
	"testing"
)

// TestDeviceWebhookConditionsNameOurIdentities: the match conditions that
// spare the Device webhook the manager's updates and non-gateway status
// writes name the identities the manager and gateway run as here (and in
// config/default); a condition naming anyone else would send the webhook
// requests it need not see, or spare it ones it must.
func TestDeviceWebhookConditionsNameOurIdentities(t *testing.T) {
	_, validating, err := Webhooks()
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, cfg := range validating {
		for _, w := range cfg.Webhooks {
			if w.Name != "vdevice.custody.dev" {
				if len(w.MatchConditions) != 0 {
					t.Errorf("webhook %s has match conditions", w.Name)
				}
				continue
			}
			for _, c := range w.MatchConditions {
				exprs = append(exprs, c.Expression)
			}
		}
	}
	if len(exprs) != 2 {
		t.Fatalf("Device webhook match conditions: %q, want 2", exprs)
	}
	if !strings.Contains(exprs[0], "'"+ManagerUsername+"'") || !strings.Contains(exprs[0], "request.operation == 'UPDATE'") {
		t.Errorf("first condition %q does not spare the manager's (%s) updates only", exprs[0], ManagerUsername)
	}
	if !strings.Contains(exprs[1], "'"+GatewayUsername+"'") || !strings.Contains(exprs[1], "'status'") {
		t.Errorf("second condition %q does not keep the gateway's (%s) status writes", exprs[1], GatewayUsername)
	}
}
