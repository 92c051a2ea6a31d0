// Package loadtest holds what the load harness (hack/loadgen) and the device
// simulator (custody-device simulate) share to report a run: latency
// percentiles, a reader of the Prometheus text format for the API server's
// and the manager's /metrics, a process's memory as the kernel sees it, and
// a description of the machine. It measures; it asserts nothing and must
// not be imported by the manager or the gateway.
package loadtest

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Latencies summarises a set of durations.
type Latencies struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50Ms"`
	P99Ms float64 `json:"p99Ms"`
	MaxMs float64 `json:"maxMs"`
}

// Summarise sorts d in place and returns its count, p50, p99 and maximum.
// The p-th percentile is the smallest value with at least p of the values
// at or below it (nearest rank).
func Summarise(d []time.Duration) Latencies {
	if len(d) == 0 {
		return Latencies{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	ms := func(x time.Duration) float64 { return math.Round(float64(x)/float64(time.Millisecond)*100) / 100 }
	return Latencies{Count: len(d), P50Ms: ms(Percentile(d, 0.50)), P99Ms: ms(Percentile(d, 0.99)), MaxMs: ms(d[len(d)-1])}
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 1) of
// sorted, which must be sorted ascending and not empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// String prints p50/p99/max in milliseconds.
func (l Latencies) String() string {
	return fmt.Sprintf("p50 %s p99 %s max %s", fmtMs(l.P50Ms), fmtMs(l.P99Ms), fmtMs(l.MaxMs))
}

func fmtMs(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.2fs", ms/1000)
	}
	return fmt.Sprintf("%.1fms", ms)
}

// Sample is one line of the Prometheus text format: a metric name, its
// labels and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the Prometheus text exposition format (what
// kube-apiserver and controller-runtime serve on /metrics). Comments and
// blank lines are skipped; a line it cannot read is an error.
func ParseMetrics(text string) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", n, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseLine(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, fmt.Errorf("no value in %q", line)
	}
	s.Name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " ,")
			if line == "" {
				return s, fmt.Errorf("unterminated labels")
			}
			if line[0] == '}' {
				line = line[1:]
				break
			}
			eq := strings.IndexByte(line, '=')
			if eq <= 0 || len(line) < eq+2 || line[eq+1] != '"' {
				return s, fmt.Errorf("malformed label in %q", line)
			}
			key := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line = line[j+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("unterminated label value for %s", key)
			}
			s.Labels[key] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value for %s", s.Name)
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("value of %s: %w", s.Name, err)
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of the samples named name whose labels match every
// pair of match.
func Sum(samples []Sample, name string, match map[string]string) float64 {
	var total float64
	for _, s := range samples {
		if s.Name == name && matches(s.Labels, match) {
			total += s.Value
		}
	}
	return total
}

func matches(labels, match map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// WriteVerbs are the verbs of apiserver_request_total that write to etcd
// (APPLY is a server-side apply PATCH).
var WriteVerbs = []string{"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}

// Writes counts kube-apiserver's write requests (apiserver_request_total
// with a WriteVerbs verb, whatever their answer, conflicts included) by
// resource: "group/resource[/subresource]", the core group as "". Reviews
// (authorization.k8s.io, authentication.k8s.io) are POSTs that store
// nothing and are left out.
func Writes(samples []Sample) map[string]float64 {
	out := map[string]float64{}
	for _, s := range samples {
		if s.Name != "apiserver_request_total" || !isWrite(s.Labels["verb"]) || s.Labels["dry_run"] != "" || virtualGroups[s.Labels["group"]] {
			continue
		}
		key := s.Labels["group"] + "/" + s.Labels["resource"]
		if sub := s.Labels["subresource"]; sub != "" {
			key += "/" + sub
		}
		out[key] += s.Value
	}
	return out
}

// virtualGroups hold resources whose creation is a question, never stored
// in etcd (SubjectAccessReviews, TokenReviews): not writes.
var virtualGroups = map[string]bool{"authorization.k8s.io": true, "authentication.k8s.io": true}

func isWrite(verb string) bool {
	for _, v := range WriteVerbs {
		if verb == v {
			return true
		}
	}
	return false
}

// Diff returns after - before per key, leaving out keys that did not move.
func Diff(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// Memory is a process's resident memory as /proc/<pid>/status reports it.
type Memory struct {
	RSSKiB int64 `json:"rssKiB"`
	HWMKiB int64 `json:"hwmKiB"`
}

// ProcessMemory reads VmRSS and VmHWM of pid.
func ProcessMemory(pid int) (Memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	return parseStatus(string(data))
}

func parseStatus(status string) (Memory, error) {
	var m Memory
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSSKiB = n
		case "VmHWM":
			m.HWMKiB = n
		}
	}
	if m.RSSKiB == 0 {
		return m, fmt.Errorf("no VmRSS in status")
	}
	return m, nil
}

// Machine describes where a run ran.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	MemoryGiB int64  `json:"memoryGiB"`
	Go        string `json:"go"`
	Platform  string `json:"platform"`
	LoadAvg   string `json:"loadAvg"`
}

// ThisMachine reads /proc for the CPU model, memory and load average.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemoryGiB = (kib + 512*1024) / (1024 * 1024)
			}
		}
	}
	m.LoadAvg = LoadAverage()
	return m
}

// LoadAverage is the first three fields of /proc/loadavg.
func LoadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// String is one line: CPUs, model, memory, Go, load.
func (m Machine) String() string {
	return fmt.Sprintf("nproc %d, %s, %d GiB, %s %s, load average %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.Go, m.Platform, m.LoadAvg)
}

// SimResult is what custody-device simulate reports (--json prints it;
// the load harness reads it).
type SimResult struct {
	Mode        string `json:"mode"`
	Concurrency int    `json:"concurrency"`
	KeepAlive   bool   `json:"keepAlive,omitempty"`
	Devices     int    `json:"devices"`
	// OK counts devices enrolled or renewed, or heartbeats answered.
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	// Errors counts failures by message (at most 10 kinds).
	Errors         map[string]int `json:"errors,omitempty"`
	ElapsedSeconds float64        `json:"elapsedSeconds"`
	PerSecond      float64        `json:"perSecond"`
	Latency        Latencies      `json:"latency"`
}

func (r SimResult) String() string {
	what := map[string]string{"enroll": "enrolled", "renew": "renewed", "heartbeat": "heartbeats"}[r.Mode]
	s := fmt.Sprintf("devices=%d %s=%d failed=%d elapsed=%.3fs %s/s=%.1f %s", r.Devices, what, r.OK, r.Failed, r.ElapsedSeconds,
		map[string]string{"enroll": "enrollments", "renew": "renewals", "heartbeat": "heartbeats"}[r.Mode], r.PerSecond, r.Latency)
	if r.Mode == "heartbeat" {
		s += fmt.Sprintf(" keep-alive=%t", r.KeepAlive)
	}
	for msg, n := range r.Errors {
		s += fmt.Sprintf("\n  %d× %s", n, msg)
	}
	return s
}
