package controllers

import (
	"context"
	"errors"
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
//
// The caller whose change finds no write in flight writes one batch (its
// own change first) and returns; the first change queued meanwhile is
// handed the next batch to write, and so on: no caller writes for others
// longer than its own batch. A panic while writing releases that batch's
// callers with an error and hands the next batch on before it goes up to
// controller-runtime's recovery.
type tenantBatcher struct {
	client client.Client
	// reader reads the Tenant from the API server, never a cache.
	reader client.Reader

	mu sync.Mutex
	// pending are the changes waiting for the next write, by Tenant.
	pending map[string][]*tenantChange
	// writing is set while a caller writes a Tenant's batch, or has been
	// handed the next one.
	writing map[string]bool
}

type tenantChange struct {
	// mutate changes the status and reports whether it changed it; it
	// runs again on every attempt of the write, on a fresh status, so it
	// must set (not accumulate) whatever it records for its caller.
	mutate func(*custodyv1alpha1.TenantStatus) bool
	// done is closed once the write that carried the change is over.
	done chan struct{}
	// lead is closed when this change's caller is to write the batch it
	// is in.
	lead   chan struct{}
	tenant *custodyv1alpha1.Tenant
	err    error
}

// errBatchPanicked is what the callers of a batch learn when writing it
// panicked.
var errBatchPanicked = errors.New("writing the Tenant's claim bookkeeping panicked; retrying")

// apply applies mutate to the Tenant name's status in the next write of
// its queued changes, and returns the Tenant as that write left it.
func (b *tenantBatcher) apply(ctx context.Context, name string, mutate func(*custodyv1alpha1.TenantStatus) bool) (*custodyv1alpha1.Tenant, error) {
	ch := &tenantChange{mutate: mutate, done: make(chan struct{}), lead: make(chan struct{})}
	b.mu.Lock()
	if b.pending == nil {
		b.pending, b.writing = map[string][]*tenantChange{}, map[string]bool{}
	}
	b.pending[name] = append(b.pending[name], ch)
	if !b.writing[name] {
		b.writing[name] = true
		close(ch.lead)
	}
	b.mu.Unlock()
	// No early return on ctx: a change handed over may still be written,
	// and its caller must learn whether it was.
	select {
	case <-ch.done:
	case <-ch.lead:
		b.writeBatch(ctx, name)
		<-ch.done
	}
	return ch.tenant, ch.err
}

// writeBatch writes the changes queued for the Tenant name (the caller's
// among them), then hands the next batch to the first change queued
// meanwhile, or marks the Tenant idle.
func (b *tenantBatcher) writeBatch(ctx context.Context, name string) {
	b.mu.Lock()
	batch := b.pending[name]
	delete(b.pending, name)
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if next := b.pending[name]; len(next) > 0 {
			close(next[0].lead)
		} else {
			delete(b.writing, name)
		}
	}()
	released := false
	defer func() {
		if !released { // panicking
			for _, ch := range batch {
				ch.err = errBatchPanicked
				close(ch.done)
			}
		}
	}()
	// A batch carries other Claims' changes: this caller's cancellation
	// (the manager stopping) must not fail theirs half-way.
	t, err := b.write(context.WithoutCancel(ctx), name, batch)
	copies := make([]*custodyv1alpha1.Tenant, len(batch))
	if t != nil {
		for i := range copies {
			copies[i] = t.DeepCopy()
		}
	}
	released = true
	for i, ch := range batch {
		ch.tenant, ch.err = copies[i], err
		close(ch.done)
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
