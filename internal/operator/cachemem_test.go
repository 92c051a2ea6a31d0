package operator

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/factory"
)

// wireDevices returns n Devices as the API server sends them to the
// manager's informer: an unbound device the ERP applied (server-side apply,
// with kubectl's last-applied annotation when lastApplied) with two labels
// of its own, its status computed by the manager, managedFields for both.
func wireDevices(t testing.TB, n int, lastApplied bool) [][]byte {
	t.Helper()
	rec, err := factory.Manufacture("XR200", "SN-TEMPLATE")
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, n)
	now := metav1.NewTime(time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC))
	for i := range out {
		d := rec.Device.DeepCopy()
		d.Spec.SerialNumber = fmt.Sprintf("SN-%08d", i)
		d.Name = custodyv1alpha1.DeviceName(d.Spec.Model, d.Spec.SerialNumber)
		d.UID = types.UID(fmt.Sprintf("0c5d6f0e-1b2a-4c3d-9e8f-%012d", i))
		d.ResourceVersion = fmt.Sprint(100000 + i)
		d.Generation = 1
		d.CreationTimestamp = now
		d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: fmt.Sprintf("SO-%08d", i), Buyer: custodyv1alpha1.Buyer{Name: "Wholesale Ltd", Contact: "orders@wholesale.example"}}
		d.Labels = map[string]string{"erp.example.com/region": "emea", "erp.example.com/order": d.Spec.Sale.OrderReference}
		d.ManagedFields = []metav1.ManagedFieldsEntry{
			{Manager: "erp", Operation: metav1.ManagedFieldsOperationApply, APIVersion: "custody.dev/v1alpha1", Time: &now, FieldsType: "FieldsV1",
				FieldsV1: metav1.NewFieldsV1(`{"f:spec":{"f:claimCode":{"f:verifier":{}},"f:identity":{"f:publicKey":{}},"f:model":{},"f:sale":{"f:buyer":{"f:contact":{},"f:name":{}},"f:orderReference":{}},"f:serialNumber":{}}}`)},
			{Manager: "custody-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "custody.dev/v1alpha1", Time: &now, FieldsType: "FieldsV1", Subresource: "status",
				FieldsV1: metav1.NewFieldsV1(`{"f:status":{".":{},"f:conditions":{".":{},"k:{\"type\":\"Claimable\"}":{".":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Ready\"}":{".":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}}},"f:observedGeneration":{},"f:phase":{}}}`)},
		}
		if lastApplied {
			spec, _ := json.Marshal(map[string]any{"apiVersion": "custody.dev/v1alpha1", "kind": "Device", "metadata": map[string]any{"name": d.Name}, "spec": d.Spec})
			d.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": string(spec)}
		}
		controllers.DeviceStatus(d, nil)
		d.Status.ObservedGeneration = 1
		for j := range d.Status.Conditions {
			d.Status.Conditions[j].LastTransitionTime = now
		}
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = raw
	}
	return out
}

// heapPerDevice decodes the Devices as an informer does, passes each
// through transform (when set), keeps them in an indexer with the
// manager's Device index, and returns the live heap bytes per Device.
func heapPerDevice(t testing.TB, wire [][]byte, transform toolscache.TransformFunc) float64 {
	t.Helper()
	indexer := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{
		"field:spec.claimRef.tenant": func(o any) ([]string, error) {
			if ref := o.(*custodyv1alpha1.Device).Spec.ClaimRef; ref != nil {
				return []string{ref.Tenant}, nil
			}
			return nil, nil
		},
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, raw := range wire {
		d := &custodyv1alpha1.Device{}
		if err := json.Unmarshal(raw, d); err != nil {
			t.Fatal(err)
		}
		var obj any = d
		if transform != nil {
			var err error
			if obj, err = transform(obj); err != nil {
				t.Fatal(err)
			}
		}
		if err := indexer.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(indexer)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(len(wire))
}

// TestCachedDeviceSize reports the manager's heap per cached Device
// (unbound, as the ERP applied it) without a transform, with
// controller-runtime's managedFields strip alone, and with the manager's
// transform; it checks only that the manager's transform keeps what the
// controllers read and costs no more than the strip alone. Sizes are
// reported, not asserted (they depend on the Go runtime).
func TestCachedDeviceSize(t *testing.T) {
	const n = 2000
	for _, lastApplied := range []bool{false, true} {
		wire := wireDevices(t, n, lastApplied)
		none := heapPerDevice(t, wire, nil)
		strip := heapPerDevice(t, wire, func(o any) (any, error) {
			if m, ok := o.(client.Object); ok {
				m.SetManagedFields(nil)
			}
			return o, nil
		})
		ours := heapPerDevice(t, wire, cacheTransform)
		t.Logf("heap per cached Device (kubectl last-applied annotation: %v; %d bytes on the wire): untrimmed %.0f B, managedFields stripped %.0f B, the manager's transform %.0f B",
			lastApplied, len(wire[0]), none, strip, ours)
	}
}

// TestCacheTransformKeepsWhatControllersRead: the manager's transform
// takes from a Device only its managedFields, labels and annotations
// (kubectl's last-applied copy of the spec among them); everything else is
// as the API server sent it.
func TestCacheTransformKeepsWhatControllersRead(t *testing.T) {
	raw := wireDevices(t, 1, true)[0]
	want, got := &custodyv1alpha1.Device{}, &custodyv1alpha1.Device{}
	for _, d := range []*custodyv1alpha1.Device{want, got} {
		if err := json.Unmarshal(raw, d); err != nil {
			t.Fatal(err)
		}
		d.Annotations["erp.example.com/order"] = "SO-1"
		d.Labels = map[string]string{"erp.example.com/region": "emea"}
	}
	if _, err := cacheTransform(got); err != nil {
		t.Fatal(err)
	}
	if got.ManagedFields != nil || got.Labels != nil || got.Annotations != nil {
		t.Errorf("managedFields, labels or annotations kept: %v %v %v", got.ManagedFields, got.Labels, got.Annotations)
	}
	want.ManagedFields, want.Labels, want.Annotations = nil, nil, nil
	if !equality.Semantic.DeepEqual(want, got) {
		t.Errorf("the transform changed more than it should:\n%+v\nwant\n%+v", got, want)
	}
}

// TestCacheTransformKeepsOtherKindsMetadata: only Devices lose labels and
// annotations; the manager reads those of Claims, CertificateRequests,
// Secrets and ConfigMaps.
func TestCacheTransformKeepsOtherKindsMetadata(t *testing.T) {
	c := &custodyv1alpha1.Claim{}
	c.Labels = map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}
	c.Annotations = map[string]string{"a": "b"}
	c.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	if _, err := cacheTransform(c); err != nil {
		t.Fatal(err)
	}
	if c.ManagedFields != nil || c.Labels[custodyv1alpha1.LabelManagedBy] != custodyv1alpha1.ManagedByValue || c.Annotations["a"] != "b" {
		t.Fatalf("a Claim's metadata was trimmed: %+v", c.ObjectMeta)
	}
}
