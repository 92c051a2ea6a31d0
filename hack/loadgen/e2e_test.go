package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custody-dev/custody/internal/testtools"
)

// stopProcess ends custody-dev (which stops its etcd and kube-apiserver)
// and waits for it, killing it after a minute.
func stopProcess(pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 600 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// TestLoadHarnessEndToEnd runs `hack/load.sh` with every phase, at a few
// devices, against a custody-dev of its own, as `make scale` does: the
// harness the performance figures come from keeps working (it asserts
// nothing about speed, and neither does this test). It checks that each
// phase reports what it measured, that every operation succeeded, and
// that the counts agree with what was asked for.
func TestLoadHarnessEndToEnd(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run make test (it builds kube-apiserver and etcd with hack/envtest-assets.sh)")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := testtools.BuildCustodyDev(t, root, dir)

	data := filepath.Join(dir, "data")
	metrics, health := testtools.FreeAddr(t), testtools.FreeAddr(t)
	dev := exec.Command(bin, "--data-dir", data, "--gateway-addr", "none",
		"--metrics-addr", metrics, "--health-addr", health, "--nats-addr", testtools.FreeAddr(t), "--mqtt-addr", testtools.FreeAddr(t))
	logs, err := os.Create(filepath.Join(dir, "custody-dev.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	dev.Stdout, dev.Stderr = logs, logs
	dev.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = dev.Wait() }()
	pids := []int{dev.Process.Pid}
	t.Cleanup(func() {
		for _, pid := range pids {
			stopProcess(pid)
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := http.Get("http://" + health + "/readyz") //nolint:noctx // a probe
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("custody-dev not ready in 3 minutes (log %s)", logs.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}

	const claims, scale = 2, 12
	out := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	load := exec.CommandContext(ctx, "bash", "hack/load.sh", strconv.Itoa(claims), "2", data)
	load.Dir = root
	load.Env = append(os.Environ(),
		"LOAD_PHASES=ceiling,ingest,claims,enroll,renew,heartbeat,rss,resync",
		"LOAD_WRITERS=4", "LOAD_CEILING_WRITES=40",
		"LOAD_HEARTBEAT_CONCURRENCY=2", "LOAD_HEARTBEAT_DURATION=1s",
		"LOAD_SCALE=8,"+strconv.Itoa(scale), "LOAD_SCALE_BOUND=10", "LOAD_SCALE_BIND=restore",
		"LOAD_MANAGER_METRICS="+metrics, "LOAD_MANAGER_HEALTH="+health,
		"LOAD_GATEWAY_PORT="+strings.Split(testtools.FreeAddr(t), ":")[1],
		"LOAD_OUT="+out, "LOAD_PUBLISH_DURATION=2s", "LOAD_PUBLISH_INTERVAL=500ms")
	printed, err := load.CombinedOutput()
	// The resync phase leaves a new custody-dev running: stop it too.
	if m := regexp.MustCompile(`custody-dev runs again as pid (\d+)`).FindSubmatch(printed); m != nil {
		pid, _ := strconv.Atoi(string(m[1]))
		pids = append(pids, pid)
	}
	if err != nil {
		t.Fatalf("hack/load.sh: %v\n%s", err, printed)
	}
	t.Logf("hack/load.sh printed:\n%s", printed)

	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		report
		// rateReport embeds an unexported pointer, which encoding/json
		// cannot fill: read the ingest phase's figures apart.
		Ingest *struct {
			Count, Failed int
			PerSecond     float64
		} `json:"ingest"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	check := func(what string, ok bool, got any) {
		t.Helper()
		if !ok {
			t.Errorf("%s: got %+v", what, got)
		}
	}
	check("ceiling", r.Ceiling != nil && r.Ceiling.OneWriter.Count == 40 && r.Ceiling.ManyWriter.Count == 40 && r.Ceiling.ManyWriter.Failed == 0 &&
		r.Ceiling.CustomResourceCreates != nil && r.Ceiling.CustomResourceStatusPatches != nil && r.writeCeiling() > 0, r.Ceiling)
	check("ingest", r.Ingest != nil && r.Ingest.Count == 3*claims && r.Ingest.Failed == 0 && r.Ingest.PerSecond > 0, r.Ingest)
	for _, kind := range []string{"code", "sale", "token"} {
		c := r.Claims[kind]
		check("claims by "+kind, c != nil && c.Count == claims && c.Failed == 0 && c.Latency != nil && c.Latency.Count == claims, c)
	}
	check("argon2id ceiling", r.HashCeil != nil && r.HashCeil.AllCores.PerSecond > 0, r.HashCeil)
	for name, op := range map[string]*deviceOpReport{"enroll": r.Enroll, "renew": r.Renew} {
		// Every bound device (one per claim) is enrolled, then renewed; each
		// costs the writes TestEnrollmentWrites counts (11), give or take
		// the other writers of a small run.
		check(name, op != nil && op.Sim.OK == 3*claims && op.Sim.Failed == 0 && op.WritesPerOp >= 8 && op.WritesPerOp <= 16 &&
			op.Ratio > 0 && op.RatioCustomResource > 0, op)
	}
	check("heartbeats", len(r.Heartbeats) == 4, r.Heartbeats)
	for _, hb := range r.Heartbeats {
		check("heartbeats against "+hb.Target, hb.Sim.OK > 0 && hb.Sim.Failed == 0, hb)
	}
	// The rss phase bound its Devices by restoring them (the manager's
	// own direct-sale binding ran in ensureBound and the claims phase):
	// they count as bound only once the manager bound their Claims.
	check("memory", r.Memory != nil && len(r.Memory.Rows) >= 3 && strings.HasPrefix(r.Memory.BindPath, "restore:"), r.Memory)
	if !strings.Contains(string(printed), "the manager recorded Restored on") {
		t.Errorf("the rss phase did not restore its Devices:\n%s", printed)
	}
	if r.Memory != nil && len(r.Memory.Rows) > 0 {
		last := r.Memory.Rows[len(r.Memory.Rows)-1]
		check("memory at the largest size", last.Devices >= scale && last.Bound <= 10+3*claims && last.Manager.RSSKiB > 0 && last.Gateway.RSSKiB > 0, last)
	}
	check("resync", r.Resync != nil && r.Resync.Devices >= scale && r.Resync.ReadySeconds > 0 && r.Resync.DrainSeconds >= r.Resync.ReadySeconds, r.Resync)
	if !strings.Contains(string(printed), "data plane: dataplane: devices=") {
		t.Errorf("the data plane did not publish:\n%s", printed)
	}
}
