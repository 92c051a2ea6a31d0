package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/loadtest"
	"github.com/custody-dev/custody/internal/scheme"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// erpUser is who the harness creates Devices as: a user bound to the
// custody-erp ClusterRole, as an ERP would be.
const erpUser = "custody-load-erp"

type harness struct {
	cfg    config
	run    string
	report report
	out    io.Writer

	restCfg *rest.Config
	admin   client.WithWatch
	erp     client.Client
	kube    kubernetes.Interface
	devPID  int
	ns      string
	work    string

	watcher *claimWatcher
	cancel  context.CancelFunc

	// fleet is every device the harness made in this run, by kind.
	fleet map[string][]*fleetDevice
	pool  []poolCode
	// bound lists the device directories of bound devices (for the
	// simulator), in work/bound.
	boundDir string
	nBound   int
	keepWork bool

	// retried counts creates retried after a transient error.
	retried atomic.Int64

	token     protocol.PairingToken
	devClient *device.Client
}

type fleetDevice struct {
	serial, model string
	rec           *factory.Record
	code          claimcode.Code
}

type poolCode struct {
	code     claimcode.Code
	verifier string
}

// connect builds the admin clients from custody-dev's kubeconfig.
func (h *harness) connect() error {
	kubeconfig := filepath.Join(h.cfg.dataDir, "kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s (is custody-dev running on %s?): %w", kubeconfig, h.cfg.dataDir, err)
	}
	// The harness measures the server, not client-go's rate limiter.
	cfg.QPS, cfg.Burst = 100000, 100000
	admin, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	h.restCfg, h.admin, h.kube = cfg, admin, kube
	return nil
}

func newHarness(ctx context.Context, c config) (*harness, error) {
	h := &harness{cfg: c, run: time.Now().UTC().Format("0102-150405"), out: os.Stdout, fleet: map[string][]*fleetDevice{}}
	if err := h.connect(); err != nil {
		return nil, err
	}
	var err error
	h.devPID, err = findCustodyDev(c.dataDir)
	if err != nil {
		return nil, err
	}
	h.work, h.keepWork = c.work, c.work != ""
	if h.work == "" {
		if h.work, err = os.MkdirTemp("", "custody-load-"); err != nil {
			return nil, err
		}
	}
	h.boundDir = filepath.Join(h.work, "bound")
	if err := os.MkdirAll(h.boundDir, 0o700); err != nil {
		return nil, err
	}
	if err := h.setupERP(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *harness) close() {
	if h.cancel != nil {
		h.cancel()
	}
	if !h.keepWork {
		_ = os.RemoveAll(h.work)
	}
}

func (h *harness) printf(format string, args ...any) { fmt.Fprintf(h.out, format, args...) }

// setupERP binds erpUser to the custody-erp ClusterRole and makes a client
// that impersonates it; without that role (an older install) the admin
// creates the Devices, and the report says so.
func (h *harness) setupERP(ctx context.Context) error {
	var role rbacv1.ClusterRole
	if err := h.admin.Get(ctx, client.ObjectKey{Name: "custody-erp"}, &role); err != nil {
		h.erp = h.admin
		h.report.ERPIdentity = "cluster admin (no custody-erp ClusterRole: " + err.Error() + ")"
		return nil
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: erpUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-erp"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: erpUser}},
	}
	if err := h.admin.Create(ctx, crb); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	cfg := rest.CopyConfig(h.restCfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: erpUser, Groups: []string{"system:authenticated"}}
	erp, err := client.New(cfg, client.Options{Scheme: h.admin.Scheme()})
	if err != nil {
		return err
	}
	h.erp = erp
	h.report.ERPIdentity = "user " + erpUser + " bound to ClusterRole custody-erp (impersonated by the admin)"
	return nil
}

// ensureTenant creates the load Tenant if missing, waits until it is Ready,
// and starts the Claim watch in its namespace.
func (h *harness) ensureTenant(ctx context.Context) error {
	if h.watcher != nil {
		return nil
	}
	t := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: h.cfg.tenant}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "Custody load harness"}}
	if err := h.admin.Create(ctx, t); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if err := h.admin.Get(ctx, client.ObjectKey{Name: h.cfg.tenant}, t); err != nil {
			return err
		}
		if meta.IsStatusConditionTrue(t.Status.Conditions, custodyv1alpha1.ConditionReady) && t.Status.Namespace != "" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tenant %s not Ready after 3 minutes", h.cfg.tenant)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	h.ns = t.Status.Namespace
	wctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.watcher = newClaimWatcher(h.admin, h.ns)
	return h.watcher.start(wctx)
}

// codePool makes n claim codes and their verifiers: one argon2id hash each,
// shared round-robin by the devices the harness makes (hashing one per
// device would dominate making 100,000). Each claim still verifies its
// device's verifier.
func (h *harness) codePool(n int) error {
	for len(h.pool) < n {
		code, err := claimcode.Generate()
		if err != nil {
			return err
		}
		v, err := claimcode.NewVerifier(code)
		if err != nil {
			return err
		}
		h.pool = append(h.pool, poolCode{code, v})
	}
	return nil
}

// makeDevices manufactures n devices of a kind with the factory's code, as
// custody-device init does, sale data added for the kind.
func (h *harness) makeDevices(kind string, n int) ([]*fleetDevice, error) {
	if err := h.codePool(16); err != nil {
		return nil, err
	}
	start := len(h.fleet[kind])
	out := make([]*fleetDevice, n)
	var firstErr error
	var mu sync.Mutex
	parallel(n, 4, func(i int) error {
		serial := fmt.Sprintf("L%s-%s-%d", strings.ReplaceAll(h.run, "-", ""), strings.ToUpper(kind), start+i)
		p := h.pool[(start+i)%len(h.pool)]
		rec, err := factory.ManufactureWithCode("LOAD", serial, p.code, p.verifier)
		if err != nil {
			mu.Lock()
			firstErr = err
			mu.Unlock()
			return err
		}
		rec.Device.Labels = map[string]string{"custody.dev/load-run": h.run, "custody.dev/load-kind": kind}
		switch kind {
		case kindSale:
			rec.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "LOAD-" + serial, Buyer: custodyv1alpha1.Buyer{Name: "Load wholesaler"}, CustodianTenant: h.cfg.tenant}
		}
		out[i] = &fleetDevice{serial: serial, model: "LOAD", rec: rec, code: p.code}
		return nil
	})
	if firstErr != nil {
		return nil, firstErr
	}
	h.fleet[kind] = append(h.fleet[kind], out...)
	return out, nil
}

// Kinds of devices the harness makes.
const (
	kindCode  = "code"  // no sale: claimed by claim code
	kindSale  = "sale"  // sold to the load tenant as custodian: claimed by sale record
	kindToken = "token" // no sale: claims itself with a pairing token
	kindPlain = "plain" // no sale, never claimed in the claims phase
	kindScale = "scale" // the rss phase's fleet: bound by a direct sale
)

// createDevices creates the devices' Device objects as the ERP, with the
// given writers; it returns the elapsed time.
func (h *harness) createDevices(ctx context.Context, devs []*fleetDevice, writers int) (time.Duration, int, error) {
	start := time.Now()
	errs := parallel(len(devs), writers, func(i int) error {
		return h.retry(ctx, func() error { return h.erp.Create(ctx, devs[i].rec.Device.DeepCopy()) })
	})
	return time.Since(start), len(errs), firstError(errs)
}

// writeDeviceDir writes what custody-device init writes for the device
// itself (its key and identity) under dir, for the simulator.
func writeDeviceDir(dir string, d *fleetDevice) error {
	p := filepath.Join(dir, d.serial)
	if err := os.MkdirAll(p, 0o700); err != nil {
		return err
	}
	id, _ := json.Marshal(device.IdentityFile{SerialNumber: d.serial, Model: d.model})
	if err := os.WriteFile(filepath.Join(p, device.FileIdentity), id, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(p, device.FilePrivateKey), d.rec.PrivateKeyPEM, 0o600)
}

// parallel runs fn(0..n-1) on workers goroutines and returns the errors.
func parallel(n, workers int, fn func(i int) error) []error {
	var next atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for w := 0; w < min(workers, max(n, 1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

func firstError(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d failed, first: %w", len(errs), errs[0])
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// claimWatcher records, from a watch on the tenant namespace's Claims,
// when each device's Claim was first seen Bound (the harness's clock, ms
// resolution), keyed by serial number.
type claimWatcher struct {
	c  client.WithWatch
	ns string

	mu      sync.Mutex
	bound   map[string]time.Time
	changed chan struct{}
}

func newClaimWatcher(c client.WithWatch, ns string) *claimWatcher {
	return &claimWatcher{c: c, ns: ns, bound: map[string]time.Time{}, changed: make(chan struct{}, 1)}
}

func (w *claimWatcher) start(ctx context.Context) error {
	var list custodyv1alpha1.ClaimList
	if err := w.c.List(ctx, &list, client.InNamespace(w.ns)); err != nil {
		return err
	}
	now := time.Now()
	for i := range list.Items {
		w.observe(&list.Items[i], now)
	}
	rv := list.ResourceVersion
	go func() {
		for ctx.Err() == nil {
			wi, err := w.c.Watch(ctx, &custodyv1alpha1.ClaimList{}, client.InNamespace(w.ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}})
			if err != nil {
				rv = ""
				_ = sleep(ctx, time.Second)
				continue
			}
			for ev := range wi.ResultChan() {
				if ev.Type == watch.Error {
					rv = "" // expired: start again from the current state
					break
				}
				c, ok := ev.Object.(*custodyv1alpha1.Claim)
				if !ok {
					continue
				}
				rv = c.ResourceVersion
				if ev.Type != watch.Bookmark {
					w.observe(c, time.Now())
				}
			}
			wi.Stop()
		}
	}()
	return nil
}

func (w *claimWatcher) observe(c *custodyv1alpha1.Claim, at time.Time) {
	if c.Status.Phase != custodyv1alpha1.ClaimPhaseBound {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, seen := w.bound[c.Spec.SerialNumber]; !seen {
		w.bound[c.Spec.SerialNumber] = at
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

// boundAt returns when serial's Claim was seen Bound.
func (w *claimWatcher) boundAt(serial string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.bound[serial]
	return t, ok
}

// waitBound waits until every serial is bound or timeout passes; it
// returns how many are bound.
func (w *claimWatcher) waitBound(ctx context.Context, serials []string, timeout time.Duration) int {
	deadline := time.After(timeout)
	for {
		n := 0
		for _, s := range serials {
			if _, ok := w.boundAt(s); ok {
				n++
			}
		}
		if n == len(serials) {
			return n
		}
		select {
		case <-ctx.Done():
			return n
		case <-deadline:
			return n
		case <-w.changed:
		case <-time.After(time.Second):
		}
	}
}

// apiWrites reads kube-apiserver's write counters by resource.
func (h *harness) apiWrites(ctx context.Context) (map[string]float64, error) {
	raw, err := h.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading kube-apiserver /metrics: %w", err)
	}
	samples, err := loadtest.ParseMetrics(string(raw))
	if err != nil {
		return nil, err
	}
	return loadtest.Writes(samples), nil
}

// managerMetrics reads the manager's /metrics.
func (h *harness) managerMetrics(ctx context.Context) ([]loadtest.Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.cfg.managerMetrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("manager /metrics: %s", resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return loadtest.ParseMetrics(string(data))
}

// settle waits until the manager's workqueues (its controllers' and
// cert-manager's) are empty and its reconcile count stands still between
// two reads 2 s apart; it returns when that was first seen.
func (h *harness) settle(ctx context.Context) (time.Time, error) {
	deadline := time.Now().Add(h.cfg.timeout)
	last := -1.0
	for time.Now().Before(deadline) {
		s, err := h.managerMetrics(ctx)
		if err == nil {
			depth := loadtest.Sum(s, "workqueue_depth", nil)
			total := loadtest.Sum(s, "controller_runtime_reconcile_total", nil)
			if depth == 0 && total == last {
				return time.Now(), nil
			}
			last = total
			if depth != 0 {
				last = -1
			}
		}
		if err := sleep(ctx, 2*time.Second); err != nil {
			return time.Time{}, err
		}
	}
	return time.Time{}, fmt.Errorf("the manager's workqueues did not drain within %s", h.cfg.timeout)
}

// heapInuse is the manager's go_memstats_heap_inuse_bytes in KiB.
func (h *harness) heapInuse(ctx context.Context) int64 {
	s, err := h.managerMetrics(ctx)
	if err != nil {
		return 0
	}
	return int64(loadtest.Sum(s, "go_memstats_heap_inuse_bytes", nil) / 1024)
}

// findCustodyDev finds the custody-dev process running on dataDir.
func findCustodyDev(dataDir string) (int, error) {
	want, err := filepath.Abs(dataDir)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(args[0]) != "custody-dev" {
			continue
		}
		dir := ".custody-dev"
		for i, a := range args[1:] {
			a = "-" + strings.TrimLeft(a, "-")
			switch {
			case a == "-data-dir" && i+2 < len(args):
				dir = args[i+2]
			case strings.HasPrefix(a, "-data-dir="):
				dir = strings.TrimPrefix(a, "-data-dir=")
			}
		}
		if !filepath.IsAbs(dir) {
			cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
			if err != nil {
				continue
			}
			dir = filepath.Join(cwd, dir)
		}
		if filepath.Clean(dir) == want {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no custody-dev process runs on %s: start it (make dev)", want)
}
