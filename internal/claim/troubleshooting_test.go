package claim_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
)

// TestTroubleshootingQuotesEveryClaimMessage keeps docs/troubleshooting.md
// true to what Claims say: every message a Claim's condition or Event can
// carry (the Msg constants of decide.go, read from the source so that a new
// one is found, and MsgProofRequired's) is quoted on the page word for word.
// A message with %s is quoted with something in its place: each fixed part
// must be there. Line breaks and runs of spaces on the page count as one
// space.
func TestTroubleshootingQuotesEveryClaimMessage(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	page := strings.Join(strings.Fields(string(raw)), " ")

	msgs := map[string]string{}
	file, err := parser.ParseFile(token.NewFileSet(), "decide.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range file.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Msg") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				if msgs[name.Name], err = strconv.Unquote(lit.Value); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The parse found what it is meant to check.
	if len(msgs) < 20 || msgs["MsgNotVerified"] != claim.MsgNotVerified || msgs["MsgTransferred"] != claim.MsgTransferred {
		t.Fatalf("found %d messages: the parse of decide.go is broken", len(msgs))
	}
	for _, p := range []custodyv1alpha1.RequiredProof{custodyv1alpha1.RequiredProofCode, custodyv1alpha1.RequiredProofPossession, custodyv1alpha1.RequiredProofCodeAndPossession} {
		msgs["MsgProofRequired("+string(p)+")"] = claim.MsgProofRequired(p)
	}
	for name, msg := range msgs {
		for _, part := range strings.Split(msg, "%s") {
			if part = strings.TrimSpace(part); part != "" && !strings.Contains(page, part) {
				t.Errorf("%s is not quoted in docs/troubleshooting.md (missing %q)", name, part)
			}
		}
	}
}
