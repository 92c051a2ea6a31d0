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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/history"
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
		return history.Report(stdout, *deviceName, records, history.Options{FromGenesis: true, Anchors: anchors})
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
	devices, err := history.ReadDevices(in)
	if err != nil {
		return err
	}
	var failed error
	for _, d := range devices {
		if err := history.Report(stdout, d.Name, d.Status.History, history.Options{Anchors: anchors}); err != nil {
			failed = errors.Join(failed, err)
		}
	}
	return failed
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
	if *tenant == "" {
		return errors.New(usage)
	}
	if *namespace == "" {
		*namespace = *tenant
	}
	s, tok, err := claim.NewPairingTokenSecret(claim.PairingTokenRequest{Tenant: *tenant, Namespace: *namespace, ExpiresIn: *expiresIn, UsageLimit: *limit, Serials: *serials}, now)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, usage)
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
	anchor, err := history.ParseAnchor(v)
	if err != nil {
		return err
	}
	*a = append(*a, anchor)
	return nil
}
