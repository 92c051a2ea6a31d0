package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	testingclock "k8s.io/utils/clock/testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

func device(name, version string) *custodyv1alpha1.Device {
	return &custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: version}}
}

// The cache is stale exactly while a version the API server holds has not
// arrived through the watch for longer than the bound, and each arrival is
// observed as lag.
func TestFreshnessMeasuresTheWatch(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Unix(1_800_000_000, 0))
	reg := prometheus.NewPedanticRegistry()
	f := newFreshness(clk, time.Second, reg)
	h := f.handler()

	cache := map[string]string{}
	cached := func(name string) (string, bool) { v, ok := cache[name]; return v, ok }
	if f.stale(cached) || f.oldest() != 0 {
		t.Fatal("stale with nothing expected")
	}
	f.expect("d1", "100", &custodyv1alpha1.DeviceReport{FirmwareVersion: "1"}, clk.Now())
	clk.SetTime(clk.Now().Add(400 * time.Millisecond))
	// An older version, or another device's, does not meet it.
	h.OnUpdate(nil, device("d1", "99"))
	h.OnAdd(device("d2", "100"), false)
	if got := f.oldest(); got != 400*time.Millisecond {
		t.Fatalf("oldest %v, want 400ms", got)
	}
	if f.stale(cached) {
		t.Fatal("stale within the bound")
	}
	clk.SetTime(clk.Now().Add(601 * time.Millisecond))
	cache["d1"] = "99" // the cache holds an older version only
	if !f.stale(cached) {
		t.Fatal("not stale 1.001s after the API server held a version the cache lacks")
	}
	if got := testutil.ToFloat64(f.refusals); got != 1 {
		t.Fatalf("refusals %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.staleness); got < 1 {
		t.Fatalf("staleness gauge %v, want >= 1", got)
	}
	// A later version meets it (a watch may skip versions after a relist).
	h.OnUpdate(nil, device("d1", "105"))
	if f.stale(cached) || f.oldest() != 0 {
		t.Fatal("still stale after the watch delivered a newer version")
	}
	if n := testutil.CollectAndCount(f.lag); n != 1 {
		t.Fatalf("%d lag histograms", n)
	}

	// Deletion meets every expectation of the Device.
	f.expect("d3", "7", nil, time.Time{})
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "d3", Obj: device("d3", "6")})
	if f.oldest() != 0 {
		t.Fatal("a deleted Device is still expected")
	}
	// Versions that are not integers: only the same one counts.
	f.expect("d4", "abc", nil, time.Time{})
	h.OnUpdate(nil, device("d4", "abd"))
	if len(f.pending["d4"]) != 1 {
		t.Fatal("an unparsable different version met the expectation")
	}
	h.OnUpdate(nil, device("d4", "abc"))
	if len(f.pending) != 0 {
		t.Fatalf("pending %v", f.pending)
	}
}

// A version the watch delivered before it was expected (no event will come
// again) is found in the cache once overdue: the gateway is not stale, and
// does not stay refusing requests.
func TestFreshnessFindsMissedEventsInTheCache(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Unix(1_800_000_000, 0))
	f := newFreshness(clk, time.Second, nil)
	f.handler().OnUpdate(nil, device("d1", "12")) // delivered first
	f.expect("d1", "12", &custodyv1alpha1.DeviceReport{}, clk.Now())
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if !f.stale(func(string) (string, bool) { return "", false }) {
		t.Fatal("not stale while the cache cannot be read")
	}
	if f.stale(func(name string) (string, bool) { return "12", name == "d1" }) {
		t.Fatal("stale although the cache holds the expected version")
	}
	if len(f.pending) != 0 {
		t.Fatalf("pending %v", f.pending)
	}
}

// A heartbeat written but not yet delivered by the watch is remembered, so
// that the next one within the interval is not written again; once the
// watch delivers it, the cache answers and nothing is kept.
func TestFreshnessRemembersUndeliveredWrites(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Unix(1_800_000_000, 0))
	f := newFreshness(clk, time.Second, nil)
	if _, _, ok := f.written("d1"); ok {
		t.Fatal("a write remembered before any")
	}
	at := clk.Now()
	f.expect("d1", "10", nil, time.Time{}) // a spot check is not a write
	if _, _, ok := f.written("d1"); ok {
		t.Fatal("a spot check counted as a write")
	}
	f.expect("d1", "11", &custodyv1alpha1.DeviceReport{FirmwareVersion: "2"}, at)
	r, when, ok := f.written("d1")
	if !ok || r.FirmwareVersion != "2" || !when.Equal(at) {
		t.Fatalf("written %v %v %v", r, when, ok)
	}
	f.handler().OnUpdate(nil, device("d1", "11"))
	if _, _, ok := f.written("d1"); ok || len(f.pending) != 0 {
		t.Fatal("a delivered write is still remembered")
	}
}

// The cache holds only what the gateway checks: no claim-code verifier,
// sale record, history or annotations (kubectl's last-applied copy).
func TestTrimDevice(t *testing.T) {
	d := &custodyv1alpha1.Device{
		ObjectMeta: metav1.ObjectMeta{Name: "m-s", Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "erp"}}, Labels: map[string]string{"a": "b"}},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "S", Model: "M", Identity: custodyv1alpha1.DeviceIdentity{PublicKey: "PEM"},
			ClaimCode: &custodyv1alpha1.DeviceClaimCode{}, Sale: &custodyv1alpha1.SaleRecord{}, ConsumedClaimCodes: []string{"x"},
			ClaimRef: &custodyv1alpha1.DeviceClaimReference{Tenant: "t"}, Decommissioned: true},
		Status: custodyv1alpha1.DeviceStatus{Phase: custodyv1alpha1.DevicePhaseBound, History: []custodyv1alpha1.CustodyRecord{{}},
			Certificates: []custodyv1alpha1.DeviceCertificate{{Fingerprint: "f"}}, Reported: &custodyv1alpha1.DeviceReport{State: "ok"},
			Conditions: []metav1.Condition{{Type: "Ready"}}},
	}
	out, err := trimDevice(d)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*custodyv1alpha1.Device)
	if got.Annotations != nil || got.ManagedFields != nil || got.Spec.ClaimCode != nil || got.Spec.Sale != nil || got.Spec.ConsumedClaimCodes != nil ||
		got.Status.History != nil || got.Status.Conditions != nil {
		t.Fatalf("kept what the gateway does not read: %+v", got)
	}
	if got.Labels["a"] != "b" || got.Spec.Identity.PublicKey != "PEM" || got.Spec.ClaimRef.Tenant != "t" || !got.Spec.Decommissioned ||
		got.Status.Phase != custodyv1alpha1.DevicePhaseBound || len(got.Status.Certificates) != 1 || got.Status.Reported.State != "ok" ||
		got.Spec.SerialNumber != "S" || got.Spec.Model != "M" {
		t.Fatalf("dropped what the gateway checks: %+v", got)
	}
}
