// Command loadgen is Custody's load and scale harness: the cluster side of
// `make load` and `make scale` (hack/load.sh runs it). In one run it
// measures, each figure next to the ceiling it is judged against, measured
// in the same run on the same machine:
//
//	ceiling    plain ConfigMap creates/s, 1 and 32 writers: the write ceiling
//	ingest     ERP Device creates/s through the webhooks, 32 writers
//	claims     claims/s and claim-to-bound p50/p99 by claim code, sale record
//	           and pairing token; argon2id verifications/s of the cores
//	enroll     enrollments/s, p50/p99, API server writes per enrollment
//	renew      the same for renewals (EST simplereenroll)
//	heartbeat  mutual-TLS heartbeats/s, p50/p99, with and without keep-alive,
//	           next to a trivial HTTPS server with the same TLS
//	rss        manager and gateway memory at each size of --scale, unbound
//	           and bound: KB per Device
//	resync     a restart of custody-dev at the largest size: time to ready
//	           and to drained workqueues
//
// The devices' side runs in custody-device simulate, a process of its own.
// It prints a human-readable report as it goes and writes the same figures
// as JSON. It asserts nothing: figures are reported, never judged.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/custody-dev/custody/internal/loadtest"
)

var allPhases = []string{"ceiling", "ingest", "claims", "enroll", "renew", "heartbeat", "rss", "resync"}

type config struct {
	dataDir        string
	phases         map[string]bool
	devices        int
	claims         int
	writers        int
	concurrency    int
	ceilingWrites  int
	hashes         int
	hbDevices      int
	hbConcurrency  int
	hbDuration     time.Duration
	scales         []int
	scaleBound     int
	scaleBind      string
	tenant         string
	gatewayURL     string
	gatewayCA      string
	gatewayPID     int
	deviceBin      string
	managerMetrics string
	managerHealth  string
	out            string
	work           string
	timeout        time.Duration
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var c config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data-dir", ".custody-dev", "custody-dev's data directory (kubeconfig, gateway CA)")
	phases := fs.String("phases", strings.Join(allPhases, ","), "comma-separated phases to run: "+strings.Join(allPhases, ","))
	fs.IntVar(&c.devices, "devices", 300, "Devices the ERP creates in the ingest phase (at least 3 × --claims)")
	fs.IntVar(&c.claims, "claims", 100, "claims of each kind (code, sale record, pairing token); the devices they bind enroll, renew and send heartbeats")
	fs.IntVar(&c.writers, "writers", 32, "concurrent writers for the ceiling, ingest and claim creation")
	fs.IntVar(&c.concurrency, "concurrency", 8, "devices enrolling, renewing or claiming with a token at once")
	fs.IntVar(&c.ceilingWrites, "ceiling-writes", 2000, "ConfigMaps created for each ceiling measurement")
	fs.IntVar(&c.hashes, "hashes", 0, "argon2id verifications for the hash ceiling (default 16 per core)")
	fs.IntVar(&c.hbDevices, "heartbeat-devices", 0, "devices sending heartbeats (default: every bound device)")
	fs.IntVar(&c.hbConcurrency, "heartbeat-concurrency", 32, "heartbeats in flight at once")
	fs.DurationVar(&c.hbDuration, "heartbeat-duration", 10*time.Second, "how long each heartbeat measurement runs")
	scales := fs.String("scale", "10000,100000", "comma-separated Device counts for the rss phase; resync runs at the largest")
	fs.IntVar(&c.scaleBound, "scale-bound", 0, "in the rss phase, bind at most this many Devices in all (0: every one at each scale); the rest stay unbound, and the report says so")
	fs.StringVar(&c.scaleBind, "scale-bind", bindSale, "how the rss phase binds its Devices: "+bindSale+" (the ERP sells each directly to the tenant, the manager binds it: about 20/s) or "+bindRestore+" (they are deleted and re-created bound, as a restore of a backup would, by the restore identity: for 100,000)")
	fs.StringVar(&c.tenant, "tenant", "load", "the Tenant that claims the devices (created if missing)")
	fs.StringVar(&c.gatewayURL, "gateway", "", "the custody-gateway the devices use (hack/load.sh starts one)")
	fs.StringVar(&c.gatewayCA, "gateway-ca", "", "the gateway's CA bundle (default DATA_DIR/gateway-ca.crt)")
	fs.IntVar(&c.gatewayPID, "gateway-pid", 0, "the custody-gateway's process ID, for its memory")
	fs.StringVar(&c.deviceBin, "custody-device", "custody-device", "the custody-device binary that simulates the devices")
	fs.StringVar(&c.managerMetrics, "manager-metrics", "127.0.0.1:8080", "custody-dev's --metrics-addr")
	fs.StringVar(&c.managerHealth, "manager-health", "127.0.0.1:8081", "custody-dev's --health-addr")
	fs.StringVar(&c.out, "out", "load-report.json", "where the JSON report goes")
	fs.StringVar(&c.work, "work", "", "directory for the bound devices' directories (DIR/bound/<serial>), kept after the run; default: a temporary directory, removed")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Minute, "how long to wait for the manager at each step (claims to bind, queues to drain)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !contains(allPhases, p) {
			return fmt.Errorf("unknown phase %q (phases: %s)", p, strings.Join(allPhases, ","))
		}
		c.phases[p] = true
	}
	for _, s := range strings.Split(*scales, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("--scale: %q is not a Device count", s)
		}
		c.scales = append(c.scales, n)
	}
	if c.scaleBind != bindSale && c.scaleBind != bindRestore {
		return fmt.Errorf("--scale-bind: %q is neither %s nor %s", c.scaleBind, bindSale, bindRestore)
	}
	if c.devices < 3*c.claims {
		c.devices = 3 * c.claims
	}
	if c.hashes <= 0 {
		c.hashes = 16 * loadtest.ThisMachine().CPUs
	}
	if c.gatewayCA == "" {
		c.gatewayCA = filepath.Join(c.dataDir, "gateway-ca.crt")
	}
	needsGateway := c.phases["claims"] || c.phases["enroll"] || c.phases["renew"] || c.phases["heartbeat"]
	if needsGateway && c.gatewayURL == "" {
		return errors.New("--gateway is required for the claims, enroll, renew and heartbeat phases")
	}

	h, err := newHarness(ctx, c)
	if err != nil {
		return err
	}
	defer h.close()
	h.report.Command = strings.Join(append([]string{"loadgen"}, args...), " ")
	h.report.Machine = loadtest.ThisMachine()
	h.report.Started = time.Now().UTC().Format(time.RFC3339)
	h.printf("# Custody load run %s\n", h.run)
	h.printf("machine: %s\n", h.report.Machine)
	h.printf("command: %s\n", h.report.Command)
	h.printf("custody-dev pid %d (manager, cert-manager; etcd and kube-apiserver are its children, not counted); gateway pid %d\n\n", h.devPID, c.gatewayPID)

	err = h.runPhases(ctx)
	h.report.Finished = time.Now().UTC().Format(time.RFC3339)
	h.report.LoadAvgEnd = loadtest.LoadAverage()
	if werr := h.writeJSON(); werr != nil {
		err = errors.Join(err, werr)
	}
	return err
}

func (h *harness) runPhases(ctx context.Context) error {
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"ceiling", h.phaseCeiling},
		{"ingest", h.phaseIngest},
		{"claims", h.phaseClaims},
		{"enroll", h.phaseEnroll},
		{"renew", h.phaseRenew},
		{"heartbeat", h.phaseHeartbeat},
		{"rss", h.phaseRSS},
		{"resync", h.phaseResync},
	}
	for _, s := range steps {
		if !h.cfg.phases[s.name] {
			continue
		}
		h.printf("## %s (load average %s)\n", s.name, loadtest.LoadAverage())
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("phase %s: %w", s.name, err)
		}
		h.printf("\n")
	}
	return nil
}

func (h *harness) writeJSON() error {
	data, err := json.MarshalIndent(h.report, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(h.cfg.out, append(data, '\n'), 0o644); err != nil { //nolint:gosec // a report
		return err
	}
	h.printf("JSON report: %s\n", h.cfg.out)
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
