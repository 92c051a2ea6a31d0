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
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// Gauges of the fleet, computed when Prometheus scrapes, from the
// manager's Device cache, by the leader only: every replica keeps the
// cache, and the fleet must be counted once.
var (
	devicesDesc = prometheus.NewDesc("custody_devices",
		"Devices by phase (status.phase; \"Unknown\" before the manager's first status write), reported by the leader. Disputed Devices wait for support staff.",
		[]string{"phase"}, nil)
	overdueDesc = prometheus.NewDesc("custody_device_certificates_renewal_overdue",
		"Bound Devices seen at the gateway within the last hour whose newest certificate has less than a quarter of its lifetime left (a device renews with a third left): online devices whose renewals are not happening. Reported by the leader.",
		nil, nil)
)

// onlineWithin is how recently a device must have been seen to count as
// online for custody_device_certificates_renewal_overdue.
const onlineWithin = time.Hour

// overdueFraction: a certificate with less than this part of its lifetime
// left is overdue for renewal. The agent renews with a third left
// (pkg/device), so this leaves a twelfth of the lifetime for retries
// before anyone is told: 2 hours of the default 24.
const overdueFraction = 4

// fleetCollector walks the Device informer's store on each scrape: the
// cached objects themselves, read-only, no list copies (CountBoundDevices
// explains why a List would not do at 100,000 Devices). It reports nothing
// until this replica leads and the cache has synced.
type fleetCollector struct {
	// source is the newest manager's (a process runs one; tests run
	// several in turn).
	source atomic.Pointer[fleetSource]
}

type fleetSource struct {
	// store is the synced informer store of an object's kind (cacheStore).
	store func(client.Object) (toolscache.Store, bool)
	clock clock.PassiveClock
	// elected is closed once this replica leads (at once without leader
	// election).
	elected <-chan struct{}
	// lifetime is the default lifetime of device certificates; a Tenant
	// may set its own.
	lifetime time.Duration
}

var (
	fleet         = &fleetCollector{}
	registerFleet sync.Once
)

// watchFleet makes the fleet gauges read c once elected is closed.
func watchFleet(c ctrlcache.Cache, clk clock.PassiveClock, elected <-chan struct{}, lifetime time.Duration) {
	fleet.source.Store(&fleetSource{store: cacheStore(c), clock: clk, elected: elected, lifetime: lifetime})
	registerFleet.Do(func() { metrics.Registry.MustRegister(fleet) })
}

func (f *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- devicesDesc
	ch <- overdueDesc
}

func (f *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	src := f.source.Load()
	if src == nil {
		return
	}
	select {
	case <-src.elected:
	default:
		return // a follower: the leader reports the fleet
	}
	devices, ok := src.store(&custodyv1alpha1.Device{})
	if !ok {
		return
	}
	tenants, ok := src.store(&custodyv1alpha1.Tenant{})
	if !ok {
		return
	}
	lifetimes := map[string]time.Duration{}
	for _, o := range tenants.List() {
		if t, ok := o.(*custodyv1alpha1.Tenant); ok && t.Spec.Certificates != nil && t.Spec.Certificates.Duration != nil {
			lifetimes[t.Name] = t.Spec.Certificates.Duration.Duration
		}
	}
	lifetime := func(tenant string) time.Duration {
		if d, ok := lifetimes[tenant]; ok {
			return d
		}
		return src.lifetime
	}
	counts := fleetCounts(devices.List(), src.clock.Now(), lifetime)
	for phase, n := range counts.phases {
		ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(n), phase)
	}
	ch <- prometheus.MustNewConstMetric(overdueDesc, prometheus.GaugeValue, float64(counts.overdue))
}

// cacheStore returns the synced informer store of an object's kind in c,
// without waiting for an informer to sync.
func cacheStore(c ctrlcache.Cache) func(client.Object) (toolscache.Store, bool) {
	return func(obj client.Object) (toolscache.Store, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		inf, err := c.GetInformer(ctx, obj, ctrlcache.BlockUntilSynced(false))
		if err != nil || !inf.HasSynced() {
			return nil, false
		}
		st, ok := inf.(interface{ GetStore() toolscache.Store })
		if !ok {
			return nil, false
		}
		return st.GetStore(), true
	}
}

type fleetCount struct {
	phases  map[string]int
	overdue int
}

// fleetCounts counts objs (cached *Device) by phase, and the online bound
// ones whose newest certificate has less than 1/overdueFraction of its
// lifetime (lifetime(tenant)) left. Every phase is reported, 0 included,
// so that alerts and dashboards see a series from the start.
func fleetCounts(objs []any, now time.Time, lifetime func(tenant string) time.Duration) fleetCount {
	c := fleetCount{phases: map[string]int{}}
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
		newest := d.Status.Certificates[0]
		for _, cert := range d.Status.Certificates[1:] {
			if cert.NotAfter.After(newest.NotAfter.Time) {
				newest = cert
			}
		}
		tenant := newest.Tenant
		if tenant == "" {
			tenant = d.Spec.ClaimRef.Tenant
		}
		if newest.NotAfter.Sub(now) < lifetime(tenant)/overdueFraction {
			c.overdue++
		}
	}
	return c
}
