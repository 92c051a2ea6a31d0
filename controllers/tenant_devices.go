package controllers

import (
	"context"
	"time"

	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
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
	Client client.Client
	// Cache is the manager's cache: the Devices are counted from its
	// index.
	Cache   ctrlcache.Cache
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
	n, err := r.countBound(ctx, t.Name)
	if err != nil {
		return reconcile.Result{}, err
	}
	if t.Status.BoundDevices == n {
		return reconcile.Result{}, nil
	}
	before := t.DeepCopy()
	t.Status.BoundDevices = n
	// Only this field, no resourceVersion: the count is this controller's
	// alone, and the next binding counts again.
	return reconcile.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, t, client.MergeFrom(before), client.FieldOwner(FieldOwner)))
}

// countBound counts the Devices bound to tenant (CountBoundDevices), and
// lists them when the cache offers no index to count from.
func (r *TenantDevicesReconciler) countBound(ctx context.Context, tenant string) (int32, error) {
	if r.Cache != nil {
		n, indexed, err := CountBoundDevices(ctx, r.Cache, tenant)
		if err != nil || indexed {
			return n, err
		}
	}
	var devices custodyv1alpha1.DeviceList
	if err := r.Client.List(ctx, &devices, client.MatchingFields{indexDeviceTenant: tenant}, client.UnsafeDisableDeepCopy); err != nil {
		return 0, err
	}
	return int32(len(devices.Items)), nil
}

// CountBoundDevices counts the Devices bound to tenant from c's index of
// spec.claimRef.tenant, without copying them: a List, even without deep
// copies, copies every Device struct into its Items, which for a tenant
// with 100,000 Devices is over 100 MB on every count. The index's name and
// keys are controller-runtime's ("field:<field>", and
// "__all_namespaces/<value>" for cluster-scoped objects). indexed is false
// when c's informer offers no indexer to count from.
func CountBoundDevices(ctx context.Context, c ctrlcache.Cache, tenant string) (n int32, indexed bool, err error) {
	inf, err := c.GetInformer(ctx, &custodyv1alpha1.Device{})
	if err != nil {
		return 0, false, err
	}
	i, ok := inf.(interface{ GetIndexer() toolscache.Indexer })
	if !ok {
		return 0, false, nil
	}
	keys, err := i.GetIndexer().IndexKeys("field:"+indexDeviceTenant, "__all_namespaces/"+tenant)
	if err != nil {
		return 0, false, err
	}
	return int32(len(keys)), true, nil
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
