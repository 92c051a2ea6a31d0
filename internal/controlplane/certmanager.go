package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"

	cmcontroller "github.com/cert-manager/cert-manager/pkg/controller"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"         // registers the CA issuer type
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned" // registers the SelfSigned issuer type
	logf "github.com/cert-manager/cert-manager/pkg/logs"
)

// certManagerControllers are the cert-manager controllers Custody needs, run
// in-process. cert-manager's built-in CertificateRequest approver
// ("certificaterequests-approver") is deliberately absent: the Custody
// manager is the only approver of requests to custody issuers.
var certManagerControllers = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	crca.CRControllerName,
	crselfsigned.CRControllerName,
	trigger.ControllerName,
	issuing.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

// The in-process cert-manager's client-side rate limit and workers
// (docs/operations.md, "Rate limits and workers", gives a production
// cert-manager the same reasoning as flags). cert-manager's clients and its
// event sink share one token bucket; a device certificate costs it four
// requests (the signed status and three Events: "WaitingForApproval" from
// each issuer-type controller that sees the request before the approver
// has decided, and "CertificateIssued"), so its default (20 QPS) or the
// 100 of earlier versions would cap enrollment at 5 to 25 a second. The
// request controllers sign with a key in memory and write once: a few
// workers overlap that write's latency; the Certificate controllers run
// for tenant CAs only.
const (
	certManagerQPS     = 500
	certManagerBurst   = 1000
	certManagerWorkers = 2
	// certManagerRequestWorkers are the workers of the CertificateRequest
	// controllers (the CA and self-signed issuers).
	certManagerRequestWorkers = 4
)

// certManager is a running set of in-process cert-manager controllers.
type certManager struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startCertManager runs cert-manager's controllers against the API server
// that kubeconfig points at. clusterResourceNamespace is where ClusterIssuer
// secrets live (the operator's namespace).
func startCertManager(ctx context.Context, log logr.Logger, kubeconfig, clusterResourceNamespace string) (*certManager, error) {
	ctx, cancel := context.WithCancel(ctx)
	ctx = logf.NewContext(ctx, log)
	cm := &certManager{cancel: cancel}

	factory, err := cmcontroller.NewContextFactory(ctx, cmcontroller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   certManagerQPS,
		KubernetesAPIBurst: certManagerBurst,
		IssuerOptions: cmcontroller.IssuerOptions{
			ClusterResourceNamespace: clusterResourceNamespace,
		},
		CertificateOptions: cmcontroller.CertificateOptions{
			EnableOwnerRef:                           true,
			CertificateRequestMinimumBackoffDuration: time.Minute,
			CertificateRequestMaximumBackoffDuration: time.Hour,
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("building cert-manager controller context: %w", err)
	}

	known := cmcontroller.Known()
	var running []cmcontroller.Interface
	for _, name := range certManagerControllers {
		construct, ok := known[name]
		if !ok {
			cancel()
			return nil, fmt.Errorf("cert-manager controller %q is not registered", name)
		}
		c, err := construct(factory)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("constructing cert-manager controller %q: %w", name, err)
		}
		running = append(running, c)
	}

	// The controllers registered their informers with the shared factories
	// while being constructed; start the factories only now.
	shared, err := factory.Build()
	if err != nil {
		cancel()
		return nil, err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())

	for i, c := range running {
		workers := certManagerWorkers
		if name := certManagerControllers[i]; name == crca.CRControllerName || name == crselfsigned.CRControllerName {
			workers = certManagerRequestWorkers
		}
		cm.wg.Add(1)
		go func() {
			defer cm.wg.Done()
			if err := c.Run(workers, ctx); err != nil {
				log.Error(err, "cert-manager controller stopped", "controller", certManagerControllers[i])
			}
		}()
	}
	return cm, nil
}

// stop cancels the controllers and waits for them to return. It must be
// called before the API server stops, or they log connection errors.
func (cm *certManager) stop() {
	cm.cancel()
	cm.wg.Wait()
}
