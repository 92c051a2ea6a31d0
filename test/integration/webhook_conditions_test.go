package integration

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/controlplane"
)

// counterSum is the sum of the counter name, in the manager's metrics
// registry, over the series whose label is value.
func counterSum(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// deviceWebhookCalls is how many admission requests the manager's Device
// webhook has answered (controller-runtime's own metric).
func deviceWebhookCalls(t *testing.T) float64 {
	t.Helper()
	return counterSum(t, "controller_runtime_webhook_requests_total", "webhook", "/validate-custody-dev-v1alpha1-device")
}

// TestDeviceWebhookMatchConditions: the API server does not send the
// Device webhook the manager's updates, which it admits whatever they hold
// (config/webhook/match_conditions.yaml). Everyone else's updates and
// status writes (the gateway's above all) and every create still reach
// it, and the gateway is still refused anything but a heartbeat.
func TestDeviceWebhookMatchConditions(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	rec := newDevice(t)
	name := rec.Device.Name
	mgr := managerClient(t)
	gcfg, err := cp.AddUser(controlplane.GatewayUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := client.New(gcfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	// statusWrite writes the Device's status as c, again on a conflict (the
	// manager writes the Device's status too).
	statusWrite := func(c client.Client, mutate func(*custodyv1alpha1.Device)) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d := getDevice(t, name)
			before := d.DeepCopy()
			mutate(d)
			return c.Status().Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
		})
	}
	// calls runs write and returns how many Device webhook calls it made.
	calls := func(what string, write func() error) float64 {
		t.Helper()
		before := deviceWebhookCalls(t)
		if err := write(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return deviceWebhookCalls(t) - before
	}

	for what, write := range map[string]func() error{
		"the manager's status write": func() error {
			return statusWrite(mgr, func(d *custodyv1alpha1.Device) { d.Status.FailedClaimAttempts++ })
		},
		"the manager's update": func() error {
			return updateDevice(mgr, name, func(d *custodyv1alpha1.Device) { d.Labels = map[string]string{"by": "manager"} })
		},
	} {
		if n := calls(what, write); n != 0 {
			t.Errorf("%s reached the webhook (%v calls)", what, n)
		}
	}
	for what, write := range map[string]func() error{
		"an admin's update": func() error {
			return updateDevice(admin, name, func(d *custodyv1alpha1.Device) {
				d.Labels = map[string]string{"touched": "yes"}
			})
		},
		"the gateway's heartbeat": func() error {
			return statusWrite(gw, func(d *custodyv1alpha1.Device) { now := metav1.Now(); d.Status.LastSeen = &now })
		},
		"a create": func() error { newDevice(t); return nil },
		"an admin's status write": func() error {
			return statusWrite(admin, func(d *custodyv1alpha1.Device) { d.Status.FailedClaimAttempts++ })
		},
	} {
		if n := calls(what, write); n < 1 {
			t.Errorf("%s did not reach the webhook", what)
		}
	}

	// What the webhook refuses is still refused.
	err = statusWrite(gw, func(d *custodyv1alpha1.Device) {
		d.Status.FailedClaimAttempts = 0
		d.Status.Phase = custodyv1alpha1.DevicePhaseDecommissioned
	})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "the gateway may only record heartbeats") {
		t.Errorf("the gateway changed more than a heartbeat: %v", err)
	}
	err = updateDevice(admin, name, func(d *custodyv1alpha1.Device) {
		d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "t", Namespace: "t", Name: "c", UID: "u"}
	})
	if err == nil || !strings.Contains(err.Error(), "only the Custody manager changes a device's binding") {
		t.Errorf("an admin bound a device: %v", err)
	}
}
