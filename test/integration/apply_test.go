package integration

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestERPReapplyKeepsBinding: the ERP (or a GitOps pipeline) re-applies its
// Device manifest with server-side apply, forcing ownership, after the
// device was bound. The manager's binding and consumed code survive, because
// the ERP's manifest never owned them.
func TestERPReapplyKeepsBinding(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDeviceRecord(t)
	apply := func() {
		t.Helper()
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(rec.Device)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: raw}
		unstructured.RemoveNestedField(u.Object, "status")
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		if err := admin.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("erp"), client.ForceOwnership); err != nil {
			t.Fatal(err)
		}
	}
	apply()
	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)

	rec.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-7", Buyer: custodyv1alpha1.Buyer{Name: "Acme"}}
	apply()
	d := getDevice(t, rec.Device.Name)
	if d.Spec.Sale == nil || d.Spec.Sale.OrderReference != "PO-7" {
		t.Fatal("the ERP's apply did not take effect")
	}
	if d.Spec.ClaimRef == nil || d.Spec.ClaimRef.Tenant != tn.Name || len(d.Spec.ConsumedClaimCodes) != 1 {
		t.Fatalf("re-applying the ERP manifest changed the binding: %+v %v", d.Spec.ClaimRef, d.Spec.ConsumedClaimCodes)
	}
}
