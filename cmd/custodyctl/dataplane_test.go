package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custody-dev/custody/internal/dataplane"
)

// TestDataPlaneServerConfig: the printed configuration names the operator
// and system account the manager's master secret derives, verifies client
// certificates on both listeners, and refuses a short secret.
func TestDataPlaneServerConfig(t *testing.T) {
	dir := t.TempDir()
	secret := bytes.Repeat([]byte{9}, dataplane.MasterSecretLength)
	file := filepath.Join(dir, "master.key")
	if err := os.WriteFile(file, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"dataplane", "server-config", "--master-secret-file", file}, nil, &out); err != nil {
		t.Fatal(err)
	}
	keys, _ := dataplane.NewKeys(secret)
	text := out.String()
	if !strings.Contains(text, "system_account: "+dataplane.PublicKey(keys.System())) || strings.Count(text, "verify: true") != 2 || !strings.Contains(text, "default_sentinel: ") {
		t.Fatalf("configuration:\n%s", text)
	}
	if strings.Contains(text, "cluster") {
		t.Fatalf("a single server's configuration holds a cluster block:\n%s", text)
	}
	out.Reset()
	if err := run([]string{"dataplane", "server-config", "--master-secret-file", file, "--name", "nats-1", "--cluster-name", "custody", "--routes", "nats-route://nats-0.nats:6222,nats-route://nats-1.nats:6222"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if text := out.String(); !strings.Contains(text, `cluster { name: "custody", host: "0.0.0.0", port: 6222, routes: ["nats-route://nats-0.nats:6222", "nats-route://nats-1.nats:6222"] }`) || !strings.Contains(text, `server_name: "nats-1"`) {
		t.Fatalf("clustered configuration:\n%s", text)
	}
	if err := os.WriteFile(file, secret[:16], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"dataplane", "server-config", "--master-secret-file", file}, nil, &out); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Fatalf("a 16-byte secret: %v", err)
	}
}
