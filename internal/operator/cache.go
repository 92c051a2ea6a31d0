package operator

import (
	"unique"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// cacheTransform trims every object the manager caches before it is
// stored: nobody reads managedFields. A Device, the one kind cached by the
// hundred thousand, loses more (docs/operations.md, "Memory"):
//   - its labels and annotations (kubectl's last-applied annotation is a
//     second copy of its spec; an ERP's labels cost a map per Device): no
//     controller, webhook or data-plane rule reads a Device's labels or
//     annotations (a DataAccess selects by its Claims' labels), and the
//     manager only ever patches Devices, computing each patch from two
//     trimmed copies, so neither is ever written back without them;
//   - its own copies of the strings many Devices repeat (model, buyer,
//     tenant, phase, condition types, reasons and messages): they are
//     interned, so 100,000 Devices share one copy of each.
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
	d.Labels, d.Annotations = nil, nil
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
