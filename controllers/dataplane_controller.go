package controllers

import (
	"context"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/custody"
	"github.com/custody-dev/custody/internal/dataplane"
	"github.com/custody-dev/custody/pkg/protocol"
)

// DataPlaneReconciler cuts a device off the data plane when its ownership
// ends: it closes every connection of the device outside its current
// tenant's account on every server, purges what the previous tenant's
// account holds of the device, and records the purge in the device's
// history (custody.DataPurged). It is level-triggered on the history: an
// ownership-ending entry without a DataPurged entry for that tenant after it
// is work to do, so a crash between closing, purging and recording repeats
// the (idempotent) closing and purging and then records once.
type DataPlaneReconciler struct {
	client.Client
	Custody  *custody.Applier
	Recorder events.EventRecorder
	Service  *dataplane.Service
	Options

	// changed holds, per device, when an ownership change was observed
	// (wall clock): the start of the cut-off the histogram measures, and
	// the mark that the device is checked once more after the servers'
	// authorization timeout (a connection admitted on the state before the
	// change may register after the first look).
	changed sync.Map
	// tally adds up, per device, what was closed and purged until the
	// purge is recorded: a reconcile that closed and purged and then lost
	// the race to write the history entry leaves its work to the next
	// one, which finds nothing left to do but must record what was done.
	tally sync.Map
}

type purgeTally struct {
	closed int
	purged dataplane.PurgeResult
}

// authorizationTimeout is the data plane's authorization timeout
// (RenderConfig): an answer the callout gave on the old state reaches its
// server within it, or the client is refused.
const authorizationTimeout = 2 * time.Second

// Reconcile closes and purges what a device's ended ownerships left.
func (r *DataPlaneReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	dev := &custodyv1alpha1.Device{}
	if err := r.Get(ctx, req.NamespacedName, dev); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	due := custody.PurgesDue(dev)
	v, stamped := r.changed.Load(dev.Name)
	if len(due) == 0 && !stamped {
		return ctrl.Result{}, nil
	}
	keep, err := r.Service.CurrentAccount(ctx, dev)
	if err != nil {
		return ctrl.Result{}, err
	}
	closed, err := r.Service.CloseDevice(ctx, dev.Name, keep)
	if err != nil {
		return ctrl.Result{}, err
	}
	if stamped && closed > 0 {
		dataplane.CutOffSeconds.Observe(time.Since(v.(time.Time)).Seconds())
	}
	if closed > 0 {
		t, _ := r.tally.LoadOrStore(dev.Name, &purgeTally{})
		t.(*purgeTally).closed += closed
	}
	for _, d := range due {
		what := "its tenant no longer exists: its account was not purged"
		tn := &custodyv1alpha1.Tenant{}
		switch err := r.Get(ctx, client.ObjectKey{Name: d.Tenant}, tn); {
		case apierrors.IsNotFound(err):
		case err != nil:
			return ctrl.Result{}, err
		default:
			res, err := r.Service.Purge(ctx, tn, dev.Name)
			if err != nil {
				return ctrl.Result{}, fmt.Errorf("purging tenant %s's account of device %s: %w", d.Tenant, dev.Name, err)
			}
			t, _ := r.tally.LoadOrStore(dev.Name+"/"+d.Tenant, &purgeTally{})
			sum := &t.(*purgeTally).purged
			sum.Retained += res.Retained
			sum.Messages += res.Messages
			what = sum.String()
		}
		closed := 0
		if t, ok := r.tally.Load(dev.Name); ok {
			closed = t.(*purgeTally).closed
		}
		ch, err := custody.DataPurged(dev, d, closed, what, custody.By{Actor: "manager", Time: r.Clock.Now()})
		if err != nil {
			return ctrl.Result{}, err
		}
		if err := r.Custody.Apply(ctx, dev, ch); err != nil {
			return ctrl.Result{}, err
		}
		logger.Info("data-plane access ended", "device", dev.Name, "tenant", d.Tenant, "closed", closed, "purged", what)
		r.tally.Delete(dev.Name)
		r.tally.Delete(dev.Name + "/" + d.Tenant)
	}
	if stamped {
		if left := authorizationTimeout - time.Since(v.(time.Time)); left > 0 {
			return ctrl.Result{RequeueAfter: left + 100*time.Millisecond}, nil
		}
		r.changed.CompareAndDelete(dev.Name, v) // unless a newer change came
		if len(due) == 0 {
			r.tally.Delete(dev.Name)
		}
	}
	return ctrl.Result{}, nil
}

// ownershipChanged reports whether an update moved or ended a binding.
func ownershipChanged(oldDev, newDev *custodyv1alpha1.Device) bool {
	o, n := oldDev.Spec.ClaimRef, newDev.Spec.ClaimRef
	switch {
	case (o == nil) != (n == nil):
		return true
	case o != nil && (o.UID != n.UID || o.Tenant != n.Tenant):
		return true
	}
	return oldDev.Spec.Decommissioned != newDev.Spec.Decommissioned
}

// SetupWithManager registers the controller and the callout service.
func (r *DataPlaneReconciler) SetupWithManager(mgr manager.Manager) error {
	if err := mgr.Add(r.Service); err != nil {
		return err
	}
	stamp := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			oldDev, ok1 := e.ObjectOld.(*custodyv1alpha1.Device)
			newDev, ok2 := e.ObjectNew.(*custodyv1alpha1.Device)
			if !ok1 || !ok2 {
				return true
			}
			if ownershipChanged(oldDev, newDev) {
				// The newest change starts the cut-off the histogram
				// measures.
				r.changed.Store(newDev.Name, time.Now())
			}
			return true
		},
	}
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Device{}, builder.WithPredicates(stamp)).
		WithOptions(controllerOptions(r.Options.workers("dataplane"))).
		Named("dataplane").
		Complete(lookingAgain(r))
}

// DataAccessCutOffReconciler ends data-plane access a DataAccess no longer
// grants: when the DataAccess is deleted it closes every connection its
// credentials opened, and when the set of devices it selects changes (a
// Claim's labels, a device bound to or leaving the tenant, the selector) it
// closes them too, so that the holder reconnects (NATS and MQTT clients do)
// and is admitted with the new scope. Scopes are compared with every scope
// the callout granted since the last look (Service.StaleAccessGrants; a
// grant decided on the state before a look is decided again);
// connections this process did not grant (before a restart) are closed
// once.
type DataAccessCutOffReconciler struct {
	client.Client
	Service *dataplane.Service
}

// Reconcile closes the connections of a DataAccess whose grant is gone or
// changed.
func (r *DataAccessCutOffReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	user := dataplane.AccessUser(req.Namespace, req.Name)
	da := &custodyv1alpha1.DataAccess{}
	err := r.Get(ctx, req.NamespacedName, da)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	if err != nil || !da.DeletionTimestamp.IsZero() {
		// Start a look first, so that a grant decided on the DataAccess
		// before it went is decided again (and refused).
		r.Service.StaleAccessGrants(req.Namespace, req.Name, nil)
		n, err := r.Service.CloseUser(ctx, user, "")
		if n > 0 {
			log.FromContext(ctx).Info("data access revoked: connections closed", "dataAccess", req.String(), "closed", n)
		}
		return ctrl.Result{}, err
	}
	tn, err := tenantOfNamespace(ctx, r.Client, da.Namespace)
	if err != nil || tn == nil {
		return ctrl.Result{}, err
	}
	subs, err := r.Service.AccessSubjects(ctx, tn, da)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !r.Service.StaleAccessGrants(da.Namespace, da.Name, subs) {
		return ctrl.Result{}, nil
	}
	n, err := r.Service.CloseUser(ctx, user, "")
	if n > 0 {
		log.FromContext(ctx).Info("data access scope changed: connections closed to be admitted again", "dataAccess", req.String(), "closed", n)
	}
	return ctrl.Result{}, err
}

// tenantOfNamespace returns the Tenant whose namespace ns is, nil if none.
func tenantOfNamespace(ctx context.Context, c client.Reader, ns string) (*custodyv1alpha1.Tenant, error) {
	tenants := &custodyv1alpha1.TenantList{}
	if err := c.List(ctx, tenants, client.MatchingFields{indexTenantNamespace: ns}); err != nil {
		return nil, err
	}
	if len(tenants.Items) != 1 {
		return nil, nil
	}
	return &tenants.Items[0], nil
}

// accessInNamespace enqueues every DataAccess of namespace ns.
func (r *DataAccessCutOffReconciler) accessInNamespace(ctx context.Context, ns string) []reconcile.Request {
	list := &custodyv1alpha1.DataAccessList{}
	if ns == "" || r.List(ctx, list, client.InNamespace(ns)) != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, da := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&da)})
	}
	return out
}

// SetupWithManager watches DataAccesses, and the Claims and Devices that
// decide their scopes.
func (r *DataAccessCutOffReconciler) SetupWithManager(mgr manager.Manager) error {
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.DataAccess{}).
		Watches(&custodyv1alpha1.Claim{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			return r.accessInNamespace(ctx, o.GetNamespace())
		})).
		Watches(&custodyv1alpha1.Device{}, handler.Funcs{
			UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				for _, o := range []client.Object{e.ObjectOld, e.ObjectNew} {
					if ref := o.(*custodyv1alpha1.Device).Spec.ClaimRef; ref != nil {
						for _, req := range r.accessInNamespace(ctx, ref.Namespace) {
							q.Add(req)
						}
					}
				}
			},
		}).
		WithOptions(controllerOptions(2)).
		Named("dataplane-access").
		Complete(r)
}

// DataPlaneClientCAsName is the ConfigMap in the operator namespace that
// holds, under contract.TrustBundleKey, every tenant's CA certificates:
// the ca_file a production data-plane server verifies client certificates
// against (verify: true) before the callout checks each against its own
// tenant's (docs/data-plane.md). A config reloader next to the servers
// picks up new tenants.
const DataPlaneClientCAsName = "custody-dataplane-client-cas"

// DataPlaneClientCAsReconciler keeps DataPlaneClientCAsName: the union of
// the tenants' trust bundles, in tenant-name order.
type DataPlaneClientCAsReconciler struct {
	client.Client
	Options
}

// Reconcile rewrites the union when it differs.
func (r *DataPlaneClientCAsReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	tenants := &custodyv1alpha1.TenantList{}
	if err := r.List(ctx, tenants); err != nil {
		return ctrl.Result{}, err
	}
	slices.SortFunc(tenants.Items, func(a, b custodyv1alpha1.Tenant) int { return strings.Compare(a.Name, b.Name) })
	var union strings.Builder
	seen := map[string]bool{}
	for _, tn := range tenants.Items {
		if tn.Status.Namespace == "" || !tn.DeletionTimestamp.IsZero() {
			continue
		}
		certs, err := contract.TenantTrustAnchors(ctx, r.Client, tn.Status.Namespace)
		if err != nil {
			continue // not published yet: its Tenant is not Ready
		}
		for _, c := range certs {
			if fp := protocol.CertFingerprint(c.Raw); !seen[fp] {
				seen[fp] = true
				fmt.Fprintf(&union, "# tenant %s\n%s", tn.Name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
			}
		}
	}
	// The manager caches only its labelled ConfigMaps: one written by an
	// earlier version without the label is not in the cache, and the
	// apply takes it over and labels it.
	cm := &corev1.ConfigMap{}
	err := r.Get(ctx, client.ObjectKey{Namespace: r.OperatorNamespace, Name: DataPlaneClientCAsName}, cm)
	if err == nil && cm.Data[contract.TrustBundleKey] == union.String() && len(cm.Data) == 1 {
		return ctrl.Result{}, nil
	}
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	apply := corev1ac.ConfigMap(DataPlaneClientCAsName, r.OperatorNamespace).
		WithLabels(map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}).
		WithData(map[string]string{contract.TrustBundleKey: union.String()})
	return ctrl.Result{}, r.Apply(ctx, apply, client.FieldOwner(FieldOwner), client.ForceOwnership)
}

// SetupWithManager reconciles one key on any Tenant or trust-bundle change.
func (r *DataPlaneClientCAsReconciler) SetupWithManager(mgr manager.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: r.OperatorNamespace, Name: DataPlaneClientCAsName}}}
	})
	bundles := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetName() == contract.TrustBundleName || (o.GetName() == DataPlaneClientCAsName && o.GetNamespace() == r.OperatorNamespace)
	})
	return builder.ControllerManagedBy(mgr).
		Named("dataplane-client-cas").
		Watches(&custodyv1alpha1.Tenant{}, one).
		Watches(&corev1.ConfigMap{}, one, builder.WithPredicates(bundles)).
		WithOptions(controllerOptions(1)).
		Complete(r)
}
