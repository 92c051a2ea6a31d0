package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/custody-dev/custody/pkg/protocol"
)

// fakeGateway answers NotBound to the first notBound enrollments, then
// issues a 24 h certificate for the CSR; it accepts every heartbeat, and
// answers failWith (a status) to every challenge when set.
type fakeGateway struct {
	srv         *httptest.Server
	notBound    atomic.Int64
	failWith    atomic.Int64
	heartbeats  atomic.Int64
	possessions atomic.Int64
	now         time.Time
}

func newFakeGateway(t *testing.T, now time.Time) *fakeGateway {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	g := &fakeGateway{now: now}
	answer := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	var serial atomic.Int64
	g.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case protocol.PathChallenge:
			if s := g.failWith.Load(); s != 0 {
				answer(w, int(s), protocol.Error{Code: protocol.ErrUnavailable, Message: "down"})
				return
			}
			answer(w, http.StatusOK, protocol.ChallengeResponse{Challenge: "c"})
		case protocol.PathEnroll:
			if g.notBound.Add(-1) >= 0 {
				answer(w, http.StatusConflict, protocol.Error{Code: protocol.ErrNotBound, Message: "not bound"})
				return
			}
			var req protocol.EnrollRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			block, _ := pem.Decode([]byte(req.CSR))
			csr, err := x509.ParseCertificateRequest(block.Bytes)
			if err != nil {
				answer(w, http.StatusBadRequest, protocol.Error{Code: protocol.ErrBadRequest, Message: err.Error()})
				return
			}
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(2 + serial.Add(1)), Subject: csr.Subject, URIs: csr.URIs,
				NotBefore: g.now.Add(-time.Minute), NotAfter: g.now.Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, caKey)
			if err != nil {
				t.Error(err)
				return
			}
			answer(w, http.StatusOK, protocol.EnrollResponse{
				Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
				CA:          string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))})
		case protocol.PathPossession:
			g.possessions.Add(1)
			w.WriteHeader(http.StatusNoContent)
		case protocol.PathHeartbeat:
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
				answer(w, http.StatusForbidden, protocol.Error{Code: protocol.ErrCertificateRefused})
				return
			}
			g.heartbeats.Add(1)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	g.srv.TLS = tlsRequestClientCert()
	g.srv.StartTLS()
	t.Cleanup(g.srv.Close)
	return g
}

func tlsRequestClientCert() *tls.Config { return &tls.Config{ClientAuth: tls.RequestClientCert} }

// infoLines records the messages an agent logs at Info (V(0)) level.
type infoLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *infoLines) add(_, args string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, args)
}

func (l *infoLines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

func (l *infoLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func newTestAgent(t *testing.T, g *fakeGateway, clk *clocktesting.FakeClock) (*Agent, *infoLines) {
	t.Helper()
	dir := t.TempDir()
	key, err := GenerateFileKey(filepath.Join(dir, FilePrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(g.srv.Certificate())
	logs := &infoLines{}
	return &Agent{Dir: dir, Key: key, ID: IdentityFile{SerialNumber: "SN-1", Model: "XR200"}, Client: &Client{BaseURL: g.srv.URL, RootCAs: pool},
		Clock: clk, Log: funcr.New(logs.add, funcr.Options{Verbosity: 0})}, logs
}

// driveClock steps clk whenever the agent waits on it, until done.
func driveClock(clk *clocktesting.FakeClock, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		default:
		}
		if clk.HasWaiters() {
			clk.Step(time.Minute)
		}
		time.Sleep(time.Millisecond) // yield to the agent; no behaviour is timed by it
	}
}

// A device that enrols before its owner's Claim has bound is told
// NotBound: that is a wait, told once at Info as a wait and never as a
// failure, and Once then enrols and sends its one heartbeat.
func TestNotBoundIsAWaitNotAFailure(t *testing.T) {
	now := time.Now()
	g := newFakeGateway(t, now)
	g.notBound.Store(3)
	clk := clocktesting.NewFakeClock(now)
	a, logs := newTestAgent(t, g, clk)
	done := make(chan struct{})
	go driveClock(clk, done)
	err := a.Once(context.Background())
	close(done)
	if err != nil {
		t.Fatalf("Once: %v", err)
	}
	if g.heartbeats.Load() != 1 {
		t.Fatalf("Once sent %d heartbeats, want 1", g.heartbeats.Load())
	}
	if n := logs.count("waiting for the device to be bound"); n != 1 {
		t.Errorf("the wait was told %d times at Info, want once:\n%s", n, logs)
	}
	if n := logs.count("failed"); n != 0 {
		t.Errorf("NotBound was logged as a failure:\n%s", logs)
	}
	for _, want := range []string{`"enrolled"`, `"heartbeat accepted"`} {
		if logs.count(want) != 1 {
			t.Errorf("want one Info line %s:\n%s", want, logs)
		}
	}
}

// A real error is still a failure: logged as one, and Once stops at it.
func TestRealErrorsStillFail(t *testing.T) {
	now := time.Now()
	g := newFakeGateway(t, now)
	g.failWith.Store(http.StatusInternalServerError)
	a, logs := newTestAgent(t, g, clocktesting.NewFakeClock(now))
	err := a.Once(context.Background())
	if err == nil || !IsCode(err, protocol.ErrUnavailable) {
		t.Fatalf("Once = %v, want the gateway's error", err)
	}
	if logs.count("step failed") != 1 {
		t.Fatalf("the failure was not logged as one:\n%s", logs)
	}
}

// Heartbeats are told at Info when they start and once an hour after
// that; in between they are V(1).
func TestHeartbeatsAreToldOnChangeAndHourly(t *testing.T) {
	now := time.Now()
	g := newFakeGateway(t, now)
	clk := clocktesting.NewFakeClock(now)
	a, logs := newTestAgent(t, g, clk)
	ctx := context.Background()
	if _, err := a.Step(ctx); err != nil { // enrols
		t.Fatal(err)
	}
	for range 30 {
		if _, err := a.Step(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Step(time.Minute)
	}
	if got := logs.count("heartbeat accepted"); got != 1 {
		t.Fatalf("30 heartbeats in 30 minutes made %d Info lines, want 1:\n%s", got, logs)
	}
	clk.Step(time.Hour)
	if _, err := a.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if got := logs.count("heartbeat accepted"); got != 2 || logs.count(`"heartbeats"=31`) != 1 {
		t.Fatalf("an hour later, want a second Info line counting 31 heartbeats:\n%s", logs)
	}
	if g.heartbeats.Load() != 31 {
		t.Fatalf("gateway saw %d heartbeats, want 31", g.heartbeats.Load())
	}
	if _, err := os.Stat(filepath.Join(a.Dir, FileCertificate)); err != nil {
		t.Fatal(err)
	}
}

// A paired device waits, enrolling again, until its owner's Claim binds:
// the proof and the wait are told once, not at every retry.
func TestAPairedDeviceTellsItsWaitOnce(t *testing.T) {
	now := time.Now()
	g := newFakeGateway(t, now)
	g.notBound.Store(3)
	clk := clocktesting.NewFakeClock(now)
	a, logs := newTestAgent(t, g, clk)
	if err := os.WriteFile(filepath.Join(a.Dir, FilePairing), []byte("ABCD1234"), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go driveClock(clk, done)
	err := a.Once(context.Background())
	close(done)
	if err != nil {
		t.Fatalf("Once: %v", err)
	}
	if logs.count("sent its proof of possession") != 1 || logs.count("waiting for the device to be bound") != 1 || logs.count("failed") != 0 {
		t.Fatalf("want one proof and one wait at Info, no failure:\n%s", logs)
	}
}

// A paired device proves possession once, and does not prove it again at
// the retries while its owner's Claim binds: a second proof would only
// find that Claim confirmed already (a DeviceProof Rejected for nothing).
// Still not bound reproveAfter after the proof, it proves again (the
// proof may have been lost).
func TestAPairedDeviceProvesOnceWhileItsClaimBinds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		notBound int64
		proofs   int64
	}{
		{"bound a few retries later", 3, 1},
		{"not bound long after the proof", 1000, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			g := newFakeGateway(t, now)
			g.notBound.Store(tc.notBound)
			clk := clocktesting.NewFakeClock(now)
			a, _ := newTestAgent(t, g, clk)
			if err := os.WriteFile(filepath.Join(a.Dir, FilePairing), []byte("ABCD1234"), 0o600); err != nil {
				t.Fatal(err)
			}
			// Steps, each after the wait the last one asked for, until the
			// device is enrolled or 3 minutes have passed (the agent's
			// back-off between NotBound answers grows meanwhile).
			for cert, _ := a.Certificate(); cert == nil && clk.Since(now) <= 3*time.Minute; cert, _ = a.Certificate() {
				next, _ := a.Step(context.Background())
				clk.Step(next)
			}
			if n := g.possessions.Load(); n != tc.proofs {
				t.Fatalf("%d proofs of possession, want %d", n, tc.proofs)
			}
		})
	}
}

// A device given a new pairing code (field staff entered a wrong one
// first) proves it at once, not after reproveAfter.
func TestANewPairingCodeIsProvedAtOnce(t *testing.T) {
	now := time.Now()
	g := newFakeGateway(t, now)
	g.notBound.Store(1000)
	clk := clocktesting.NewFakeClock(now)
	a, logs := newTestAgent(t, g, clk)
	ctx := context.Background()
	for i, code := range []string{"ABCD1234", "ABCD1234", "EFGH5678", "EFGH5678"} {
		if err := os.WriteFile(filepath.Join(a.Dir, FilePairing), []byte(code), 0o600); err != nil {
			t.Fatal(err)
		}
		next, _ := a.Step(ctx)
		clk.Step(next)
		if want := int64(1 + i/2); g.possessions.Load() != want {
			t.Fatalf("step %d (code %s): %d proofs, want %d", i+1, code, g.possessions.Load(), want)
		}
	}
	// The new code's proof is told at Info although the device waits.
	if n := logs.count("sent its proof of possession"); n != 2 {
		t.Fatalf("%d proofs told at Info, want 2 (each code's):\n%s", n, logs)
	}
}
