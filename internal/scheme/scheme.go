// Package scheme builds the runtime.Scheme of Custody's components: the core
// Kubernetes types, Custody's API types and cert-manager's. The manager
// (internal/operator) and the gateway (cmd/gateway) both build their clients
// with it. It must import nothing of the manager's code, so that the gateway
// does not link the controllers or the webhooks through it.
package scheme

import (
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// New returns a scheme with the core Kubernetes, Custody and cert-manager
// types.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, custodyv1alpha1.AddToScheme, cmapi.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}
