package integration

import (
	"context"
	"maps"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestDeviceLabelsSurviveBinding: the manager's cache drops a
// Device's labels and annotations (internal/operator/cache.go). Every
// write the manager makes to a Device on the way to a binding (the Sold
// change, the Claim's binding, the history entries with the derived
// status) must leave the ERP's labels and annotations as they were: a
// write computed from a cached copy that sent the object whole (an Update)
// or a merge patch from an untrimmed to a trimmed copy would wipe them.
func TestDeviceLabelsSurviveBinding(t *testing.T) {
	startManager(t)
	tn := newTenant(t)
	rec := newDeviceRecord(t)
	labels := map[string]string{"erp.example/site": "hamburg", "erp.example/batch": "b-17"}
	annotations := map[string]string{
		"erp.example/note": "pallet 4",
		"kubectl.kubernetes.io/last-applied-configuration": `{"apiVersion":"custody.dev/v1alpha1","kind":"Device"}`,
	}
	rec.Device.Labels, rec.Device.Annotations = maps.Clone(labels), maps.Clone(annotations)
	rec.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: strings.ToUpper(uniq("SO")), Buyer: custodyv1alpha1.Buyer{Name: "Buyer", Contact: "ops@buyer.example"}, OwnerTenant: tn.Name}
	if err := admin.Create(context.Background(), rec.Device, client.FieldOwner(erpOwner)); err != nil {
		t.Fatal(err)
	}
	cl := &custodyv1alpha1.Claim{}
	cl.Namespace, cl.Name = tn.Status.Namespace, rec.Device.Name
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	d := getDevice(t, rec.Device.Name)
	if d.Spec.ClaimRef == nil || d.Status.Phase != custodyv1alpha1.DevicePhaseBound {
		t.Fatalf("device not bound: %+v, phase %s", d.Spec.ClaimRef, d.Status.Phase)
	}
	if len(d.Status.History) < 2 {
		t.Fatalf("expected the Sold and Bound entries in the history, got %d entries", len(d.Status.History))
	}
	if !maps.Equal(d.Labels, labels) {
		t.Errorf("labels after binding: %v, want %v", d.Labels, labels)
	}
	if !maps.Equal(d.Annotations, annotations) {
		t.Errorf("annotations after binding: %v, want %v", d.Annotations, annotations)
	}
	assertChain(t, d.Name)
}
