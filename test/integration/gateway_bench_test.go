package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/gateway"
	"github.com/custody-dev/custody/pkg/protocol"
)

// BenchmarkGatewayHeartbeats measures mutual-TLS heartbeats against the
// gateway on the real stack (the envtest API server, the manager, the
// gateway serving from its watch-fed cache), next to the machine's ceiling
// for the same TLS traffic measured in the same run: the same clients, keys
// and concurrency against an HTTPS server (the same httptest certificate)
// whose handler answers 204 and does nothing else.
//
// 32 bound devices (certificates signed with their tenant's CA key, as its
// issuer signs them) send heartbeats as fast as they can for
// benchHeartbeatPhase, each on its own connection: kept alive ("reuse"), a
// new connection per heartbeat resuming the TLS session ("resume"), or a
// new connection with a full handshake ("handshake"). Both servers present
// the same ECDSA P-256 certificate, as the gateway's from cert-manager. Then, with the reuse load
// still running, 10 of the devices are decommissioned one after another by
// the ERP; cut-off is the time from the Device update's request to the
// first heartbeat of that device the gateway refuses (each device keeps
// sending), and the benchmark fails if a decommissioned device's heartbeat
// is accepted after its first refusal. The gateway's own
// custody_gateway_cache_lag_seconds is logged.
//
// Nothing here asserts a duration. Run with `make bench` or
//
//	go test ./test/integration -run '^$' -bench BenchmarkGatewayHeartbeats -benchtime 1x
func BenchmarkGatewayHeartbeats(b *testing.B) {
	startManager(b)
	// Every simulated device connects from 127.0.0.1: lift the per-client
	// limit, as hack/load.sh does.
	g := startGateway(b, func(o *gateway.Options) { o.PerClientRate = 1 << 30 })
	tn := newTenant(b)
	recs, _ := benchFleet(b, tn, benchHeartbeatDevices)
	iss := newTenantIssuer(b, tn)
	certs := make([]*tls.Certificate, len(recs))
	for i, rec := range recs {
		certs[i] = iss.issue(b, rec)
	}
	ceiling := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	ceiling.TLS = &tls.Config{Certificates: []tls.Certificate{g.srv.TLS.Certificates[0]}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	ceiling.StartTLS()
	b.Cleanup(ceiling.Close)

	body := []byte(`{"firmwareVersion":"1.0.0","state":"ok"}`)
	phase := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), benchHeartbeatPhase)
		b.Cleanup(cancel)
		return ctx
	}
	b.ResetTimer()
	for _, mode := range []connMode{reuse, resume, handshake} {
		c := heartbeatLoad(phase(), b, ceiling, ceiling.URL, certs, mode, body, nil)
		gw := heartbeatLoad(phase(), b, g.srv, g.URL, certs, mode, body, nil)
		if gw.failed > 0 {
			b.Fatalf("%s: %d heartbeats failed against the gateway", mode, gw.failed)
		}
		b.ReportMetric(gw.rate(), string(mode)+"-heartbeats/s")
		b.ReportMetric(c.rate(), string(mode)+"-ceiling-req/s")
		b.ReportMetric(100*gw.rate()/c.rate(), string(mode)+"-pct-of-ceiling")
		reportDurations(b, string(mode), gw.latencies)
		reportDurations(b, string(mode)+"-ceiling", c.latencies)
	}

	// Cut-off under load.
	var cutMu sync.Mutex
	cut := map[int]time.Time{}     // device index -> decommission request
	refused := map[int]time.Time{} // device index -> first refusal
	var acceptedAfter atomic.Int64
	answers := map[int]map[int]int{} // device index -> status -> count after its cut
	observe := func(i int, status int, at time.Time) {
		cutMu.Lock()
		defer cutMu.Unlock()
		if _, ok := cut[i]; !ok {
			return
		}
		if answers[i] == nil {
			answers[i] = map[int]int{}
		}
		answers[i][status]++
		if status == http.StatusForbidden {
			if _, ok := refused[i]; !ok {
				refused[i] = at
			}
		} else if _, ok := refused[i]; ok && status == http.StatusNoContent {
			acceptedAfter.Add(1)
		}
	}
	done := make(chan *loadResult)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { done <- heartbeatLoad(ctx, b, g.srv, g.URL, certs, reuse, body, observe) }()
	time.Sleep(time.Second) // the load is running before the first cut
	for i := range benchCutOffs {
		cutMu.Lock()
		cut[i] = time.Now()
		cutMu.Unlock()
		if err := updateDevice(admin, recs[i].Device.Name, func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }, client.FieldOwner(erpOwner)); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	stop()
	<-done
	var cutoffs []time.Duration
	for i := range benchCutOffs {
		at, ok := refused[i]
		if !ok {
			b.Fatalf("device %d was decommissioned and never refused; answers after: %v", i, answers[i])
		}
		cutoffs = append(cutoffs, at.Sub(cut[i]))
	}
	if n := acceptedAfter.Load(); n > 0 {
		b.Fatalf("%d heartbeats of decommissioned devices were accepted after their first refusal", n)
	}
	reportDurations(b, "cutoff", cutoffs)
	count, sum := histogramOf(b, g, "custody_gateway_cache_lag_seconds")
	b.Logf("gateway cache lag: %d observations, mean %.2f ms", count, 1000*sum/max(1, float64(count)))
}

const (
	benchHeartbeatDevices = 32
	benchHeartbeatPhase   = 5 * time.Second
	benchCutOffs          = 10
)

// connMode is how a device's heartbeats use connections.
type connMode string

const (
	// reuse keeps one connection alive.
	reuse connMode = "reuse"
	// resume opens a connection per heartbeat, resuming the TLS session
	// (a session ticket; no certificate signature or verification).
	resume connMode = "resume"
	// handshake opens a connection per heartbeat with a full handshake.
	handshake connMode = "handshake"
)

type loadResult struct {
	n, failed int
	elapsed   time.Duration
	latencies []time.Duration
}

func (r *loadResult) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

// heartbeatLoad sends heartbeats to url until ctx ends, one worker per certificate,
// each on its own connection (kept alive, or a new handshake each time),
// trusting srv's certificate. observe, if set, sees every answer.
func heartbeatLoad(ctx context.Context, b *testing.B, srv *httptest.Server, url string, certs []*tls.Certificate, mode connMode, body []byte,
	observe func(i, status int, at time.Time)) *loadResult {
	b.Helper()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	var mu sync.Mutex
	res := &loadResult{}
	var wg sync.WaitGroup
	start := time.Now()
	for i, cert := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
			if mode == resume {
				cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			}
			tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: mode != reuse, MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			var lat []time.Duration
			n, failed := 0, 0
			for ctx.Err() == nil {
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+protocol.PathHeartbeat, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed++
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				now := time.Now()
				if observe != nil {
					observe(i, resp.StatusCode, now)
				} else if resp.StatusCode != http.StatusNoContent {
					if failed == 0 {
						b.Logf("heartbeat answered %d", resp.StatusCode)
					}
					failed++
					continue
				}
				n++
				lat = append(lat, now.Sub(t0))
			}
			mu.Lock()
			res.n += n
			res.failed += failed
			res.latencies = append(res.latencies, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	if len(res.latencies) == 0 {
		b.Fatal("no heartbeat answered")
	}
	return res
}

// histogramOf returns the count and sum of a histogram the gateway exports.
func histogramOf(b *testing.B, g *gw, name string) (uint64, float64) {
	b.Helper()
	mfs, err := g.Metrics.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	b.Fatalf("the gateway exports no %s", name)
	return 0, 0
}
