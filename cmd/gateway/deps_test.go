package main

import (
	"os/exec"
	"strings"
	"testing"
)

// managerPackages are the manager's code: the internet-facing gateway links
// none of it (docs/architecture.md, "Layering"). The gateway shares only the
// device contract (internal/contract), the scheme (internal/scheme), the
// challenge tokens, the API types and pkg/.
var managerPackages = []string{
	"github.com/custody-dev/custody/controllers",
	"github.com/custody-dev/custody/internal/operator",
	"github.com/custody-dev/custody/internal/webhooks",
	"github.com/custody-dev/custody/internal/claim",
	"github.com/custody-dev/custody/internal/claimcode",
	"github.com/custody-dev/custody/internal/history",
	"github.com/custody-dev/custody/internal/custody",
}

// TestGatewayLinksNoManagerCode lists what custody-gateway links (go list
// -deps) and fails if any of it is the manager's.
func TestGatewayLinksNoManagerCode(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the gateway's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output() //nolint:gosec // a fixed command
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != "github.com/custody-dev/custody/cmd/gateway" {
		t.Fatalf("go list -deps did not list custody-gateway's dependencies: %q", out)
	}
	for _, dep := range deps {
		for _, banned := range managerPackages {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("custody-gateway links %s, the manager's code: the gateway may import only the device contract (internal/contract), internal/scheme, internal/challenge, the API types and pkg/", dep)
			}
		}
	}
}
