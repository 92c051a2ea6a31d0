package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/custody-dev/custody/internal/loadtest"
)

// report is the JSON report: every figure of the run, with the ceiling it
// is judged against.
type report struct {
	Command     string           `json:"command"`
	Machine     loadtest.Machine `json:"machine"`
	Started     string           `json:"started"`
	Finished    string           `json:"finished"`
	LoadAvgEnd  string           `json:"loadAvgEnd"`
	ERPIdentity string           `json:"erpIdentity,omitempty"`

	Ceiling    *ceilingReport    `json:"ceiling,omitempty"`
	Ingest     *rateReport       `json:"ingest,omitempty"`
	Claims     map[string]*rate  `json:"claims,omitempty"`
	HashCeil   *hashReport       `json:"argon2idCeiling,omitempty"`
	Enroll     *deviceOpReport   `json:"enroll,omitempty"`
	Renew      *deviceOpReport   `json:"renew,omitempty"`
	Heartbeats []heartbeatReport `json:"heartbeats,omitempty"`
	Memory     *memoryReport     `json:"memory,omitempty"`
	Resync     *resyncReport     `json:"resync,omitempty"`
}

// rate is a count over a time, with latencies when measured.
type rate struct {
	Count     int                 `json:"count"`
	Failed    int                 `json:"failed,omitempty"`
	Seconds   float64             `json:"seconds"`
	PerSecond float64             `json:"perSecond"`
	Latency   *loadtest.Latencies `json:"latency,omitempty"`
	Note      string              `json:"note,omitempty"`
}

func newRate(count, failed int, seconds float64) *rate {
	r := &rate{Count: count, Failed: failed, Seconds: seconds}
	if seconds > 0 {
		r.PerSecond = float64(count) / seconds
	}
	return r
}

type ceilingReport struct {
	OneWriter  *rate `json:"oneWriter"`
	Writers    int   `json:"writers"`
	ManyWriter *rate `json:"manyWriters"`
	// A scratch custom resource of a bound Device's size, without webhooks
	// or controllers: creates, then merge-patches of its status.
	CustomResourceCreates       *rate `json:"customResourceCreates,omitempty"`
	CustomResourceStatusPatches *rate `json:"customResourceStatusPatches,omitempty"`
}

// writeCeiling is the many-writer ConfigMap rate, or 0 before the phase.
func (r *report) writeCeiling() float64 {
	if r.Ceiling == nil {
		return 0
	}
	return r.Ceiling.ManyWriter.PerSecond
}

type rateReport struct {
	*rate
	Writers         int     `json:"writers"`
	OfWriteCeiling  float64 `json:"ofWriteCeiling,omitempty"`
	DevicesCreated  int     `json:"devicesCreated"`
	DeviceBytesMean int     `json:"deviceBytesMean"`
}

type hashReport struct {
	OneCore  *rate `json:"oneGoroutine"`
	AllCores *rate `json:"allCores"`
	Cores    int   `json:"cores"`
}

type deviceOpReport struct {
	Sim             loadtest.SimResult `json:"simulator"`
	Writes          map[string]float64 `json:"writesByResource"`
	WritesPerOp     float64            `json:"writesPerOp"`
	WritesPerOpNoLs float64            `json:"writesPerOpExcludingLeases"`
	// Ratio is ops/s ÷ (write ceiling ÷ writes per op).
	Ratio float64 `json:"ofCeilingAtThisWriteCost,omitempty"`
	// RatioCustomResource is ops/s ÷ (custom-resource status patches/s ÷
	// writes per op): against the kind of write most of its writes are.
	RatioCustomResource float64 `json:"ofCustomResourceCeilingAtThisWriteCost,omitempty"`
}

type heartbeatReport struct {
	Target string             `json:"target"`
	Sim    loadtest.SimResult `json:"simulator"`
}

type memoryRow struct {
	Label      string          `json:"label"`
	Devices    int             `json:"devices"`
	Bound      int             `json:"bound"`
	Manager    loadtest.Memory `json:"manager"`
	HeapInuse  int64           `json:"managerHeapInuseKiB"`
	Gateway    loadtest.Memory `json:"gateway"`
	KBPerDev   float64         `json:"managerKBPerDeviceSinceIdle,omitempty"`
	GwKBPerDev float64         `json:"gatewayKBPerDeviceSinceIdle,omitempty"`
	SettleSecs float64         `json:"settleSeconds,omitempty"`
}

type memoryReport struct {
	BindPath string      `json:"bindPath"`
	Rows     []memoryRow `json:"rows"`
}

type resyncReport struct {
	Devices      int     `json:"devices"`
	StopSeconds  float64 `json:"stopSeconds"`
	ReadySeconds float64 `json:"readySeconds"`
	DrainSeconds float64 `json:"drainedSeconds"`
	Note         string  `json:"note"`
}

// writesTable prints writes by resource, largest first, per op.
func writesTable(w map[string]float64, ops int) string {
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if w[keys[i]] != w[keys[j]] {
			return w[keys[i]] > w[keys[j]]
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	for _, k := range keys {
		res := k
		if strings.HasPrefix(res, "/") {
			res = "core" + res
		}
		fmt.Fprintf(&b, "    %-58s %8.0f  %6.2f per op\n", res, w[k], w[k]/float64(max(ops, 1)))
	}
	return b.String()
}

// sumWrites adds up writes, without leases when noLeases.
func sumWrites(w map[string]float64, noLeases bool) float64 {
	var t float64
	for k, v := range w {
		if noLeases && strings.HasPrefix(k, "coordination.k8s.io/leases") {
			continue
		}
		t += v
	}
	return t
}

func kib(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }
