package kubectlcustody

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

type transferOptions struct {
	to, dryRun, output string
	yes, wait, rotate  bool
	timeout            time.Duration
}

func transferCommand(e *env) *cobra.Command {
	var o transferOptions
	cmd := &cobra.Command{
		Use:   "transfer CLAIM|SERIAL --to TENANT",
		Short: "Offer a device your tenant holds to another tenant (accept one with transfer accept)",
		Long: `Offer a device held by the tenant whose namespace is -n to another tenant:
it creates a Transfer (tenant Admins only). The device moves when the
recipient accepts (kubectl custody transfer accept, in its namespace); then
this tenant's Claim turns Lost, its certificates stop working at once, and the
device enrols again under its new owner. An offer that is not accepted expires
(after 7 days by default).

The device is named by its Claim or its serial number. It asks for
confirmation, naming the device and both tenants, unless --yes.`,
		Example: `  kubectl custody transfer sn-0002 --to globex -n acme
  kubectl custody transfer SN-0002 --to globex -n acme --yes -o yaml
  # The recipient accepts:
  kubectl custody transfer accept SN-0002 --model XR200 --from acme -n globex`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.to == "" {
				return errors.New("name the recipient tenant with --to")
			}
			return e.transfer(cmd.Context(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.to, "to", "", "the tenant to offer the device to")
	f.BoolVarP(&o.yes, "yes", "y", false, "do not ask for confirmation")
	f.BoolVar(&o.wait, "wait", true, "wait until the manager has recorded the offer")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long --wait waits")
	addDryRunFlag(cmd, &o.dryRun)
	addOutputFlag(cmd, &o.output, "json or yaml (prints the Transfer)")
	cmd.AddCommand(acceptCommand(e))
	return cmd
}

func acceptCommand(e *env) *cobra.Command {
	var o claimOptions
	var from string
	cmd := &cobra.Command{
		Use:   "accept SERIAL --model MODEL --from TENANT | accept DEVICE --from TENANT",
		Short: "Accept a device another tenant offered yours",
		Long: `Accept a device that another tenant offered to the tenant whose namespace is
-n: it creates a Claim with the offer as its proof (tenant Operators and
Admins). Only the named tenant can accept; a Claim accepting from a tenant that
made no offer waits in Pending (NoTransferOffer) and holds nothing.`,
		Example: `  kubectl custody transfer accept SN-0002 --model XR200 --from acme -n globex
  kubectl custody transfer accept xr200.sn-0002 --from acme -n globex`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" {
				return errors.New("name the tenant that offered the device with --from")
			}
			model, serial, err := deviceArg(args[0], o.model)
			if err != nil {
				return err
			}
			o.model, o.serial = model, serial
			return e.accept(cmd.Context(), from, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the tenant that offered the device")
	f.StringVar(&o.model, "model", "", "the device's model (e.g. XR200)")
	f.StringVar(&o.name, "name", "", "the Claim's name (default: the serial number in lower case)")
	f.BoolVar(&o.wait, "wait", true, "wait for the manager's decision and print it")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long --wait waits")
	addDryRunFlag(cmd, &o.dryRun)
	return cmd
}

// boundClaim finds the Claim for ref and checks that it holds its device.
func boundClaim(ctx context.Context, c client.Client, ns, ref, doing string) (*custodyv1alpha1.Claim, error) {
	cl, err := findClaim(ctx, c, ns, ref)
	if err != nil {
		return nil, err
	}
	if cl.Status.Phase != custodyv1alpha1.ClaimPhaseBound {
		return nil, fmt.Errorf("claim %s (%s %s) is %s, not Bound: only a device the tenant holds can be %s", cl.Name, cl.Spec.Model, cl.Spec.SerialNumber, orNone(string(cl.Status.Phase)), doing)
	}
	return cl, nil
}

func (e *env) transfer(ctx context.Context, ref string, o transferOptions) error {
	if err := checkDryRun(o.dryRun); err != nil {
		return err
	}
	if err := checkOutput(o.output, outputTable, outputJSON, outputYAML); err != nil {
		return err
	}
	c, ns, err := e.client()
	if err != nil {
		return err
	}
	cl, err := boundClaim(ctx, c, ns, ref, "transferred")
	if err != nil {
		return err
	}
	tenant := tenantOf(ctx, c, ns)
	if o.to == tenant {
		return fmt.Errorf("the device is already tenant %s's: --to names another tenant", tenant)
	}
	tr := &custodyv1alpha1.Transfer{
		TypeMeta:   metav1.TypeMeta{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Transfer"},
		ObjectMeta: metav1.ObjectMeta{Name: cl.Name + "-to-" + o.to, Namespace: ns},
		Spec:       custodyv1alpha1.TransferSpec{ClaimName: cl.Name, Recipient: &custodyv1alpha1.TransferRecipient{Tenant: o.to}},
	}
	if err := checkFirst(ctx, c, tr, o); err != nil {
		return err
	}
	if err := e.confirm(o.yes || o.dryRun != dryRunNone, fmt.Sprintf("Offer %s %s (Device %s), held by tenant %s, to tenant %s? Once %s accepts, %s loses the device and its certificates stop working.",
		cl.Spec.Model, cl.Spec.SerialNumber, cl.Status.DeviceName, tenant, o.to, o.to, tenant)); err != nil {
		return err
	}
	waits := o.dryRun == dryRunNone && o.wait
	if err := e.createTransfer(ctx, c, tr, o.dryRun, o.output, waits); err != nil {
		return err
	}
	if o.dryRun != dryRunNone {
		return nil
	}
	if waits {
		got, err := e.waitTransfer(ctx, c, tr, o.timeout, o.output, func(p custodyv1alpha1.TransferPhase) bool {
			return p != "" && p != custodyv1alpha1.TransferPhasePending
		})
		if err != nil {
			return err
		}
		if got.Status.Phase != custodyv1alpha1.TransferPhaseOffered && got.Status.Phase != custodyv1alpha1.TransferPhaseCompleted {
			return transferFailed(got)
		}
		if got.Status.ExpiresAt != nil && o.output == outputTable {
			fmt.Fprintf(e.streams.Out, "transfer %s: %s until %s\n", tr.Name, got.Status.Phase, got.Status.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
	if o.output != outputTable {
		return nil
	}
	fmt.Fprintf(e.streams.Out, "Tenant %s accepts, in its namespace (-n), with:\n  kubectl custody transfer accept %s --model %s --from %s\n", o.to, cl.Spec.SerialNumber, cl.Spec.Model, tenant)
	return nil
}

func (e *env) accept(ctx context.Context, from string, o claimOptions) error {
	if err := checkDryRun(o.dryRun); err != nil {
		return err
	}
	c, ns, err := e.client()
	if err != nil {
		return err
	}
	name := o.name
	if name == "" {
		name = strings.ToLower(o.serial)
	}
	cl := &custodyv1alpha1.Claim{
		TypeMeta:   metav1.TypeMeta{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Claim"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: o.serial, Model: o.model,
			Transfer: &custodyv1alpha1.TransferAcceptance{FromTenant: from}},
	}
	suffix := dryRunSuffix(o.dryRun)
	if o.dryRun == dryRunClient {
		fmt.Fprintf(e.streams.Out, "claim.custody.dev/%s created (dry run): %s\n", name, describeClaim(cl, "accepting the transfer offered by tenant "+from))
		return nil
	}
	if err := c.Create(ctx, cl, createOpts(o.dryRun)...); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("a Claim %s already exists in namespace %s: name this one with --name", name, ns)
		}
		return explain(err, "creating the Claim in namespace "+ns)
	}
	fmt.Fprintf(e.streams.Out, "claim.custody.dev/%s created%s\n", name, suffix)
	if o.dryRun != dryRunNone || !o.wait {
		return nil
	}
	return e.waitClaim(ctx, c, cl, o.timeout)
}

func releaseCommand(e *env) *cobra.Command {
	var o transferOptions
	cmd := &cobra.Command{
		Use:   "release CLAIM|SERIAL",
		Short: "Release a device your tenant holds, optionally with a fresh claim code",
		Long: `Release a device held by the tenant whose namespace is -n: it creates a
Transfer with release (tenant Admins only), which ends the binding at once.
The tenant's Claim turns Lost, the device's certificates are refused at the
gateway, and enrolling answers NotBound until a new owner claims it.

A device claimed with its code needs a new code for its next owner: with
--rotate-claim-code the manager makes one, uses up the old one, and writes the
new code to the Secret <transfer>-claim-code in this namespace, to hand on with
the device (this command names the Secret; it never prints the code).

It asks for confirmation, naming the device and the tenant, unless --yes.`,
		Example: `  kubectl custody release sn-0003 -n acme
  kubectl custody release SN-0002 -n acme --rotate-claim-code --yes
  kubectl custody release sn-0002 -n acme --dry-run=server`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.release(cmd.Context(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.rotate, "rotate-claim-code", false, "make a fresh claim code for the next owner (written to a Secret in this namespace)")
	f.BoolVarP(&o.yes, "yes", "y", false, "do not ask for confirmation")
	f.BoolVar(&o.wait, "wait", true, "wait until the release is done")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long --wait waits")
	addDryRunFlag(cmd, &o.dryRun)
	addOutputFlag(cmd, &o.output, "json or yaml (prints the Transfer)")
	return cmd
}

func (e *env) release(ctx context.Context, ref string, o transferOptions) error {
	if err := checkDryRun(o.dryRun); err != nil {
		return err
	}
	if err := checkOutput(o.output, outputTable, outputJSON, outputYAML); err != nil {
		return err
	}
	c, ns, err := e.client()
	if err != nil {
		return err
	}
	cl, err := boundClaim(ctx, c, ns, ref, "released")
	if err != nil {
		return err
	}
	tr := &custodyv1alpha1.Transfer{
		TypeMeta:   metav1.TypeMeta{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Transfer"},
		ObjectMeta: metav1.ObjectMeta{Name: cl.Name + "-release", Namespace: ns},
		Spec:       custodyv1alpha1.TransferSpec{ClaimName: cl.Name, Release: &custodyv1alpha1.TransferRelease{RotateClaimCode: o.rotate}},
	}
	if err := checkFirst(ctx, c, tr, o); err != nil {
		return err
	}
	tenant := tenantOf(ctx, c, ns)
	if err := e.confirm(o.yes || o.dryRun != dryRunNone, fmt.Sprintf("Release %s %s (Device %s) from tenant %s? The binding ends at once and the device's certificates stop working.",
		cl.Spec.Model, cl.Spec.SerialNumber, cl.Status.DeviceName, tenant)); err != nil {
		return err
	}
	waits := o.dryRun == dryRunNone && o.wait
	if err := e.createTransfer(ctx, c, tr, o.dryRun, o.output, waits); err != nil {
		return err
	}
	if !waits {
		return nil
	}
	got, err := e.waitTransfer(ctx, c, tr, o.timeout, o.output, func(p custodyv1alpha1.TransferPhase) bool {
		return p != "" && p != custodyv1alpha1.TransferPhasePending && p != custodyv1alpha1.TransferPhaseOffered
	})
	if err != nil {
		return err
	}
	if got.Status.Phase != custodyv1alpha1.TransferPhaseCompleted {
		return transferFailed(got)
	}
	if o.output != outputTable {
		return nil
	}
	fmt.Fprintf(e.streams.Out, "%s %s released from tenant %s\n", cl.Spec.Model, cl.Spec.SerialNumber, tenant)
	if s := got.Status.ClaimCodeSecretName; s != "" {
		fmt.Fprintf(e.streams.Out, "The new claim code, to hand on with the device, is in Secret %s:\n  kubectl -n %s get secret %s -o jsonpath='{.data.code}' | base64 -d\n", s, ns, s)
	}
	return nil
}

// checkFirst has the API server check tr (RBAC, validation, admission)
// with a dry run before the user is asked to confirm it, so that nobody
// answers a question about something they may not do.
func checkFirst(ctx context.Context, c client.Client, tr *custodyv1alpha1.Transfer, o transferOptions) error {
	if o.yes || o.dryRun != dryRunNone {
		return nil
	}
	if err := c.Create(ctx, tr.DeepCopy(), client.DryRunAll); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("transfer %s already exists in namespace %s: see it with kubectl -n %s get transfer %s (delete it to make a new one)", tr.Name, tr.Namespace, tr.Namespace, tr.Name)
		}
		return explain(err, "creating the Transfer in namespace "+tr.Namespace)
	}
	return nil
}

// createTransfer creates tr (or checks it, for a dry run) and says so. With
// -o it prints the Transfer as created, unless waiting: then waitTransfer
// prints it as decided.
func (e *env) createTransfer(ctx context.Context, c client.Client, tr *custodyv1alpha1.Transfer, dryRun, output string, waiting bool) error {
	if dryRun != dryRunClient {
		if err := c.Create(ctx, tr, createOpts(dryRun)...); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("transfer %s already exists in namespace %s: see it with kubectl -n %s get transfer %s (delete it to make a new one)", tr.Name, tr.Namespace, tr.Namespace, tr.Name)
			}
			return explain(err, "creating the Transfer in namespace "+tr.Namespace)
		}
		tr.APIVersion, tr.Kind = custodyv1alpha1.GroupVersion.String(), "Transfer"
	}
	switch {
	case output == outputTable:
		fmt.Fprintf(e.streams.Out, "transfer.custody.dev/%s created%s\n", tr.Name, dryRunSuffix(dryRun))
	case !waiting:
		return printObject(e.streams.Out, output, tr)
	}
	return nil
}

// waitTransfer waits until done says tr's phase is what the command waits
// for, and returns tr as read then. With -o (output json or yaml) it prints
// that Transfer, status included, whether or not it succeeded.
func (e *env) waitTransfer(ctx context.Context, c client.Client, tr *custodyv1alpha1.Transfer, timeout time.Duration, output string, done func(custodyv1alpha1.TransferPhase) bool) (*custodyv1alpha1.Transfer, error) {
	got := &custodyv1alpha1.Transfer{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(tr), got); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return done(got.Status.Phase), nil
	})
	if wait.Interrupted(err) {
		return nil, fmt.Errorf("transfer %s is still %s after %s; see it with kubectl -n %s get transfer %s", tr.Name, orNone(string(got.Status.Phase)), timeout, tr.Namespace, tr.Name)
	}
	if err != nil {
		return nil, err
	}
	if output != outputTable {
		got.APIVersion, got.Kind = custodyv1alpha1.GroupVersion.String(), "Transfer"
		if err := printObject(e.streams.Out, output, got); err != nil {
			return nil, err
		}
	}
	return got, nil
}

func transferFailed(tr *custodyv1alpha1.Transfer) error {
	reason, message := "", ""
	if ready := meta.FindStatusCondition(tr.Status.Conditions, custodyv1alpha1.ConditionReady); ready != nil {
		reason, message = ready.Reason, ready.Message
	}
	return fmt.Errorf("transfer %s is %s (%s): %s", tr.Name, tr.Status.Phase, reason, message)
}
