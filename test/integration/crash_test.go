package integration

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
)

func clientKey(o client.Object) client.ObjectKey { return client.ObjectKeyFromObject(o) }

// TestCrashBetweenVerificationAndBinding stops the manager at each point of
// the claim path (after verification, after binding) and restarts it: the
// claim converges to exactly one binding, one history entry, no counted
// failure, and a consumed code Secret.
func TestCrashBetweenVerificationAndBinding(t *testing.T) {
	for _, point := range []string{"verified", "bound"} {
		t.Run(point, func(t *testing.T) {
			ctx := context.Background()
			// The fail point hits this test's claim only, never a leftover
			// of another test.
			var target atomic.Pointer[client.ObjectKey]
			var hit atomic.Bool
			crashed := make(chan struct{})
			m := startManager(t, func(o *controllers.Options) {
				o.FailPoint = func(p string, c client.ObjectKey) error {
					if tk := target.Load(); p != point || tk == nil || c != *tk {
						return nil
					}
					if hit.CompareAndSwap(false, true) {
						close(crashed)
					}
					// From here on this manager makes no progress on the claim:
					// it is "killed" at this point, and stopped below.
					return errors.New("injected crash at " + p)
				}
			})
			tn := newTenant(t)
			rec := newDevice(t)
			d := rec.Device
			target.Store(&client.ObjectKey{Namespace: tn.Status.Namespace, Name: fmt.Sprintf("claim-%d", seq.Load()+1)})
			cl := claimWithCode(t, admin, tn.Status.Namespace, d.Spec.SerialNumber, d.Spec.Model, rec.Code.String())
			if clientKey(cl) != *target.Load() {
				t.Fatalf("claim is %v, fail point targets %v", clientKey(cl), *target.Load())
			}
			<-crashed
			m.stop()

			dev := getDevice(t, d.Name)
			if point == "verified" && dev.Spec.ClaimRef != nil {
				t.Fatal("the device was bound before the binding step")
			}
			if point == "bound" && dev.Spec.ClaimRef == nil {
				t.Fatal("the device was not bound at the bound fail point")
			}

			startManager(t)
			got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
			waitFor(t, "the code Secret to be consumed", func() bool {
				err := admin.Get(ctx, client.ObjectKey{Namespace: cl.Namespace, Name: cl.Spec.ClaimCode.SecretRef.Name}, &corev1.Secret{})
				return apierrors.IsNotFound(err)
			})
			dev = getDevice(t, d.Name)
			if dev.Spec.ClaimRef == nil || dev.Spec.ClaimRef.UID != got.UID {
				t.Fatalf("binding %+v", dev.Spec.ClaimRef)
			}
			if len(dev.Status.History) != 1 || len(dev.Spec.ConsumedClaimCodes) != 1 {
				t.Fatalf("duplicate side effects: history %+v, consumed %v", dev.Status.History, dev.Spec.ConsumedClaimCodes)
			}
			tenant := &custodyv1alpha1.Tenant{}
			if err := admin.Get(ctx, clientKey(tn), tenant); err != nil {
				t.Fatal(err)
			}
			if tenant.Status.FailedClaimAttempts != 0 || dev.Status.FailedClaimAttempts != 0 {
				t.Fatal("a crash was counted as a failed attempt")
			}
		})
	}
}
