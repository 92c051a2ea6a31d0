package kubectlcustody

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/label"
	"github.com/custody-dev/custody/pkg/protocol"
)

func run(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	// A kubeconfig that points nowhere: these commands must not need the cluster.
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	err := Run(context.Background(), args, Streams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut})
	return out.String(), errOut.String(), err
}

// deviceDir writes a device directory as custody-device init does.
func deviceDir(t *testing.T) (string, *factory.Record) {
	t.Helper()
	rec, err := factory.Manufacture("XR200", "SN-0042")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l := protocol.Label{BaseURL: defaultClaimURL, SerialNumber: "SN-0042", Model: "XR200", Fingerprint: rec.Fingerprint}
	text := "Model:       XR200\nSerial:      SN-0042\nKey:         " + rec.Fingerprint + "\nClaim URL:   " + l.URL() + "\nClaim code:  " + rec.Code.String() + "\n"
	for name, data := range map[string]string{"identity.json": `{"serialNumber":"SN-0042","model":"XR200"}`, "label.txt": text} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, rec
}

func TestLabelFromDirectoryHidesTheCode(t *testing.T) {
	dir, rec := deviceDir(t)
	out, _, err := run(t, "", "label", dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, rec.Code.String()) || !strings.Contains(out, "Claim code:  (under the scratch-off") || !strings.Contains(out, "Key:         "+rec.Fingerprint) {
		t.Fatalf("unexpected label %q", out)
	}
	out, _, err = run(t, "", "label", dir, "--show-code")
	if err != nil || !strings.Contains(out, "Claim code:  "+rec.Code.String()+"\n") {
		t.Fatalf("--show-code: %v %q", err, out)
	}
	svgFile := filepath.Join(t.TempDir(), "label.svg")
	if _, _, err := run(t, "", "label", dir, "--svg", svgFile); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(svgFile) //nolint:gosec // the test's file
	if err != nil {
		t.Fatal(err)
	}
	want, _ := label.SVG(protocol.Label{BaseURL: defaultClaimURL, SerialNumber: "SN-0042", Model: "XR200", Fingerprint: rec.Fingerprint}, rec.Code.String())
	if !bytes.Equal(got, want) {
		t.Fatal("the SVG is not the label custody-device init draws")
	}
	if st, _ := os.Stat(svgFile); st.Mode().Perm() != 0o600 {
		t.Fatalf("the SVG holds the code but is mode %v", st.Mode().Perm())
	}
}

func TestClaimRefusesACodeOnArgvWithoutTheCluster(t *testing.T) {
	for _, args := range [][]string{
		{"claim", "SN-0042", "--model", "XR200", "--code", "SECRET-CODE-1"},
		{"claim", "SN-0042", "--model", "XR200", "--claim-code", "SECRET-CODE-1"},
		{"claim", "SN-0042", "SECRET-CODE-1", "--model", "XR200"},
	} {
		out, errOut, err := run(t, "", args...)
		if err == nil || !strings.Contains(err.Error(), "never taken from the command line") {
			t.Fatalf("%v: %v", args, err)
		}
		if strings.Contains(out+errOut+err.Error(), "SECRET-CODE-1") {
			t.Fatalf("%v: the code was echoed", args)
		}
	}
	// The help offers no way to pass it.
	out, _, _ := run(t, "", "claim", "--help")
	if strings.Contains(out, "--code") {
		t.Fatalf("claim --help mentions a code flag:\n%s", out)
	}
}

// TestClaimRefusesACodeAsTheDeviceArgument: a claim code typed where the
// serial number goes (the likeliest slip: "kubectl custody claim <code>")
// is refused as a code on argv, before stdin is read or the cluster is
// asked, and is not echoed. The webhook would refuse the Claim too, but
// only after the plugin had created the Secret <code>-code (a name the
// API server logs and keeps) and printed the code in the webhook's error.
func TestClaimRefusesACodeAsTheDeviceArgument(t *testing.T) {
	_, rec := deviceDir(t)
	code := rec.Code.String()
	for _, arg := range []string{code, strings.ToLower(code), "xr200." + code, "XR200." + strings.ToLower(code)} {
		args := []string{"claim", arg}
		if !strings.Contains(arg, ".") {
			args = append(args, "--model", "XR200")
		}
		out, errOut, err := run(t, code+"\n", args...)
		if !errors.Is(err, errCodeOnArgv) {
			t.Fatalf("%v: want the code-on-argv refusal, got %v", args, err)
		}
		all := strings.ToLower(out + errOut + err.Error())
		if strings.Contains(all, strings.ToLower(code)) || strings.Contains(all, strings.ToLower(strings.ReplaceAll(code, "-", ""))) {
			t.Fatalf("%v: the code was echoed: %q %q %v", args, out, errOut, err)
		}
	}
}

// TestLabelSVGIsPrivateOverAnExistingFile: --svg FILE holds the claim code
// and is "mode 0600" even when FILE already exists with a looser mode
// (os.WriteFile keeps an existing file's mode).
func TestLabelSVGIsPrivateOverAnExistingFile(t *testing.T) {
	dir, _ := deviceDir(t)
	svgFile := filepath.Join(t.TempDir(), "label.svg")
	if err := os.WriteFile(svgFile, nil, 0o644); err != nil { //nolint:gosec // the loose mode is the test
		t.Fatal(err)
	}
	if err := os.Chmod(svgFile, 0o644); err != nil { //nolint:gosec // the loose mode is the test
		t.Fatal(err)
	}
	if _, _, err := run(t, "", "label", dir, "--svg", svgFile); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(svgFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the SVG holds the code but is mode %v (%v)", st.Mode().Perm(), err)
	}
}

func TestPairingTokenDryRunClientNeedsNoCluster(t *testing.T) {
	out, errOut, err := run(t, "", "pairing-token", "create", "-n", "acme", "--usage-limit", "3", "--serials", "SN-1,SN-2", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Type       string
		Metadata   struct{ Name, Namespace string }
		StringData map[string]string
	}
	if err := yaml.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	tok, err := protocol.ParsePairingToken(strings.TrimSpace(errOut[strings.LastIndex(strings.TrimSpace(errOut), "\n")+1:]))
	if err != nil {
		t.Fatalf("stderr does not end with the token: %q", errOut)
	}
	if s.Type != "custody.dev/pairing-token" || s.Metadata.Namespace != "acme" || s.Metadata.Name != "pairing-token-"+tok.ID ||
		s.StringData["token-secret"] != tok.Secret || s.StringData["usage-limit"] != "3" || s.StringData["allowed-serials"] != "SN-1,SN-2" || tok.Tenant != "acme" {
		t.Fatalf("unexpected Secret %+v for token %+v", s, tok)
	}
}

// TestKrewManifest checks plugins/custody.yaml against what krew requires
// of a Plugin: a name matching the binary, and for each platform a selector,
// an archive URI, its sha256 and the binary's name.
func TestKrewManifest(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "plugins", "custody.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		APIVersion string
		Kind       string
		Metadata   struct{ Name string }
		Spec       struct {
			Version, ShortDescription, Description, Homepage string
			Platforms                                        []struct {
				Selector         struct{ MatchLabels map[string]string }
				URI, Sha256, Bin string
			}
		}
	}
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatal(err)
	}
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" || p.Metadata.Name != "custody" || p.Spec.ShortDescription == "" || p.Spec.Version != "${VERSION}" {
		t.Fatalf("unexpected manifest header %+v", p)
	}
	if len(p.Spec.Platforms) == 0 {
		t.Fatal("no platforms")
	}
	for _, pl := range p.Spec.Platforms {
		os, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		bin := "kubectl-custody"
		if os == "windows" {
			bin += ".exe"
		}
		archive := "kubectl-custody_" + os + "_" + arch + ".tar.gz"
		if pl.Bin != bin || !strings.HasSuffix(pl.URI, "/${VERSION}/"+archive) || pl.Sha256 != "${SHA256_"+os+"_"+arch+"}" {
			t.Fatalf("platform %s/%s: %+v", os, arch, pl)
		}
	}
}
