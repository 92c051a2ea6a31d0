package controllers

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/custody-dev/custody/internal/claimcode"
)

// blockingVerifier holds every verification until release is closed or
// receives, counting how many run at once.
type blockingVerifier struct {
	release chan struct{}
	entered chan struct{}
	now     atomic.Int64
	most    atomic.Int64
}

func (b *blockingVerifier) run() {
	n := b.now.Add(1)
	for {
		m := b.most.Load()
		if n <= m || b.most.CompareAndSwap(m, n) {
			break
		}
	}
	b.entered <- struct{}{}
	<-b.release
	b.now.Add(-1)
}

func (b *blockingVerifier) Verify(claimcode.Code, string) bool { b.run(); return true }
func (b *blockingVerifier) VerifyNothing(claimcode.Code)       { b.run() }

// TestVerifierPoolBound: however many claims verify at once, no more than
// the pool's size run; the others queue until a slot frees, and each then
// runs.
func TestVerifierPoolBound(t *testing.T) {
	const size, callers = 2, 7
	b := &blockingVerifier{release: make(chan struct{}), entered: make(chan struct{}, callers)}
	p := NewVerifierPool(b, size)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				p.Verify("", "")
			} else {
				p.VerifyNothing("")
			}
		}()
	}
	// size verifications run; the others queue in the pool, not in the
	// verifier.
	for range size {
		<-b.entered
	}
	for p.waiting.Load() != callers-size {
		if n := b.now.Load(); n > size {
			t.Fatalf("%d verifications running, want at most %d", n, size)
		}
		runtime.Gosched()
	}
	if n := b.now.Load(); n != size {
		t.Fatalf("%d verifications running, want %d", n, size)
	}
	// Each release lets exactly one queued verification in.
	for i := size; i < callers; i++ {
		b.release <- struct{}{}
		<-b.entered
	}
	close(b.release)
	wg.Wait()
	if m := b.most.Load(); m != size {
		t.Fatalf("at most %d verifications ran at once, want %d", m, size)
	}
}

// TestVerifierPoolDefaultsToCores: an unset size is the cores Go uses.
func TestVerifierPoolDefaultsToCores(t *testing.T) {
	if p := NewVerifierPool(&blockingVerifier{}, 0); p.Size() != runtime.GOMAXPROCS(0) {
		t.Fatalf("pool of %d, want %d", p.Size(), runtime.GOMAXPROCS(0))
	}
}
