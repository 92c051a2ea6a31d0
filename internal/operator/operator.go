// Package operator wires the Custody manager: the scheme, the cache, the
// controllers and the admission webhooks. cmd/manager, custody-dev and the
// integration tests all build the manager here, so that they run the same
// thing.
package operator

import (
	"context"
	"fmt"
	"net/http"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/scheme"
	"github.com/custody-dev/custody/internal/webhooks"
)

// NewScheme returns a scheme with the core Kubernetes, Custody and
// cert-manager types (scheme.New, which the gateway uses too).
func NewScheme() *runtime.Scheme { return scheme.New() }

// The manager's client-side rate limit, unless RESTConfig sets one (a
// negative QPS turns it off). An enrollment costs the manager about seven
// requests (six writes, docs/operations.md "Writes per enrollment") and a
// claim about eight, so client-go's default (5 QPS; 20 in
// controller-runtime's examples) or the 200 QPS of earlier versions would
// cap the manager at 3 to 30 enrollments a second, far below what the API
// server accepts (about 2,000 writes a second on two cores). At 1,000 the
// limit only stops a runaway loop; the API server's priority and fairness
// decides under load.
const (
	DefaultQPS   = 1000
	DefaultBurst = 2000
)

// Config configures New.
type Config struct {
	// RESTConfig authenticates as the manager's ServiceAccount.
	RESTConfig *rest.Config
	// WebhookServer serves the admission webhooks.
	WebhookServer webhook.Server
	// MetricsAddr is the metrics listen address; "0" disables metrics.
	MetricsAddr string
	// HealthAddr is the health-probe listen address; "0" disables it.
	HealthAddr string
	// PprofAddr serves Go's profiles (net/http/pprof) for profiling
	// under load; empty or "0" serves none.
	PprofAddr string
	// LeaderElection enables leader election in OperatorNamespace.
	LeaderElection bool
	// Controllers and Webhooks configure what runs.
	Controllers controllers.Options
	Webhooks    webhooks.Options
	// Logger is the manager's logger.
	Logger logr.Logger
	// SkipNameValidation lets a process build several managers in turn
	// (integration tests that stop and restart the manager).
	SkipNameValidation bool
}

// New builds the manager with every controller and webhook registered.
func New(cfg Config) (ctrl.Manager, error) {
	restConfig := rest.CopyConfig(cfg.RESTConfig)
	if restConfig.QPS == 0 {
		restConfig.QPS = DefaultQPS
	}
	if restConfig.Burst == 0 {
		restConfig.Burst = DefaultBurst
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  NewScheme(),
		Logger:                  cfg.Logger,
		WebhookServer:           cfg.WebhookServer,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:  cfg.HealthAddr,
		PprofBindAddress:        cfg.PprofAddr,
		LeaderElection:          cfg.LeaderElection,
		LeaderElectionID:        "custody-manager.custody.dev",
		LeaderElectionNamespace: cfg.Controllers.OperatorNamespace,
		Controller:              config.Controller{SkipNameValidation: &cfg.SkipNameValidation},
		Cache: cache.Options{
			// Nobody reads managedFields, and Devices shed more.
			DefaultTransform: cacheTransform,
			ByObject: map[client.Object]cache.ByObject{
				// The manager reads only its own ConfigMaps (trust
				// bundles, the data plane's client CAs, pairing-token
				// state), all labelled: the cluster's others are not
				// kept.
				&corev1.ConfigMap{}: {Label: labels.SelectorFromSet(labels.Set{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue})},
			},
		},
		Client: client.Options{Cache: &client.CacheOptions{
			// Secrets are read from the API server, never cached: a
			// Secret read through the cache would keep every Secret of the
			// cluster, keys included, in the manager's memory. Claim-code,
			// pairing-token and DataAccess Secrets are watched by their
			// metadata only.
			DisableFor: []client.Object{&corev1.Secret{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	if cfg.Controllers.ManagerUsernames == nil {
		cfg.Controllers.ManagerUsernames = cfg.Webhooks.ManagerUsernames
	}
	if err := controllers.Setup(context.Background(), mgr, cfg.Controllers); err != nil {
		return nil, err
	}
	if err := webhooks.Setup(mgr, cfg.Webhooks); err != nil {
		return nil, err
	}
	if cfg.HealthAddr != "0" && cfg.HealthAddr != "" {
		if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return nil, err
		}
		// Not ready before the caches of the kinds held by the hundred
		// thousand are filled: /readyz said ready 5 s after a restart at
		// 100,000 Devices while the Device cache was still listing.
		if err := mgr.AddReadyzCheck("caches", CachesSynced(mgr.GetCache(), &custodyv1alpha1.Device{}, &custodyv1alpha1.Claim{}, &custodyv1alpha1.Tenant{})); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// CachesSynced is a readiness check that passes once the cache of each
// kind of objs has synced (its informer is started by the check if no
// controller has asked for it yet).
func CachesSynced(c cache.Cache, objs ...client.Object) healthz.Checker {
	return func(req *http.Request) error {
		for _, o := range objs {
			inf, err := c.GetInformer(req.Context(), o, cache.BlockUntilSynced(false))
			if err != nil {
				return err
			}
			if !inf.HasSynced() {
				return fmt.Errorf("the cache of %T has not synced yet", o)
			}
		}
		return nil
	}
}
