package controllers

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
)

// VerifierPool runs claim-code verifications (argon2id: one core and 19
// MiB for tens of milliseconds each) at most Size at a time, whatever the
// number of claim workers: a burst of claims by code queues here, holding
// neither memory nor more cores than the pool allows, and leaves the rest
// of the manager (other reconciles, the webhooks, the data plane's auth
// callout) the scheduler's share of the cores. Claim workers beyond Size
// still do useful work meanwhile: their reads and writes overlap the
// hashing.
type VerifierPool struct {
	next claim.Verifier
	sem  chan struct{}
	// waiting counts callers queued for a slot (tests watch it).
	waiting atomic.Int64
}

// NewVerifierPool bounds next to size verifications at once
// (runtime.GOMAXPROCS when size < 1).
func NewVerifierPool(next claim.Verifier, size int) *VerifierPool {
	if size < 1 {
		size = runtime.GOMAXPROCS(0)
	}
	verifierPoolSize.Set(float64(size))
	return &VerifierPool{next: next, sem: make(chan struct{}, size)}
}

// Size is the number of verifications the pool runs at once.
func (p *VerifierPool) Size() int { return cap(p.sem) }

func (p *VerifierPool) do(f func()) {
	start := time.Now()
	p.waiting.Add(1)
	p.sem <- struct{}{}
	p.waiting.Add(-1)
	verifierWait.Observe(time.Since(start).Seconds())
	verifierInFlight.Inc()
	defer func() {
		verifierInFlight.Dec()
		<-p.sem
	}()
	began := time.Now()
	f()
	verifierDuration.Observe(time.Since(began).Seconds())
}

// Verify checks code against verifier in a slot of the pool.
func (p *VerifierPool) Verify(code claimcode.Code, verifier string) (ok bool) {
	p.do(func() { ok = p.next.Verify(code, verifier) })
	return ok
}

// VerifyNothing spends a verification's work in a slot of the pool.
func (p *VerifierPool) VerifyNothing(code claimcode.Code) {
	p.do(func() { p.next.VerifyNothing(code) })
}

var (
	verifierWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custody_claim_code_verify_wait_seconds",
		Help:    "Time a claim-code verification waited for a slot of the verifier pool.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	})
	verifierDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custody_claim_code_verify_seconds",
		Help:    "Time one claim-code verification (argon2id) took in its slot: the hashing cost per claim.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1},
	})
	verifierInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custody_claim_code_verifications_in_flight",
		Help: "Claim-code verifications running now (at most custody_claim_code_verifier_pool_size).",
	})
	verifierPoolSize = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custody_claim_code_verifier_pool_size",
		Help: "Claim-code verifications the manager runs at once (--claim-code-verifiers).",
	})
)
