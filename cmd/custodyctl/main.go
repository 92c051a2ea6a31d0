// Command custodyctl is the support and audit tool of Custody.
//
// It makes pairing tokens for device-first claiming (a Secret manifest to
// apply in the tenant's namespace, and the token for field staff):
//
//	custodyctl pairing-token --tenant acme --expires-in 72h --usage-limit 50 > token.yaml
//
// prints a production data-plane server's nats-server configuration:
//
//	custodyctl dataplane server-config --master-secret-file master.key > nats-server.conf
//
// and verifies custody histories:
//
//	kubectl get device xr200.sn-0001 -o json | custodyctl history verify
//	custodyctl history verify --audit-log manager.log --device xr200.sn-0001
//	custodyctl history verify -f device.json --anchor 7:sha256:...
//
// A Device keeps its newest 32 entries and is checked as a window of the
// chain; the manager's audit log keeps every entry and is checked from the
// first. Anchors (a sequence number and hash announced earlier, for example
// in a notification the ERP stored) detect entries removed from the end and
// a rewritten chain.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/history"
	"github.com/custody-dev/custody/pkg/protocol"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "custodyctl:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  custodyctl history verify [-f FILE] [--audit-log FILE --device NAME] [--anchor SEQ:HASH]
  custodyctl pairing-token --tenant NAME [--namespace NS] [--expires-in 72h] [--usage-limit N] [--serials SN-1,SN-2]
  custodyctl dataplane server-config --master-secret-file FILE [--client-ca-file FILE] [--cert-file F --key-file F] [--host H --port P --mqtt-port P --store-dir D] [--name N --cluster-name C --cluster-port P --routes URL,…]`

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) >= 2 && args[0] == "dataplane" && args[1] == "server-config" {
		return dataPlaneServerConfig(args[2:], stdout)
	}
	if len(args) >= 1 && args[0] == "pairing-token" {
		return pairingToken(args[1:], stdout, os.Stderr, time.Now())
	}
	if len(args) < 2 || args[0] != "history" || args[1] != "verify" {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("history verify", flag.ContinueOnError)
	file := fs.String("f", "-", "a Device (or a list of Devices) as JSON, as `kubectl get device -o json` prints; - reads stdin")
	auditLog := fs.String("audit-log", "", "the manager's log (JSON lines); its audit lines are the complete history")
	deviceName := fs.String("device", "", "with --audit-log: the Device whose history to verify")
	var anchors anchorFlag
	fs.Var(&anchors, "anchor", "SEQ:HASH of an entry known from elsewhere (a notification, an earlier audit); repeatable")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	if *auditLog != "" {
		if *deviceName == "" {
			return errors.New("--audit-log needs --device")
		}
		f, err := os.Open(*auditLog)
		if err != nil {
			return err
		}
		defer f.Close()
		records, err := history.ReadAuditLog(f, *deviceName)
		if err != nil {
			return err
		}
		return report(stdout, *deviceName, records, history.Options{FromGenesis: true, Anchors: anchors})
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	devices, err := ReadDevices(in)
	if err != nil {
		return err
	}
	var failed error
	for _, d := range devices {
		if err := report(stdout, d.Name, d.Status.History, history.Options{Anchors: anchors}); err != nil {
			failed = errors.Join(failed, err)
		}
	}
	return failed
}

func report(w io.Writer, name string, records []custodyv1alpha1.CustodyRecord, opts history.Options) error {
	if err := history.Verify(records, opts); err != nil {
		return fmt.Errorf("%s: history is NOT intact: %w", name, err)
	}
	if len(records) == 0 {
		_, err := fmt.Fprintf(w, "%s: no history\n", name)
		return err
	}
	last := records[len(records)-1]
	_, err := fmt.Fprintf(w, "%s: history intact: entries %d..%d, head %s\n", name, records[0].Sequence, last.Sequence, last.Hash)
	return err
}

// ReadDevices reads one Device or a List of Devices.
func ReadDevices(r io.Reader) ([]custodyv1alpha1.Device, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var kind struct{ Kind string }
	if err := json.Unmarshal(data, &kind); err != nil {
		return nil, fmt.Errorf("not a Device in JSON: %w", err)
	}
	switch kind.Kind {
	case "Device":
		var d custodyv1alpha1.Device
		if err := json.Unmarshal(data, &d); err != nil {
			return nil, err
		}
		return []custodyv1alpha1.Device{d}, nil
	case "List", "DeviceList":
		var l custodyv1alpha1.DeviceList
		if err := json.Unmarshal(data, &l); err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	return nil, fmt.Errorf("expected a Device or a List of Devices, got kind %q", kind.Kind)
}

// pairingToken prints a pairing-token Secret for the tenant's namespace on
// stdout, and the token to give field staff on stderr.
func pairingToken(args []string, stdout, stderr io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("pairing-token", flag.ContinueOnError)
	tenant := fs.String("tenant", "", "the Tenant whose devices the token claims")
	namespace := fs.String("namespace", "", "the tenant's namespace (default: the tenant's name)")
	expiresIn := fs.Duration("expires-in", 72*time.Hour, "how long the token is valid")
	limit := fs.Int("usage-limit", 1, "how many devices the token may claim")
	serials := fs.String("serials", "", "comma-separated serial numbers the token is limited to (default: any)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !protocol.ValidPairingTokenTenant(*tenant) || *expiresIn <= 0 || *limit < 1 || *limit > claim.MaxTokenUsageLimit {
		return errors.New(usage)
	}
	if *namespace == "" {
		*namespace = *tenant
	}
	tok, err := protocol.GeneratePairingToken(*tenant)
	if err != nil {
		return err
	}
	s := corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: claim.PairingTokenSecretPrefix + tok.ID, Namespace: *namespace},
		Type:       claim.PairingTokenSecretType,
		StringData: map[string]string{
			claim.TokenKeyID: tok.ID, claim.TokenKeySecret: tok.Secret,
			claim.TokenKeyExpiration: now.Add(*expiresIn).UTC().Format(time.RFC3339), claim.TokenKeyUsageLimit: strconv.Itoa(*limit),
		},
	}
	if *serials != "" {
		s.StringData[claim.TokenKeyAllowedSerials] = *serials
	}
	out, err := yaml.Marshal(s)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(out); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stderr, "Apply the Secret in namespace %[1]s. The manager counts its uses and records its revocation (delete the Secret or set revoked: \"true\"; final) in ConfigMap %[2]s:\n  kubectl -n %[1]s get configmap %[2]s -o jsonpath='{.data.%[3]s}'\nGive field staff this token (custody-device pair --token ...):\n%[4]s\n",
		*namespace, claim.TokenStateConfigMap, tok.ID, tok)
	return err
}

type anchorFlag []history.Anchor

func (a *anchorFlag) String() string { return fmt.Sprint(*a) }

func (a *anchorFlag) Set(v string) error {
	seq, hash, ok := strings.Cut(v, ":")
	n, err := strconv.ParseInt(seq, 10, 64)
	if !ok || err != nil || !strings.HasPrefix(hash, history.HashPrefix) {
		return fmt.Errorf("anchor %q: want SEQ:sha256:HEX", v)
	}
	*a = append(*a, history.Anchor{Sequence: n, Hash: hash})
	return nil
}
