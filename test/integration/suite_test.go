// Package integration tests Custody against a real kube-apiserver and etcd,
// real cert-manager controllers, and the manager running as its own user
// with the RBAC shipped in config/rbac.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/controlplane"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/operator"
	"github.com/custody-dev/custody/internal/webhooks"
)

var (
	cp    *controlplane.ControlPlane
	admin client.Client
	// logs collects every line the managers log, so tests can prove that no
	// claim code is ever logged.
	logs = &syncBuffer{}
	seq  atomic.Int64
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger writes the managers' log lines up to V(4), as JSON (the
// production encoding, which the audit log reader parses), to logs, and to
// stderr when CUSTODY_TEST_LOGS is set. Custody logs at V(0) and V(1).
// V(5) is left out: there controller-runtime v0.24.1's priority queue dumps
// its items every 10s while another goroutine mutates them (a data race in
// its debug logging that -race reports), and its per-reconcile V(5) lines
// carry only request names.
var testLogger = zap.New(zap.WriteTo(io.MultiWriter(logs, logSink())), zap.UseDevMode(true), zap.JSONEncoder(), zap.Level(zapcore.Level(-4)))

func logSink() io.Writer {
	if os.Getenv("CUSTODY_TEST_LOGS") != "" {
		return os.Stderr
	}
	return io.Discard
}

func TestMain(m *testing.M) {
	ctx := context.Background()
	ctrl.SetLogger(testLogger)
	var err error
	cp, err = controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the control plane:", err)
		_ = cp.Stop()
		os.Exit(1)
	}
	admin = cp.Client
	code := m.Run()
	removeESTClientBinaries()
	if err := cp.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
	}
	os.Exit(code)
}

// epoch is where every fake clock starts.
var epoch = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// manager is a running Custody manager.
type manager struct {
	Clock *clocktesting.FakeClock
	// Manager is the controller-runtime manager, for tests that look into
	// its cache.
	Manager ctrl.Manager
	cancel  context.CancelFunc
	done    chan error
}

// startManager runs a manager as the manager's user, with a fake clock,
// until the test ends or stop is called. Tests run one manager at a time:
// the webhook server's address is the control plane's.
func startManager(t testing.TB, mutate ...func(*controllers.Options)) *manager {
	t.Helper()
	return startManagerOn(t, cp, mutate...)
}

// startManagerOn starts a manager against the control plane on (the
// suite's, or another a test started).
func startManagerOn(t testing.TB, on *controlplane.ControlPlane, mutate ...func(*controllers.Options)) *manager {
	t.Helper()
	return startManagerWebhooks(t, on, webhooks.Options{ManagerUsernames: []string{controlplane.ManagerUsername}, GatewayUsernames: []string{controlplane.GatewayUsername}}, mutate...)
}

// startManagerWebhooks is startManagerOn with the webhooks' options given:
// an installation whose flags name other or more users than
// config/default.
func startManagerWebhooks(t testing.TB, on *controlplane.ControlPlane, wo webhooks.Options, mutate ...func(*controllers.Options)) *manager {
	t.Helper()
	cfg, err := on.ManagerConfig()
	if err != nil {
		t.Fatal(err)
	}
	m := &manager{Clock: clocktesting.NewFakeClock(epoch), done: make(chan error, 1)}
	opts := controllers.Options{OperatorNamespace: on.OperatorNamespace, RootIssuer: on.RootIssuer, Clock: m.Clock}
	for _, f := range mutate {
		f(&opts)
	}
	mgr, err := operator.New(operator.Config{
		RESTConfig:         rest.CopyConfig(cfg),
		WebhookServer:      on.WebhookServer(),
		MetricsAddr:        "0",
		HealthAddr:         "0",
		Controllers:        opts,
		Webhooks:           wo,
		Logger:             testLogger,
		SkipNameValidation: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Manager = mgr
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- mgr.Start(ctx) }()
	t.Cleanup(m.stop)
	// Wait for the webhook server: a Claim dry-run goes through it.
	waitFor(t, "the webhook server", func() bool {
		c := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
			Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-PROBE", Model: "PROBE", ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "x"}}}}
		return on.Client.Create(context.Background(), c, client.DryRunAll) == nil
	})
	return m
}

func (m *manager) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	if err := <-m.done; err != nil {
		fmt.Fprintln(os.Stderr, "manager stopped with:", err)
	}
	m.cancel = nil
}

// waitFor polls cond (every 50ms, up to a minute) and fails the test if it
// never holds. It waits for the system to converge; it never asserts timing.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func uniq(prefix string) string { return fmt.Sprintf("%s-%d", prefix, seq.Add(1)) }

// newTenant creates a Tenant and waits until it is Ready.
func newTenant(t testing.TB, members ...custodyv1alpha1.TenantMember) *custodyv1alpha1.Tenant {
	t.Helper()
	return newTenantWith(t, func(tn *custodyv1alpha1.Tenant) { tn.Spec.Members = members })
}

// newTenantWith creates a Tenant shaped by mutate and waits until it is Ready.
func newTenantWith(t testing.TB, mutate func(*custodyv1alpha1.Tenant)) *custodyv1alpha1.Tenant {
	t.Helper()
	tn := &custodyv1alpha1.Tenant{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("tenant")},
		Spec:       custodyv1alpha1.TenantSpec{DisplayName: "Test tenant"},
	}
	mutate(tn)
	if err := admin.Create(context.Background(), tn); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tenant "+tn.Name+" to be Ready", func() bool {
		if err := admin.Get(context.Background(), client.ObjectKeyFromObject(tn), tn); err != nil {
			return false
		}
		return meta.IsStatusConditionTrue(tn.Status.Conditions, custodyv1alpha1.ConditionReady) && tn.Status.ObservedGeneration == tn.Generation
	})
	return tn
}

// newDeviceRecord manufactures a device with a unique serial number.
func newDeviceRecord(t testing.TB) *factory.Record {
	t.Helper()
	rec, err := factory.Manufacture("XR200", strings.ToUpper(uniq("SN")))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// newDevice manufactures a device and creates it as the ERP would.
func newDevice(t testing.TB) *factory.Record {
	t.Helper()
	rec := newDeviceRecord(t)
	if err := admin.Create(context.Background(), rec.Device); err != nil {
		t.Fatal(err)
	}
	return rec
}

// claimWithCode creates the code Secret and a Claim for serial/model in ns.
func claimWithCode(t testing.TB, c client.Client, ns, serial, model, code string) *custodyv1alpha1.Claim {
	t.Helper()
	name := uniq("claim")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-code", Namespace: ns}, StringData: map[string]string{"code": code}}
	if err := c.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	cl := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: serial, Model: model,
			ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: secret.Name}}},
	}
	if err := c.Create(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
	return cl
}

// waitPhase waits until the Claim reaches a phase other than Pending (or
// the given one) and returns it.
func waitPhase(t testing.TB, cl *custodyv1alpha1.Claim, want custodyv1alpha1.ClaimPhase) *custodyv1alpha1.Claim {
	t.Helper()
	got := &custodyv1alpha1.Claim{}
	waitFor(t, fmt.Sprintf("claim %s to be %s", cl.Name, want), func() bool {
		if err := admin.Get(context.Background(), client.ObjectKeyFromObject(cl), got); err != nil {
			return false
		}
		return got.Status.Phase == want
	})
	return got
}

func getDevice(t testing.TB, name string) *custodyv1alpha1.Device {
	t.Helper()
	d := &custodyv1alpha1.Device{}
	if err := admin.Get(context.Background(), client.ObjectKey{Name: name}, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// otherCode returns a well-formed code different from c.
func otherCode(t testing.TB, c claimcode.Code) claimcode.Code {
	for {
		o, err := claimcode.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if o != c {
			return o
		}
	}
}

// updateDevice applies mutate to a fresh copy of Device name and updates it
// as c, retrying when the manager wrote the Device in between.
func updateDevice(c client.Client, name string, mutate func(*custodyv1alpha1.Device), opts ...client.UpdateOption) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &custodyv1alpha1.Device{}
		if err := admin.Get(context.Background(), client.ObjectKey{Name: name}, d); err != nil {
			return err
		}
		mutate(d)
		return c.Update(context.Background(), d, opts...)
	})
}
