// Command custody-manager runs Custody's controllers, admission webhooks and
// CertificateRequest approver in a cluster.
package main

import (
	"flag"
	"os"
	"strings"
	"time"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/operator"
	"github.com/custody-dev/custody/internal/webhooks"
)

func main() {
	var (
		opNS, rootIssuer, managerUsers, metricsAddr, healthAddr, certDir string
		webhookPort, maxAttempts                                         int
		leaderElect                                                      bool
		lockoutBase                                                      time.Duration
	)
	flag.StringVar(&opNS, "operator-namespace", envOr("POD_NAMESPACE", "custody-system"), "Namespace holding CA material and CertificateRequests.")
	flag.StringVar(&rootIssuer, "root-issuer", "custody-root", "ClusterIssuer that signs tenant intermediate CAs.")
	flag.StringVar(&managerUsers, "manager-usernames", "system:serviceaccount:custody-system:custody-manager", "Comma-separated users allowed to write Device bindings (the manager's ServiceAccount).")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Metrics address; 0 disables.")
	flag.StringVar(&healthAddr, "health-probe-bind-address", ":8081", "Health probe address.")
	flag.StringVar(&certDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "Directory with the webhook serving certificate (tls.crt, tls.key).")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "Webhook server port.")
	flag.IntVar(&maxAttempts, "claim-max-failed-attempts", int(claim.DefaultPolicy.MaxFailedAttempts), "Failed claim attempts a tenant may make on one serial number before it is locked out.")
	flag.DurationVar(&lockoutBase, "claim-lockout", claim.DefaultPolicy.LockoutBase, "First lockout after too many failed attempts; doubles with each further failure (at most 24h).")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Enable leader election.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	logger := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(logger)
	klog.SetLogger(logger)
	log := logger.WithName("setup")

	policy := claim.DefaultPolicy
	policy.MaxFailedAttempts = int32(maxAttempts)
	policy.LockoutBase = lockoutBase

	mgr, err := operator.New(operator.Config{
		RESTConfig:     ctrl.GetConfigOrDie(),
		WebhookServer:  webhook.NewServer(webhook.Options{Port: webhookPort, CertDir: certDir}),
		MetricsAddr:    metricsAddr,
		HealthAddr:     healthAddr,
		LeaderElection: leaderElect,
		Controllers:    controllers.Options{OperatorNamespace: opNS, RootIssuer: rootIssuer, ClaimPolicy: policy},
		Webhooks:       webhooks.Options{ManagerUsernames: strings.Split(managerUsers, ",")},
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
