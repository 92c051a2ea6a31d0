package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// Gauges of the fleet, computed when Prometheus scrapes, from the
// manager's Device cache.
var (
	devicesDesc = prometheus.NewDesc("custody_devices",
		"Devices by phase (status.phase; \"Unknown\" before the manager's first status write). Disputed Devices wait for support staff.",
		[]string{"phase"}, nil)
	expiringDesc = prometheus.NewDesc("custody_device_certificates_expiring",
		"Bound Devices seen at the gateway within the last hour whose newest certificate expires within the window: online devices whose renewals are not happening.",
		[]string{"within"}, nil)
)

// expiryWindows are the windows of custody_device_certificates_expiring.
// A device renews at two thirds of its certificate's lifetime (8 hours
// before the end of the default 24): an online device inside these windows
// has missed its renewals.
var expiryWindows = []struct {
	label string
	d     time.Duration
}{{"1h", time.Hour}, {"6h", 6 * time.Hour}}

// onlineWithin is how recently a device must have been seen to count as
// online for custody_device_certificates_expiring.
const onlineWithin = time.Hour

// fleetCollector walks the Device informer's store on each scrape: the
// cached objects themselves, read-only, no list copies (CountBoundDevices
// explains why a List would not do at 100,000 Devices). It reports nothing
// until the cache has synced.
type fleetCollector struct {
	// source is the newest manager's (a process runs one; tests run
	// several in turn).
	source atomic.Pointer[fleetSource]
}

type fleetSource struct {
	cache ctrlcache.Cache
	clock clock.PassiveClock
}

var (
	fleet         = &fleetCollector{}
	registerFleet sync.Once
)

// watchFleet makes the fleet gauges read c.
func watchFleet(c ctrlcache.Cache, clk clock.PassiveClock) {
	fleet.source.Store(&fleetSource{cache: c, clock: clk})
	registerFleet.Do(func() { metrics.Registry.MustRegister(fleet) })
}

func (f *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- devicesDesc
	ch <- expiringDesc
}

func (f *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	src := f.source.Load()
	if src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	inf, err := src.cache.GetInformer(ctx, &custodyv1alpha1.Device{}, ctrlcache.BlockUntilSynced(false))
	if err != nil || !inf.HasSynced() {
		return
	}
	store, ok := inf.(interface{ GetStore() toolscache.Store })
	if !ok {
		return
	}
	counts := fleetCounts(store.GetStore().List(), src.clock.Now())
	for phase, n := range counts.phases {
		ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(n), phase)
	}
	for i, w := range expiryWindows {
		ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(counts.expiring[i]), w.label)
	}
}

type fleetCount struct {
	phases   map[string]int
	expiring []int
}

// fleetCounts counts objs (cached *Device) by phase, and the online bound
// ones whose newest certificate expires within each expiryWindows window.
// Every phase is reported, 0 included, so that alerts and dashboards see
// a series from the start.
func fleetCounts(objs []any, now time.Time) fleetCount {
	c := fleetCount{phases: map[string]int{}, expiring: make([]int, len(expiryWindows))}
	for _, p := range []custodyv1alpha1.DevicePhase{custodyv1alpha1.DevicePhaseAvailable, custodyv1alpha1.DevicePhasePending, custodyv1alpha1.DevicePhaseBound,
		custodyv1alpha1.DevicePhaseDisputed, custodyv1alpha1.DevicePhaseReleased, custodyv1alpha1.DevicePhaseDecommissioned} {
		c.phases[string(p)] = 0
	}
	for _, o := range objs {
		d, ok := o.(*custodyv1alpha1.Device)
		if !ok {
			continue
		}
		phase := string(d.Status.Phase)
		if phase == "" {
			phase = "Unknown"
		}
		c.phases[phase]++
		if d.Spec.ClaimRef == nil || d.Status.LastSeen == nil || now.Sub(d.Status.LastSeen.Time) > onlineWithin || len(d.Status.Certificates) == 0 {
			continue
		}
		var newest time.Time
		for _, cert := range d.Status.Certificates {
			if cert.NotAfter.After(newest) {
				newest = cert.NotAfter.Time
			}
		}
		for i, w := range expiryWindows {
			if newest.Sub(now) < w.d {
				c.expiring[i]++
			}
		}
	}
	return c
}
