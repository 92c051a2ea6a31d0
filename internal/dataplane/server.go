package dataplane

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerConfig is what a nats-server needs to serve Custody's data plane.
// RenderConfig turns it into a nats-server configuration file: the same text
// configures the embedded server (custody-dev, tests) and documents a
// production cluster's.
type ServerConfig struct {
	// Name is the server's name (server_name).
	Name string
	// Host is the address every listener binds to.
	Host string
	// Port is the NATS client port; MQTTPort the MQTT listener's.
	Port, MQTTPort int
	// StoreDir holds JetStream's streams (MQTT sessions and retained
	// messages) and the account resolver's JWTs.
	StoreDir string
	// CertFile and KeyFile are the server's TLS certificate and key for
	// both listeners; ClientCAFile, when set, is the union of every tenant's
	// CA that the listeners verify client certificates against before the
	// callout verifies them against the one tenant's. Without it (embedded)
	// the server requires a certificate and leaves verification to the
	// callout.
	CertFile, KeyFile, ClientCAFile string
	// ClusterName, when set, makes the server one of a NATS cluster of that
	// name: it listens for routes on Host:ClusterPort and connects to
	// Routes (nats-route://host:port; its own address among them is
	// ignored). Every server of a cluster needs its own Name and StoreDir;
	// JetStream (MQTT's sessions and retained messages) then replicates
	// across up to three of them, and the full account resolver pushes the
	// tenant accounts it is given to every other server. Routes carry no
	// TLS: a production cluster's routes run on a private network, or its
	// configuration adds a cluster tls block.
	ClusterName string
	ClusterPort int
	Routes      []string
}

// RenderConfig returns the nats-server configuration for cfg: operator mode
// with Custody's operator, a full account resolver preloaded with the system
// and auth accounts (tenant accounts are pushed to it), the auth callout's
// sentinel as default for clients without credentials, JetStream, and the
// NATS and MQTT listeners with TLS and client certificates; with a
// ClusterName, the cluster block that routes it to its peers.
func (k *Keys) RenderConfig(cfg ServerConfig) (string, error) {
	op, err := k.OperatorJWT()
	if err != nil {
		return "", err
	}
	sys, err := k.SystemAccountJWT()
	if err != nil {
		return "", err
	}
	auth, err := k.AuthAccountJWT()
	if err != nil {
		return "", err
	}
	sentinel, err := k.SentinelJWT()
	if err != nil {
		return "", err
	}
	if cfg.Host == "" || cfg.StoreDir == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		return "", errors.New("a data-plane server needs a host, a store directory and a TLS certificate and key")
	}
	tlsBlock := fmt.Sprintf("{ cert_file: %s, key_file: %s", strconv.Quote(cfg.CertFile), strconv.Quote(cfg.KeyFile))
	if cfg.ClientCAFile != "" {
		tlsBlock += fmt.Sprintf(", ca_file: %s, verify: true", strconv.Quote(cfg.ClientCAFile))
	}
	tlsBlock += " }"
	if cfg.ClusterName == "" && (cfg.ClusterPort != 0 || len(cfg.Routes) > 0) {
		return "", errors.New("a data-plane server with a cluster port or routes needs a cluster name")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\n", strconv.Quote(cfg.Name))
	fmt.Fprintf(&b, "host: %s\nport: %d\n", strconv.Quote(cfg.Host), cfg.Port)
	fmt.Fprintf(&b, "tls: %s\n", tlsBlock)
	fmt.Fprintf(&b, "operator: %s\nsystem_account: %s\n", op, PublicKey(k.System()))
	fmt.Fprintf(&b, "resolver: { type: full, dir: %s, allow_delete: true, interval: \"2m\" }\n", strconv.Quote(filepath.Join(cfg.StoreDir, "accounts")))
	fmt.Fprintf(&b, "resolver_preload: {\n  %s: %s\n  %s: %s\n}\n", PublicKey(k.System()), sys, PublicKey(k.Auth()), auth)
	fmt.Fprintf(&b, "default_sentinel: %s\n", sentinel)
	b.WriteString("authorization { timeout: 2 }\n")
	fmt.Fprintf(&b, "jetstream { store_dir: %s }\n", strconv.Quote(filepath.Join(cfg.StoreDir, "jetstream")))
	if cfg.ClusterName != "" {
		routes := make([]string, len(cfg.Routes))
		for i, r := range cfg.Routes {
			routes[i] = strconv.Quote(r)
		}
		fmt.Fprintf(&b, "cluster { name: %s, host: %s, port: %d, routes: [%s] }\n", strconv.Quote(cfg.ClusterName), strconv.Quote(cfg.Host), cfg.ClusterPort, strings.Join(routes, ", "))
	}
	fmt.Fprintf(&b, "mqtt { host: %s, port: %d, tls: %s }\n", strconv.Quote(cfg.Host), cfg.MQTTPort, tlsBlock)
	return b.String(), nil
}

// Embedded is a nats-server run in-process (custody-dev, tests).
type Embedded struct {
	*server.Server
	// MQTTURL is the MQTT listener's address (ssl://host:port).
	MQTTURL string
	// ConfigFile is the configuration the server runs with.
	ConfigFile string
	// RouteURL is the cluster listener's address (nats-route://host:port),
	// empty without a ClusterName.
	RouteURL string
}

// StartEmbedded starts a nats-server with RenderConfig(cfg). A zero Port or
// MQTTPort (or ClusterPort, with a ClusterName) picks a free port. The server requires a client certificate on
// both listeners and, without cfg.ClientCAFile, leaves verifying it to the
// callout (tls.RequireAnyClientCert): the callout verifies it against the
// one tenant's CA, which is stricter than any union of tenants' CAs.
func (k *Keys) StartEmbedded(cfg ServerConfig) (*Embedded, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Name == "" {
		cfg.Name = "custody-dataplane"
	}
	ports := []*int{&cfg.Port, &cfg.MQTTPort}
	if cfg.ClusterName != "" {
		ports = append(ports, &cfg.ClusterPort)
	}
	for _, p := range ports {
		if *p == 0 {
			free, err := freePort(cfg.Host)
			if err != nil {
				return nil, err
			}
			*p = free
		}
	}
	text, err := k.RenderConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o700); err != nil {
		return nil, err
	}
	file := filepath.Join(cfg.StoreDir, "nats-server.conf")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		return nil, err
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		return nil, fmt.Errorf("the data-plane configuration: %w", err)
	}
	if cfg.ClientCAFile == "" {
		for _, c := range []*tls.Config{opts.TLSConfig, opts.MQTT.TLSConfig} {
			c.ClientAuth = tls.RequireAnyClientCert
		}
	}
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		return nil, errors.New("the data-plane server did not start in 20s")
	}
	e := &Embedded{Server: s, MQTTURL: fmt.Sprintf("ssl://%s", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.MQTTPort))), ConfigFile: file}
	if cfg.ClusterName != "" {
		e.RouteURL = "nats-route://" + net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.ClusterPort))
	}
	return e, nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
