package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

func day(string) time.Duration { return 24 * time.Hour }

// TestFleetCounts counts Devices by phase and the online bound ones whose
// newest certificate is overdue for renewal (under a quarter of its
// lifetime left); offline devices, unbound ones and renewed ones do not
// count.
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
			d.Status.Certificates = append(d.Status.Certificates, custodyv1alpha1.DeviceCertificate{NotAfter: *at(na), Tenant: "acme"})
		}
		return d
	}
	objs := []any{
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 30*time.Minute),               // overdue: 30 min of 24 h left
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), -time.Hour),                   // expired while online: overdue
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 7*time.Hour),                  // a third left: due, not overdue
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-time.Minute), 10*time.Minute, 20*time.Hour), // renewed: its newest is fine
		dev(custodyv1alpha1.DevicePhaseBound, true, at(-2*time.Hour), 10*time.Minute),               // offline
		dev(custodyv1alpha1.DevicePhaseBound, true, nil, 10*time.Minute),                            // never seen
		dev(custodyv1alpha1.DevicePhaseReleased, false, at(-time.Minute), 10*time.Minute),           // unbound
		dev(custodyv1alpha1.DevicePhaseDisputed, false, nil),
		dev(custodyv1alpha1.DevicePhaseDisputed, false, nil),
		dev("", false, nil),
		"not a device",
	}
	c := fleetCounts(objs, now, day)
	want := map[string]int{"Available": 0, "Pending": 0, "Bound": 6, "Disputed": 2, "Released": 1, "Decommissioned": 0, "Unknown": 1}
	if len(c.phases) != len(want) {
		t.Errorf("phases %v, want %v", c.phases, want)
	}
	for p, n := range want {
		if got, ok := c.phases[p]; !ok || got != n {
			t.Errorf("phase %s: %d (reported %v), want %d", p, got, ok, n)
		}
	}
	if c.overdue != 2 {
		t.Errorf("overdue: %d, want 2", c.overdue)
	}
}

// TestFleetCountsShortLivedCertificates: a tenant's own lifetime decides
// when a certificate is overdue, so a 1-hour lifetime neither raises the
// alert on a freshly renewed device nor hides one whose renewals stopped.
func TestFleetCountsShortLivedCertificates(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	seen := metav1.NewTime(now.Add(-time.Minute))
	lifetime := func(tenant string) time.Duration {
		if tenant == "shortlived" {
			return time.Hour
		}
		return 24 * time.Hour
	}
	device := func(left time.Duration) *custodyv1alpha1.Device {
		d := &custodyv1alpha1.Device{}
		d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "shortlived"}
		d.Status.Phase, d.Status.LastSeen = custodyv1alpha1.DevicePhaseBound, &seen
		d.Status.Certificates = []custodyv1alpha1.DeviceCertificate{{NotAfter: metav1.NewTime(now.Add(left)), Tenant: "shortlived"}}
		return d
	}
	// Issued a minute ago for the tenant's 1h lifetime.
	if c := fleetCounts([]any{device(59 * time.Minute)}, now, lifetime); c.overdue != 0 {
		t.Errorf("a device renewed a minute ago under a 1h lifetime counts as overdue: %d", c.overdue)
	}
	// 10 minutes of the hour left: it should have renewed 10 minutes ago.
	if c := fleetCounts([]any{device(10 * time.Minute)}, now, lifetime); c.overdue != 1 {
		t.Errorf("a device with 10 minutes of a 1h certificate left is not overdue: %d", c.overdue)
	}
}

// TestOnlyTheLeaderReportsTheFleet: every replica keeps the cache, and the
// fleet must be counted once, by the leader; a follower reports nothing.
// The leader reports every phase and the overdue count, with a Tenant's
// own certificate lifetime.
func TestOnlyTheLeaderReportsTheFleet(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	seen := metav1.NewTime(now.Add(-time.Minute))
	d := &custodyv1alpha1.Device{}
	d.Name = "xr200.sn-0001"
	d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "shortlived"}
	d.Status.Phase, d.Status.LastSeen = custodyv1alpha1.DevicePhaseBound, &seen
	// 20 minutes left: overdue under the default 24 h (under 6 h left),
	// not under the tenant's 1 h (over 15 minutes left).
	d.Status.Certificates = []custodyv1alpha1.DeviceCertificate{{NotAfter: metav1.NewTime(now.Add(20 * time.Minute)), Tenant: "shortlived"}}
	tenant := &custodyv1alpha1.Tenant{}
	tenant.Name = "shortlived"
	tenant.Spec.Certificates = &custodyv1alpha1.CertificatePolicy{Duration: &metav1.Duration{Duration: time.Hour}}
	devices, tenants := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc), toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	if err := devices.Add(d); err != nil {
		t.Fatal(err)
	}
	if err := tenants.Add(tenant); err != nil {
		t.Fatal(err)
	}
	stores := func(o client.Object) (toolscache.Store, bool) {
		if _, ok := o.(*custodyv1alpha1.Tenant); ok {
			return tenants, true
		}
		return devices, true
	}
	elected := make(chan struct{})
	f := &fleetCollector{}
	f.source.Store(&fleetSource{store: stores, clock: clocktesting.NewFakePassiveClock(now), elected: elected, lifetime: 24 * time.Hour})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(f)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("a follower reported %d fleet series (%v)", n, err)
	}
	close(elected)
	want := `
# HELP custody_device_certificates_renewal_overdue Bound Devices seen at the gateway within the last hour whose newest certificate has less than a quarter of its lifetime left (a device renews with a third left): online devices whose renewals are not happening. Reported by the leader.
# TYPE custody_device_certificates_renewal_overdue gauge
custody_device_certificates_renewal_overdue 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "custody_device_certificates_renewal_overdue"); err != nil {
		t.Errorf("20 minutes left of the tenant's 1 h lifetime is not overdue: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "custody_devices"); err != nil || n != 6 {
		t.Errorf("the leader reported %d custody_devices series (%v), want every phase: 6", n, err)
	}
	tenant.Spec.Certificates = nil // the default 24 h: 20 minutes left is overdue
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "overdue 0", "overdue 1", 1)), "custody_device_certificates_renewal_overdue"); err != nil {
		t.Error(err)
	}
}

// TestProofStarts keeps the first look at a proof, forgets it when the
// proof finishes, and drops starts of proofs that never finished once the
// map is full.
func TestProofStarts(t *testing.T) {
	var s proofStarts
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	s.start("a", t0)
	s.start("a", t0.Add(time.Second)) // a later reconcile of the same proof
	if got, ok := s.finish("a"); !ok || !got.Equal(t0) {
		t.Fatalf("finish(a) = %v, %v; want the first look, %v", got, ok, t0)
	}
	if _, ok := s.finish("a"); ok {
		t.Fatal("a finished proof is remembered")
	}
	for i := range maxProofStarts {
		s.start(types.UID(fmt.Sprint("old-", i)), t0)
	}
	s.start("new", t0.Add(2*time.Hour))
	if n := len(s.m); n != 1 {
		t.Fatalf("%d starts kept after the map filled with hour-old ones, want 1", n)
	}
}
