// Command custody-manager runs Custody's controllers, admission webhooks and
// CertificateRequest approver in a cluster.
package main

import (
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/memlimit"
	"github.com/custody-dev/custody/internal/operator"
	"github.com/custody-dev/custody/internal/webhooks"

	// Mozilla's roots, used only where the system has none (the manager's
	// image has no /etc/ssl): notifications reach HTTPS endpoints.
	_ "golang.org/x/crypto/x509roots/fallback"
)

func main() {
	var (
		opNS, rootIssuer, managerUsers, gatewayUsers, restoreGroups, metricsAddr, healthAddr, pprofAddr, certDir, trustDomain, webhookHost, configFile string
		webhookPort, maxAttempts                                                                                                                       int
		leaderElect                                                                                                                                    bool
		lockoutBase, certDuration, transferTTL                                                                                                         time.Duration
	)
	var certManagerUsers string
	flag.StringVar(&opNS, "operator-namespace", envOr("POD_NAMESPACE", "custody-system"), "Namespace holding CA material and CertificateRequests.")
	flag.StringVar(&rootIssuer, "root-issuer", "custody-root", "Shared root ClusterIssuer of earlier versions: tenant CAs are now self-signed roots, and every request to it is denied.")
	flag.StringVar(&managerUsers, "manager-usernames", "system:serviceaccount:custody-system:custody-manager", "Comma-separated users allowed to write Device bindings (the manager's ServiceAccount).")
	flag.StringVar(&certManagerUsers, "cert-manager-usernames", controllers.DefaultCertManagerUsername, "Comma-separated users cert-manager's controller runs as: a tenant CA's CertificateRequest is approved only if one of them created it.")
	flag.StringVar(&restoreGroups, "restore-groups", webhooks.DefaultRestoreGroup, "Comma-separated groups of the restore identity, which may re-create Devices, Claims and SupportActions from a backup as they were (docs/operations.md); empty turns restores off.")
	flag.StringVar(&gatewayUsers, "gateway-usernames", "system:serviceaccount:custody-system:custody-gateway", "Comma-separated users of the gateway: on Devices they may record heartbeats only.")
	flag.StringVar(&trustDomain, "trust-domain", controllers.DefaultTrustDomain, "SPIFFE trust domain of device identities.")
	flag.DurationVar(&certDuration, "certificate-duration", controllers.DefaultCertificateDuration, "Default lifetime of device certificates (a Tenant may set its own).")
	flag.StringVar(&webhookHost, "webhook-host", "", "Address the webhook server binds to (all interfaces when empty).")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Metrics address; 0 disables.")
	flag.StringVar(&healthAddr, "health-probe-bind-address", ":8081", "Health probe address.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address serving Go's profiles (/debug/pprof/) for profiling under load; 0 disables. Bind it to localhost only: profiles show memory contents' shapes and timings.")
	flag.StringVar(&certDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "Directory with the webhook serving certificate (tls.crt, tls.key).")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "Webhook server port.")
	flag.IntVar(&maxAttempts, "claim-max-failed-attempts", int(claim.DefaultPolicy.MaxFailedAttempts), fmt.Sprintf("Failed claim attempts a tenant may make on one serial number before it is locked out (%d to %d).", custodyv1alpha1.MaxFailedAttemptsLowest, custodyv1alpha1.MaxFailedAttemptsHighest))
	flag.DurationVar(&lockoutBase, "claim-lockout", claim.DefaultPolicy.LockoutBase, "First lockout after too many failed attempts; doubles with each further failure (at most 24h).")
	flag.DurationVar(&transferTTL, "transfer-ttl", controllers.DefaultTransferTTL, "How long a Transfer offer waits for its recipient.")
	flag.StringVar(&configFile, "config", "", "YAML file with the operator's claim policy (cooling-off, sale-record proofs), per-model policies and notification endpoints; see docs/operations.md.")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Enable leader election.")
	var qps float64
	var burst int
	var workers string
	var verifiers int
	flag.Float64Var(&qps, "kube-api-qps", operator.DefaultQPS, "Requests per second the manager may make to the API server (client-side limit; negative: none). See docs/operations.md, \"Rate limits and workers\".")
	flag.IntVar(&burst, "kube-api-burst", operator.DefaultBurst, "Requests the manager may make at once above --kube-api-qps.")
	flag.IntVar(&verifiers, "claim-code-verifiers", 0, "Claim codes verified (argon2id, one core and 19 MiB each) at once, whatever the claim workers; 0: the cores Go uses (GOMAXPROCS).")
	flag.StringVar(&workers, "workers", "", "Comma-separated controller=N: reconciles each controller runs at once, for "+strings.Join(slices.Sorted(maps.Keys(controllers.ControllerNames)), ", ")+" (defaults in docs/operations.md).")
	var dp dataPlaneFlags
	dp.bind(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	logger := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(logger)
	klog.SetLogger(logger)
	log := logger.WithName("setup")
	if limit, err := memlimit.Set(); err != nil {
		log.Error(err, "reading the container's memory limit; GOMEMLIMIT not set")
	} else if limit > 0 {
		log.Info("Go's soft memory limit set from the container's", "GOMEMLIMIT", limit)
	}

	// The flags set these two fields, every time (their defaults are
	// DefaultPolicy's); a value out of int32 is clamped, out of bounds
	// either way, and Validate says so.
	policy := claim.DefaultPolicy
	policy.MaxFailedAttempts = int32(min(max(maxAttempts, math.MinInt32), math.MaxInt32))
	policy.LockoutBase = lockoutBase
	if err := policy.Validate(); err != nil {
		log.Error(err, "invalid --claim-max-failed-attempts or --claim-lockout")
		os.Exit(1)
	}
	var err error
	ctrlOpts := controllers.Options{OperatorNamespace: opNS, RootIssuer: rootIssuer, CertManagerUsernames: strings.Split(certManagerUsers, ","), ClaimPolicy: policy,
		TrustDomain: trustDomain, CertificateDuration: certDuration, TransferTTL: transferTTL, ClaimCodeVerifiers: verifiers,
		AuditLog: operator.AuditLogger(os.Stderr)}
	if configFile != "" {
		if err := operator.LoadConfig(configFile, &ctrlOpts); err != nil {
			log.Error(err, "invalid --config")
			os.Exit(1)
		}
	}

	if ctrlOpts.Workers, err = parseWorkers(workers); err != nil {
		log.Error(err, "invalid --workers")
		os.Exit(1)
	}

	dataPlane, err := dp.service()
	if err != nil {
		log.Error(err, "invalid --dataplane-* flags")
		os.Exit(1)
	}
	ctrlOpts.DataPlane = dataPlane

	restConfig := ctrl.GetConfigOrDie()
	restConfig.QPS, restConfig.Burst = float32(qps), burst
	mgr, err := operator.New(operator.Config{
		RESTConfig:     restConfig,
		WebhookServer:  webhook.NewServer(webhook.Options{Host: webhookHost, Port: webhookPort, CertDir: certDir}),
		MetricsAddr:    metricsAddr,
		HealthAddr:     healthAddr,
		PprofAddr:      pprofAddr,
		LeaderElection: leaderElect,
		Controllers:    ctrlOpts,
		Webhooks:       webhooks.Options{ManagerUsernames: strings.Split(managerUsers, ","), GatewayUsernames: strings.Split(gatewayUsers, ","), RestoreGroups: splitList(restoreGroups)},
		Logger:         logger,
	})
	if err != nil {
		log.Error(err, "unable to set up the manager")
		os.Exit(1)
	}
	log.Info("starting the manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// splitList splits a comma-separated flag; empty is an empty (not nil) list.
func splitList(s string) []string {
	out := []string{}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// parseWorkers parses --workers: comma-separated controller=N.
func parseWorkers(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, kv := range splitList(s) {
		name, n, ok := strings.Cut(kv, "=")
		v, err := strconv.Atoi(n)
		if !ok || err != nil {
			return nil, fmt.Errorf("%q: want controller=N", kv)
		}
		if _, known := controllers.ControllerNames[name]; !known {
			return nil, fmt.Errorf("%q: no controller named %s", kv, name)
		}
		if v < 1 {
			return nil, fmt.Errorf("%q: want at least 1", kv)
		}
		out[name] = v
	}
	return out, nil
}
