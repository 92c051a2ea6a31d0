package custody

import (
	"fmt"
	"sort"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// PurgeDue is a tenant whose ownership of a device ended (at history entry
// After) and whose data-plane account has not been purged of the device
// since.
type PurgeDue struct {
	Tenant string
	After  int64
}

// LeftTenant returns the tenant whose ownership an entry ended, "" if it
// ended none: the previous holder of a transfer or of an award to another
// Claim, the holder a release, reset or decommissioning unbound.
func LeftTenant(e custodyv1alpha1.CustodyRecord) string {
	switch e.Type {
	case custodyv1alpha1.CustodyEventTransferred:
		return e.FromTenant
	case custodyv1alpha1.CustodyEventResolved:
		if e.FromTenant != "" {
			return e.FromTenant
		}
		if e.Proof == ProofReset {
			return e.Tenant
		}
	case custodyv1alpha1.CustodyEventReleased, custodyv1alpha1.CustodyEventDecommissioned:
		return e.Tenant
	}
	return ""
}

// PurgesDue returns, oldest first, the tenants whose ownership of d ended
// without a DataPurged entry for them after it. A tenant that holds the
// device again is not due: its account is the device's rightful place.
func PurgesDue(d *custodyv1alpha1.Device) []PurgeDue {
	left, purged := map[string]int64{}, map[string]int64{}
	for _, e := range Records(d) {
		if t := LeftTenant(e); t != "" {
			left[t] = e.Sequence
		}
		if e.Type == custodyv1alpha1.CustodyEventDataPurged && e.Tenant != "" {
			purged[e.Tenant] = e.Sequence
		}
	}
	var due []PurgeDue
	for t, seq := range left {
		if purged[t] > seq || (d.Spec.ClaimRef != nil && d.Spec.ClaimRef.Tenant == t) {
			continue
		}
		due = append(due, PurgeDue{Tenant: t, After: seq})
	}
	sort.Slice(due, func(i, j int) bool { return due[i].After < due[j].After })
	return due
}

// DataPurged records that the data plane closed the device's connections
// in tenant's account and purged what it held of the device, after the
// ownership that entry after ended. The device's ownership does not change.
func DataPurged(d *custodyv1alpha1.Device, due PurgeDue, closed int, what string, by By) (Change, error) {
	if due.Tenant == "" {
		return Change{}, notApplicable("no tenant to record a purge for")
	}
	c := change(d, custodyv1alpha1.CustodyEventDataPurged, by)
	c.Record.Tenant = due.Tenant
	c.Record.Reference = fmt.Sprintf("history entry %d", due.After)
	c.Record.Reason = fmt.Sprintf("%d data-plane connection(s) closed; %s", closed, what)
	c.Event = &Event{Type: "Normal", Reason: "DataPurged", Action: "CutOff",
		Note: fmt.Sprintf("Tenant %s's data-plane access to the device ended: %s.", due.Tenant, c.Record.Reason)}
	return c, nil
}
