package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/custody-dev/custody/internal/controlplane"
	"github.com/custody-dev/custody/internal/dataplane"
)

// devDataPlane is the embedded data plane of custody-dev.
type devDataPlane struct {
	Server  *dataplane.Embedded
	Service *dataplane.Service
	NATSURL string
}

// startDataPlane starts an embedded nats-server with Custody's operator,
// NATS and MQTT listeners on natsAddr and mqttAddr with TLS from the
// development root, and returns the Service the manager answers its
// callout with. The operator's master secret and the servers' state
// (accounts, MQTT sessions, retained messages) are kept in dir/dataplane
// across restarts.
func startDataPlane(ctx context.Context, cp *controlplane.ControlPlane, dir, natsAddr, mqttAddr string) (*devDataPlane, error) {
	dpDir := filepath.Join(dir, "dataplane")
	if err := os.MkdirAll(dpDir, 0o700); err != nil {
		return nil, err
	}
	master, err := masterSecret(filepath.Join(dpDir, "master.key"))
	if err != nil {
		return nil, err
	}
	keys, err := dataplane.NewKeys(master)
	if err != nil {
		return nil, err
	}
	serverCert, caPEM, err := devCertificate(ctx, cp, "custody-dataplane (development)", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, fmt.Errorf("issuing the data plane's certificate: %w", err)
	}
	managerCert, _, err := devCertificate(ctx, cp, "custody-manager (development)", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, fmt.Errorf("issuing the manager's data-plane certificate: %w", err)
	}
	certFile, keyFile := filepath.Join(dpDir, "tls.crt"), filepath.Join(dpDir, "tls.key")
	if err := writePair(serverCert, certFile, keyFile); err != nil {
		return nil, err
	}
	host, natsPort, err := splitPort(natsAddr)
	if err != nil {
		return nil, err
	}
	mqttHost, mqttPort, err := splitPort(mqttAddr)
	if err != nil {
		return nil, err
	}
	if mqttHost != host {
		return nil, errors.New("--nats-addr and --mqtt-addr must name the same host")
	}
	srv, err := keys.StartEmbedded(dataplane.ServerConfig{Name: "custody-dev", Host: host, Port: natsPort, MQTTPort: mqttPort, StoreDir: filepath.Join(dpDir, "store"), CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	clientTLS := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{managerCert}, MinVersion: tls.VersionTLS12}
	natsURL := "tls://" + net.JoinHostPort(host, strconv.Itoa(natsPort))
	svc := &dataplane.Service{Keys: keys, URL: natsURL, MQTTURL: srv.MQTTURL, TLSConfig: clientTLS, Options: []nats.Option{nats.Secure(clientTLS.Clone())}}
	for name, data := range map[string]string{"nats-url": natsURL + "\n", "mqtt-url": srv.MQTTURL + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			srv.Shutdown()
			return nil, err
		}
	}
	return &devDataPlane{Server: srv, Service: svc, NATSURL: natsURL}, nil
}

// masterSecret reads the operator's master secret from file, creating it on
// the first start.
func masterSecret(file string) ([]byte, error) {
	data, err := os.ReadFile(file) //nolint:gosec // a fixed name under the data directory
	if errors.Is(err, fs.ErrNotExist) {
		data = make([]byte, dataplane.MasterSecretLength)
		if _, err := rand.Read(data); err != nil {
			return nil, err
		}
		return data, os.WriteFile(file, data, 0o600)
	}
	return data, err
}

func writePair(c tls.Certificate, certFile, keyFile string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func splitPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	return host, n, err
}
