package kubectlcustody

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// Output formats (-o), as kubectl names them.
const (
	outputTable = ""
	outputWide  = "wide"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

func addOutputFlag(cmd *cobra.Command, o *string, formats string) {
	cmd.Flags().StringVarP(o, "output", "o", "", "output format: "+formats)
}

func checkOutput(o string, allowed ...string) error {
	for _, a := range allowed {
		if o == a {
			return nil
		}
	}
	return fmt.Errorf("unknown output format %q: use one of %v", o, allowed[1:])
}

// Dry-run modes (--dry-run), as kubectl names them.
const (
	dryRunNone   = "none"
	dryRunClient = "client"
	dryRunServer = "server"
)

func addDryRunFlag(cmd *cobra.Command, d *string) {
	cmd.Flags().StringVar(d, "dry-run", dryRunNone, `"none", "client" (print what would be created, send nothing) or "server" (the API server and Custody's admission webhooks check it, nothing is stored)`)
	cmd.Flags().Lookup("dry-run").NoOptDefVal = dryRunClient
}

func checkDryRun(d string) error {
	switch d {
	case dryRunNone, dryRunClient, dryRunServer:
		return nil
	}
	return fmt.Errorf(`--dry-run must be "none", "client" or "server", not %q`, d)
}

// createOpts are the options of a create for the dry-run mode d (never
// called with client).
func createOpts(d string) []client.CreateOption {
	if d == dryRunServer {
		return []client.CreateOption{client.DryRunAll}
	}
	return nil
}

// dryRunSuffix is what kubectl appends to "created" in a dry run.
func dryRunSuffix(d string) string {
	switch d {
	case dryRunClient:
		return " (dry run)"
	case dryRunServer:
		return " (server dry run)"
	}
	return ""
}

// printObject writes obj as JSON or YAML, without managedFields (as
// kubectl get -o yaml shows objects).
func printObject(w io.Writer, format string, obj any) error {
	if o, ok := obj.(metav1.Object); ok && len(o.GetManagedFields()) > 0 {
		if c, ok := obj.(runtime.Object); ok {
			obj = c.DeepCopyObject()
			obj.(metav1.Object).SetManagedFields(nil)
		}
	}
	var data []byte
	var err error
	if format == outputJSON {
		data, err = json.MarshalIndent(obj, "", "    ")
		data = append(data, '\n')
	} else {
		data, err = yaml.Marshal(obj)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// listOf wraps items in a v1 List, as kubectl prints several objects,
// without their managedFields (as printObject prints one).
func listOf[T any](items []T) map[string]any {
	if items == nil {
		items = []T{}
	}
	for i := range items {
		if o, ok := any(&items[i]).(metav1.Object); ok {
			o.SetManagedFields(nil)
		}
	}
	return map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}, "items": items}
}

// newTable is kubectl's table writer.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
}

// age is kubectl's relative time ("3m", "23h") of t before now; "<none>"
// for no time.
func age(now time.Time, t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "<none>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

// expiry is how long until t ("23h"), "expired" once it is past, "<none>"
// for no time.
func expiry(now time.Time, t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "<none>"
	}
	if !t.After(now) {
		return "expired"
	}
	return duration.HumanDuration(t.Sub(now))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
