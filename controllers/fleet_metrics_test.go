package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestFleetCounts counts Devices by phase and the online bound ones whose
// newest certificate lapses within each window; offline devices, unbound
// ones and older certificates do not count.
func TestFleetCounts(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(d)); return &t }
	dev := func(phase custodyv1alpha1.DevicePhase, bound bool, seen *metav1.Time, notAfter ...time.Duration) *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		d.Status.Phase, d.Status.LastSeen = phase, seen
		if bound {
			d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "acme"}
		}
		for _, na := range notAfter {
			d.Status.Certificates = append(d.Status.Certificates, custodyv1alpha1.DeviceCertificate{NotAfter: *at(na)})
		}
		return d
	}
	objs := []any{
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 30*time.Minute),               // lapsing within 1h
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 3*time.Hour),                  // within 6h only
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 10*time.Minute, 20*time.Hour), // renewed: its newest is fine
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-2*time.Hour), 10*time.Minute),               // offline
		dev(custodyv1alpha1.DevicePhaseBound, true, nil, 10*time.Minute),                            // never seen
		dev(custodyv1alpha1.DevicePhaseReleased, false, at(-time.Minute), 10*time.Minute),           // unbound
		dev(custodyv1alpha1.DevicePhaseDisputed, false, nil),
		dev(custodyv1alpha1.DevicePhaseDisputed, false, nil),
		dev("", false, nil),
		"not a device",
	}
	c := fleetCounts(objs, now)
	want := map[string]int{"Available": 0, "Pending": 0, "Bound": 5, "Disputed": 2, "Released": 1, "Decommissioned": 0, "Unknown": 1}
	if len(c.phases) != len(want) {
		t.Errorf("phases %v, want %v", c.phases, want)
	}
	for p, n := range want {
		if got, ok := c.phases[p]; !ok || got != n {
			t.Errorf("phase %s: %d (reported %v), want %d", p, got, ok, n)
		}
	}
	if c.expiring[0] != 1 || c.expiring[1] != 2 {
		t.Errorf("expiring within 1h and 6h: %v, want [1 2]", c.expiring)
	}
}

// TestFleetCountsShortLivedCertificates: a Tenant may set a certificate
// lifetime as short as 1h (spec.certificates.duration). Its online devices
// renew at two thirds of it, so one that renewed a minute ago holds a
// certificate that lapses within the hour and is fine: it must not count
// among the "online devices whose renewals are not happening" that
// custody_device_certificates_expiring and CustodyDeviceCertificatesExpiring
// report, or the alert fires for as long as such a tenant has a device online.
func TestFleetCountsShortLivedCertificates(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	seen := metav1.NewTime(now.Add(-time.Minute))
	d := &custodyv1alpha1.Device{}
	d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "shortlived"}
	d.Status.Phase, d.Status.LastSeen = custodyv1alpha1.DevicePhaseBound, &seen
	// Issued a minute ago for the tenant's 1h lifetime.
	d.Status.Certificates = []custodyv1alpha1.DeviceCertificate{{NotAfter: metav1.NewTime(now.Add(59 * time.Minute)), Tenant: "shortlived"}}
	if c := fleetCounts([]any{d}, now); c.expiring[0] != 0 || c.expiring[1] != 0 {
		t.Errorf("a device renewed a minute ago under a 1h lifetime counts as expiring (within 1h, 6h): %v, want [0 0]", c.expiring)
	}
}
