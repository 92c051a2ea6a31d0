package controllers

import (
	"context"
	"time"

	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TenantDevicesReconciler keeps Tenant.status.boundDevices, the number of
// Devices bound to the tenant. It is apart from the TenantReconciler so that
// a binding (every claim, release or transfer) costs one status patch, when
// the count changes, instead of re-applying the tenant's namespace,
// RoleBindings, CA and trust bundle; a burst of bindings of one tenant
// coalesces in the workqueue (countDelay) into a few counts.
type TenantDevicesReconciler struct {
	Client  client.Client
	Options Options
}

// Reconcile counts the Devices bound to one Tenant, from the cache's
// index, and patches the count if it changed.
func (r *TenantDevicesReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	t := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, req.NamespacedName, t); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !t.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil
	}
	// Read-only, and only counted: no copy of each of the tenant's
	// (possibly 100,000) Devices.
	var devices custodyv1alpha1.DeviceList
	if err := r.Client.List(ctx, &devices, client.MatchingFields{indexDeviceTenant: t.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, err
	}
	n := int32(len(devices.Items))
	if t.Status.BoundDevices == n {
		return reconcile.Result{}, nil
	}
	before := t.DeepCopy()
	t.Status.BoundDevices = n
	// Only this field, no resourceVersion: the count is this controller's
	// alone, and the next binding counts again.
	return reconcile.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, t, client.MergeFrom(before), client.FieldOwner(FieldOwner)))
}

// SetupWithManager registers the controller: a Tenant when it appears, and
// the tenants a Device's binding leaves and joins.
func (r *TenantDevicesReconciler) SetupWithManager(mgr manager.Manager) error {
	byBinding := handler.Funcs{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueBoundTenant(e.Object, q)
		},
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			o, n := e.ObjectOld.(*custodyv1alpha1.Device).Spec.ClaimRef, e.ObjectNew.(*custodyv1alpha1.Device).Spec.ClaimRef
			if (o == nil) != (n == nil) || (o != nil && o.Tenant != n.Tenant) {
				enqueueBoundTenant(e.ObjectOld, q)
				enqueueBoundTenant(e.ObjectNew, q)
			}
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueBoundTenant(e.Object, q)
		},
	}
	created := predicate.Funcs{
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Tenant{}, ctrl.WithPredicates(created)).
		Watches(&custodyv1alpha1.Device{}, byBinding).
		WithOptions(controllerOptions(r.Options.workers("tenant-devices"))).
		Named("tenant-devices").
		Complete(r)
}

// countDelay is how long a binding waits to be counted, so that a burst of
// bindings of one tenant is counted once: every count is a write of the
// Tenant's status, which the claims of that tenant, reserving their
// attempts on the same Tenant under optimistic locking, would then
// conflict with.
const countDelay = 500 * time.Millisecond

func enqueueBoundTenant(o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	if ref := o.(*custodyv1alpha1.Device).Spec.ClaimRef; ref != nil {
		q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKey{Name: ref.Tenant}}, countDelay)
	}
}
