package v1alpha1_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// troubleshootingPage is the page that explains, by symptom, every reason
// and condition a user meets.
var troubleshootingPage = filepath.Join("..", "..", "docs", "troubleshooting.md")

// reasonOrCondition matches the names of the API's condition types and
// reasons: ClaimReasonBound, TenantConditionNamespaceReady, ConditionReady.
var reasonOrCondition = regexp.MustCompile(`^(Claim|Tenant|Device|DeviceProof|Transfer|DataAccess)?(Reason|Condition)[A-Z]|^ConditionReady$`)

// apiStringConstants returns the string constants of this package's
// *_types.go files whose names match re, name to value, read from the
// source so that a new constant is found without a list to update.
func apiStringConstants(t *testing.T, re *regexp.Regexp) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*_types.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no *_types.go files: %v", err)
	}
	out := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
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
					if !re.MatchString(name.Name) || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						continue
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out[name.Name] = v
				}
			}
		}
	}
	return out
}

// TestTroubleshootingNamesEveryReason keeps docs/troubleshooting.md true
// to the API: every condition type and reason a Claim, Tenant, Device,
// DeviceProof, Transfer or DataAccess can carry is named on the page, in
// backticks as a user sees it in kubectl's output. A new reason without
// troubleshooting text fails here.
func TestTroubleshootingNamesEveryReason(t *testing.T) {
	page, err := os.ReadFile(troubleshootingPage)
	if err != nil {
		t.Fatal(err)
	}
	consts := apiStringConstants(t, reasonOrCondition)
	claimReasons := 0
	for name := range consts {
		if strings.HasPrefix(name, "ClaimReason") {
			claimReasons++
		}
	}
	// The parse found the constants it is meant to check.
	if claimReasons < 20 || consts["ClaimReasonNotVerified"] != "ClaimNotVerified" || consts["ConditionReady"] != "Ready" {
		t.Fatalf("found %d Claim reasons, ClaimReasonNotVerified=%q: the parse of the API's constants is broken", claimReasons, consts["ClaimReasonNotVerified"])
	}
	for name, v := range consts {
		if !strings.Contains(string(page), "`"+v+"`") {
			t.Errorf("%s (%q) is not named in %s: say what a user who sees it should do", name, v, troubleshootingPage)
		}
	}
}
