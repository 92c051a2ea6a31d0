package controllers

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/custody"
)

// SupportActionReconciler applies support staff's decisions: award a device
// to a Claim, or reset it. Each is applied once, in one optimistic write of
// the Device, and recorded in the device's history with who decided and why.
type SupportActionReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// Custody writes every ownership change of a Device.
	Custody *custody.Applier
	Options Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=supportactions,verbs=get;list;watch
// +kubebuilder:rbac:groups=custody.dev,resources=supportactions/status,verbs=get;update;patch

// Reconcile applies one SupportAction.
func (r *SupportActionReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	a := &custodyv1alpha1.SupportAction{}
	if err := r.Client.Get(ctx, req.NamespacedName, a); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if a.Status.Phase == custodyv1alpha1.SupportActionSucceeded || a.Status.Phase == custodyv1alpha1.SupportActionFailed {
		return reconcile.Result{}, nil
	}
	msg, err := r.apply(ctx, a)
	var failed *actionFailed
	switch {
	case errors.As(err, &failed):
		return reconcile.Result{}, r.finish(ctx, a, custodyv1alpha1.SupportActionFailed, failed.msg)
	case err != nil:
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, r.finish(ctx, a, custodyv1alpha1.SupportActionSucceeded, msg)
}

// actionFailed is a decision that cannot be applied; it is final.
type actionFailed struct{ msg string }

func (e *actionFailed) Error() string { return e.msg }

func (r *SupportActionReconciler) apply(ctx context.Context, a *custodyv1alpha1.SupportAction) (string, error) {
	if a.Spec.RequestedBy == "" {
		return "", &actionFailed{"spec.requestedBy is empty: the action did not pass the admission webhook, so who decided is unknown. Nothing was done."}
	}
	dev := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: a.Spec.DeviceName}, dev); err != nil {
		if apierrors.IsNotFound(err) {
			return "", &actionFailed{"Device " + a.Spec.DeviceName + " does not exist. Nothing was done."}
		}
		return "", err
	}
	ref := "supportaction/" + a.Name
	// Applied before a crash or a lost status write: the decision and its
	// entry landed together, once.
	for _, h := range custody.Records(dev) {
		if h.Type == custodyv1alpha1.CustodyEventResolved && h.Reference == ref {
			return appliedMessage(h), r.Custody.Complete(ctx, dev)
		}
	}
	by := custody.By{Actor: "user:" + a.Spec.RequestedBy, Time: r.Options.Clock.Now()}
	var ch custody.Change
	switch a.Spec.Action {
	case custodyv1alpha1.SupportActionAward:
		c, tenant, err := r.awardee(ctx, a, dev)
		if err != nil {
			return "", err
		}
		if ch, err = custody.Award(dev, custody.Holder{Tenant: tenant, Namespace: c.Namespace, Name: c.Name, UID: c.UID}, ref, a.Spec.Reason, by); err != nil {
			return "", &actionFailed{"Device " + dev.Name + " is decommissioned. Nothing was done."}
		}
	case custodyv1alpha1.SupportActionReset:
		ch = custody.Reset(dev, ref, a.Spec.Reason, by)
	}
	ch.Event.Related = a
	if err := r.Custody.Apply(ctx, dev, ch); err != nil {
		return "", err
	}
	return appliedMessage(dev.Spec.Custody.Head), nil
}

// appliedMessage is the SupportAction's message for the decision h recorded.
func appliedMessage(h custodyv1alpha1.CustodyRecord) string {
	if h.Proof == custody.ProofAward {
		return fmt.Sprintf("Awarded to tenant %s (Claim %s).", h.Tenant, h.Claim)
	}
	return "Reset: no binding, cooling-off or dispute remains, and the current claim code is used up; the ERP issues a new one."
}

// awardee is the Claim an Award names, checked: it exists, asks for this
// device, and lives in a ready Tenant's namespace.
func (r *SupportActionReconciler) awardee(ctx context.Context, a *custodyv1alpha1.SupportAction, dev *custodyv1alpha1.Device) (*custodyv1alpha1.Claim, string, error) {
	c := &custodyv1alpha1.Claim{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: a.Spec.Claim.Namespace, Name: a.Spec.Claim.Name}, c); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, "", &actionFailed{"Claim " + a.Spec.Claim.Namespace + "/" + a.Spec.Claim.Name + " does not exist. Nothing was done."}
		}
		return nil, "", err
	}
	if c.DeviceName() != dev.Name || !c.DeletionTimestamp.IsZero() {
		return nil, "", &actionFailed{"Claim " + c.Namespace + "/" + c.Name + " does not ask for device " + dev.Name + " (or is being deleted). Nothing was done."}
	}
	var tenants custodyv1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.MatchingFields{indexTenantNamespace: c.Namespace}); err != nil {
		return nil, "", err
	}
	if len(tenants.Items) != 1 || !tenantUsable(&tenants.Items[0]) {
		return nil, "", &actionFailed{"Namespace " + c.Namespace + " does not belong to a ready Tenant. Nothing was done."}
	}
	return c, tenants.Items[0].Name, nil
}

func (r *SupportActionReconciler) finish(ctx context.Context, a *custodyv1alpha1.SupportAction, phase custodyv1alpha1.SupportActionPhase, msg string) error {
	before := a.DeepCopy()
	a.Status.Phase, a.Status.Message = phase, msg
	t := metav1.NewTime(r.Options.Clock.Now())
	a.Status.CompletionTime = &t
	return client.IgnoreNotFound(r.Client.Status().Patch(ctx, a, client.MergeFrom(before), client.FieldOwner(FieldOwner)))
}

// SetupWithManager registers the controller.
func (r *SupportActionReconciler) SetupWithManager(mgr manager.Manager) error {
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.SupportAction{}).
		WithOptions(controllerOptions(r.Options.workers("supportaction"))).
		Named("supportaction").
		Complete(lookingAgain(r))
}
