package custody

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/history"
)

var (
	now   = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	by    = By{Actor: "user:alice", Time: now}
	acme  = Holder{Tenant: "acme", Namespace: "tenant-acme", Name: "c1", UID: "uid-acme"}
	globe = Holder{Tenant: "globex", Namespace: "tenant-globex", Name: "c2", UID: "uid-globex"}
	third = Holder{Tenant: "initech", Namespace: "tenant-initech", Name: "c3", UID: "uid-initech"}
)

func device(mutate ...func(*custodyv1alpha1.Device)) *custodyv1alpha1.Device {
	d := &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: "xr200-sn1", UID: "dev-uid"},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN1", Model: "XR200", ClaimCode: &custodyv1alpha1.DeviceClaimCode{Verifier: "v1"}}}
	for _, m := range mutate {
		m(d)
	}
	return d
}

func boundTo(h Holder) func(*custodyv1alpha1.Device) {
	return func(d *custodyv1alpha1.Device) {
		ref := h.ref(timeRef(now.Add(-time.Hour)))
		d.Spec.ClaimRef = &ref
	}
}

func pending(h Holder) func(*custodyv1alpha1.Device) {
	return func(d *custodyv1alpha1.Device) {
		d.Spec.PendingClaim = &custodyv1alpha1.PendingClaim{DeviceClaimReference: h.ref(nil), Proof: "ClaimCode", Until: metav1.NewTime(now)}
	}
}

func disputedBy(hs ...Holder) func(*custodyv1alpha1.Device) {
	return func(d *custodyv1alpha1.Device) {
		d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.NewTime(now)}
		for _, h := range hs {
			d.Spec.Dispute.Claims = append(d.Spec.Dispute.Claims, custodyv1alpha1.DisputedClaim{DeviceClaimReference: h.ref(nil), Proof: "ClaimCode"})
		}
	}
}

func decommissioned(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }

// TestChangesRefuseWhatTheDeviceDoesNotAllow: each change checks the
// observed Device itself, so that a decision taken from an older
// observation never moves ownership.
func TestChangesRefuseWhatTheDeviceDoesNotAllow(t *testing.T) {
	cases := map[string]func() error{
		"bind a bound device": func() error { _, err := Bind(device(boundTo(globe)), acme, "ClaimCode", Consume{}, by); return err },
		"bind a decommissioned device": func() error {
			_, err := Bind(device(decommissioned), acme, "ClaimCode", Consume{}, by)
			return err
		},
		"bind a disputed device": func() error {
			_, err := Bind(device(disputedBy(globe, third)), acme, "ClaimCode", Consume{}, by)
			return err
		},
		"bind over another's cooling-off": func() error {
			_, err := Bind(device(pending(globe)), acme, "ClaimCode", Consume{}, by)
			return err
		},
		"reattach to another tenant": func() error { _, err := Reattach(device(boundTo(globe)), acme, ProofRetained, by); return err },
		"reattach the same Claim":    func() error { _, err := Reattach(device(boundTo(acme)), acme, ProofRetained, by); return err },
		"cool off on a bound device": func() error {
			_, err := StartCoolingOff(device(boundTo(globe)), acme, "ClaimCode", now, by)
			return err
		},
		"dispute with nobody": func() error { _, err := Dispute(device(), acme, "ClaimCode", by); return err },
		"dispute one's own cooling-off": func() error {
			_, err := Dispute(device(pending(acme)), acme, "ClaimCode", by)
			return err
		},
		"dispute twice": func() error {
			_, err := Dispute(device(disputedBy(acme, globe)), acme, "ClaimCode", by)
			return err
		},
		"withdraw a stranger":             func() error { _, err := Withdraw(device(pending(globe)), acme.UID, by); return err },
		"transfer from a Claim not bound": func() error { _, err := Transfer(device(boundTo(globe)), acme, third, "ns/t", by); return err },
		"transfer a decommissioned device": func() error {
			_, err := Transfer(device(boundTo(acme), decommissioned), acme, globe, "ns/t", by)
			return err
		},
		"release another's binding":        func() error { _, err := Release(device(boundTo(globe)), acme, "ClaimDeleted", "", "", by); return err },
		"release an unbound device":        func() error { _, err := Release(device(), Holder{}, "TenantDeleted", "", "", by); return err },
		"award a decommissioned device":    func() error { _, err := Award(device(decommissioned), acme, "supportaction/a", "why", by); return err },
		"decommission a device in service": func() error { _, err := Decommission(device(boundTo(acme)), by); return err },
		"record a sale twice": func() error {
			_, err := RecordSale(device(func(d *custodyv1alpha1.Device) {
				d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-1"}
				d.Spec.Custody = &custodyv1alpha1.DeviceCustody{RecordedSale: "PO-1"}
			}), by)
			return err
		},
		"restore a device that was not restored": func() error {
			_, err := Restore(device(func(d *custodyv1alpha1.Device) { d.Spec.Custody = &custodyv1alpha1.DeviceCustody{DeviceUID: "dev-uid"} }), nil, "velero", by)
			return err
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			if err := f(); !errors.Is(err, ErrNotApplicable) {
				t.Fatalf("got %v, want ErrNotApplicable", err)
			}
		})
	}
	full := make([]Holder, MaxDisputeClaims)
	for i := range full {
		full[i] = Holder{Tenant: "t", Namespace: "n", Name: "c", UID: types.UID(rune('a' + i))}
	}
	if _, err := Dispute(device(disputedBy(full...)), acme, "ClaimCode", by); !errors.Is(err, ErrDisputeFull) {
		t.Fatalf("a full dispute took another claim: %v", err)
	}
}

// TestChanges checks each change's new spec and its history entry.
func TestChanges(t *testing.T) {
	digest := claimcode.Digest("v1")
	type want struct {
		claimRef  *Holder
		boundAt   *time.Time
		pending   *types.UID
		dispute   []types.UID
		consumed  []string
		sales     []string
		verifier  string
		record    custodyv1alpha1.CustodyRecord
		eventType string
	}
	hour := now.Add(-time.Hour)
	cases := []struct {
		name   string
		change func() (Change, error)
		want   want
	}{
		{"bind by code", func() (Change, error) {
			return Bind(device(func(d *custodyv1alpha1.Device) { d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-1"} }), acme, "ClaimCode", Consume{Code: true}, by)
		}, want{claimRef: &acme, boundAt: &now, consumed: []string{digest},
			record: custodyv1alpha1.CustodyRecord{Type: "Bound", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "ClaimCode", Actor: "user:alice"}, eventType: "Normal"}},
		{"bind by sale record after cooling off", func() (Change, error) {
			return Bind(device(pending(acme), func(d *custodyv1alpha1.Device) { d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-1"} }), acme, "SaleRecord", Consume{Sale: true}, by)
		}, want{claimRef: &acme, boundAt: &now, sales: []string{"PO-1"},
			record: custodyv1alpha1.CustodyRecord{Type: "Bound", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "SaleRecord", Actor: "user:alice"}, eventType: "Normal"}},
		{"reattach", func() (Change, error) {
			old := acme
			old.UID, old.Name = "uid-old", "c0"
			return Reattach(device(boundTo(old)), acme, ProofRetained, by)
		}, want{claimRef: &acme, boundAt: &now,
			record: custodyv1alpha1.CustodyRecord{Type: "Reattached", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: ProofRetained, Actor: "user:alice"}, eventType: "Normal"}},
		{"cooling-off", func() (Change, error) { return StartCoolingOff(device(), acme, "Possession", now.Add(time.Hour), by) },
			want{pending: &acme.UID, record: custodyv1alpha1.CustodyRecord{Type: "Claimed", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Possession", Actor: "user:alice"}, eventType: "Normal"}},
		{"dispute opens with the pending claim", func() (Change, error) { return Dispute(device(pending(globe)), acme, "ClaimCode", by) },
			want{dispute: []types.UID{globe.UID, acme.UID}, record: custodyv1alpha1.CustodyRecord{Type: "Disputed", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "ClaimCode", Actor: "user:alice"}, eventType: "Warning"}},
		{"withdraw from a dispute", func() (Change, error) {
			return Withdraw(device(disputedBy(globe, acme, third)), acme.UID, By{Time: now})
		}, want{dispute: []types.UID{globe.UID, third.UID}, record: custodyv1alpha1.CustodyRecord{Type: "Withdrawn", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "ClaimDeleted", Actor: "tenant:acme"}, eventType: "Normal"}},
		{"withdraw the last disputed claim", func() (Change, error) { return Withdraw(device(disputedBy(acme)), acme.UID, by) },
			want{record: custodyv1alpha1.CustodyRecord{Type: "Withdrawn", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "ClaimDeleted", Actor: "user:alice"}, eventType: "Normal"}},
		{"transfer", func() (Change, error) { return Transfer(device(boundTo(acme)), acme, globe, "tenant-acme/t1", by) },
			want{claimRef: &globe, boundAt: &now, record: custodyv1alpha1.CustodyRecord{Type: "Transferred", Tenant: "globex", FromTenant: "acme", Claim: "tenant-globex/c2", ClaimUID: "uid-globex", Proof: "Transfer", Reference: "tenant-acme/t1", Actor: "user:alice"}, eventType: "Normal"}},
		{"release with a new code", func() (Change, error) {
			return Release(device(boundTo(acme)), acme, "Transfer", "tenant-acme/t1", "v2", by)
		},
			want{consumed: []string{digest}, verifier: "v2", record: custodyv1alpha1.CustodyRecord{Type: "Released", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Transfer", Reference: "tenant-acme/t1", Actor: "user:alice"}, eventType: "Normal"}},
		{"award to the bound claim keeps its start", func() (Change, error) {
			return Award(device(boundTo(acme)), acme, "supportaction/a1", "invoice shown", by)
		}, want{claimRef: &acme, boundAt: &hour, consumed: []string{digest},
			record: custodyv1alpha1.CustodyRecord{Type: "Resolved", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Award", Reference: "supportaction/a1", Reason: "invoice shown", Actor: "user:alice"}, eventType: "Normal"}},
		{"award settles a dispute", func() (Change, error) {
			return Award(device(disputedBy(globe, acme)), acme, "supportaction/a1", "invoice shown", by)
		}, want{claimRef: &acme, boundAt: &now, consumed: []string{digest},
			record: custodyv1alpha1.CustodyRecord{Type: "Resolved", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Award", Reference: "supportaction/a1", Reason: "invoice shown", Actor: "user:alice"}, eventType: "Normal"}},
		{"award moves a binding", func() (Change, error) {
			return Award(device(boundTo(globe)), acme, "supportaction/a1", "stolen", by)
		}, want{claimRef: &acme, boundAt: &now, consumed: []string{digest},
			record: custodyv1alpha1.CustodyRecord{Type: "Resolved", Tenant: "acme", FromTenant: "globex", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Award", Reference: "supportaction/a1", Reason: "stolen", Actor: "user:alice"}, eventType: "Normal"}},
		{"reset", func() (Change, error) {
			return Reset(device(boundTo(acme), pending(globe)), "supportaction/r1", "stolen", by), nil
		},
			want{consumed: []string{digest}, record: custodyv1alpha1.CustodyRecord{Type: "Resolved", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Reset", Reference: "supportaction/r1", Reason: "stolen", Actor: "user:alice"}, eventType: "Normal"}},
		{"decommission", func() (Change, error) { return Decommission(device(boundTo(acme), decommissioned), by) },
			want{record: custodyv1alpha1.CustodyRecord{Type: "Decommissioned", Tenant: "acme", Claim: "tenant-acme/c1", ClaimUID: "uid-acme", Proof: "Decommissioned", Actor: "user:alice"}, eventType: "Normal"}},
		{"sale", func() (Change, error) {
			return RecordSale(device(func(d *custodyv1alpha1.Device) {
				d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-1", CustodianTenant: "wholesale"}
			}), By{Actor: "erp:sap", Time: now})
		}, want{record: custodyv1alpha1.CustodyRecord{Type: "Sold", Tenant: "wholesale", Reference: "PO-1", Proof: "Custodian", Actor: "erp:sap"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := tc.change()
			if err != nil {
				t.Fatal(err)
			}
			s := ch.Spec
			switch {
			case tc.want.claimRef == nil && s.ClaimRef != nil:
				t.Errorf("claimRef %+v, want none", s.ClaimRef)
			case tc.want.claimRef != nil && (s.ClaimRef == nil || HolderOf(*s.ClaimRef) != *tc.want.claimRef):
				t.Errorf("claimRef %+v, want %+v", s.ClaimRef, tc.want.claimRef)
			case tc.want.boundAt != nil && (s.ClaimRef.BoundAt == nil || !s.ClaimRef.BoundAt.Time.Equal(*tc.want.boundAt)):
				t.Errorf("boundAt %v, want %v", s.ClaimRef.BoundAt, tc.want.boundAt)
			}
			if (tc.want.pending == nil) != (s.PendingClaim == nil) || (s.PendingClaim != nil && s.PendingClaim.UID != *tc.want.pending) {
				t.Errorf("pendingClaim %+v, want %v", s.PendingClaim, tc.want.pending)
			}
			var dispute []types.UID
			if s.Dispute != nil {
				for _, p := range s.Dispute.Claims {
					dispute = append(dispute, p.UID)
				}
			}
			if !equal(dispute, tc.want.dispute) {
				t.Errorf("dispute %v, want %v", dispute, tc.want.dispute)
			}
			if !equal(s.ConsumedClaimCodes, tc.want.consumed) || !equal(s.ConsumedSaleRecords, tc.want.sales) {
				t.Errorf("consumed codes %v sales %v, want %v %v", s.ConsumedClaimCodes, s.ConsumedSaleRecords, tc.want.consumed, tc.want.sales)
			}
			if tc.want.verifier != "" && (s.ClaimCode == nil || s.ClaimCode.Verifier != tc.want.verifier) {
				t.Errorf("claimCode %+v, want verifier %s", s.ClaimCode, tc.want.verifier)
			}
			rec := ch.Record
			if !rec.Time.Time.Equal(now) {
				t.Errorf("record time %v", rec.Time)
			}
			rec.Time = metav1.Time{}
			if rec != tc.want.record {
				t.Errorf("record\n %+v\nwant\n %+v", rec, tc.want.record)
			}
			if tc.want.eventType != "" && (ch.Event == nil || ch.Event.Type != tc.want.eventType || ch.Event.Note == "") {
				t.Errorf("event %+v, want type %s", ch.Event, tc.want.eventType)
			}
		})
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRestoreFollowsRecreatedClaims: a Device re-created from a backup
// carries its chain on, and its binding, cooling-off and dispute follow
// the Claims the restore re-created (by namespace and name) where they
// exist.
func TestRestoreFollowsRecreatedClaims(t *testing.T) {
	head := history.Link(nil, custodyv1alpha1.CustodyRecord{Type: "Bound", Time: metav1.NewTime(now), Tenant: "acme", ClaimUID: acme.UID})
	d := device(boundTo(acme), func(d *custodyv1alpha1.Device) {
		d.UID = "new-device-uid"
		d.Spec.Custody = &custodyv1alpha1.DeviceCustody{Head: head, DeviceUID: "old-device-uid"}
	})
	if !RestorePending(d) {
		t.Fatal("a Device with a new UID is not seen as restored")
	}
	ch, err := Restore(d, map[string]types.UID{"tenant-acme/c1": "uid-acme-restored"}, "velero", By{Actor: "restore:velero", Time: now})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Spec.ClaimRef.UID != "uid-acme-restored" || !ch.Spec.ClaimRef.BoundAt.Time.Equal(now.Add(-time.Hour)) {
		t.Fatalf("binding after restore %+v: it must follow the re-created Claim and keep its start", ch.Spec.ClaimRef)
	}
	if r := ch.Record; r.Type != custodyv1alpha1.CustodyEventRestored || r.ClaimUID != "uid-acme-restored" || r.Actor != "restore:velero" || r.Reference != "velero" {
		t.Fatalf("restore recorded as %+v", r)
	}
	if d.Spec.ClaimRef.UID != acme.UID {
		t.Fatal("Restore changed the observed Device")
	}
}

// TestRecordsIncludeAnUncompletedHead: a change whose status entry is not
// written yet is already part of the device's history for every reader.
func TestRecordsIncludeAnUncompletedHead(t *testing.T) {
	first := history.Link(nil, custodyv1alpha1.CustodyRecord{Type: "Sold", Time: metav1.NewTime(now), Reference: "PO-1"})
	second := history.Link(&first, custodyv1alpha1.CustodyRecord{Type: "Released", Time: metav1.NewTime(now), Reference: "ns/t1"})
	d := device(func(d *custodyv1alpha1.Device) {
		d.Status.History = []custodyv1alpha1.CustodyRecord{first}
		d.Spec.Custody = &custodyv1alpha1.DeviceCustody{Head: second, DeviceUID: d.UID}
	})
	if Completed(d) || len(Records(d)) != 2 || !Recorded(d, func(h custodyv1alpha1.CustodyRecord) bool { return h.Reference == "ns/t1" }) {
		t.Fatal("the head that status.history lacks is not among the records")
	}
	d.Status.History = append(d.Status.History, second)
	if !Completed(d) || len(Records(d)) != 2 {
		t.Fatal("a completed head is counted twice")
	}
	if len(d.Status.History) != 2 || cap(Records(d)) < 2 {
		t.Fatal("Records changed the history")
	}
}
