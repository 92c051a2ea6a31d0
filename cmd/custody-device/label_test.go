package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custody-dev/custody/internal/kubectlcustody"
)

// TestKubectlCustodyReadsTheLabel keeps init's label files and `kubectl
// custody label DIR` in step: the plugin prints what init wrote and redraws
// the same SVG.
func TestKubectlCustodyReadsTheLabel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sn-0007")
	if err := initDevice(dir, "XR200", "SN-0007", "https://claim.example.com", &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(dir, "label.txt")) //nolint:gosec // the test's directory
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	streams := kubectlcustody.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &bytes.Buffer{}}
	if err := kubectlcustody.Run(context.Background(), []string{"label", dir, "--show-code"}, streams); err != nil {
		t.Fatal(err)
	}
	if out.String() != string(text) {
		t.Fatalf("kubectl custody label printed\n%s\ninit wrote\n%s", out.String(), text)
	}
	out.Reset()
	if err := kubectlcustody.Run(context.Background(), []string{"label", dir, "--svg", "-"}, streams); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "label.svg")) //nolint:gosec // the test's directory
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), svg) {
		t.Fatal("kubectl custody label --svg does not redraw init's label.svg")
	}
}
