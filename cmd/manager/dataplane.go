package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/custody-dev/custody/internal/dataplane"
)

// dataPlaneFlags configure the manager's side of the data plane: the NATS
// servers it answers the auth callout of and cuts devices off, over mutual
// TLS, and the master secret Custody's operator, system, auth and tenant
// account keys are derived from (docs/data-plane.md).
type dataPlaneFlags struct {
	url, mqttURL, caFile, certFile, keyFile, secretFile string
}

func (f *dataPlaneFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "dataplane-url", "", "NATS servers of the data plane (comma-separated tls://host:port); empty runs without a data plane.")
	fs.StringVar(&f.mqttURL, "dataplane-mqtt-url", "", "A data-plane server's MQTT listener (ssl://host:port), for purging MQTT sessions on cut-off.")
	fs.StringVar(&f.caFile, "dataplane-ca-file", "", "CA bundle (PEM) that verifies the data-plane servers' certificates.")
	fs.StringVar(&f.certFile, "dataplane-cert-file", "", "The manager's client certificate (PEM) for the data plane.")
	fs.StringVar(&f.keyFile, "dataplane-key-file", "", "The key (PEM) of --dataplane-cert-file.")
	fs.StringVar(&f.secretFile, "dataplane-master-secret-file", "", "File holding the data plane's 32-byte master secret (mounted from a Secret).")
}

// service returns the configured Service, nil without --dataplane-url.
func (f *dataPlaneFlags) service() (*dataplane.Service, error) {
	if f.url == "" {
		return nil, nil
	}
	if f.mqttURL == "" || f.caFile == "" || f.certFile == "" || f.keyFile == "" || f.secretFile == "" {
		return nil, errors.New("--dataplane-url needs --dataplane-mqtt-url, --dataplane-ca-file, --dataplane-cert-file, --dataplane-key-file and --dataplane-master-secret-file")
	}
	secret, err := os.ReadFile(f.secretFile)
	if err != nil {
		return nil, err
	}
	keys, err := dataplane.NewKeys(secret)
	if err != nil {
		return nil, fmt.Errorf("--dataplane-master-secret-file: %w", err)
	}
	ca, err := os.ReadFile(f.caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, errors.New("--dataplane-ca-file holds no PEM certificate")
	}
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--dataplane-cert-file/--dataplane-key-file: %w", err)
	}
	c := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return &dataplane.Service{Keys: keys, URL: f.url, MQTTURL: f.mqttURL, TLSConfig: c, Options: []nats.Option{nats.Secure(c.Clone())}}, nil
}
