package custody

import (
	"reflect"
	"testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

func TestPurgesDue(t *testing.T) {
	e := func(seq int64, typ custodyv1alpha1.CustodyEventType, tenant, from, proof string) custodyv1alpha1.CustodyRecord {
		return custodyv1alpha1.CustodyRecord{Sequence: seq, Type: typ, Tenant: tenant, FromTenant: from, Proof: proof}
	}
	bound := func(tenant string) *custodyv1alpha1.DeviceClaimReference {
		return &custodyv1alpha1.DeviceClaimReference{Tenant: tenant}
	}
	for name, c := range map[string]struct {
		history []custodyv1alpha1.CustodyRecord
		holder  *custodyv1alpha1.DeviceClaimReference
		want    []PurgeDue
	}{
		"bound, never left": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", "ClaimCode")}, bound("acme"), nil},
		"transferred": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Transferred", "globex", "acme", "Transfer")}, bound("globex"),
			[]PurgeDue{{"acme", 2}}},
		"transferred and purged": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Transferred", "globex", "acme", ""), e(3, "DataPurged", "acme", "", "")}, bound("globex"), nil},
		"purged before a second ownership ended": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Released", "acme", "", ""), e(3, "DataPurged", "acme", "", ""),
			e(4, "Bound", "acme", "", ""), e(5, "Released", "acme", "", "")}, nil, []PurgeDue{{"acme", 5}}},
		"released":                  {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Released", "acme", "", "ClaimDeleted")}, nil, []PurgeDue{{"acme", 2}}},
		"decommissioned":            {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Decommissioned", "acme", "", "Decommissioned")}, nil, []PurgeDue{{"acme", 2}}},
		"decommissioned, unbound":   {[]custodyv1alpha1.CustodyRecord{e(1, "Decommissioned", "", "", "Decommissioned")}, nil, nil},
		"awarded away":              {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Resolved", "globex", "acme", ProofAward)}, bound("globex"), []PurgeDue{{"acme", 2}}},
		"awarded to the holder":     {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Resolved", "acme", "", ProofAward)}, bound("acme"), nil},
		"reset":                     {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Resolved", "acme", "", ProofReset)}, nil, []PurgeDue{{"acme", 2}}},
		"back with the same tenant": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "acme", "", ""), e(2, "Released", "acme", "", ""), e(3, "Bound", "acme", "", "")}, bound("acme"), nil},
		"two tenants, oldest first": {[]custodyv1alpha1.CustodyRecord{e(1, "Bound", "a", "", ""), e(2, "Transferred", "b", "a", ""), e(3, "Transferred", "c", "b", "")}, bound("c"),
			[]PurgeDue{{"a", 2}, {"b", 3}}},
	} {
		d := &custodyv1alpha1.Device{}
		d.Status.History, d.Spec.ClaimRef = c.history, c.holder
		if got := PurgesDue(d); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
}
