package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/loadtest"
)

func parseKey(pemBytes []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, errors.New("no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("not a signing key")
	}
	return s, nil
}

// simulate runs custody-device simulate on the bound devices' directories
// and reads its JSON result. A non-zero exit with a result (some devices
// failed) is reported in the result, not as an error.
func (h *harness) simulate(ctx context.Context, url, ca string, args ...string) (loadtest.SimResult, error) {
	full := append([]string{"simulate", "--json", "--dir", h.boundDir, "--gateway", url, "--gateway-ca", ca}, args...)
	cmd := exec.CommandContext(ctx, h.cfg.deviceBin, full...) //nolint:gosec // the harness's own simulator
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res loadtest.SimResult
	for _, line := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(line, "{") {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				return res, err
			}
			return res, nil
		}
	}
	return res, fmt.Errorf("custody-device %s: %w: %s", strings.Join(full, " "), runErr, strings.TrimSpace(stderr.String()))
}

// phaseHeartbeat measures heartbeats against the gateway and against a
// trivial HTTPS server with the same key types, each with a new TLS
// handshake per request and with keep-alive.
func (h *harness) phaseHeartbeat(ctx context.Context) error {
	if err := h.ensureBound(ctx); err != nil {
		return err
	}
	if h.report.Enroll == nil {
		if _, err := h.simulate(ctx, h.cfg.gatewayURL, h.cfg.gatewayCA, "--mode", "enroll", "--count", strconv.Itoa(h.nBound), "--concurrency", strconv.Itoa(h.cfg.concurrency)); err != nil {
			return err
		}
		h.printf("  (enroll not selected: the bound devices enrolled first, untimed)\n")
	}
	n := h.nBound
	if h.cfg.hbDevices > 0 {
		n = min(n, h.cfg.hbDevices)
	}
	url, ca, stop, keyType, err := h.trivialServer()
	if err != nil {
		return err
	}
	defer stop()
	h.printf("  %d devices, %d heartbeats in flight, %s each; ceiling: an in-process Go HTTPS server (%s serving key like the gateway's, client certificate required, not verified) answering 204\n",
		n, h.cfg.hbConcurrency, h.cfg.hbDuration, keyType)
	for _, t := range []struct{ target, url, ca string }{{"gateway", h.cfg.gatewayURL, h.cfg.gatewayCA}, {"ceiling", url, ca}} {
		for _, keep := range []bool{false, true} {
			args := []string{"--mode", "heartbeat", "--count", strconv.Itoa(n), "--concurrency", strconv.Itoa(h.cfg.hbConcurrency), "--duration", h.cfg.hbDuration.String()}
			if keep {
				args = append(args, "--keep-alive")
			}
			sim, err := h.simulate(ctx, t.url, t.ca, args...)
			if err != nil {
				return err
			}
			h.report.Heartbeats = append(h.report.Heartbeats, heartbeatReport{Target: t.target, Sim: sim})
			conn := "new TLS handshake per heartbeat"
			if keep {
				conn = "keep-alive                     "
			}
			h.printf("  %-8s %s %8.0f/s  %s  (%d failed)\n", t.target, conn, sim.PerSecond, sim.Latency, sim.Failed)
			for msg, n := range sim.Errors {
				h.printf("    %d× %s\n", n, msg)
			}
		}
	}
	return nil
}

// trivialServer starts an HTTPS server answering 204 to anything, with a
// serving key of the gateway's type, requiring (not verifying) a client
// certificate; it returns its URL and CA file.
func (h *harness) trivialServer() (string, string, func(), string, error) {
	keyType := "ECDSA P-256"
	newKey := func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	if data, err := os.ReadFile(filepath.Join(h.cfg.dataDir, "gateway", "tls.crt")); err == nil {
		if b, _ := pem.Decode(data); b != nil {
			if cert, err := x509.ParseCertificate(b.Bytes); err == nil {
				switch pub := cert.PublicKey.(type) {
				case *ecdsa.PublicKey:
					curve := pub.Curve
					keyType = "ECDSA " + curve.Params().Name
					newKey = func() (crypto.Signer, error) { return ecdsa.GenerateKey(curve, rand.Reader) }
				case *rsa.PublicKey:
					bits := pub.N.BitLen()
					keyType = fmt.Sprintf("RSA %d", bits)
					newKey = func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, bits) }
				case ed25519.PublicKey:
					keyType = "Ed25519"
					newKey = func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err }
				}
			}
		}
	}
	caKey, err := newKey()
	if err != nil {
		return "", "", nil, "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "load ceiling CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return "", "", nil, "", err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := newKey()
	if err != nil {
		return "", "", nil, "", err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, key.Public(), caKey)
	if err != nil {
		return "", "", nil, "", err
	}
	caFile := filepath.Join(h.work, "ceiling-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return "", "", nil, "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, "", err
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // clients cut off at the end of a run
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	return "https://" + l.Addr().String(), caFile, func() { _ = srv.Close() }, keyType, nil
}

// countDevices counts the cluster's Devices with a one-item list.
func (h *harness) countDevices(ctx context.Context) (int, error) {
	var list custodyv1alpha1.DeviceList
	if err := h.admin.List(ctx, &list, client.Limit(1)); err != nil {
		return 0, err
	}
	n := len(list.Items)
	if list.RemainingItemCount != nil {
		n += int(*list.RemainingItemCount)
	}
	return n, nil
}

func (h *harness) sampleMemory(ctx context.Context, label string, bound int, idle *memoryRow) (memoryRow, error) {
	n, err := h.countDevices(ctx)
	if err != nil {
		return memoryRow{}, err
	}
	row := memoryRow{Label: label, Devices: n, Bound: bound, HeapInuse: h.heapInuse(ctx)}
	if row.Manager, err = loadtest.ProcessMemory(h.devPID); err != nil {
		return row, err
	}
	if h.cfg.gatewayPID > 0 {
		row.Gateway, _ = loadtest.ProcessMemory(h.cfg.gatewayPID)
	}
	if idle != nil && row.Devices > idle.Devices {
		d := float64(row.Devices - idle.Devices)
		row.KBPerDev = float64(row.Manager.RSSKiB-idle.Manager.RSSKiB) * 1.024 / d
		if h.cfg.gatewayPID > 0 {
			row.GwKBPerDev = float64(row.Gateway.RSSKiB-idle.Gateway.RSSKiB) * 1.024 / d
		}
	}
	h.printf("  %-22s devices %7d bound %7d | manager RSS %10s HWM %10s heap in use %10s | gateway RSS %9s HWM %9s",
		label, row.Devices, row.Bound, kib(row.Manager.RSSKiB), kib(row.Manager.HWMKiB), kib(row.HeapInuse), kib(row.Gateway.RSSKiB), kib(row.Gateway.HWMKiB))
	if idle != nil && row.Devices > idle.Devices {
		h.printf(" | %.2f KB/Device (manager), %.2f (gateway) since idle", row.KBPerDev, row.GwKBPerDev)
	}
	h.printf("\n")
	return row, nil
}

// phaseRSS grows the cluster to each --scale size with unsold Devices,
// samples memory, sells them directly to the tenant (the manager opens
// and binds a Claim for each: the fastest binding through the manager's
// own path, no argon2id), and samples again.
func (h *harness) phaseRSS(ctx context.Context) error {
	if err := h.ensureTenant(ctx); err != nil {
		return err
	}
	mr := &memoryReport{BindPath: "direct sale: the ERP patches spec.sale.ownerTenant on each Device and the manager creates and binds its Claim (no argon2id); RSS is as the OS reports it, no GC forced"}
	if h.cfg.scaleBind == bindRestore {
		mr.BindPath = "restore: each size's new Devices are created bound, as a restore of a status-less backup re-creates them, by the restore identity: the Device with the spec a direct sale to the tenant leaves (a synthetic custody head: the entries before it are in no audit log), then its Claim; the manager records Restored and binds each Claim (--scale-bound caps how many; the rest are created unsold); RSS is as the OS reports it, no GC forced"
	}
	h.report.Memory = mr
	h.printf("  binding: %s\n", mr.BindPath)
	if _, err := h.settle(ctx); err != nil {
		return err
	}
	boundNow := func() int {
		h.watcher.mu.Lock()
		defer h.watcher.mu.Unlock()
		return len(h.watcher.bound)
	}
	idle, err := h.sampleMemory(ctx, "idle", boundNow(), nil)
	if err != nil {
		return err
	}
	mr.Rows = append(mr.Rows, idle)
	var unsold []*fleetDevice
	for _, size := range h.cfg.scales {
		if h.cfg.scaleBind == bindRestore {
			row, err := h.growByRestore(ctx, size, &idle, boundNow)
			if err != nil {
				return err
			}
			mr.Rows = append(mr.Rows, row)
			continue
		}
		have, err := h.countDevices(ctx)
		if err != nil {
			return err
		}
		if need := size - have; need > 0 {
			devs, err := h.makeDevices(kindScale, need)
			if err != nil {
				return err
			}
			elapsed, failed, err := h.createDevices(ctx, devs, h.cfg.writers)
			if err != nil {
				return err
			}
			h.printf("  created %d unsold Devices in %.1fs (%.0f/s, %d failed)\n", need, elapsed.Seconds(), float64(need-failed)/elapsed.Seconds(), failed)
			for _, d := range devs {
				d.rec = nil // keep only the serial: 100,000 records would weigh on the harness
			}
			unsold = append(unsold, devs...)
		}
		start := time.Now()
		if _, err := h.settle(ctx); err != nil {
			return err
		}
		row, err := h.sampleMemory(ctx, fmt.Sprintf("%d, %d bound", size, boundNow()), boundNow(), &idle)
		if err != nil {
			return err
		}
		row.SettleSecs = time.Since(start).Seconds()
		mr.Rows = append(mr.Rows, row)

		if c := h.cfg.scaleBound; c > 0 && boundNow()+len(unsold) > c {
			keep := max(0, c-boundNow())
			h.printf("  --scale-bound %d: binding %d of the %d unsold Devices; %d stay unbound\n", c, keep, len(unsold), len(unsold)-keep)
			unsold = unsold[:keep]
		}
		if len(unsold) == 0 {
			continue
		}
		serials := make([]string, len(unsold))
		for i, d := range unsold {
			serials[i] = d.serial
		}
		start = time.Now()
		sale := func(serial string) []byte {
			b, _ := json.Marshal(map[string]any{"spec": map[string]any{"sale": h.directSale(serial)}})
			return b
		}
		errs := parallel(len(unsold), h.cfg.writers, func(i int) error {
			d := &custodyv1alpha1.Device{}
			d.Name = custodyv1alpha1.DeviceName(unsold[i].model, unsold[i].serial)
			return h.erp.Patch(ctx, d, client.RawPatch(types.MergePatchType, sale(unsold[i].serial)))
		})
		if len(errs) > 0 {
			h.printf("  %d sales failed: %v\n", len(errs), errs[0])
		}
		sold := time.Since(start)
		n := h.watcher.waitBound(ctx, serials, h.cfg.timeout)
		boundIn := time.Since(start)
		if _, err := h.settle(ctx); err != nil {
			return err
		}
		h.printf("  sold %d Devices in %.1fs; %d bound after %.1fs (%.0f bindings/s)\n", len(unsold), sold.Seconds(), n, boundIn.Seconds(), float64(n)/boundIn.Seconds())
		row, err = h.sampleMemory(ctx, fmt.Sprintf("%d, %d bound", size, boundNow()), boundNow(), &idle)
		if err != nil {
			return err
		}
		row.SettleSecs = time.Since(start).Seconds()
		mr.Rows = append(mr.Rows, row)
		unsold = nil
	}
	return nil
}

// phaseResync stops custody-dev (SIGTERM), starts it again with the same
// binary, arguments, environment and directory, and measures the time to
// the manager's readiness and to its drained workqueues. custody-dev runs
// etcd and kube-apiserver too, so their restart is included. The new
// custody-dev is left running, detached, in place of the old one.
func (h *harness) phaseResync(ctx context.Context) error {
	devices, err := h.countDevices(ctx)
	if err != nil {
		return err
	}
	pid := h.devPID
	args, err := procList(pid, "cmdline")
	if err != nil {
		return err
	}
	env, err := procList(pid, "environ")
	if err != nil {
		return err
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return err
	}
	exe, err := os.ReadFile(fmt.Sprintf("/proc/%d/exe", pid)) // the binary, even if `go run` deletes it
	if err != nil {
		return err
	}
	// Named custody-dev, so that the next run finds it too.
	bin := filepath.Join(h.cfg.dataDir, "restarted", "custody-dev")
	if err := os.MkdirAll(filepath.Dir(bin), 0o700); err != nil {
		return err
	}
	_ = os.Remove(bin)                                    // it may be the running binary (a second restart)
	if err := os.WriteFile(bin, exe, 0o700); err != nil { //nolint:gosec // an executable
		return err
	}
	bin, _ = filepath.Abs(bin)
	logFile, err := os.OpenFile(filepath.Join(h.cfg.dataDir, "logs", "custody-dev-restarted.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()

	t0 := time.Now()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	for running(pid) {
		if time.Since(t0) > 3*time.Minute {
			return fmt.Errorf("custody-dev (pid %d) still running 3 minutes after SIGTERM", pid)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	stopped := time.Since(t0)
	t1 := time.Now()
	cmd := exec.Command(bin, args[1:]...) //nolint:gosec // the same custody-dev again
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = cwd, env, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.devPID = cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	for !ready(ctx, "http://"+h.cfg.managerHealth+"/readyz") {
		if time.Since(t1) > h.cfg.timeout {
			return fmt.Errorf("the restarted custody-dev was not ready within %s (log: %s)", h.cfg.timeout, logFile.Name())
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	readyAfter := time.Since(t1)
	// kube-apiserver came back on another port: read the new kubeconfig.
	if err := h.connect(); err != nil {
		return err
	}
	drained, err := h.settle(ctx)
	if err != nil {
		return err
	}
	r := &resyncReport{Devices: devices, StopSeconds: stopped.Seconds(), ReadySeconds: readyAfter.Seconds(), DrainSeconds: drained.Sub(t1).Seconds(),
		Note: "custody-dev restarts etcd and kube-apiserver with the manager; drained = every workqueue_depth 0 and controller_runtime_reconcile_total unchanged over 2 s (first seen)"}
	h.report.Resync = r
	h.printf("  %d Devices: SIGTERM to exit %.1fs; start to ready (/readyz) %.1fs; start to drained workqueues %.1fs\n", devices, r.StopSeconds, r.ReadySeconds, r.DrainSeconds)
	h.printf("  custody-dev runs again as pid %d (detached, log %s); stop it as you would make dev\n", h.devPID, logFile.Name())
	bound := 0
	if h.watcher != nil {
		h.watcher.mu.Lock()
		bound = len(h.watcher.bound)
		h.watcher.mu.Unlock()
	}
	if _, err := h.sampleMemory(ctx, "after restart", bound, nil); err != nil {
		return err
	}
	return nil
}

func procList(pid int, file string) ([]string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"), nil
}

// running reports whether pid is alive (a zombie has ended).
func running(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func ready(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
