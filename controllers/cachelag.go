package controllers

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ownWrites remembers, per object, the resourceVersion an object had when
// this controller last wrote it, so that a reconcile that reads the cache
// before the cache has seen that write (a watch event of another object
// queued the key meanwhile) can tell and wait for the write's own event,
// instead of acting again on what it already acted on: a second
// CertificateRequest create that fails with AlreadyExists, a status patch
// that conflicts, two wasted API requests and a back-off.
//
// It never stops a reconcile for good: the entry is dropped as soon as the
// cache holds any other version of the object, whoever wrote it, and the
// write that set it brings its own watch event, which queues the key again.
type ownWrites struct {
	mu sync.Mutex
	m  map[types.UID]string
}

// wrote records that obj, read at resourceVersion before, was written.
func (w *ownWrites) wrote(obj client.Object, before string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[types.UID]string{}
	}
	w.m[obj.GetUID()] = before
}

// stale reports whether obj, as read from the cache, is the version this
// controller has since written over; it forgets obj once it is not.
func (w *ownWrites) stale(obj client.Object) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	rv, ok := w.m[obj.GetUID()]
	if ok && rv == obj.GetResourceVersion() {
		return true
	}
	delete(w.m, obj.GetUID())
	return false
}

// forget drops what is known of the object of uid (deleted).
func (w *ownWrites) forget(uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, uid)
}
