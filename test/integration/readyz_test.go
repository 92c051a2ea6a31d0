package integration

import (
	"context"
	"net/http/httptest"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/cache"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/operator"
)

// TestReadinessWaitsForCaches: the manager's readiness check on its
// caches fails until the Device, Claim and Tenant caches have listed
// everything, then passes (it said ready while the Device cache of a
// 100,000-Device cluster was still listing).
func TestReadinessWaitsForCaches(t *testing.T) {
	startManager(t)
	newDevice(t)
	c, err := cache.New(cp.Config, cache.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	check := operator.CachesSynced(c, &custodyv1alpha1.Device{}, &custodyv1alpha1.Claim{}, &custodyv1alpha1.Tenant{})
	req := httptest.NewRequest("GET", "/readyz", nil)
	if err := check(req); err == nil {
		t.Fatal("ready before the cache was even started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("the cache never synced")
	}
	waitFor(t, "the readiness check to pass", func() bool { return check(req) == nil })
	var devices custodyv1alpha1.DeviceList
	if err := c.List(ctx, &devices); err != nil || len(devices.Items) == 0 {
		t.Fatalf("ready, but the Device cache holds %d Devices (%v)", len(devices.Items), err)
	}
}
