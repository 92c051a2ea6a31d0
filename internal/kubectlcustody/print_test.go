package kubectlcustody

import (
	"bytes"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestPrintedObjectsHaveNoManagedFields: -o json|yaml prints objects as
// kubectl get does, without managedFields, one object or a List.
func TestPrintedObjectsHaveNoManagedFields(t *testing.T) {
	c := custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: "sn-0001", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "custody-manager"}}}}
	for _, format := range []string{outputJSON, outputYAML} {
		for what, obj := range map[string]any{"a List": listOf([]custodyv1alpha1.Claim{c}), "one object": c.DeepCopy()} {
			var out bytes.Buffer
			if err := printObject(&out, format, obj); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), "sn-0001") || strings.Contains(out.String(), "managedFields") || strings.Contains(out.String(), "custody-manager") {
				t.Errorf("%s as %s:\n%s", what, format, out.String())
			}
		}
	}
}
