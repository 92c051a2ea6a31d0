package kubectlcustody

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/label"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// defaultClaimURL is the base URL custody-device init prints in the QR code.
const defaultClaimURL = "https://claim.custody.example"

func labelCommand(e *env) *cobra.Command {
	var svg, model, claimURL string
	var showCode bool
	cmd := &cobra.Command{
		Use:   "label DIR | label DEVICE | label SERIAL --model MODEL",
		Short: "Print a device's label, or write it as a printable SVG",
		Long: `Print what is on a device's label: model, serial number, the fingerprint of
its factory key and the claim URL in its QR code.

From a device directory (made by custody-device init; no cluster needed) the
claim code is part of the label, under the scratch-off: it is shown as
"(under the scratch-off)" unless --show-code, and --svg FILE writes the
printable label with the code (QR code, scratch-off area, tamper warning) to
FILE (mode 0600; - for stdout), to reprint a damaged label.

From the cluster (a Device name, or a serial number with --model; needs read
access to Devices) it prints the public part, to check a label in hand against
the Device the ERP registered: the fingerprint must match. The cluster holds
only the code's verifier, so there is no claim code and no SVG from there.`,
		Example: `  kubectl custody label /tmp/sn-0002
  kubectl custody label /tmp/sn-0002 --svg label.svg
  kubectl custody label xr200.sn-0002`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if st, err := os.Stat(args[0]); err == nil && st.IsDir() {
				return e.labelFromDir(args[0], svg, showCode)
			}
			if svg != "" {
				return errors.New("--svg needs a device directory (made by custody-device init): the cluster holds only the claim code's verifier, so a label printed from it could carry no code")
			}
			if showCode {
				return errors.New("--show-code needs a device directory: the cluster never holds the claim code")
			}
			name := strings.ToLower(args[0])
			if !strings.Contains(name, ".") {
				if model == "" {
					return fmt.Errorf("%s is neither a device directory nor a Device name: name the Device (e.g. xr200.%s) or add --model", args[0], name)
				}
				name = custodyv1alpha1.DeviceName(model, args[0])
			}
			c, _, err := e.client()
			if err != nil {
				return err
			}
			d := &custodyv1alpha1.Device{}
			if err := c.Get(cmd.Context(), client.ObjectKey{Name: name}, d); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("no Device %s in the cluster, and no directory %s", name, args[0])
				}
				return explain(err, "reading Device "+name+" (needs read access to Devices, ClusterRole custody-support)")
			}
			pub, err := protocol.ParsePublicKeyPEM([]byte(d.Spec.Identity.PublicKey))
			if err != nil {
				return fmt.Errorf("device %s: its public key: %w", name, err)
			}
			fp, err := protocol.KeyFingerprint(pub)
			if err != nil {
				return err
			}
			l := protocol.Label{BaseURL: claimURL, SerialNumber: d.Spec.SerialNumber, Model: d.Spec.Model, Fingerprint: fp}
			_, err = fmt.Fprintf(e.streams.Out, "Model:       %s\nSerial:      %s\nKey:         %s\nClaim URL:   %s\n", l.Model, l.SerialNumber, l.Fingerprint, l.URL())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&svg, "svg", "", "write the printable label (with the claim code) to this file; - for stdout (device directory only)")
	f.BoolVar(&showCode, "show-code", false, "print the claim code too (device directory only)")
	f.StringVar(&model, "model", "", "the device's model, when it is named by its serial number")
	f.StringVar(&claimURL, "claim-url", defaultClaimURL, "the base URL in the QR code (from the cluster; a directory's label keeps its own)")
	return cmd
}

// labelFromDir prints, or writes as SVG, the label of a device directory.
func (e *env) labelFromDir(dir, svg string, showCode bool) error {
	raw, err := os.ReadFile(filepath.Join(dir, device.FileIdentity)) //nolint:gosec // the user names the directory
	if err != nil {
		return fmt.Errorf("%s is not a device directory (made by custody-device init): %w", dir, err)
	}
	var id device.IdentityFile
	if err := json.Unmarshal(raw, &id); err != nil {
		return fmt.Errorf("%s: %w", device.FileIdentity, err)
	}
	text, err := os.ReadFile(filepath.Join(dir, "label.txt")) //nolint:gosec // the user names the directory
	if err != nil {
		return fmt.Errorf("%s has no label.txt (custody-device init writes it): %w", dir, err)
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	l, err := protocol.ParseLabelURL(fields["Claim URL"])
	if err != nil || l.SerialNumber != id.SerialNumber || l.Model != id.Model {
		return fmt.Errorf("%s/label.txt does not describe the device in %s", dir, device.FileIdentity)
	}
	code := fields["Claim code"]
	if svg != "" {
		out, err := label.SVG(l, code)
		if err != nil {
			return err
		}
		if svg == "-" {
			_, err = e.streams.Out.Write(out)
			return err
		}
		if err := writePrivate(svg, out); err != nil {
			return err
		}
		fmt.Fprintf(e.streams.ErrOut, "wrote the label of %s %s to %s (it holds the claim code: print it under a scratch-off cover)\n", l.Model, l.SerialNumber, svg)
		return nil
	}
	shown := "(under the scratch-off; --show-code prints it)"
	if showCode {
		shown = code
	}
	_, err = fmt.Fprintf(e.streams.Out, "Model:       %s\nSerial:      %s\nKey:         %s\nClaim URL:   %s\nClaim code:  %s\n", l.Model, l.SerialNumber, l.Fingerprint, l.URL(), shown)
	return err
}

// writePrivate writes data to path with mode 0600, also when path exists
// with a looser mode (which os.WriteFile would keep): the mode is set
// before anything is written.
func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600) //nolint:gosec // the user names the file
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Truncate(0); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
