// Package testtools holds the one rule for tests that drive a third-party
// program (promtool, prometheus, skopeo, kubectl, rsvg-convert, zbarimg,
// script): on a developer's machine without it the test is skipped and says
// which Debian package to install; where CUSTODY_REQUIRE_TOOLS is set, as
// .ci/run sets it after installing them, it fails instead, so CI never skips.
package testtools

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv is the variable that turns a missing tool from a skip into a
// failure.
const RequireEnv = "CUSTODY_REQUIRE_TOOLS"

// Need returns the path of program name, from Debian package debPackage,
// or skips or fails t as the package comment says.
func Need(t testing.TB, name, debPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed (Debian package %s)", name, debPackage)
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s and %s is set", msg, RequireEnv)
	}
	t.Skip(msg)
	return ""
}

// FreeAddr returns a 127.0.0.1 address no one listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// BuildCustodyDev builds ./cmd/custody-dev of the repository at root into
// dir and returns the binary's path: tests that run custody-dev as its
// user does run it as a process of its own.
func BuildCustodyDev(t testing.TB, root, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "custody-dev")
	build := exec.Command("go", "build", "-o", bin, "./cmd/custody-dev") //nolint:gosec // the test's own output path
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building custody-dev: %v\n%s", err, out)
	}
	return bin
}
