package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custody-dev/custody/pkg/protocol"
)

// A keep-alive Session sends its heartbeats on one connection; the
// Client's own Heartbeat opens a connection (and a TLS handshake) for each.
func TestSessionReusesItsConnection(t *testing.T) {
	var conns, heartbeats atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != protocol.PathHeartbeat || r.TLS == nil || len(r.TLS.PeerCertificates) != 1 {
			http.Error(w, "want a heartbeat with a client certificate", http.StatusBadRequest)
			return
		}
		heartbeats.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c := &Client{BaseURL: srv.URL, RootCAs: pool}
	cert := selfSigned(t)
	ctx := context.Background()
	hb := protocol.HeartbeatRequest{FirmwareVersion: "1", State: "ok"}

	s := c.KeepAlive(cert)
	for range 5 {
		if err := s.Heartbeat(ctx, hb); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if got := conns.Load(); got != 1 {
		t.Fatalf("5 keep-alive heartbeats used %d connections, want 1", got)
	}
	for range 3 {
		if err := c.Heartbeat(ctx, cert, hb); err != nil {
			t.Fatal(err)
		}
	}
	if got := conns.Load(); got != 4 {
		t.Fatalf("3 heartbeats without keep-alive opened %d connections, want 3", got-1)
	}
	if heartbeats.Load() != 8 {
		t.Fatalf("server saw %d heartbeats, want 8", heartbeats.Load())
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "SN-1"}, NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<33, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
