// Command custody-dev runs the whole Custody control plane on one machine,
// with no cluster and no Docker: etcd and kube-apiserver (built from pinned
// modules by `make envtest-assets`), cert-manager's controllers, and the
// Custody manager with its webhooks, running as its own user with the RBAC
// from config/rbac. State lives in a data directory, so a restart resumes.
//
// It is for development and evaluation only: the API server trusts any
// client certificate its throwaway CA signed, and the root CA is self-signed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	uberzap "go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/controlplane"
	"github.com/custody-dev/custody/internal/operator"
	"github.com/custody-dev/custody/internal/webhooks"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "custody-dev:", err)
		os.Exit(1)
	}
}

func run() error {
	dataDir := flag.String("data-dir", ".custody-dev", "Directory for etcd data, certificates, logs and the kubeconfig; kept across restarts.")
	verbose := flag.Bool("v", false, "Print the manager's logs here too (they always go to <data-dir>/logs/manager.log).")
	gatewayAddr := flag.String("gateway-addr", "127.0.0.1:8443", "Where the device gateway listens (HTTPS); \""+noGateway+"\" serves none here, only writing its credentials to <data-dir>/gateway/ for a custody-gateway of its own (make scale).")
	configFile := flag.String("config", "", "The manager's --config file (claim policy, per-model policies, notification endpoints).")
	metricsAddr := flag.String("metrics-addr", "127.0.0.1:8080", "Where the manager serves metrics (HTTP).")
	healthAddr := flag.String("health-addr", "127.0.0.1:8081", "Where the manager serves health probes (HTTP).")
	pprofAddr := flag.String("pprof-addr", "", "Where the manager serves Go's profiles (/debug/pprof/, HTTP); empty serves none. The API server's are at its own /debug/pprof/.")
	memLimit := flag.String("memory-limit", "", "Go's soft memory limit for this process (the manager, cert-manager's controllers, the gateway) only, as a Kubernetes quantity (400Mi); GOMEMLIMIT would also reach the etcd and kube-apiserver it starts.")
	natsAddr := flag.String("nats-addr", "127.0.0.1:4222", "Where the data plane's NATS listener listens (TLS, client certificates).")
	mqttAddr := flag.String("mqtt-addr", "127.0.0.1:8883", "Where the data plane's MQTT 3.1.1 listener listens (TLS, client certificates).")
	flag.Parse()

	if *memLimit != "" {
		q, err := resource.ParseQuantity(*memLimit)
		if err != nil || q.Value() <= 0 {
			return fmt.Errorf("--memory-limit %q: want a size such as 400Mi", *memLimit)
		}
		debug.SetMemoryLimit(q.Value())
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		return err
	}
	unlock, err := lockDataDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	// Fail fast, naming the port, rather than after starting everything.
	for _, l := range []struct{ addr, flag, what string }{
		{*gatewayAddr, "gateway-addr", "the device gateway"},
		{*metricsAddr, "metrics-addr", "metrics"},
		{*healthAddr, "health-addr", "health probes"},
		{*natsAddr, "nats-addr", "the data plane's NATS listener"},
		{*mqttAddr, "mqtt-addr", "the data plane's MQTT listener"},
	} {
		if l.addr == noGateway {
			continue
		}
		if err := checkFree(l.addr); err != nil {
			return fmt.Errorf("%s (for %s) is in use by another program: stop it (find it with `ss -ltnp 'sport = :%s'`), or start custody-dev with --%s=127.0.0.1:<free port> (DEV_FLAGS='--%s=...' with make dev): %w",
				l.addr, l.what, port(l.addr), l.flag, l.flag, err)
		}
	}
	// A custody-dev killed hard (kill -9, out of memory) before this fix, or
	// whose children missed the parent-death signal, may have left etcd
	// and kube-apiserver running on this data directory.
	ended, err := controlplane.EndLeftovers(dir)
	if err != nil {
		return err
	}
	if len(ended) > 0 {
		fmt.Fprintf(os.Stderr, "custody-dev: ended %s, left running by an earlier custody-dev on %s that did not stop cleanly\n", strings.Join(ended, " and "), dir)
	}
	// cert-manager and client-go log through klog: keep them in a file.
	cmLog, err := os.OpenFile( //nolint:gosec // a fixed name under the data directory the user chose
		filepath.Join(dir, "logs", "cert-manager.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer cmLog.Close()
	managerLog, err := os.OpenFile( //nolint:gosec // a fixed name under the data directory the user chose
		filepath.Join(dir, "logs", "manager.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer managerLog.Close()
	klog.SetLogger(zap.New(zap.WriteTo(cmLog)))
	// The terminal shows errors only, unless -v; the file has everything.
	terminal := zapcore.AddSync(os.Stderr)
	terminalLevel := zapcore.ErrorLevel
	if *verbose {
		terminalLevel = zapcore.DebugLevel
	}
	// The file is JSON lines, as in production, so that its audit lines can
	// be verified (custodyctl history verify --audit-log).
	logger := zap.New(zap.RawZapOpts(uberzap.WrapCore(func(zapcore.Core) zapcore.Core {
		return zapcore.NewTee(
			zapcore.NewCore(zapcore.NewJSONEncoder(uberzap.NewProductionEncoderConfig()), zapcore.AddSync(managerLog), zapcore.DebugLevel),
			zapcore.NewCore(zapcore.NewConsoleEncoder(uberzap.NewDevelopmentEncoderConfig()), terminal, terminalLevel),
		)
	})))
	ctrl.SetLogger(logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(os.Stderr, "custody-dev: starting etcd, kube-apiserver and cert-manager (state in %s) ...\n", dir)
	cp, err := controlplane.Start(ctx, controlplane.Options{DataDir: dir, Log: zap.New(zap.WriteTo(cmLog))})
	if err != nil {
		return errors.Join(err, cp.Stop())
	}
	defer func() {
		fmt.Fprintln(os.Stderr, "custody-dev: stopping ...")
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "custody-dev: stopping the control plane:", err)
		}
	}()

	kubeconfig, err := cp.Kubeconfig("custody-dev-admin", "system:masters")
	if err != nil {
		return err
	}
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return err
	}

	cfg, err := cp.ManagerConfig()
	if err != nil {
		return err
	}
	dp, err := startDataPlane(ctx, cp, dir, *natsAddr, *mqttAddr)
	if err != nil {
		return fmt.Errorf("starting the data plane: %w", err)
	}
	defer func() { dp.Server.Shutdown(); dp.Server.WaitForShutdown() }()
	ctrlOpts := controllers.Options{OperatorNamespace: cp.OperatorNamespace, RootIssuer: cp.RootIssuer, AuditLog: operator.AuditLogger(managerLog), DataPlane: dp.Service}
	if *configFile != "" {
		if err := operator.LoadConfig(*configFile, &ctrlOpts); err != nil {
			return err
		}
	}
	mgr, err := operator.New(operator.Config{
		RESTConfig:    cfg,
		WebhookServer: cp.WebhookServer(),
		MetricsAddr:   *metricsAddr,
		HealthAddr:    *healthAddr,
		PprofAddr:     *pprofAddr,
		Controllers:   ctrlOpts,
		Webhooks:      webhooks.Options{ManagerUsernames: []string{controlplane.ManagerUsername}, GatewayUsernames: []string{controlplane.GatewayUsername}},
		Logger:        logger,
	})
	if err != nil {
		return err
	}
	mgrCtx, stopMgr := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mgrCtx) }()
	// However run returns, the manager (and the gateway, which stops with
	// the same context) stops before the control plane: deferred calls
	// run last-in first-out. A manager cut off mid-reconcile by a stopped
	// API server would still converge on restart, but would log noise.
	stopped := false
	defer func() {
		stopMgr()
		if !stopped {
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "custody-dev: the manager stopped with:", err)
			}
		}
	}()
	select {
	case <-mgr.Elected():
	case err := <-done:
		stopped = true
		return err
	}

	gatewayURL, err := startGateway(mgrCtx, cp, dir, *gatewayAddr, logger.WithName("gateway"), done)
	if err != nil {
		return err
	}

	fmt.Printf(`
Custody is running. In another terminal:

  export KUBECONFIG=%s
  kubectl get tenants,devices,claims -A
  kubectl apply -f config/samples/tenant.yaml

Devices reach the gateway at %s (CA: %s),
and the data plane at %s (NATS) and %s (MQTT 3.1.1), same CA;
a tenant Admin gets data credentials with a DataAccess (config/samples/dataaccess.yaml,
README step 7). Then follow the walk-through in README.md. Logs: %s.
Metrics: http://%s/metrics. Press Ctrl-C to stop; state is kept in %s.

`, kubeconfigPath, gatewayURL, filepath.Join(dir, "gateway-ca.crt"), dp.NATSURL, dp.Server.MQTTURL, filepath.Join(dir, "logs"), *metricsAddr, dir)

	err = <-done
	stopped = true
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// checkFree reports an error if addr cannot be listened on.
func checkFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return l.Close()
}

func port(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}

// lockDataDir takes an exclusive lock on dir so that two custody-dev
// processes never share one etcd data directory.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile( //nolint:gosec // a fixed name under the data directory the user chose
		filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("another custody-dev is running with data directory %s; stop it first (Ctrl-C in its terminal), or use --data-dir", dir)
	}
	return func() { _ = f.Close() }, nil
}
