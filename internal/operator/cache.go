package operator

import (
	"unique"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// annotationLastApplied is kubectl's copy of what was last applied with
// client-side apply: a second copy of the spec that no controller reads.
const annotationLastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// cacheTransform trims every object the manager caches before it is
// stored: nobody reads managedFields. A Device, the one kind cached by the
// hundred thousand, loses more (docs/operations.md, "Memory"):
//   - kubectl's last-applied annotation, a second copy of its spec (safe:
//     the manager only ever patches Devices, computing each patch from two
//     trimmed copies, so the annotation is never written back without it);
//   - its own copies of the strings many Devices repeat (model, buyer,
//     tenant, phase, condition types, reasons and messages, label keys and
//     values): they are interned, so 100,000 Devices share one copy of
//     each.
func cacheTransform(obj any) (any, error) {
	o, ok := obj.(client.Object)
	if !ok {
		return obj, nil
	}
	o.SetManagedFields(nil)
	d, ok := obj.(*custodyv1alpha1.Device)
	if !ok {
		return obj, nil
	}
	if _, ok := d.Annotations[annotationLastApplied]; ok {
		delete(d.Annotations, annotationLastApplied)
		if len(d.Annotations) == 0 {
			d.Annotations = nil
		}
	}
	if len(d.Labels) > 0 {
		labels := make(map[string]string, len(d.Labels))
		for k, v := range d.Labels {
			labels[intern(k)] = intern(v)
		}
		d.Labels = labels
	}
	d.Spec.Model = intern(d.Spec.Model)
	if s := d.Spec.Sale; s != nil {
		s.Buyer.Name, s.Buyer.Contact = intern(s.Buyer.Name), intern(s.Buyer.Contact)
		s.CustodianTenant, s.OwnerTenant = intern(s.CustodianTenant), intern(s.OwnerTenant)
	}
	if r := d.Spec.ClaimRef; r != nil {
		r.Tenant, r.Namespace = intern(r.Tenant), intern(r.Namespace)
	}
	d.Status.Phase = custodyv1alpha1.DevicePhase(intern(string(d.Status.Phase)))
	internConditions(d.Status.Conditions)
	return obj, nil
}

func internConditions(cs []metav1.Condition) {
	for i := range cs {
		c := &cs[i]
		c.Type, c.Reason, c.Message = intern(c.Type), intern(c.Reason), intern(c.Message)
		c.Status = metav1.ConditionStatus(intern(string(c.Status)))
	}
}

// intern returns the one canonical copy of s.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}
