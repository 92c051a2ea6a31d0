package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
)

// NewCache returns the watch-fed cache the gateway serves from: every
// Device (trimmed to what the gateway checks), every Tenant, the trust
// bundle ConfigMap of each tenant namespace (by name, so that no other
// ConfigMap is listed), and the DeviceProofs of the operator namespace
// (trimmed to their outcome). A mutual-TLS request, a heartbeat included,
// reads nothing from the API server: the Device and its tenant's CAs come
// from here, and an ownership change reaches the gateway as a watch event.
//
// Start it, and wait for it to sync, before serving.
func NewCache(cfg *rest.Config, scheme *runtime.Scheme, namespace string, watchErrors func(error)) (cache.Cache, error) {
	opts := cache.Options{
		Scheme: scheme,
		ByObject: map[client.Object]cache.ByObject{
			&custodyv1alpha1.Device{}:      {Transform: trimDevice},
			&custodyv1alpha1.Tenant{}:      {Transform: trimMeta},
			&corev1.ConfigMap{}:            {Field: fields.OneTermEqualSelector("metadata.name", contract.TrustBundleName), Transform: trimMeta},
			&custodyv1alpha1.DeviceProof{}: {Namespaces: map[string]cache.Config{namespace: {}}, Transform: trimProof},
		},
		// The gateway reads nothing else; a Get of any other kind is a
		// programming error, not a reason to start an informer.
		ReaderFailOnMissingInformer: true,
	}
	if watchErrors != nil {
		opts.DefaultWatchErrorHandler = func(_ context.Context, _ *toolscache.Reflector, err error) { watchErrors(err) }
	}
	return cache.New(cfg, opts)
}

// trimMeta drops what no gateway check reads: managed fields and the
// annotations (kubectl's last-applied copy of the object among them).
func trimMeta(obj any) (any, error) {
	if o, ok := obj.(client.Object); ok {
		o.SetManagedFields(nil)
		o.SetAnnotations(nil)
	}
	return obj, nil
}

// trimDevice keeps what the gateway's checks read (the identity key,
// binding, decommissioning, the certificates issued under a binding, what
// the device last reported and when) and drops the rest: the claim-code
// verifier and sale record, which an internet-facing process has no use
// for, the history, notifications and conditions.
func trimDevice(obj any) (any, error) {
	d, ok := obj.(*custodyv1alpha1.Device)
	if !ok {
		return obj, nil
	}
	_, _ = trimMeta(d)
	d.Spec.ClaimCode, d.Spec.Sale, d.Spec.ClaimPolicy, d.Spec.ConsumedClaimCodes = nil, nil, nil, nil
	d.Status = custodyv1alpha1.DeviceStatus{
		Phase:        d.Status.Phase,
		Certificates: d.Status.Certificates,
		LastSeen:     d.Status.LastSeen,
		Reported:     d.Status.Reported,
	}
	return d, nil
}

// trimProof keeps a DeviceProof's device and outcome; the challenge,
// signature and CSR were checked before it was recorded.
func trimProof(obj any) (any, error) {
	p, ok := obj.(*custodyv1alpha1.DeviceProof)
	if !ok {
		return obj, nil
	}
	_, _ = trimMeta(p)
	p.Spec = custodyv1alpha1.DeviceProofSpec{Purpose: p.Spec.Purpose, DeviceName: p.Spec.DeviceName}
	return p, nil
}

// freshness measures how far the gateway's Device cache trails the API
// server, on the Device watch itself: each time the gateway learns a
// Device's current resourceVersion from the API server (the answer to its
// own heartbeat write, or a spot check that reads one Device directly), it
// expects the watch to deliver that version, and observes how long that
// took. An expectation still unmet after maxStale makes the cache stale:
// mutual-TLS requests are then refused as unavailable rather than judged
// on a binding that may have changed.
type freshness struct {
	clock    clock.PassiveClock
	maxStale time.Duration

	mu      sync.Mutex
	pending map[string][]expectation

	lag         prometheus.Histogram
	staleness   prometheus.GaugeFunc
	refusals    prometheus.Counter
	watchErrors prometheus.Counter
	checks      *prometheus.CounterVec
}

type expectation struct {
	version string
	since   time.Time
	// report is what a heartbeat wrote with this version (nil for a spot
	// check), as lastSeen wroteAt: until the watch delivers it, the cache
	// does not show it.
	report  *custodyv1alpha1.DeviceReport
	wroteAt time.Time
}

func newFreshness(clk clock.PassiveClock, maxStale time.Duration, reg prometheus.Registerer) *freshness {
	f := &freshness{clock: clk, maxStale: maxStale, pending: map[string][]expectation{}}
	f.lag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custody_gateway_cache_lag_seconds",
		Help:    "Time from the API server holding a Device version (learnt from the gateway's own write or a spot check) to the gateway's watch-fed cache holding it.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	f.staleness = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custody_gateway_cache_staleness_seconds",
		Help: "Age of the oldest Device version the API server is known to hold and the gateway's cache does not yet (0: none outstanding).",
	}, func() float64 { return f.oldest().Seconds() })
	f.refusals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custody_gateway_cache_stale_refusals_total",
		Help: "Mutual-TLS requests answered 503 because the Device cache trailed the API server by more than --max-cache-staleness.",
	})
	f.watchErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custody_gateway_cache_watch_errors_total",
		Help: "Watches of the gateway's cache that ended with an error (each is re-established by its informer).",
	})
	f.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_gateway_cache_checks_total",
		Help: "Spot checks of one cached Device against the API server, by result (current, behind, error).",
	}, []string{"result"})
	if reg != nil {
		reg.MustRegister(f.lag, f.staleness, f.refusals, f.watchErrors, f.checks)
	}
	return f
}

// expect records that the API server holds version of Device name, which
// the gateway's heartbeat wrote with report and lastSeen wroteAt (nil and
// zero: a spot check).
func (f *freshness) expect(name, version string, report *custodyv1alpha1.DeviceReport, wroteAt time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending[name] = append(f.pending[name], expectation{version: version, since: f.clock.Now(), report: report, wroteAt: wroteAt})
}

// written returns the last heartbeat write of Device name that the cache
// does not show yet, and when it was made.
func (f *freshness) written(name string) (*custodyv1alpha1.DeviceReport, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	exps := f.pending[name]
	for i := len(exps) - 1; i >= 0; i-- {
		if exps[i].report != nil {
			return exps[i].report, exps[i].wroteAt, true
		}
	}
	return nil, time.Time{}, false
}

// observed is called with every version of Device name the watch delivers;
// deleted when the Device is gone, which meets every expectation of it.
func (f *freshness) observed(name, version string, deleted bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	exps := f.pending[name]
	if len(exps) == 0 {
		return
	}
	now := f.clock.Now()
	kept := exps[:0]
	for _, e := range exps {
		if deleted || notOlder(version, e.version) {
			f.lag.Observe(now.Sub(e.since).Seconds())
			continue
		}
		kept = append(kept, e)
	}
	if len(kept) == 0 {
		delete(f.pending, name)
		return
	}
	f.pending[name] = kept
}

// notOlder reports whether resourceVersion have is at least want. Versions
// of one object are comparable integers on every API server we support
// (KEP-5504); should one not parse, only the same version counts.
func notOlder(have, want string) bool {
	h, err1 := strconv.ParseUint(have, 10, 64)
	w, err2 := strconv.ParseUint(want, 10, 64)
	if err1 != nil || err2 != nil {
		return have == want
	}
	return h >= w
}

// oldest is the age of the oldest unmet expectation.
func (f *freshness) oldest() time.Duration {
	d, _, _ := f.oldestOf()
	return d
}

// oldestOf is the oldest unmet expectation: its age, Device and version.
func (f *freshness) oldestOf() (time.Duration, string, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	var (
		oldest        time.Duration
		name, version string
	)
	for n, exps := range f.pending {
		for _, e := range exps {
			if d := now.Sub(e.since); d > oldest {
				oldest, name, version = d, n, e.version
			}
		}
	}
	return oldest, name, version
}

// stale reports whether the cache trails the API server by more than
// maxStale, counting the refusal it causes. Before it says so, it looks in
// the cache (cached returns a Device's version there) for the versions
// overdue: one the watch delivered before it was expected is met there,
// so that no missed event can refuse requests for good.
func (f *freshness) stale(cached func(name string) (string, bool)) bool {
	if f.oldest() <= f.maxStale {
		return false
	}
	for _, name := range f.overdue() {
		if version, ok := cached(name); ok {
			f.observed(name, version, false)
		}
	}
	if f.oldest() <= f.maxStale {
		return false
	}
	f.refusals.Inc()
	return true
}

// overdue lists the Devices with an expectation older than maxStale.
func (f *freshness) overdue() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	var names []string
	for name, exps := range f.pending {
		for _, e := range exps {
			if now.Sub(e.since) > f.maxStale {
				names = append(names, name)
				break
			}
		}
	}
	return names
}

// handler feeds the Device informer's events to observed.
func (f *freshness) handler() toolscache.ResourceEventHandler {
	seen := func(obj any, deleted bool) {
		if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if d, ok := obj.(*custodyv1alpha1.Device); ok {
			f.observed(d.Name, d.ResourceVersion, deleted)
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { seen(obj, false) },
		UpdateFunc: func(_, obj any) { seen(obj, false) },
		DeleteFunc: func(obj any) { seen(obj, true) },
	}
}

// spotCheck reads Device name from the API server and compares it with
// the cache: a newer version in the API server becomes an expectation.
func (f *freshness) spotCheck(ctx context.Context, api client.Reader, cached client.Reader, name string) error {
	live := &custodyv1alpha1.Device{}
	if err := api.Get(ctx, client.ObjectKey{Name: name}, live); err != nil {
		f.checks.WithLabelValues("error").Inc()
		return client.IgnoreNotFound(err)
	}
	have := &custodyv1alpha1.Device{}
	if err := cached.Get(ctx, client.ObjectKey{Name: name}, have); err != nil && !apierrors.IsNotFound(err) {
		f.checks.WithLabelValues("error").Inc()
		return err
	}
	if have.ResourceVersion != "" && notOlder(have.ResourceVersion, live.ResourceVersion) {
		f.checks.WithLabelValues("current").Inc()
		return nil
	}
	f.checks.WithLabelValues("behind").Inc()
	f.expect(name, live.ResourceVersion, nil, time.Time{})
	// The watch may have delivered it between the two reads.
	if err := cached.Get(ctx, client.ObjectKey{Name: name}, have); err == nil {
		f.observed(name, have.ResourceVersion, false)
	}
	return nil
}

// describeStale says how far the cache trails, and on what.
func (f *freshness) describeStale() string {
	d, name, version := f.oldestOf()
	return fmt.Sprintf("the Device cache trails the API server by %s: it does not hold version %s of Device %s yet", d.Round(time.Millisecond), version, name)
}

// waiters wakes the requests waiting on a DeviceProof when the watch
// delivers a change of it.
type waiters struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

func newWaiters() *waiters { return &waiters{m: map[string][]chan struct{}{}} }

func (w *waiters) add(name string) chan struct{} {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m[name] = append(w.m[name], ch)
	return ch
}

func (w *waiters) remove(name string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chs := w.m[name]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i], chs[i+1:]...)
			break
		}
	}
	if len(chs) == 0 {
		delete(w.m, name)
		return
	}
	w.m[name] = chs
}

func (w *waiters) wake(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ch := range w.m[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (w *waiters) handler() toolscache.ResourceEventHandler {
	wake := func(obj any) {
		if o, ok := obj.(client.Object); ok {
			w.wake(o.GetName())
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { wake(obj) },
		UpdateFunc: func(_, obj any) { wake(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			wake(obj)
		},
	}
}

// anchorCache keeps each tenant namespace's parsed trust bundle, keyed by
// the ConfigMap's resourceVersion, so that a request does not parse PEM.
type anchorCache struct {
	mu sync.Mutex
	m  map[string]parsedAnchors
}

type parsedAnchors struct {
	version string
	certs   []*x509.Certificate
}

// get returns the trust anchors of namespace from the cached trust bundle
// (contract.TenantTrustAnchors' answers, errors included).
func (a *anchorCache) get(ctx context.Context, r client.Reader, namespace string) ([]*x509.Certificate, error) {
	cm := &corev1.ConfigMap{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: contract.TrustBundleName}, cm); err != nil {
		return nil, err
	}
	a.mu.Lock()
	p, ok := a.m[namespace]
	a.mu.Unlock()
	if ok && p.version == cm.ResourceVersion {
		return p.certs, nil
	}
	certs, err := contract.TrustAnchorsOf(cm)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]parsedAnchors{}
	}
	a.m[namespace] = parsedAnchors{version: cm.ResourceVersion, certs: certs}
	return certs, nil
}
