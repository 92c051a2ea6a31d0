package controlplane

import (
	"strings"
	"testing"
)

// TestWebhookConditionsNameTheManager: the match conditions that spare
// the Device webhook the manager's updates, and the Claim webhook the
// manager's status writes, name the identity the manager runs as here (and
// in config/default), and nothing else: a condition naming anyone else
// would spare the webhooks requests they must see (the gateway's status
// writes, anyone else's record of a verified code).
func TestWebhookConditionsNameTheManager(t *testing.T) {
	_, validating, err := Webhooks()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"vdevice.custody.dev": {"request.operation == 'UPDATE'"},
		"vclaim.custody.dev":  {"request.subResource == 'status'"},
	}
	for _, cfg := range validating {
		for _, w := range cfg.Webhooks {
			parts, ok := want[w.Name]
			if !ok {
				if len(w.MatchConditions) != 0 {
					t.Errorf("webhook %s has match conditions", w.Name)
				}
				continue
			}
			delete(want, w.Name)
			if len(w.MatchConditions) != 1 {
				t.Errorf("webhook %s: %d match conditions, want 1", w.Name, len(w.MatchConditions))
				continue
			}
			e := w.MatchConditions[0].Expression
			for _, p := range append(parts, "!(", "request.userInfo.username == '"+ManagerUsername+"')") {
				if !strings.Contains(e, p) {
					t.Errorf("webhook %s: condition %q lacks %q", w.Name, e, p)
				}
			}
			if strings.Count(e, "username") != 1 {
				t.Errorf("webhook %s: condition %q names more than the manager", w.Name, e)
			}
		}
	}
	for name := range want {
		t.Errorf("no webhook %s", name)
	}
}
