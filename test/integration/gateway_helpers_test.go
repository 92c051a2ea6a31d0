package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/gateway"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// gw is a running custody-gateway, serving TLS on 127.0.0.1 as the
// gateway's own user with the RBAC shipped in config/rbac.
type gw struct {
	URL   string
	Clock *offsetClock
	srv   *httptest.Server
	// Challenges is the gateway's issuer, so that tests can mint tokens as
	// a replica would.
	Challenges *challenge.Issuer
	// Metrics is the registry of the gateway's metrics.
	Metrics *prometheus.Registry
}

func startGateway(t testing.TB, mutate ...func(*gateway.Options)) *gw {
	t.Helper()
	cfg, err := cp.GatewayConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	// The gateway's clock follows real time, because the API server stamps
	// proofs and cert-manager dates certificates with it; tests move it
	// forward to expire challenges without sleeping.
	clk := &offsetClock{}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	iss, err := challenge.NewIssuer([][]byte{key}, 5*time.Minute, clk)
	if err != nil {
		t.Fatal(err)
	}
	var g *gateway.Gateway
	cache, err := gateway.NewCache(cfg, cp.Scheme, cp.OperatorNamespace, func(err error) { g.WatchError(err) })
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts := gateway.Options{Client: c, Cache: cache, Challenges: iss, Namespace: cp.OperatorNamespace, Clock: clk, Log: testLogger.WithName("gateway"),
		PerClientRate: 100000, PerSerialRate: 100000, Registerer: reg}
	for _, f := range mutate {
		f(&opts)
	}
	g, err = gateway.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	var startErr error
	go func() { defer close(stopped); startErr = g.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-stopped
		if startErr != nil {
			t.Errorf("the gateway stopped with: %v", startErr)
		}
	})
	select {
	case <-g.Ready():
	case <-stopped:
		t.Fatalf("the gateway's cache did not start: %v", startErr)
	}
	srv := httptest.NewUnstartedServer(g)
	// An ECDSA P-256 serving certificate, as cert-manager issues the
	// gateway's (httptest's own is RSA).
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{localhostCert(t)}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { dumpProofsOnFailure(t) })
	return &gw{URL: srv.URL, Clock: clk, srv: srv, Challenges: iss, Metrics: reg}
}

// offsetClock is real time plus an offset that tests advance.
type offsetClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *offsetClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// Step moves the clock forward by d.
func (c *offsetClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// client returns a device client that trusts the gateway's certificate.
func (g *gw) client() *device.Client {
	return &device.Client{BaseURL: g.URL, HTTP: g.srv.Client()}
}

// post sends a raw JSON body and returns the status and body, for tests
// that compare answers byte for byte.
func (g *gw) post(t testing.TB, path string, v any) (int, []byte) {
	t.Helper()
	resp, err := g.srv.Client().Post(g.URL+path, "application/json", jsonBody(t, v))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

func jsonBody(t testing.TB, v any) *bytes.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

// newAgent writes a manufactured device's key and identity into a device
// directory and returns its agent.
func newAgent(t testing.TB, g *gw, rec *factory.Record) *device.Agent {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, device.FilePrivateKey), rec.PrivateKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	id, _ := json.Marshal(device.IdentityFile{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model})
	if err := os.WriteFile(filepath.Join(dir, device.FileIdentity), id, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := device.LoadAgent(dir, g.client())
	if err != nil {
		t.Fatal(err)
	}
	a.Firmware = "1.0.0"
	a.Log = testLogger.WithName("device")
	return a
}

// enrollAgent steps the agent until it holds a certificate.
func enrollAgent(t testing.TB, a *device.Agent) {
	t.Helper()
	for i := 0; i < 10; i++ {
		if _, err := a.Step(context.Background()); err != nil {
			t.Fatalf("agent step: %v", err)
		}
		if c, _ := a.Certificate(); c != nil {
			return
		}
	}
	t.Fatal("the agent did not enroll")
}

// trustBundle returns the tenant's published CA bundle.
func trustBundle(t testing.TB, tn *custodyv1alpha1.Tenant) string {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := admin.Get(context.Background(), client.ObjectKey{Namespace: tn.Status.Namespace, Name: controllers.TrustBundleName}, cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data[controllers.TrustBundleKey]
}

// releaseClaim deletes a Claim with policy Release and waits until the
// device is unbound.
func releaseClaim(t testing.TB, cl *custodyv1alpha1.Claim) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), cur); err != nil {
			return err
		}
		cur.Spec.ReleasePolicy = custodyv1alpha1.ReleasePolicyRelease
		return admin.Update(ctx, cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Delete(ctx, cl); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device to be released", func() bool {
		return getDevice(t, cl.DeviceName()).Spec.ClaimRef == nil
	})
}

// identityOf is the identity a device certificate must carry.
func identityOf(serial, tenant, deviceName string) protocol.Identity {
	return protocol.DeriveIdentity(controllers.DefaultTrustDomain, tenant, deviceName, serial)
}

// dumpProofsOnFailure logs every DeviceProof's verdict when a gateway test
// fails, so that a rejected proof says why in the CI log.
func dumpProofsOnFailure(t testing.TB) {
	if !t.Failed() {
		return
	}
	var list custodyv1alpha1.DeviceProofList
	if err := admin.List(context.Background(), &list, client.InNamespace(cp.OperatorNamespace)); err != nil {
		t.Logf("listing DeviceProofs: %v", err)
		return
	}
	for _, p := range list.Items {
		t.Logf("DeviceProof %s (%s, %s): %s %s: %s", p.Name, p.Spec.Purpose, p.Spec.DeviceName, p.Status.Phase, p.Status.Reason, p.Status.Message)
	}
}

// localhostCert is a self-signed ECDSA P-256 serving certificate for
// 127.0.0.1.
func localhostCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "custody-gateway (test)"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
