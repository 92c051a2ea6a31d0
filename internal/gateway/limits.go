package gateway

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// limiter is a fixed-window rate limiter per key: at most n requests per
// window. It is per replica; behind N replicas the effective limit is at
// most N times higher, which bounds an attacker all the same. Windows are
// kept for the keys seen in the current and last window only.
type limiter struct {
	mu     sync.Mutex
	n      int
	window time.Duration
	clock  clock.PassiveClock
	start  time.Time
	counts map[string]int
}

func newLimiter(n int, window time.Duration, clk clock.PassiveClock) *limiter {
	return &limiter{n: n, window: window, clock: clk, counts: map[string]int{}}
}

func (l *limiter) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if now.Sub(l.start) >= l.window {
		l.start, l.counts = now, map[string]int{}
	}
	if l.counts[key] >= l.n {
		return false
	}
	l.counts[key]++
	return true
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custody_gateway_requests_total", Help: "Requests to the Custody gateway by endpoint and HTTP status.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "custody_gateway_request_duration_seconds", Help: "Time to answer a gateway request, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"endpoint"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration)
	}
	return m
}

func (m *metrics) observe(endpoint string, status int, d time.Duration) {
	m.requests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(endpoint).Observe(d.Seconds())
}
