// Command custody-device is the device side of Custody. Today it has one
// subcommand, factory, which the manufacturing line runs for each device.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/custody-dev/custody/internal/factory"
)

const usage = `usage: custody-device factory --model MODEL --serial SERIAL [--out DIR]

Makes one device's identity keypair, claim code and verifier, and writes to DIR:
  device.yaml   the Device manifest for the ERP (public key and verifier only)
  device.key    the private key, to be loaded into the device (mode 0600)
  label.txt     the claim code and key fingerprint for the label and documentation pack (mode 0600)
`

// errUsage asks main to print the usage.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:], os.Stdout)
	if errors.Is(err, errUsage) {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "custody-device:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "factory" {
		return errUsage
	}
	fs := flag.NewFlagSet("factory", flag.ContinueOnError)
	model := fs.String("model", "", "product model, upper case (e.g. XR200)")
	serial := fs.String("serial", "", "serial number, upper case (e.g. SN-0001)")
	out := fs.String("out", ".", "directory to write device.yaml, device.key and label.txt to")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *model == "" || *serial == "" {
		fmt.Fprintln(os.Stderr, "custody-device: --model and --serial are required")
		return errUsage
	}
	rec, err := factory.Manufacture(*model, *serial)
	if err != nil {
		return err
	}
	manifest, err := yaml.Marshal(rec.Device)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o750); err != nil {
		return err
	}
	label := fmt.Sprintf("Model:       %s\nSerial:      %s\nKey:         %s\nClaim code:  %s\n", *model, *serial, rec.Fingerprint, rec.Code)
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"device.yaml", manifest, 0o644},
		{"device.key", rec.PrivateKeyPEM, 0o600},
		{"label.txt", []byte(label), 0o600},
	} {
		if err := os.WriteFile(filepath.Join(*out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s: apply device.yaml as the ERP; device.key goes on the device; label.txt holds the claim code.\n", *out)
	return nil
}
