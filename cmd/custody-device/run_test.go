package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// gateway is a stand-in for custody-gateway: it counts heartbeats and
// answers NotBound to every enrollment.
func gateway(t *testing.T) (url, caFile string, heartbeats *atomic.Int64) {
	t.Helper()
	heartbeats = &atomic.Int64{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case protocol.PathHeartbeat:
			heartbeats.Add(1)
			w.WriteHeader(http.StatusNoContent)
		case protocol.PathChallenge:
			_ = json.NewEncoder(w).Encode(protocol.ChallengeResponse{Challenge: "c"})
		default:
			w.WriteHeader(http.StatusConflict)
			_ = json.NewEncoder(w).Encode(protocol.Error{Code: protocol.ErrNotBound, Message: "not bound"})
		}
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile, heartbeats
}

// newDevice makes a device directory with init and, when enrolled, gives it
// a certificate for its key valid for a day.
func newDevice(t *testing.T, enrolled bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sn-1")
	if err := initDevice(dir, "XR200", "SN-1", "https://claim.example", io.Discard); err != nil {
		t.Fatal(err)
	}
	if !enrolled {
		return dir
	}
	key, err := device.LoadFileKey(filepath.Join(dir, device.FilePrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "SN-1"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, device.FileCertificate), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run --once sends one heartbeat, says so, and returns (exit 0).
func TestRunOnceSendsOneHeartbeatAndExits(t *testing.T) {
	url, ca, heartbeats := gateway(t)
	dir := newDevice(t, true)
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, []string{"run", "--once", "--dir", dir, "--gateway", url, "--gateway-ca", ca}, io.Discard, &stderr); err != nil {
		t.Fatalf("run --once: %v\n%s", err, stderr.String())
	}
	if heartbeats.Load() != 1 {
		t.Fatalf("run --once sent %d heartbeats, want 1", heartbeats.Load())
	}
	if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], `"msg":"heartbeat accepted"`) || !strings.Contains(lines[0], `"device":"XR200/SN-1"`) {
		t.Fatalf("want one log line, the heartbeat, got:\n%s", stderr.String())
	}
}

// run --once on a device nobody has claimed waits for the binding, says
// that is what it waits for (not a failure), and gives up after --wait.
func TestRunOnceGivesUpWaitingForTheBinding(t *testing.T) {
	url, ca, heartbeats := gateway(t)
	dir := newDevice(t, false)
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "--once", "--wait", "100ms", "--dir", dir, "--gateway", url, "--gateway-ca", ca}, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "gave up after --wait 100ms") || !strings.Contains(err.Error(), "not bound to a tenant") {
		t.Fatalf("run --once = %v, want it to give up waiting for the binding", err)
	}
	if heartbeats.Load() != 0 {
		t.Fatal("a device without a certificate sent a heartbeat")
	}
	if !strings.Contains(stderr.String(), "waiting for the device to be bound") || strings.Contains(stderr.String(), "failed") {
		t.Fatalf("want the wait told as a wait, not a failure:\n%s", stderr.String())
	}
}
