package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
)

// PairingTokenReconciler records, in the tenant namespace's
// claim.TokenStateConfigMap, what it sees of each pairing-token Secret: its
// uid when it appears, and its revocation (marked revoked, deleted, or
// replaced by another Secret of the same name) for good. Tenant users write
// the Secret; only the manager writes the state, so an Operator cannot
// un-revoke a token an Admin revoked, nor an Admin reset its usage count.
type PairingTokenReconciler struct {
	Client client.Client
	// APIReader reads pairing-token Secrets and the state ConfigMaps, never
	// cached.
	APIReader client.Reader
	Options   Options
}

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;create;update

// Reconcile observes one pairing-token Secret.
func (r *PairingTokenReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var tenants custodyv1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.MatchingFields{indexTenantNamespace: req.Namespace}); err != nil {
		return reconcile.Result{}, err
	}
	if len(tenants.Items) == 0 || !tenantUsable(&tenants.Items[0]) {
		return reconcile.Result{}, nil // not a tenant's token
	}
	var secret *corev1.Secret
	s := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, req.NamespacedName, s); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return reconcile.Result{}, err
	case s.Type != claim.PairingTokenSecretType:
		return reconcile.Result{}, nil
	default:
		secret = s
	}
	id := strings.TrimPrefix(req.Name, claim.PairingTokenSecretPrefix)
	now := r.Options.Clock.Now()
	_, err := updateTokenState(ctx, r.Client, r.APIReader, req.Namespace, id, func(st *claim.TokenState) bool {
		return claim.ObserveToken(st, secret, now)
	})
	return reconcile.Result{}, err
}

// updateTokenState applies change to the recorded state of token id in
// namespace ns and writes it back if change reports a change, under
// optimistic locking (a conflict is returned, and the caller retries). It
// returns the state as recorded.
func updateTokenState(ctx context.Context, c client.Client, r client.Reader, ns, id string, change func(*claim.TokenState) bool) (claim.TokenState, error) {
	cm := &corev1.ConfigMap{}
	err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: claim.TokenStateConfigMap}, cm)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return claim.TokenState{}, err
	}
	var st claim.TokenState
	if raw, ok := cm.Data[id]; ok {
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			return claim.TokenState{}, fmt.Errorf("the recorded state of pairing token %s is corrupt: %w", id, err)
		}
	}
	if !change(&st) {
		return st, nil
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return claim.TokenState{}, err
	}
	if !exists {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claim.TokenStateConfigMap,
			Labels: map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}}}
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[id] = string(raw)
	if exists {
		err = c.Update(ctx, cm, client.FieldOwner(FieldOwner)) // the resourceVersion makes it exact under concurrency
	} else {
		err = c.Create(ctx, cm, client.FieldOwner(FieldOwner))
	}
	return st, err
}

// SetupWithManager watches the metadata of pairing-token Secrets, so that
// Secret data is never cached.
func (r *PairingTokenReconciler) SetupWithManager(mgr manager.Manager) error {
	isToken := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return strings.HasPrefix(o.GetName(), claim.PairingTokenSecretPrefix) && o.GetNamespace() != r.Options.OperatorNamespace
	})
	return ctrl.NewControllerManagedBy(mgr).
		WithOptions(controllerOptions(r.Options.workers("pairingtoken"))).
		Named("pairingtoken").
		WatchesMetadata(&corev1.Secret{}, &handler.EnqueueRequestForObject{}, builder.WithPredicates(isToken)).
		Complete(r)
}
