package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// requireOpenSSL returns the openssl binary, skipping the test without it.
func requireOpenSSL(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed")
	}
	return path
}

// enrolledDevice claims a new device for tn and enrols it through the
// gateway: its certificate comes from the real stack (proof, approval,
// cert-manager's CA issuer).
func enrolledDevice(t testing.TB, g *gw, tn *custodyv1alpha1.Tenant) *tls.Certificate {
	t.Helper()
	rec := newDevice(t)
	agent := newAgent(t, g, rec)
	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	enrollAgent(t, agent)
	c, _ := agent.Certificate()
	return c
}

// TestOpenSSLVerifiesDevicesWithTheTenantBundleOnly: a device certificate
// issued through the real stack verifies with plain `openssl verify
// -CAfile <its tenant's bundle>` (no -partial_chain) and fails with another
// tenant's bundle; an `openssl s_server -Verify 1` configured only with
// tenant A's bundle accepts A's device as a TLS client and refuses B's.
func TestOpenSSLVerifiesDevicesWithTheTenantBundleOnly(t *testing.T) {
	openssl := requireOpenSSL(t)
	startManager(t)
	g := startGateway(t)
	a, b := newTenant(t), newTenant(t)
	certA, certB := enrolledDevice(t, g, a), enrolledDevice(t, g, b)
	bundleA, bundleB := writeTemp(t, "a.pem", trustBundle(t, a)), writeTemp(t, "b.pem", trustBundle(t, b))
	leafA := writeTemp(t, "device-a.crt", string(pemCert(certA.Certificate[0])))
	leafB := writeTemp(t, "device-b.crt", string(pemCert(certB.Certificate[0])))

	verify := func(bundle, leaf string) (string, error) {
		out, err := exec.Command(openssl, "verify", "-purpose", "sslclient", "-CAfile", bundle, leaf).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		bundle, leaf string
		ok           bool
	}{{bundleA, leafA, true}, {bundleB, leafB, true}, {bundleB, leafA, false}, {bundleA, leafB, false}} {
		out, err := verify(tc.bundle, tc.leaf)
		if tc.ok && err != nil {
			t.Fatalf("openssl verify -CAfile %s %s: %v\n%s", tc.bundle, tc.leaf, err, out)
		}
		if !tc.ok && err == nil {
			t.Fatalf("openssl verify accepted %s under another tenant's bundle %s:\n%s", tc.leaf, tc.bundle, out)
		}
	}

	// A standard TLS server with tenant A's bundle as its only client CA.
	addr := startSServer(t, openssl, bundleA)
	if err := tlsGet(addr, certA); err != nil {
		t.Fatalf("openssl s_server refused tenant A's device: %v", err)
	}
	if err := tlsGet(addr, certB); err == nil {
		t.Fatal("openssl s_server configured with tenant A's bundle accepted tenant B's device")
	}
	// The server is still up: the refusal was B's certificate.
	if err := tlsGet(addr, certA); err != nil {
		t.Fatalf("openssl s_server refused tenant A's device after refusing B's: %v", err)
	}
}

// startSServer runs `openssl s_server -www -Verify 1 -CAfile bundle` on an
// ephemeral port of 127.0.0.1 with a throwaway server certificate, and
// returns its address.
func startSServer(t testing.TB, openssl, bundle string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeTemp(t, "server.crt", string(pemCert(der)))
	keyFile := writeTemp(t, "server.key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, openssl, "s_server", "-accept", "127.0.0.1:0", "-cert", certFile, "-key", keyFile,
		"-Verify", "1", "-CAfile", bundle, "-www")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
				addr <- a
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("openssl s_server did not start")
	}
	return ""
}

// tlsGet presents cert to the server at addr and reads its answer to a
// GET: an error if the server refuses the client certificate.
func tlsGet(addr string, cert *tls.Certificate) error {
	conn, err := tls.DialWithDialer(&netDialer, "tcp", addr, &tls.Config{
		Certificates:       []tls.Certificate{*cert},
		InsecureSkipVerify: true, //nolint:gosec // the server's identity is not under test
		MinVersion:         tls.VersionTLS12,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "HTTP/1.0 200") {
		return io.ErrUnexpectedEOF
	}
	return nil
}

var netDialer = net.Dialer{Timeout: 10 * time.Second}
