package kubectlcustody

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/custody-dev/custody/internal/claim"
)

func pairingTokenCommand(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pairing-token",
		Short: "Make pairing tokens for device-first claiming",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var req claim.PairingTokenRequest
	var output, dryRun string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a pairing token and print it for field staff",
		Long: `Create a pairing token for the tenant whose namespace is -n: a typed Secret
(custody.dev/pairing-token, named pairing-token-<id>) with an expiry, a usage
limit and an optional list of serial numbers, created in the namespace (tenant
Operators and Admins). Field staff give the token to each device at
installation (custody-device pair --token ...); the device then claims itself
for the tenant.

The token is printed alone on stdout, for field staff; keep it as you would a
password. What was created goes to stderr. A --dry-run prints no token: none
was stored, so none would pair a device.

With -o yaml|json the Secret is printed instead of created (apply it
yourself; as kubectl's --dry-run=client -o yaml does), and the token goes to
stderr: it works once the Secret is applied. --dry-run=server -o yaml has the
API server check the Secret first.

Uses and revocations are recorded by the manager in the ConfigMap
custody-pairing-tokens; revoke a token by deleting its Secret.`,
		Example: `  kubectl custody pairing-token create -n acme --usage-limit 50 --expires-in 72h
  TOKEN=$(kubectl custody pairing-token create -n acme --serials SN-0301,SN-0302)
  kubectl custody pairing-token create -n acme -o yaml > token.yaml 2> token.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, outputTable, outputJSON, outputYAML); err != nil {
				return err
			}
			if err := checkDryRun(dryRun); err != nil {
				return err
			}
			ns, _, err := e.clientConfig().Namespace()
			if err != nil {
				return err
			}
			req.Namespace = ns
			if req.Tenant == "" {
				// The tenant of -n from the cluster when it can be asked, also
				// for -o and --dry-run=client (a tenant's namespace need not be
				// its name); else -n.
				req.Tenant = ns
				if c, _, err := e.client(); err == nil {
					ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
					req.Tenant = tenantOf(ctx, c, ns)
					cancel()
				}
			}
			s, tok, err := claim.NewPairingTokenSecret(req, e.now())
			if err != nil {
				return err
			}
			if output != outputTable {
				if dryRun == dryRunServer {
					// The API server checks the Secret (RBAC, validation)
					// and stores nothing; what is printed is still for
					// applying.
					c, _, err := e.client()
					if err != nil {
						return err
					}
					if err := c.Create(cmd.Context(), s.DeepCopy(), createOpts(dryRun)...); err != nil {
						return explain(err, "checking the pairing token's Secret in namespace "+ns)
					}
				}
				if err := printObject(e.streams.Out, output, s); err != nil {
					return err
				}
				fmt.Fprintf(e.streams.ErrOut, "Apply the Secret in namespace %s. Give field staff this token (custody-device pair --token ...):\n%s\n", ns, tok)
				return nil
			}
			until := s.StringData[claim.TokenKeyExpiration]
			if dryRun != dryRunClient {
				c, _, err := e.client()
				if err != nil {
					return err
				}
				if err := c.Create(cmd.Context(), s, createOpts(dryRun)...); err != nil {
					return explain(err, "creating the pairing token's Secret in namespace "+ns)
				}
			}
			fmt.Fprintf(e.streams.ErrOut, "secret/%s created%s in namespace %s: tenant %s, %d device(s), until %s.\n",
				s.Name, dryRunSuffix(dryRun), ns, req.Tenant, req.UsageLimit, until)
			if dryRun != dryRunNone {
				// Nothing was stored: a token printed now would pair no
				// device, and field staff must never be handed one.
				fmt.Fprintln(e.streams.ErrOut, "No token is printed: a dry run stores none that a device could use. Run again without --dry-run to make one.")
				return nil
			}
			fmt.Fprintln(e.streams.ErrOut, "Give field staff this token (custody-device pair --token ...):")
			_, err = fmt.Fprintln(e.streams.Out, tok)
			return err
		},
	}
	f := create.Flags()
	f.StringVar(&req.Tenant, "tenant", "", "the Tenant whose devices the token claims (default: the one whose namespace is -n)")
	f.DurationVar(&req.ExpiresIn, "expires-in", 72*time.Hour, "how long the token is valid")
	f.IntVar(&req.UsageLimit, "usage-limit", 1, "how many devices the token may claim")
	f.StringVar(&req.Serials, "serials", "", "comma-separated serial numbers the token is limited to (default: any)")
	addOutputFlag(create, &output, "json or yaml (print the Secret instead of creating it)")
	addDryRunFlag(create, &dryRun)
	cmd.AddCommand(create)
	return cmd
}
