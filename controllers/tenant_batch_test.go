package controllers

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/scheme"
)

// batcherOverFake returns a tenantBatcher over a fake client holding
// Tenant "t" (the batcher's queueing and failure paths are what is tested
// here; TestConcurrentWrongClaimsNeverOvershootTheLockout runs it against
// the real API server), whose status patches go through patch (nil: pass through).
func batcherOverFake(t *testing.T, patch func(n int64) error) (*tenantBatcher, client.Client) {
	t.Helper()
	tenant := &custodyv1alpha1.Tenant{}
	tenant.Name = "t"
	var n atomic.Int64
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(tenant).WithStatusSubresource(tenant).
		WithInterceptorFuncs(interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				if patch != nil {
					if err := patch(n.Add(1)); err != nil {
						return err
					}
				}
				return cl.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
		}).Build()
	return &tenantBatcher{client: c, reader: c}, c
}

// TestTenantBatcherReservationsNeverExceedPolicy: a burst of wrong-code
// Claims of one tenant on one device, through the batcher while its writes
// fail now and then (conflicts, re-running every closure, and hard errors,
// failing a whole batch). A caller may verify a code only if it was told
// Reserved without error; every such reservation must be on the stored
// Tenant, and there are never more of them than the policy allows before
// the lockout.
func TestTenantBatcherReservationsNeverExceedPolicy(t *testing.T) {
	b, c := batcherOverFake(t, func(n int64) error {
		switch n % 5 {
		case 1:
			return apierrors.NewConflict(schema.GroupResource{Group: "custody.dev", Resource: "tenants"}, "t", errors.New("injected"))
		case 3:
			return apierrors.NewInternalError(errors.New("injected write failure"))
		}
		return nil
	})
	now := time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)
	pol := claim.DefaultPolicy
	const claims = 64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var verified []string
	for i := range claims {
		wg.Go(func() {
			uid := types.UID(fmt.Sprintf("claim-%02d", i))
			var reserved bool
			_, err := b.apply(context.Background(), "t", func(s *custodyv1alpha1.TenantStatus) bool {
				reserved = claim.Reserve(s, "dev", uid, now, pol) == claim.Reserved
				return reserved
			})
			// As ClaimReconciler.reserve: an error means not reserved.
			if err == nil && reserved {
				mu.Lock()
				verified = append(verified, string(uid))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	got := &custodyv1alpha1.Tenant{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: "t"}, got); err != nil {
		t.Fatal(err)
	}
	if int32(len(verified)) > pol.MaxFailedAttempts {
		t.Errorf("%d wrong codes would be verified, the policy allows %d before the lockout", len(verified), pol.MaxFailedAttempts)
	}
	var stored []string
	for _, e := range got.Status.ClaimThrottles {
		if e.DeviceName == "dev" {
			stored = e.Attempts
		}
	}
	for _, uid := range verified {
		if !slices.Contains(stored, uid) {
			t.Errorf("claim %s was told Reserved but its reservation is not on the Tenant (stored %v)", uid, stored)
		}
	}
	if int(got.Status.FailedClaimAttempts) < len(verified) {
		t.Errorf("Tenant counts %d failed attempts, %d were verified", got.Status.FailedClaimAttempts, len(verified))
	}
}

// TestTenantBatcherSurvivesPanickingBatch: controller-runtime recovers a
// panic in Reconcile (RecoverPanic defaults to true), so a panic while a
// Claim writes a Tenant's batch (in a closure, the client, or a nil
// dereference) returns to the worker pool. The Tenant must not stay marked
// "writing" with its waiters never released, or every later Claim of the
// tenant would block its worker forever.
func TestTenantBatcherSurvivesPanickingBatch(t *testing.T) {
	b, _ := batcherOverFake(t, nil)
	func() {
		defer func() { _ = recover() }()
		_, _ = b.apply(context.Background(), "t", func(*custodyv1alpha1.TenantStatus) bool { panic("bug in a mutate closure") })
	}()
	done := make(chan error, 1)
	go func() {
		_, err := b.apply(context.Background(), "t", func(s *custodyv1alpha1.TenantStatus) bool {
			s.FailedClaimAttempts = 1
			return true
		})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		// Not a timing assertion: the write takes microseconds against the
		// fake client; after 10 s it is blocked for good.
		t.Fatal("a Claim of the tenant is blocked forever after a panic in an earlier batch of the same Tenant")
	}
}

// TestTenantBatcherLeadIsNotHeldByLaterClaims: the Claim whose change
// opens a Tenant's batch writes that batch and returns; the batches of
// Claims that queue meanwhile are written by their own callers. (An
// earlier batcher wrote "until none is left": as long as other Claims of
// the tenant kept queueing, the first Claim's reconcile did not return
// though its change was written, holding a claim worker.) Here 20 Claims
// queue one after another, each while the previous batch is written.
func TestTenantBatcherLeadIsNotHeldByLaterClaims(t *testing.T) {
	const later = 20
	var b *tenantBatcher
	var queued sync.WaitGroup
	b, _ = batcherOverFake(t, func(n int64) error {
		if n <= later {
			// Another Claim of the tenant arrives while this batch is
			// written, and queues behind it.
			queued.Add(1)
			go func() {
				defer queued.Done()
				_, _ = b.apply(context.Background(), "t", func(s *custodyv1alpha1.TenantStatus) bool {
					s.FailedClaimAttempts++
					return true
				})
			}()
			for {
				b.mu.Lock()
				waiting := len(b.pending["t"]) > 0
				b.mu.Unlock()
				if waiting {
					break
				}
				runtime.Gosched()
			}
		}
		return nil
	})
	var writesBeforeReturn int64
	_, err := b.apply(context.Background(), "t", func(s *custodyv1alpha1.TenantStatus) bool {
		s.FailedClaimAttempts++
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	got := &custodyv1alpha1.Tenant{}
	if err := b.reader.Get(context.Background(), client.ObjectKey{Name: "t"}, got); err != nil {
		t.Fatal(err)
	}
	writesBeforeReturn = got.Status.FailedClaimAttempts
	queued.Wait()
	if writesBeforeReturn > 2 {
		t.Errorf("the first Claim's apply returned only after %d writes of the Tenant (its own was the first): later Claims' batches held it", writesBeforeReturn)
	}
}
