package controllers

import (
	"context"
	"sync"

	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// tenantBatcher writes the claim bookkeeping of a Tenant (attempts
// reserved and released, failures forgotten: claim.Reserve, Unreserve,
// RecordSuccess) for all the Claims that wait on it in one write.
//
// Every such change is a read-modify-write of the one Tenant, fresh from
// the API server, with its resourceVersion. Done one Claim at a time, a
// burst of claims of one tenant collided on that resourceVersion: 200
// claims by code cost 655 refused writes and their back-off, and claims ran
// at a fifth of what the cores hash. Here, while one write of a Tenant is
// in flight, the changes of other Claims queue; the next write reads the
// Tenant once, applies every queued change in order, each to the status as
// the ones before it left it (so a reservation still sees every earlier
// one: no attempt escapes the count), and writes them with the Tenant's
// resourceVersion. A conflict (another writer of the Tenant) re-reads and
// applies them all again. Each change's caller learns the outcome of the
// write that carried it, and the Tenant as written.
type tenantBatcher struct {
	client client.Client
	// reader reads the Tenant from the API server, never a cache.
	reader client.Reader

	mu sync.Mutex
	// pending are the changes waiting for the next write, by Tenant.
	pending map[string][]*tenantChange
	// writing is set while a caller writes a Tenant's changes.
	writing map[string]bool
}

type tenantChange struct {
	// mutate changes the status and reports whether it changed it; it
	// runs again on every attempt of the write, on a fresh status, so it
	// must set (not accumulate) whatever it records for its caller.
	mutate func(*custodyv1alpha1.TenantStatus) bool
	done   chan struct{}
	tenant *custodyv1alpha1.Tenant
	err    error
}

// apply applies mutate to the Tenant name's status in the next write of
// its queued changes, and returns the Tenant as that write left it. The
// first caller of a batch writes it, and the ones that queue meanwhile
// after it, until none is left.
func (b *tenantBatcher) apply(ctx context.Context, name string, mutate func(*custodyv1alpha1.TenantStatus) bool) (*custodyv1alpha1.Tenant, error) {
	ch := &tenantChange{mutate: mutate, done: make(chan struct{})}
	b.mu.Lock()
	if b.pending == nil {
		b.pending, b.writing = map[string][]*tenantChange{}, map[string]bool{}
	}
	b.pending[name] = append(b.pending[name], ch)
	lead := !b.writing[name]
	b.writing[name] = true
	b.mu.Unlock()
	if lead {
		b.writeAll(ctx, name)
	}
	// No early return on ctx: a change handed over may still be written,
	// and its caller must learn whether it was.
	<-ch.done
	return ch.tenant, ch.err
}

// writeAll writes the queued changes of the Tenant name, batch after
// batch, until none is queued.
func (b *tenantBatcher) writeAll(ctx context.Context, name string) {
	for {
		b.mu.Lock()
		batch := b.pending[name]
		delete(b.pending, name)
		if len(batch) == 0 {
			delete(b.writing, name)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		t, err := b.write(ctx, name, batch)
		for _, ch := range batch {
			if t != nil {
				ch.tenant = t.DeepCopy()
			}
			ch.err = err
			close(ch.done)
		}
	}
}

// write applies batch to a fresh read of the Tenant and writes it with
// the Tenant's resourceVersion, reading and applying again on a conflict.
func (b *tenantBatcher) write(ctx context.Context, name string, batch []*tenantChange) (*custodyv1alpha1.Tenant, error) {
	var t *custodyv1alpha1.Tenant
	err := retry.RetryOnConflict(unreserveBackoff, func() error {
		t = &custodyv1alpha1.Tenant{}
		if err := b.reader.Get(ctx, client.ObjectKey{Name: name}, t); err != nil {
			return err
		}
		before := t.DeepCopy()
		changed := false
		for _, ch := range batch {
			if ch.mutate(&t.Status) {
				changed = true
			}
		}
		if !changed {
			return nil
		}
		return b.client.Status().Patch(ctx, t, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}
