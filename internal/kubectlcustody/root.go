// Package kubectlcustody is the kubectl plugin `kubectl custody`: the
// commands a platform engineer, a tenant user or support staff run from
// kubectl alone (devices, claim, transfer, release, history verify,
// pairing-token create, label). cmd/kubectl-custody only calls Run.
//
// It talks to the API server with the caller's kubeconfig and kubectl's
// flags (--kubeconfig, --context, -n, --as, --as-group, ...), so RBAC and
// impersonation behave as they do for kubectl. It never accepts a claim
// code on the command line and never prints one it was given.
package kubectlcustody

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/scheme"
)

// Streams are the plugin's standard streams.
type Streams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
}

// ErrAborted is returned when the user answers no to a confirmation.
var ErrAborted = errors.New("aborted: nothing was changed")

// ErrUndecided: a Claim waited on is neither bound nor denied; it stays
// Pending, and is decided by itself once what it waits for changes (a
// lockout ending, a transfer offer). kubectl-custody exits 2 for it, 1 for
// other errors, so that a script can tell "not yet" from "no".
var ErrUndecided = errors.New("not decided yet")

// Run runs `kubectl custody` with args (without the program name).
func Run(ctx context.Context, args []string, streams Streams) error {
	cmd := NewCommand(streams)
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}

// env is what every command shares: the streams and the connection to
// the cluster, made on first use so that commands that need no cluster
// (label DIR, history verify --audit-log) work without one.
type env struct {
	streams   Streams
	loading   *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
	now       func() time.Time
	config    clientcmd.ClientConfig
}

func (e *env) clientConfig() clientcmd.ClientConfig {
	if e.config == nil {
		e.config = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(e.loading, &e.overrides)
	}
	return e.config
}

// client returns a client for the cluster and the namespace to work in
// (-n, else the kubeconfig context's, else "default").
func (e *env) client() (client.Client, string, error) {
	cfg, err := e.clientConfig().ClientConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := e.clientConfig().Namespace()
	if err != nil {
		return nil, "", err
	}
	cfg.UserAgent = "kubectl-custody"
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, "", err
	}
	return c, ns, nil
}

// stdinTerminal reports whether stdin is an interactive terminal, and its
// descriptor.
func (e *env) stdinTerminal() (int, bool) {
	f, ok := e.streams.In.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd()) //nolint:gosec // a file descriptor fits an int
	return fd, term.IsTerminal(fd)
}

// NewCommand builds the command tree.
func NewCommand(streams Streams) *cobra.Command {
	e := &env{streams: streams, loading: clientcmd.NewDefaultClientConfigLoadingRules(), now: time.Now}
	root := &cobra.Command{
		Use:         "custody",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl custody"},
		Short:       "Custody from kubectl: devices, claims, transfers, releases, histories, pairing tokens, labels",
		Long: `kubectl custody works with Custody (custody.dev) as a person does: it lists a
tenant's devices with their owner, last seen and certificate expiry, claims a
device with the code from its box (read from a prompt or stdin, never from the
command line), offers a device to another tenant or accepts one, releases a
device, verifies a device's custody history, makes pairing tokens and prints
device labels.

It uses your kubeconfig and kubectl's flags (-n, --context, --as, ...), so it
can do exactly what your RBAC lets you do: tenant users work in their tenant's
namespace, support staff and platform engineers also read Devices (-A).`,
		Example: `  kubectl custody devices -n acme
  kubectl custody devices -A -o wide
  kubectl custody claim SN-0002 --model XR200 -n acme
  kubectl custody transfer sn-0002 --to globex -n acme
  kubectl custody transfer accept SN-0002 --model XR200 --from acme -n globex
  kubectl custody release sn-0003 -n acme
  kubectl custody history verify xr200.sn-0002
  kubectl custody pairing-token create -n acme --usage-limit 50
  kubectl custody label /tmp/sn-0002`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	flags := root.PersistentFlags()
	flags.StringVar(&e.loading.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	clientcmd.BindOverrideFlags(&e.overrides, flags, clientcmd.RecommendedConfigOverrideFlags(""))
	root.AddCommand(devicesCommand(e), claimCommand(e), transferCommand(e), releaseCommand(e), historyCommand(e), pairingTokenCommand(e), labelCommand(e))
	return root
}

// confirm asks question on stderr and reads the answer from stdin; only
// "y" or "yes" agrees. With yes set it agrees without asking.
func (e *env) confirm(yes bool, question string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(e.streams.ErrOut, "%s [y/N]: ", question)
	var answer string
	if _, err := fmt.Fscanln(e.streams.In, &answer); err != nil && answer == "" {
		fmt.Fprintln(e.streams.ErrOut)
		return fmt.Errorf("%w (no answer on stdin; pass --yes to skip the question)", ErrAborted)
	}
	if answer != "y" && answer != "Y" && answer != "yes" {
		return ErrAborted
	}
	return nil
}

// tenantOf is the name of the Tenant whose namespace is ns: from the label
// the manager puts on the tenant's trust bundle, which every tenant role may
// read; else from the Namespace's label (platform engineers); else ns, the
// default (a Tenant's namespace is its name unless spec.namespace says
// otherwise).
func tenantOf(ctx context.Context, c client.Client, ns string) string {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: contract.TrustBundleName}, cm); err == nil {
		if t := cm.Labels[custodyv1alpha1.LabelTenant]; t != "" {
			return t
		}
	}
	n := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKey{Name: ns}, n); err == nil {
		if t := n.Labels[custodyv1alpha1.LabelTenant]; t != "" {
			return t
		}
	}
	return ns
}
