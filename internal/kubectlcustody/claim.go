package kubectlcustody

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/contract"
)

// errCodeOnArgv is the answer to a claim code on the command line. It
// never repeats what was passed.
var errCodeOnArgv = errors.New("a claim code is never taken from the command line (shell history and the process list would keep it): " +
	"run the command without it and type the code at the prompt, or pipe it on stdin: kubectl custody claim SERIAL --model MODEL < code.txt")

// maxCodeInput bounds what is read from stdin for a code.
const maxCodeInput = 256

func claimCommand(e *env) *cobra.Command {
	var o claimOptions
	var codeFlag string
	cmd := &cobra.Command{
		Use:   "claim SERIAL --model MODEL | claim DEVICE",
		Short: "Claim a device with the claim code from its box",
		Long: `Claim a device for the tenant whose namespace is -n, with the claim code
printed under the scratch-off on its label.

The code is read from a prompt (not echoed) when stdin is a terminal, or from
stdin when it is piped. It is never accepted on the command line, and never
printed. It goes into a Secret (<claim>-code) that the Claim points at; the
manager checks it against the Device's verifier and deletes the Secret once
the code is used.

The device is named by its serial number and --model (as printed on the
label), or by its Device name (xr200.sn-0002). The Claim is named after the
serial number in lower case (sn-0002) unless --name says otherwise.

With --wait (the default) it waits up to --timeout for the manager's decision
and prints it: Bound, or why not. A wrong code and an unknown serial number get
the same answer, and a tenant that keeps failing is locked out for a while.
A code with a typo (a wrong check character) is caught here and nothing is
created.

With --possession no code is asked for: the Claim waits for the device to
prove it holds its factory key, and this prints the pairing code to give the
device (the device then confirms the Claim through the gateway).

--release-policy says what deleting the Claim later does: Retain (the default:
the device stays the tenant's) or Release (deleting the Claim ends the
binding).

Exit status: 0 when the device is bound (or, with --possession, waits for
it); 2 when the Claim is not decided yet (it stays Pending, or --timeout
passed first: the manager decides it later by itself); 1 otherwise, a
denied Claim included.`,
		Example: `  # Type the code at the prompt:
  kubectl custody claim SN-0002 --model XR200 -n acme
  # Pipe it (from a password manager, a file, ...):
  awk -F': *' '/Claim code/ {print $2}' /tmp/sn-0002/label.txt | kubectl custody claim xr200.sn-0002 -n acme
  # By possession: prints the pairing code for the device:
  kubectl custody claim SN-0003 --model XR200 -n acme --possession
  # Check with the API server and the admission webhooks, store nothing:
  kubectl custody claim SN-0002 --model XR200 -n acme --dry-run=server < code.txt`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("code") || cmd.Flags().Changed("claim-code") || len(args) > 1 {
				return errCodeOnArgv
			}
			if len(args) == 1 && isClaimCode(args[0]) {
				return errCodeOnArgv
			}
			if len(args) != 1 {
				return errors.New("name the device: kubectl custody claim SERIAL --model MODEL (or claim DEVICE, e.g. xr200.sn-0002)")
			}
			model, serial, err := deviceArg(args[0], o.model)
			if err != nil {
				return err
			}
			o.model, o.serial = model, serial
			return e.claim(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "the device's model, as on its label (e.g. XR200)")
	f.StringVar(&o.name, "name", "", "the Claim's name (default: the serial number in lower case)")
	f.BoolVar(&o.possession, "possession", false, "claim by possession instead of a code: the device proves it holds its factory key when given the pairing code this prints")
	f.StringVar(&o.releasePolicy, "release-policy", "", "what deleting the Claim does: Retain (default) or Release")
	f.BoolVar(&o.wait, "wait", true, "wait for the manager's decision and print it")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long --wait waits")
	addDryRunFlag(cmd, &o.dryRun)
	// There is no way to give the code as a flag: this one only refuses.
	f.StringVar(&codeFlag, "code", "", "")
	_ = f.MarkHidden("code")
	f.StringVar(&codeFlag, "claim-code", "", "")
	_ = f.MarkHidden("claim-code")
	return cmd
}

type claimOptions struct {
	model, serial, name, releasePolicy, dryRun string
	wait, possession                           bool
	timeout                                    time.Duration
}

// isClaimCode reports whether arg, or its part after a model's ".", is a
// well-formed claim code: typed where the serial number goes, it must not
// reach the cluster (as a Secret's name) or an error message. The admission
// webhook refuses such serial numbers anyway.
func isClaimCode(arg string) bool {
	if _, err := claimcode.Parse(arg); err == nil {
		return true
	}
	if _, s, ok := strings.Cut(arg, "."); ok {
		if _, err := claimcode.Parse(s); err == nil {
			return true
		}
	}
	return false
}

// deviceArg reads SERIAL (with --model) or a Device name (model.serial).
func deviceArg(arg, model string) (string, string, error) {
	serial := arg
	if m, s, ok := strings.Cut(arg, "."); ok {
		if model != "" && !strings.EqualFold(model, m) {
			return "", "", fmt.Errorf("device %s is of model %s, not %s", arg, strings.ToUpper(m), model)
		}
		model, serial = strings.ToUpper(m), strings.ToUpper(s)
	}
	if model == "" {
		return "", "", fmt.Errorf("which model is %s? Add --model (as on the label, e.g. --model XR200) or name the Device (e.g. xr200.%s)", arg, strings.ToLower(arg))
	}
	if !contract.ValidSerialNumber(serial) {
		return "", "", fmt.Errorf("%q is not a serial number as printed on a label (upper-case letters, digits and '-', e.g. SN-0002)", serial)
	}
	if !contract.ValidModel(model) {
		return "", "", fmt.Errorf("%q is not a model as printed on a label (upper-case letters, digits and '-', e.g. XR200)", model)
	}
	return model, serial, nil
}

// readCode reads the claim code from a prompt or from stdin.
func (e *env) readCode(ctx context.Context, serial string) (claimcode.Code, error) {
	var raw string
	if fd, ok := e.stdinTerminal(); ok {
		fmt.Fprintf(e.streams.ErrOut, "Claim code for %s (under the label's scratch-off; not shown as you type): ", serial)
		b, err := readPassword(ctx, fd)
		fmt.Fprintln(e.streams.ErrOut)
		if err != nil {
			return "", fmt.Errorf("reading the claim code: %w", err)
		}
		raw = string(b)
	} else {
		line, err := bufio.NewReader(io.LimitReader(e.streams.In, maxCodeInput)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading the claim code from stdin: %w", err)
		}
		raw = line
	}
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", errors.New("no claim code: type it at the prompt, or pipe it on stdin (only the first line is read)")
	}
	code, err := claimcode.Parse(raw)
	if err != nil {
		return "", errors.New("that is not a well-formed claim code (wrong length, a character a code never has, or a wrong check character: most likely a typo); check it against the label. Nothing was created, and it does not count as a failed attempt")
	}
	return code, nil
}

// readPassword reads a line from the terminal fd with echo off. Ctrl-C
// (ctx cancelled) gives up and turns echo back on, which term.ReadPassword
// alone would leave to the Enter key.
func readPassword(ctx context.Context, fd int) ([]byte, error) {
	state, err := term.GetState(fd)
	if err != nil {
		return nil, err
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := term.ReadPassword(fd)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-ctx.Done():
		_ = term.Restore(fd, state)
		return nil, errors.New("interrupted")
	}
}

func (e *env) claim(ctx context.Context, o claimOptions) error {
	if err := checkDryRun(o.dryRun); err != nil {
		return err
	}
	switch o.releasePolicy {
	case "", string(custodyv1alpha1.ReleasePolicyRetain), string(custodyv1alpha1.ReleasePolicyRelease):
	default:
		return fmt.Errorf("--release-policy must be Retain or Release, not %q", o.releasePolicy)
	}
	if o.possession {
		return e.claimByPossession(ctx, o)
	}
	code, err := e.readCode(ctx, o.serial)
	if err != nil {
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
	secret := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name + "-code", Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": "kubectl-custody"}},
		StringData: map[string]string{"code": code.String()},
	}
	cl := &custodyv1alpha1.Claim{
		TypeMeta:   metav1.TypeMeta{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Claim"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: o.serial, Model: o.model,
			ClaimCode:     &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: secret.Name}},
			ReleasePolicy: custodyv1alpha1.ReleasePolicy(o.releasePolicy)},
	}
	out := e.streams.Out
	if o.dryRun == dryRunClient {
		fmt.Fprintf(out, "secret/%s created (dry run): the claim code, not shown\nclaim.custody.dev/%s created (dry run): %s\n",
			secret.Name, name, describeClaim(cl, "code from secret "+secret.Name+" (key code)"))
		return nil
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(cl), &custodyv1alpha1.Claim{}); err == nil {
		return fmt.Errorf("a Claim %s already exists in namespace %s: name this one with --name, or see it with kubectl -n %s get claim %s", name, ns, ns, name)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{}); err == nil {
		return fmt.Errorf("secret %s already exists in namespace %s (left from an earlier claim?): delete it, or name this Claim with --name", secret.Name, ns)
	}
	// The code's Secret first, then the Claim, so that the manager finds
	// the code when it first looks (a Claim made first would wait, and be
	// counted, in ClaimCodeSecretNotFound). Then the Claim is made the
	// Secret's owner: deleting the Claim deletes its code. A Claim the API
	// server refuses leaves no code behind: its Secret is deleted, or
	// emptied where the user may not delete Secrets (tenant Operators).
	if err := c.Create(ctx, secret, createOpts(o.dryRun)...); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("secret %s already exists in namespace %s (left from an earlier claim?): delete it, or name this Claim with --name", secret.Name, ns)
		}
		return explain(err, "creating the code's Secret in namespace "+ns)
	}
	if err := c.Create(ctx, cl, createOpts(o.dryRun)...); err != nil {
		if o.dryRun == dryRunNone {
			e.withdrawCode(ctx, c, secret)
		}
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("a Claim %s already exists in namespace %s: name this one with --name, or see it with kubectl -n %s get claim %s", name, ns, ns, name)
		}
		return explain(err, "creating the Claim in namespace "+ns)
	}
	if o.dryRun == dryRunNone {
		owned := secret.DeepCopy()
		owned.OwnerReferences = []metav1.OwnerReference{{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Claim", Name: cl.Name, UID: cl.UID}}
		// Not found: the manager has used the code and deleted it already.
		if err := client.IgnoreNotFound(c.Patch(ctx, owned, client.MergeFrom(secret))); err != nil {
			fmt.Fprintf(e.streams.ErrOut, "Warning: the Claim could not be made the owner of its code's Secret %s (%v); the manager deletes it once the code is used, or delete it yourself.\n", secret.Name, err)
		}
	}
	suffix := dryRunSuffix(o.dryRun)
	fmt.Fprintf(out, "secret/%s created%s\nclaim.custody.dev/%s created%s\n", secret.Name, suffix, name, suffix)
	if o.dryRun != dryRunNone || !o.wait {
		return nil
	}
	return e.waitClaim(ctx, c, cl, o.timeout)
}

// withdrawCode removes the claim code of a Claim the API server refused:
// it deletes the code's Secret, or, where the user may not delete Secrets
// (tenant Operators), empties it, and says which.
func (e *env) withdrawCode(ctx context.Context, c client.Client, secret *corev1.Secret) {
	err := c.Delete(ctx, secret)
	if err == nil || apierrors.IsNotFound(err) {
		fmt.Fprintf(e.streams.ErrOut, "The Secret %s that held the claim code was deleted.\n", secret.Name)
		return
	}
	empty := client.RawPatch(types.MergePatchType, []byte(`{"data":null}`))
	if perr := c.Patch(ctx, secret.DeepCopy(), empty); perr != nil {
		fmt.Fprintf(e.streams.ErrOut, "Warning: the Secret %s still holds the claim code and could not be deleted (%v) or emptied (%v): have a tenant Admin delete it (kubectl -n %s delete secret %s).\n",
			secret.Name, err, perr, secret.Namespace, secret.Name)
		return
	}
	fmt.Fprintf(e.streams.ErrOut, "The Secret %s no longer holds the claim code, but you may not delete it: until a tenant Admin does (kubectl -n %s delete secret %s), claim again with --name and another name.\n",
		secret.Name, secret.Namespace, secret.Name)
}

// claimByPossession creates a Claim with possession: {} and prints the
// pairing code to give the device.
func (e *env) claimByPossession(ctx context.Context, o claimOptions) error {
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
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: o.serial, Model: o.model, Possession: &custodyv1alpha1.PossessionProof{},
			ReleasePolicy: custodyv1alpha1.ReleasePolicy(o.releasePolicy)},
	}
	if o.dryRun != dryRunClient {
		if err := c.Create(ctx, cl, createOpts(o.dryRun)...); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("a Claim %s already exists in namespace %s: name this one with --name", name, ns)
			}
			return explain(err, "creating the Claim in namespace "+ns)
		}
	}
	if o.dryRun == dryRunClient {
		fmt.Fprintf(e.streams.Out, "claim.custody.dev/%s created (dry run): %s\n", name, describeClaim(cl, "by possession (the device proves it with the pairing code the Claim will show)"))
		return nil
	}
	fmt.Fprintf(e.streams.Out, "claim.custody.dev/%s created%s\n", name, dryRunSuffix(o.dryRun))
	if o.dryRun != dryRunNone || !o.wait {
		return nil
	}
	return e.waitClaim(ctx, c, cl, o.timeout)
}

// describeClaim says what a Claim a client dry run did not send would
// ask for: the device, the tenant namespace, the proof, the release policy.
func describeClaim(cl *custodyv1alpha1.Claim, proof string) string {
	policy := cl.Spec.ReleasePolicy
	if policy == "" {
		policy = custodyv1alpha1.ReleasePolicyRetain
	}
	return fmt.Sprintf("%s %s for tenant namespace %s, %s, release policy %s", cl.Spec.Model, cl.Spec.SerialNumber, cl.Namespace, proof, policy)
}

// waitClaim waits for the manager's decision on cl and prints it. A Denied
// Claim is an error; one that stays Pending is ErrUndecided.
func (e *env) waitClaim(ctx context.Context, c client.Client, cl *custodyv1alpha1.Claim, timeout time.Duration) error {
	got := &custodyv1alpha1.Claim{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		if got.Status.ObservedGeneration < got.Generation || got.Status.Phase == "" {
			return false, nil
		}
		return got.Status.Phase != custodyv1alpha1.ClaimPhasePending || waitsForSomeone(got), nil
	})
	reason, message := "", ""
	if ready := meta.FindStatusCondition(got.Status.Conditions, custodyv1alpha1.ConditionReady); ready != nil {
		reason, message = ready.Reason, ready.Message
	}
	if err != nil {
		if wait.Interrupted(err) {
			return fmt.Errorf("%w: claim %s is still %s after %s (%s: %s); see it with kubectl -n %s get claim %s", ErrUndecided, cl.Name, orNone(string(got.Status.Phase)), timeout, orNone(reason), message, cl.Namespace, cl.Name)
		}
		return err
	}
	fmt.Fprintf(e.streams.Out, "claim %s: %s (%s): %s\n", cl.Name, got.Status.Phase, reason, message)
	switch got.Status.Phase {
	case custodyv1alpha1.ClaimPhaseAwaitingDevice:
		if got.Status.Pairing != nil {
			fmt.Fprintf(e.streams.Out, "Give the device this pairing code before %s (custody-device pair --code %s); it confirms the Claim when it next reaches the gateway.\n",
				got.Status.Pairing.ExpiresAt.UTC().Format(time.RFC3339), got.Status.Pairing.Code)
		}
	case custodyv1alpha1.ClaimPhasePending:
		fmt.Fprintf(e.streams.Out, "The Claim stays Pending and is decided by itself once that changes: kubectl -n %s get claim %s\n", cl.Namespace, cl.Name)
		return fmt.Errorf("%w: claim %s is Pending (%s)", ErrUndecided, cl.Name, reason)
	case custodyv1alpha1.ClaimPhaseDenied:
		return fmt.Errorf("claim %s was denied (%s): it is final; a new attempt needs a new Claim", cl.Name, reason)
	}
	return nil
}

// waitsForSomeone reports whether a Pending Claim waits for something
// that does not come within a --wait: the end of a lockout after failed
// attempts, or another tenant's transfer offer.
func waitsForSomeone(cl *custodyv1alpha1.Claim) bool {
	ready := meta.FindStatusCondition(cl.Status.Conditions, custodyv1alpha1.ConditionReady)
	return ready != nil && (ready.Reason == custodyv1alpha1.ClaimReasonThrottled || ready.Reason == custodyv1alpha1.ClaimReasonNoTransferOffer)
}

// findClaim finds the Claim named ref in ns, or else the one for the
// serial number ref that holds its device (or the newest).
func findClaim(ctx context.Context, c client.Client, ns, ref string) (*custodyv1alpha1.Claim, error) {
	cl := &custodyv1alpha1.Claim{}
	err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: ref}, cl)
	if err == nil {
		return cl, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, explain(err, "reading Claim "+ref+" in namespace "+ns)
	}
	serial := strings.ToUpper(ref)
	if _, s, ok := strings.Cut(ref, "."); ok {
		serial = strings.ToUpper(s)
	}
	var list custodyv1alpha1.ClaimList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, explain(err, "listing the Claims in namespace "+ns)
	}
	var found *custodyv1alpha1.Claim
	for i := range list.Items {
		it := &list.Items[i]
		if it.Spec.SerialNumber != serial {
			continue
		}
		if found == nil || it.Status.Phase == custodyv1alpha1.ClaimPhaseBound ||
			(found.Status.Phase != custodyv1alpha1.ClaimPhaseBound && it.CreationTimestamp.After(found.CreationTimestamp.Time)) {
			found = it
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no Claim for %s in namespace %s (kubectl custody devices -n %s lists them)", ref, ns, ns)
	}
	return found, nil
}
