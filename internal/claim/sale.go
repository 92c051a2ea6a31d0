package claim

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// DirectSaleTenant names the Tenant whose direct-sale Claim the manager may
// open for d, "" when there is none to open: the sale names an owner
// tenant (a direct sale, not one to a custodian, which makes its own
// sale-record Claim), the sale record is unused, and the device is not
// decommissioned, bound, cooling off or disputed. DirectSaleClaim decides
// the rest once the Tenant is read.
func DirectSaleTenant(d *custodyv1alpha1.Device) string {
	sale := d.Spec.Sale
	if sale == nil || sale.OwnerTenant == "" || sale.CustodianTenant != "" || d.Spec.Decommissioned ||
		d.Spec.ClaimRef != nil || d.Spec.PendingClaim != nil || d.Spec.Dispute != nil || SaleConsumed(d) {
		return ""
	}
	return sale.OwnerTenant
}

// DirectSaleClaim returns the Claim the manager opens for a direct sale of
// d to Tenant t, or nil when it opens none: DirectSaleTenant must name t,
// t must be ready (tenantReady: Ready and not being deleted), and p, the
// effective policy for d and t (Effective), must allow sale-record proofs.
// The Claim is a sale-record Claim in t's namespace, named after the
// device, labelled as the manager's and retained on deletion; the claim
// controller decides it like any other (decideSaleRecord). A Claim of that
// name that already exists is not replaced: the caller creates this one
// only if there is none.
func DirectSaleClaim(d *custodyv1alpha1.Device, t *custodyv1alpha1.Tenant, tenantReady bool, p Policy) *custodyv1alpha1.Claim {
	if t == nil || !tenantReady || DirectSaleTenant(d) != t.Name || p.SaleRecordForbidden {
		return nil
	}
	return &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: d.Name, Namespace: t.TargetNamespace(),
			Labels: map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: d.Spec.SerialNumber, Model: d.Spec.Model, SaleRecord: &custodyv1alpha1.SaleRecordProof{},
			ReleasePolicy: custodyv1alpha1.ReleasePolicyRetain},
	}
}
