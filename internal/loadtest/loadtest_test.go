package loadtest

import (
	"os"
	"reflect"
	"testing"
	"time"
)

func TestSummariseNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // 1..100 ms, given out of order
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := Summarise(d)
	want := Latencies{Count: 100, P50Ms: 50, P99Ms: 99, MaxMs: 100}
	if got != want {
		t.Fatalf("Summarise = %+v, want %+v", got, want)
	}
	if one := Summarise([]time.Duration{7 * time.Millisecond}); one != (Latencies{Count: 1, P50Ms: 7, P99Ms: 7, MaxMs: 7}) {
		t.Fatalf("one value: %+v", one)
	}
	if none := Summarise(nil); none != (Latencies{}) {
		t.Fatalf("no value: %+v", none)
	}
	// Three values: p50 is the second, p99 the third.
	if got := Summarise([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}); got.P50Ms != 2 || got.P99Ms != 3 {
		t.Fatalf("three values: %+v", got)
	}
}

// The fixture is kube-apiserver v1.36's own /metrics, cut to a few lines.
func TestWritesFromAPIServerMetrics(t *testing.T) {
	text, err := os.ReadFile("testdata/apiserver-metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	samples, err := ParseMetrics(string(text))
	if err != nil {
		t.Fatal(err)
	}
	got := Writes(samples)
	want := map[string]float64{
		"/events":                             14, // PATCH 4 + POST 10
		"/secrets":                            4,  // APPLY 1 (200) + APPLY 1 (201) + DELETE 1 + POST 1
		"/configmaps":                         4,  // POST 2 (201) + POST 1 (404) + PUT 1 (404): refused writes count
		"cert-manager.io/certificaterequests": 1,
		"cert-manager.io/certificaterequests/status": 2,
		"coordination.k8s.io/leases":                 4,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Writes = %v, want %v", got, want)
	}
	review, err := ParseMetrics(`apiserver_request_total{code="201",component="apiserver",dry_run="",group="authorization.k8s.io",resource="subjectaccessreviews",scope="resource",subresource="",verb="POST",version="v1"} 60`)
	if err != nil {
		t.Fatal(err)
	}
	if w := Writes(review); len(w) != 0 {
		t.Fatalf("a SubjectAccessReview counted as a write: %v", w)
	}
	if n := Sum(samples, "apiserver_request_total", map[string]string{"verb": "GET", "subresource": "/healthz"}); n != 1 {
		t.Fatalf("GET /healthz = %v, want 1", n)
	}
}

func TestDiffLeavesOutUnmoved(t *testing.T) {
	got := Diff(map[string]float64{"a": 1, "b": 2}, map[string]float64{"a": 1, "b": 5, "c": 3})
	if want := map[string]float64{"b": 3, "c": 3}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
}

// The fixture is custody-dev's manager /metrics (controller-runtime's and
// cert-manager's workqueues, Go's memory statistics), cut to a few lines.
func TestManagerMetrics(t *testing.T) {
	text, err := os.ReadFile("testdata/manager-metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	samples, err := ParseMetrics(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := Sum(samples, "go_memstats_heap_inuse_bytes", nil); got != 2.2953984e+07 {
		t.Fatalf("heap in use = %v", got)
	}
	if got := Sum(samples, "workqueue_depth", nil); got != 0 {
		t.Fatalf("workqueue depth = %v, want 0", got)
	}
	queues := 0
	for _, s := range samples {
		if s.Name == "workqueue_depth" {
			queues++
			if s.Labels["name"] == "" {
				t.Fatalf("workqueue_depth without a name: %+v", s)
			}
		}
	}
	if queues != 11 {
		t.Fatalf("%d workqueues, want 11", queues)
	}
	if got := Sum(samples, "workqueue_depth", map[string]string{"priority": "-100"}); got != 0 {
		t.Fatalf("negative priority label: %v", got)
	}
}

func TestParseMetricsEscapesAndErrors(t *testing.T) {
	s, err := ParseMetrics(`m{a="x\"y",b="1\\2"} 3 1700000000000` + "\nplain 4.5\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 2 || s[0].Labels["a"] != `x"y` || s[0].Labels["b"] != `1\2` || s[0].Value != 3 || s[1].Name != "plain" || s[1].Value != 4.5 {
		t.Fatalf("parsed %+v", s)
	}
	for _, bad := range []string{"m{a=\"x\" 1", "m{a=x} 1", "m nope", "m"} {
		if _, err := ParseMetrics(bad); err == nil {
			t.Errorf("ParseMetrics(%q) accepted", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	m, err := parseStatus("Name:\tcustody-dev\nVmPeak:\t 2000000 kB\nVmHWM:\t  190512 kB\nVmRSS:\t  181004 kB\n")
	if err != nil {
		t.Fatal(err)
	}
	if m != (Memory{RSSKiB: 181004, HWMKiB: 190512}) {
		t.Fatalf("parseStatus = %+v", m)
	}
	if _, err := parseStatus("Name:\tx\n"); err == nil {
		t.Fatal("a status without VmRSS was accepted")
	}
}
