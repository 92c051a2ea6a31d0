package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/custody-dev/custody/internal/dataplane"
)

// dataPlaneServerConfig prints the nats-server configuration of a
// production data-plane server: Custody's operator, system and auth
// accounts derived from the master secret the manager holds, the auth
// callout's sentinel, JetStream and the NATS and MQTT listeners with TLS
// that verify client certificates against the tenants' CAs
// (custody-dataplane-client-cas); with --cluster-name, the cluster block
// that routes it to the other servers.
func dataPlaneServerConfig(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dataplane server-config", flag.ContinueOnError)
	secret := fs.String("master-secret-file", "", "the data plane's 32-byte master secret (the manager's --dataplane-master-secret-file)")
	var cfg dataplane.ServerConfig
	fs.StringVar(&cfg.Name, "name", "custody-dataplane", "server_name")
	fs.StringVar(&cfg.Host, "host", "0.0.0.0", "address the listeners bind to")
	fs.IntVar(&cfg.Port, "port", 4222, "NATS client port")
	fs.IntVar(&cfg.MQTTPort, "mqtt-port", 8883, "MQTT port")
	fs.StringVar(&cfg.StoreDir, "store-dir", "/data", "JetStream and account-resolver storage")
	fs.StringVar(&cfg.CertFile, "cert-file", "/etc/nats/tls/tls.crt", "the server's certificate")
	fs.StringVar(&cfg.KeyFile, "key-file", "/etc/nats/tls/tls.key", "the server's key")
	fs.StringVar(&cfg.ClientCAFile, "client-ca-file", "/etc/nats/client-cas/ca.crt", "the tenants' CAs (ConfigMap custody-dataplane-client-cas, key ca.crt) plus the CA of the manager's client certificate")
	fs.StringVar(&cfg.ClusterName, "cluster-name", "", "the NATS cluster's name; empty for a single server")
	fs.IntVar(&cfg.ClusterPort, "cluster-port", 6222, "with --cluster-name: the port routes connect to")
	routes := fs.String("routes", "", "with --cluster-name: every server's route address, comma separated (nats-route://nats-0.nats:6222,…)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.ClusterName == "" {
		cfg.ClusterPort = 0
	}
	if *routes != "" {
		cfg.Routes = strings.Split(*routes, ",")
	}
	if *secret == "" || cfg.ClientCAFile == "" {
		return errors.New("--master-secret-file and --client-ca-file are required")
	}
	data, err := os.ReadFile(*secret)
	if err != nil {
		return err
	}
	keys, err := dataplane.NewKeys(data)
	if err != nil {
		return err
	}
	text, err := keys.RenderConfig(cfg)
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(stdout, text)
	return err
}
