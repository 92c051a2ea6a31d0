package kubectlcustody

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

func devicesCommand(e *env) *cobra.Command {
	var output string
	var all bool
	cmd := &cobra.Command{
		Use:     "devices",
		Aliases: []string{"device", "dev"},
		Short:   "List a tenant's devices (from its Claims), or every Device with -A",
		Long: `List the devices of the tenant whose namespace is -n, one line per Claim:
serial number, model, the Claim's phase, when the device was last seen and
when its certificate expires. -o wide adds the owner tenant, the Device's
name, the Claim's name and the certificate's serial number.

LAST SEEN and the owner of a device that left the tenant come from the Device,
which tenant users cannot read: they show <unknown> unless you may read
Devices (support staff, platform engineers).

With -A (--all-namespaces) it lists every Device in the cluster instead (needs
read access to Devices, e.g. ClusterRole custody-support): owner tenant, phase,
last seen and certificate expiry; -o wide adds the Claim, the custodian and
the certificate's serial number.

-o json|yaml prints the objects themselves: a List of Claims, or of Devices
with -A.`,
		Example: `  kubectl custody devices -n acme
  kubectl custody devices -n acme -o wide
  kubectl custody devices -A
  kubectl custody devices -n acme -o json | jq '.items[].status.phase'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, outputTable, outputWide, outputJSON, outputYAML); err != nil {
				return err
			}
			c, ns, err := e.client()
			if err != nil {
				return err
			}
			if all {
				return e.listDevices(cmd, c, output)
			}
			return e.listTenantDevices(cmd, c, ns, output)
		},
	}
	addOutputFlag(cmd, &output, "wide, json or yaml")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list every Device in the cluster (support staff)")
	return cmd
}

func (e *env) listTenantDevices(cmd *cobra.Command, c client.Client, ns, output string) error {
	ctx := cmd.Context()
	var claims custodyv1alpha1.ClaimList
	if err := c.List(ctx, &claims, client.InNamespace(ns)); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("listing the Claims in namespace %s: forbidden (is %s your tenant's namespace? name it with -n): %w", ns, ns, err)
		}
		return explain(err, "listing the Claims in namespace "+ns)
	}
	slices.SortFunc(claims.Items, func(a, b custodyv1alpha1.Claim) int {
		if n := strings.Compare(a.Spec.SerialNumber, b.Spec.SerialNumber); n != 0 {
			return n
		}
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	if output == outputJSON || output == outputYAML {
		for i := range claims.Items {
			claims.Items[i].APIVersion, claims.Items[i].Kind = custodyv1alpha1.GroupVersion.String(), "Claim"
		}
		return printObject(e.streams.Out, output, listOf(claims.Items))
	}
	if len(claims.Items) == 0 {
		fmt.Fprintf(e.streams.ErrOut, "No devices in namespace %s: no Claims there.\n", ns)
		return nil
	}
	// The Devices, where the caller may read them (tenant users may not).
	devices := map[string]*custodyv1alpha1.Device{}
	readable, missing := true, false
	for _, cl := range claims.Items {
		name := cl.Status.DeviceName
		if name == "" || !readable || devices[name] != nil {
			continue
		}
		d := &custodyv1alpha1.Device{}
		switch err := c.Get(ctx, client.ObjectKey{Name: name}, d); {
		case err == nil:
			devices[name] = d
		case apierrors.IsForbidden(err):
			readable = false
		case apierrors.IsNotFound(err):
			missing = true
		default:
			return err
		}
	}
	tenant := ns
	if output == outputWide {
		tenant = tenantOf(ctx, c, ns)
	}
	now := e.now()
	w := newTable(e.streams.Out)
	fmt.Fprint(w, "SERIAL\tMODEL\tPHASE\tLAST SEEN\tCERT EXPIRY")
	if output == outputWide {
		fmt.Fprint(w, "\tOWNER\tDEVICE\tCLAIM\tCERT SERIAL")
	}
	fmt.Fprintln(w)
	for _, cl := range claims.Items {
		d := devices[cl.Status.DeviceName]
		lastSeen := "<unknown>"
		owner := ""
		switch {
		case d != nil:
			lastSeen = age(now, d.Status.LastSeen)
			if d.Spec.ClaimRef != nil {
				owner = d.Spec.ClaimRef.Tenant
			}
		case cl.Status.DeviceName == "":
			lastSeen = "<none>"
		}
		if owner == "" && (cl.Status.Phase == custodyv1alpha1.ClaimPhaseBound || d == nil && cl.Status.Phase != custodyv1alpha1.ClaimPhaseLost && cl.Status.DeviceName != "") {
			owner = tenant
		}
		var notAfter *metav1.Time
		certSerial := ""
		if cert := cl.Status.Certificate; cert != nil && cl.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
			notAfter = &cert.NotAfter
			certSerial = pemSerial(cert.Certificate)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s", cl.Spec.SerialNumber, cl.Spec.Model, orNone(string(cl.Status.Phase)), lastSeen, expiry(now, notAfter))
		if output == outputWide {
			if owner == "" && d == nil && cl.Status.DeviceName != "" {
				owner = "<unknown>"
			}
			fmt.Fprintf(w, "\t%s\t%s\t%s\t%s", orNone(owner), orNone(cl.Status.DeviceName), cl.Name, orNone(certSerial))
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if !readable {
		fmt.Fprintln(e.streams.ErrOut, "LAST SEEN needs read access to Devices (ClusterRole custody-support); shown as <unknown>.")
	}
	if missing {
		fmt.Fprintln(e.streams.ErrOut, "Some Claims name a Device that no longer exists.")
	}
	return nil
}

func (e *env) listDevices(cmd *cobra.Command, c client.Client, output string) error {
	var devices custodyv1alpha1.DeviceList
	if err := c.List(cmd.Context(), &devices); err != nil {
		return explain(err, "listing Devices (cluster-wide; tenant users list their namespace's devices with -n instead of -A)")
	}
	slices.SortFunc(devices.Items, func(a, b custodyv1alpha1.Device) int { return strings.Compare(a.Name, b.Name) })
	if output == outputJSON || output == outputYAML {
		for i := range devices.Items {
			devices.Items[i].APIVersion, devices.Items[i].Kind = custodyv1alpha1.GroupVersion.String(), "Device"
		}
		return printObject(e.streams.Out, output, listOf(devices.Items))
	}
	if len(devices.Items) == 0 {
		fmt.Fprintln(e.streams.ErrOut, "No Devices in the cluster.")
		return nil
	}
	now := e.now()
	w := newTable(e.streams.Out)
	fmt.Fprint(w, "DEVICE\tSERIAL\tMODEL\tPHASE\tOWNER\tLAST SEEN\tCERT EXPIRY")
	if output == outputWide {
		fmt.Fprint(w, "\tCLAIM\tCUSTODIAN\tCERT SERIAL")
	}
	fmt.Fprintln(w)
	for _, d := range devices.Items {
		owner, claimName := "", ""
		if ref := d.Spec.ClaimRef; ref != nil {
			owner, claimName = ref.Tenant, ref.Namespace+"/"+ref.Name
		}
		var notAfter *metav1.Time
		certSerial := ""
		if cert := currentCertificate(&d); cert != nil {
			notAfter, certSerial = &cert.NotAfter, cert.SerialNumber
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s", d.Name, d.Spec.SerialNumber, d.Spec.Model, orNone(string(d.Status.Phase)), orNone(owner),
			age(now, d.Status.LastSeen), expiry(now, notAfter))
		if output == outputWide {
			custodian := ""
			if d.Spec.Sale != nil {
				custodian = d.Spec.Sale.CustodianTenant
			}
			fmt.Fprintf(w, "\t%s\t%s\t%s", orNone(claimName), orNone(custodian), orNone(certSerial))
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// currentCertificate is the newest certificate of the device's current
// binding, if any.
func currentCertificate(d *custodyv1alpha1.Device) *custodyv1alpha1.DeviceCertificate {
	if d.Spec.ClaimRef == nil {
		return nil
	}
	for i := len(d.Status.Certificates) - 1; i >= 0; i-- {
		if c := &d.Status.Certificates[i]; c.ClaimUID == d.Spec.ClaimRef.UID {
			return c
		}
	}
	return nil
}

// pemSerial is the serial number, in hex, of the first certificate in a
// PEM bundle ("" if there is none).
func pemSerial(bundle string) string {
	b, _ := pem.Decode([]byte(bundle))
	if b == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return ""
	}
	return protocol.CertSerial(cert.SerialNumber)
}

// explain adds what was being done, and for a refusal who may do it, to an
// API error.
func explain(err error, doing string) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s: forbidden: %w", doing, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}
