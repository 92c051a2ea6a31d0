package integration

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// BenchmarkClaimToBound measures end-to-end claims per second on the real
// stack: b.N devices are claimed at once by one tenant with the right code
// (argon2id verification, binding, history, Secret consumption, status),
// and the clock stops when every Claim is Bound. Run with `make bench`.
func BenchmarkClaimToBound(b *testing.B) {
	startManager(b)
	ctx := context.Background()
	tn := newTenant(b)
	type pending struct {
		serial, model, code string
	}
	var todo []pending
	for range b.N {
		rec := newDevice(b)
		todo = append(todo, pending{rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()})
	}
	before := apiRequests(b)
	b.ResetTimer()
	start := time.Now()
	var claims []*custodyv1alpha1.Claim
	for _, p := range todo {
		claims = append(claims, claimWithCode(b, admin, tn.Status.Namespace, p.serial, p.model, p.code))
	}
	for _, c := range claims {
		got := &custodyv1alpha1.Claim{}
		waitFor(b, "claim "+c.Name+" to bind", func() bool {
			return admin.Get(ctx, client.ObjectKeyFromObject(c), got) == nil && got.Status.Phase == custodyv1alpha1.ClaimPhaseBound
		})
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "claims/s")
	// What the claims cost the API server (with the benchmark's own
	// Secrets, Claims and polling), conflicts included.
	tally(b, "claim by code under load", before, apiRequests(b), b.N)
}
