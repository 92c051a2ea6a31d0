package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/controlplane"
	"github.com/custody-dev/custody/internal/gateway"
)

// startGateway runs the device gateway as the gateway's own user, serving
// TLS with a certificate from the development root CA, and writes its URL
// and CA bundle into the data directory for custody-device. It also writes
// what a separate custody-gateway process needs (kubeconfig, serving
// certificate, challenge key) into <dir>/gateway/, so that the load command
// can run and measure one on its own.
func startGateway(ctx context.Context, cp *controlplane.ControlPlane, dir, addr string, log logr.Logger, done chan<- error) (string, error) {
	cfg, err := cp.GatewayConfig()
	if err != nil {
		return "", err
	}
	kubeconfig, err := cp.Kubeconfig(controlplane.GatewayUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
	if err != nil {
		return "", err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 200, 400
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return "", err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	iss, err := challenge.NewIssuer([][]byte{key}, 5*time.Minute, nil)
	if err != nil {
		return "", err
	}
	cert, caPEM, err := devCertificate(ctx, cp, "custody-gateway (development)", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return "", fmt.Errorf("issuing the gateway's certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", err
	}
	var chainPEM []byte
	for _, der := range cert.Certificate {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	gwDir := filepath.Join(dir, "gateway")
	if err := os.MkdirAll(gwDir, 0o700); err != nil {
		return "", err
	}
	for name, data := range map[string][]byte{
		"kubeconfig":    kubeconfig,
		"tls.crt":       chainPEM,
		"tls.key":       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"challenge.key": key,
	} {
		if err := os.WriteFile(filepath.Join(gwDir, name), data, 0o600); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway-ca.crt"), caPEM, 0o600); err != nil {
		return "", err
	}
	if addr == noGateway {
		// The load harness runs its own custody-gateway with the files
		// above, and measures the manager's memory without a gateway's
		// cache beside it.
		_ = os.Remove(filepath.Join(dir, "gateway-url"))
		return "(none: started with --gateway-addr=" + noGateway + ")", nil
	}
	var g *gateway.Gateway
	cache, err := gateway.NewCache(cfg, cp.Scheme, cp.OperatorNamespace, func(err error) { g.WatchError(err) })
	if err != nil {
		return "", err
	}
	// The gateway's metrics join the manager's at --metrics-addr: one
	// endpoint for a development Prometheus to scrape.
	g, err = gateway.New(gateway.Options{Client: c, Cache: cache, Challenges: iss, Namespace: cp.OperatorNamespace, Log: log, Registerer: ctrlmetrics.Registry})
	if err != nil {
		return "", err
	}
	go func() {
		if err := g.Start(ctx); err != nil && ctx.Err() == nil {
			done <- fmt.Errorf("the gateway's cache: %w", err)
		}
	}()
	select {
	case <-g.Ready():
	case <-ctx.Done():
		return "", ctx.Err()
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12})
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			done <- err
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	url := "https://" + ln.Addr().String()
	if err := os.WriteFile(filepath.Join(dir, "gateway-url"), []byte(url+"\n"), 0o600); err != nil {
		return "", err
	}
	return url, nil
}

// noGateway, as --gateway-addr, writes the gateway's credentials to
// <data-dir>/gateway/ without serving one in this process.
const noGateway = "none"

// devCertificate signs a one-week certificate named cn, for 127.0.0.1 and
// localhost, for usage, with the development root CA, and returns it with
// the root.
func devCertificate(ctx context.Context, cp *controlplane.ControlPlane, cn string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, error) {
	secret := &corev1.Secret{}
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: cp.OperatorNamespace, Name: cp.RootIssuer + "-ca"}, secret); err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
	return tls.Certificate{Certificate: [][]byte{der, caCert.Raw}, PrivateKey: key}, caPEM, nil
}
