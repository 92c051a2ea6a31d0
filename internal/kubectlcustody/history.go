package kubectlcustody

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/history"
)

func historyCommand(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Work with a device's custody history",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var auditLog, model string
	var anchors []string
	verify := &cobra.Command{
		Use:   "verify DEVICE | verify SERIAL --model MODEL",
		Short: "Verify a device's hash-chained custody history",
		Long: `Verify the custody history of a Device: each entry's hash covers its fields
and the previous entry's hash, and entries are numbered without gaps, so an
edited, reordered, inserted or removed entry is reported, with which entry and
how. It reads the Device from the cluster (support staff and platform
engineers; tenant users cannot read Devices). The Device keeps its newest 32
entries and is checked as a window of the chain.

With --audit-log it checks the complete history in the manager's audit log
(JSON lines) from the first entry instead, without the cluster. An --anchor
(SEQ:HASH of an entry known from elsewhere: a notification the ERP stored, an
earlier audit) also catches entries removed from the end and a rewritten
chain.

It exits non-zero when the history is not intact.`,
		Example: `  kubectl custody history verify xr200.sn-0002
  kubectl custody history verify SN-0002 --model XR200
  kubectl custody history verify xr200.sn-0002 --anchor 6:sha256:1f0c...
  kubectl custody history verify xr200.sn-0002 --audit-log .custody-dev/logs/manager.log`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var as []history.Anchor
			for _, a := range anchors {
				anchor, err := history.ParseAnchor(a)
				if err != nil {
					return err
				}
				as = append(as, anchor)
			}
			name := strings.ToLower(args[0])
			if !strings.Contains(name, ".") {
				if model == "" {
					return fmt.Errorf("which model is %s? Name the Device (e.g. xr200.%s) or add --model", args[0], name)
				}
				name = custodyv1alpha1.DeviceName(model, args[0])
			}
			if auditLog != "" {
				f, err := os.Open(auditLog) //nolint:gosec // the user names the file to read
				if err != nil {
					return err
				}
				defer f.Close()
				return history.VerifyAuditLog(e.streams.Out, f, name, as)
			}
			c, _, err := e.client()
			if err != nil {
				return err
			}
			d := &custodyv1alpha1.Device{}
			if err := c.Get(cmd.Context(), client.ObjectKey{Name: name}, d); err != nil {
				switch {
				case apierrors.IsNotFound(err):
					return fmt.Errorf("no Device %s in the cluster (kubectl custody devices -A lists them)", name)
				case apierrors.IsForbidden(err):
					return fmt.Errorf("reading Device %s needs read access to Devices (ClusterRole custody-support): %w", name, err)
				}
				return err
			}
			return history.Report(e.streams.Out, d.Name, d.Status.History, history.Options{Anchors: as})
		},
	}
	verify.Flags().StringVar(&auditLog, "audit-log", "", "verify the complete history in the manager's log (JSON lines) instead of the Device's")
	verify.Flags().StringVar(&model, "model", "", "the device's model, when it is named by its serial number")
	verify.Flags().StringArrayVar(&anchors, "anchor", nil, "SEQ:HASH of an entry known from elsewhere; repeatable")
	cmd.AddCommand(verify)
	return cmd
}
