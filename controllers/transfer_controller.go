package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/custody"
)

// TransferReconciler carries out Transfers. An offer to a named tenant is
// validated and timed here and completed by the recipient's Claim (the
// claim controller moves the binding); a release is carried out here.
type TransferReconciler struct {
	Client client.Client
	// APIReader reads the fresh claim-code Secret of a rotation, which the
	// manager never caches.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Custody writes every ownership change of a Device.
	Custody *custody.Applier
	Options Options
}

// +kubebuilder:rbac:groups=custody.dev,resources=transfers,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=custody.dev,resources=transfers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=create

// ClaimCodeSecretKey is the key of the fresh claim code in a rotation's
// Secret, as a Claim's spec.claimCode.secretRef expects by default.
const ClaimCodeSecretKey = "code"

// Reconcile carries out one Transfer.
func (r *TransferReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	tr := &custodyv1alpha1.Transfer{}
	if err := r.Client.Get(ctx, req.NamespacedName, tr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !tr.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil
	}
	before := tr.DeepCopy()
	var res reconcile.Result
	var err error
	switch {
	case transferDone(tr):
		// Decided; only its durable record may be missing (written by a
		// version before it existed).
	case restoreOutcome(tr):
		// Decided before its status was lost (a restore without status).
	default:
		res, err = r.reconcile(ctx, tr)
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	err = r.recordDurably(ctx, before, tr)
	if err == nil && !equality.Semantic.DeepEqual(before.Status, tr.Status) {
		err = client.IgnoreNotFound(r.Client.Status().Patch(ctx, tr, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)))
	}
	if apierrors.IsConflict(err) {
		// Decided from a cached Transfer older than the stored one (most
		// often a step behind this manager's own last write of it). The
		// newer version's watch event brings it back, and it is decided
		// again from that: nothing failed, so nothing is logged or backed
		// off. A Device change made above is found in its history then.
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	return res, nil
}

// Annotations the manager writes on a Transfer so that what it decided
// survives a restore without status: an offer's expiry (a restored offer
// keeps it, an expired one stays expired) and the outcome.
const (
	annotationOfferExpiresAt = "custody.dev/offer-expires-at"
	annotationOutcome        = "custody.dev/outcome"
)

// transferOutcome is the durable record of a decided Transfer.
type transferOutcome struct {
	Phase          custodyv1alpha1.TransferPhase `json:"phase"`
	Reason         string                        `json:"reason"`
	Message        string                        `json:"message"`
	DeviceName     string                        `json:"deviceName,omitempty"`
	CompletionTime *metav1.Time                  `json:"completionTime,omitempty"`
	SecretName     string                        `json:"claimCodeSecretName,omitempty"`
}

// recordDurably writes the annotations tr's new status calls for, before
// the status itself, so that a crash in between loses nothing. before is
// moved to the resourceVersion written.
func (r *TransferReconciler) recordDurably(ctx context.Context, before, tr *custodyv1alpha1.Transfer) error {
	want := map[string]string{}
	if at := tr.Status.ExpiresAt; at != nil {
		want[annotationOfferExpiresAt] = at.UTC().Format(time.RFC3339)
	}
	if transferDone(tr) {
		o := transferOutcome{Phase: tr.Status.Phase, DeviceName: tr.Status.DeviceName, CompletionTime: tr.Status.CompletionTime, SecretName: tr.Status.ClaimCodeSecretName}
		if c := meta.FindStatusCondition(tr.Status.Conditions, custodyv1alpha1.ConditionReady); c != nil {
			o.Reason, o.Message = c.Reason, c.Message
		}
		raw, err := json.Marshal(o)
		if err != nil {
			return err
		}
		want[annotationOutcome] = string(raw)
	}
	m := tr.DeepCopy()
	changed := false
	for k, v := range want {
		if m.Annotations[k] != v {
			metav1.SetMetaDataAnnotation(&m.ObjectMeta, k, v)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := r.Client.Patch(ctx, m, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
		return client.IgnoreNotFound(err)
	}
	tr.ObjectMeta, before.ObjectMeta = *m.ObjectMeta.DeepCopy(), *m.ObjectMeta.DeepCopy()
	return nil
}

// restoreOutcome sets the status of a Transfer that has none from its
// durable outcome, reporting whether it did.
func restoreOutcome(tr *custodyv1alpha1.Transfer) bool {
	raw, ok := tr.Annotations[annotationOutcome]
	if !ok || tr.Status.Phase != "" {
		return false
	}
	var o transferOutcome
	if json.Unmarshal([]byte(raw), &o) != nil || o.Phase == "" {
		return false
	}
	tr.Status.Phase, tr.Status.DeviceName, tr.Status.CompletionTime, tr.Status.ClaimCodeSecretName = o.Phase, o.DeviceName, o.CompletionTime, o.SecretName
	if at, err := time.Parse(time.RFC3339, tr.Annotations[annotationOfferExpiresAt]); err == nil {
		t := metav1.NewTime(at)
		tr.Status.ExpiresAt = &t
	}
	status := metav1.ConditionFalse
	if o.Phase == custodyv1alpha1.TransferPhaseCompleted {
		status = metav1.ConditionTrue
	}
	at := metav1.Now()
	if o.CompletionTime != nil {
		at = *o.CompletionTime
	}
	meta.SetStatusCondition(&tr.Status.Conditions, metav1.Condition{Type: custodyv1alpha1.ConditionReady, Status: status, Reason: o.Reason, Message: o.Message,
		ObservedGeneration: tr.Generation, LastTransitionTime: at})
	return true
}

func transferDone(tr *custodyv1alpha1.Transfer) bool {
	switch tr.Status.Phase {
	case custodyv1alpha1.TransferPhaseCompleted, custodyv1alpha1.TransferPhaseExpired, custodyv1alpha1.TransferPhaseFailed:
		return true
	}
	return false
}

func (r *TransferReconciler) reconcile(ctx context.Context, tr *custodyv1alpha1.Transfer) (reconcile.Result, error) {
	now := r.Options.Clock.Now()
	var tenants custodyv1alpha1.TenantList
	if err := r.Client.List(ctx, &tenants, client.MatchingFields{indexTenantNamespace: tr.Namespace}); err != nil {
		return reconcile.Result{}, err
	}
	if len(tenants.Items) != 1 || !tenantUsable(&tenants.Items[0]) {
		setTransfer(tr, "", false, custodyv1alpha1.TransferReasonTenantNotReady, "This namespace does not belong to a ready Tenant.", now)
		return reconcile.Result{}, nil
	}
	tenant := &tenants.Items[0]

	c := &custodyv1alpha1.Claim{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: tr.Namespace, Name: tr.Spec.ClaimName}, c)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	dev := &custodyv1alpha1.Device{}
	if err == nil {
		if err := r.Client.Get(ctx, client.ObjectKey{Name: c.DeviceName()}, dev); client.IgnoreNotFound(err) != nil {
			return reconcile.Result{}, err
		}
	}
	// Done already: the change that carried this Transfer out is in the
	// device's history (also when its status was never written: a crash
	// right after the change, or a restore without status).
	ref := tr.Namespace + "/" + tr.Name
	for _, h := range custody.Records(dev) {
		if h.Reference == ref && (h.Type == custodyv1alpha1.CustodyEventTransferred || h.Type == custodyv1alpha1.CustodyEventReleased) {
			msg := "The device was handed to tenant " + h.Tenant + "."
			if h.Type == custodyv1alpha1.CustodyEventReleased {
				msg = "The device was released for claiming."
			}
			if tr.Status.DeviceName == "" {
				tr.Status.DeviceName = dev.Name
			}
			setTransfer(tr, custodyv1alpha1.TransferPhaseCompleted, true, custodyv1alpha1.TransferReasonCompleted, msg, now)
			t := h.Time
			tr.Status.CompletionTime = &t
			return reconcile.Result{}, nil
		}
	}
	if tr.Status.DeviceName == "" {
		if err != nil || dev.Spec.ClaimRef == nil || dev.Spec.ClaimRef.UID != c.UID || dev.Spec.ClaimRef.Tenant != tenant.Name {
			// Not yet: the Claim may have been applied with this Transfer.
			setTransfer(tr, custodyv1alpha1.TransferPhasePending, false, custodyv1alpha1.TransferReasonClaimNotBound,
				"Waiting for Claim "+tr.Spec.ClaimName+" in this namespace to hold a device; nothing is handed on before.", now)
			return reconcile.Result{}, nil
		}
		tr.Status.DeviceName = dev.Name
	}

	if tr.Spec.Release != nil {
		// Carried out at once: nothing is offered, nothing expires.
		return reconcile.Result{}, r.release(ctx, tr, c, dev, tenant.Name, now)
	}
	if tr.Status.ExpiresAt == nil {
		exp := metav1.NewTime(now.Add(r.Options.TransferTTL))
		if at, err := time.Parse(time.RFC3339, tr.Annotations[annotationOfferExpiresAt]); err == nil {
			// Offered before its status was lost: the offer keeps its
			// expiry.
			exp = metav1.NewTime(at)
		}
		tr.Status.ExpiresAt = &exp
	}

	// An offer: the recipient's Claim completes it.
	if ref := dev.Spec.ClaimRef; ref == nil || ref.UID != c.UID {
		if ref != nil && ref.Tenant == tr.Spec.Recipient.Tenant {
			// Accepted: the history entry follows the binding, and its
			// write brings this Transfer back.
			return reconcile.Result{}, nil
		}
		setTransfer(tr, custodyv1alpha1.TransferPhaseFailed, false, custodyv1alpha1.TransferReasonClaimNotBound,
			"Claim "+tr.Spec.ClaimName+" no longer holds the device: nothing was handed on.", now)
		return reconcile.Result{}, nil
	}
	if !now.Before(tr.Status.ExpiresAt.Time) {
		setTransfer(tr, custodyv1alpha1.TransferPhaseExpired, false, custodyv1alpha1.TransferReasonExpired, "The recipient did not accept before status.expiresAt; create a new Transfer to offer the device again.", now)
		return reconcile.Result{}, nil
	}
	setTransfer(tr, custodyv1alpha1.TransferPhaseOffered, false, custodyv1alpha1.TransferReasonAwaitingRecipient,
		"Offered to tenant "+tr.Spec.Recipient.Tenant+": it accepts with a Claim for this device whose spec.transfer.fromTenant is "+tenant.Name+".", now)
	return reconcile.Result{RequeueAfter: tr.Status.ExpiresAt.Sub(now)}, nil
}

// release ends the offering tenant's binding and opens the device for
// claiming, with a fresh claim code when asked, in one custody change. The
// code's Secret is written before the Device, and the change applies only
// while the Claim still holds the device.
func (r *TransferReconciler) release(ctx context.Context, tr *custodyv1alpha1.Transfer, c *custodyv1alpha1.Claim, dev *custodyv1alpha1.Device, tenant string, now time.Time) error {
	ref := tr.Namespace + "/" + tr.Name
	if dev.Spec.ClaimRef == nil || dev.Spec.ClaimRef.UID != c.UID {
		setTransfer(tr, custodyv1alpha1.TransferPhaseFailed, false, custodyv1alpha1.TransferReasonClaimNotBound,
			"Claim "+tr.Spec.ClaimName+" no longer holds the device: nothing was released.", now)
		return nil
	}
	var verifier string
	if tr.Spec.Release.RotateClaimCode {
		code, err := r.freshCode(ctx, tr)
		if err != nil {
			return err
		}
		if verifier, err = claimcode.NewVerifier(code); err != nil {
			return err
		}
		tr.Status.ClaimCodeSecretName = claimCodeSecretName(tr)
	}
	ch, err := custody.Release(dev, custody.HolderOf(*dev.Spec.ClaimRef), "Transfer", ref, verifier, custody.By{Actor: "tenant:" + tenant, Time: now})
	if err != nil {
		return err
	}
	ch.Event.Related = tr
	ch.Event.Reason, ch.Event.Action = "Released", "Transfer"
	ch.Event.Note = fmt.Sprintf("Released for claiming by tenant %s (Transfer %s); its certificates are refused from now on.", tenant, ref)
	if err := r.Custody.Apply(ctx, dev, ch); err != nil {
		return err
	}
	setTransfer(tr, custodyv1alpha1.TransferPhaseCompleted, true, custodyv1alpha1.TransferReasonCompleted, "The device was released for claiming.", now)
	t := metav1.NewTime(now)
	tr.Status.CompletionTime = &t
	return nil
}

func claimCodeSecretName(tr *custodyv1alpha1.Transfer) string { return tr.Name + "-claim-code" }

// freshCode returns the rotation's claim code, creating its Secret (owned
// by the Transfer) the first time. The code exists only there and in the
// verifier derived from it.
func (r *TransferReconciler) freshCode(ctx context.Context, tr *custodyv1alpha1.Transfer) (claimcode.Code, error) {
	key := client.ObjectKey{Namespace: tr.Namespace, Name: claimCodeSecretName(tr)}
	s := &corev1.Secret{}
	err := r.APIReader.Get(ctx, key, s)
	if apierrors.IsNotFound(err) {
		code, gerr := claimcode.Generate()
		if gerr != nil {
			return "", gerr
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue}},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{ClaimCodeSecretKey: []byte(code.String())},
		}
		if err := controllerutil.SetOwnerReference(tr, s, r.Client.Scheme()); err != nil {
			return "", err
		}
		if err := r.Client.Create(ctx, s, client.FieldOwner(FieldOwner)); err != nil {
			return "", err
		}
		return code, nil
	}
	if err != nil {
		return "", err
	}
	return claimcode.Parse(string(s.Data[ClaimCodeSecretKey]))
}

func setTransfer(tr *custodyv1alpha1.Transfer, phase custodyv1alpha1.TransferPhase, ready bool, reason, msg string, now time.Time) {
	if phase != "" {
		tr.Status.Phase = phase
	}
	status := metav1.ConditionFalse
	if ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&tr.Status.Conditions, metav1.Condition{Type: custodyv1alpha1.ConditionReady, Status: status, Reason: reason, Message: msg,
		ObservedGeneration: tr.Generation, LastTransitionTime: metav1.NewTime(now)})
}

// SetupWithManager registers the controller. Transfers are re-examined when
// their device changes (accepted, released, rebound).
func (r *TransferReconciler) SetupWithManager(mgr manager.Manager) error {
	transfersFor := func(ctx context.Context, opts ...client.ListOption) []reconcile.Request {
		var list custodyv1alpha1.TransferList
		if err := r.Client.List(ctx, &list, opts...); err != nil {
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for _, t := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&t)})
		}
		return reqs
	}
	byDevice := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return transfersFor(ctx, client.MatchingFields{indexTransferDevice: o.GetName()})
	})
	byClaim := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return transfersFor(ctx, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexTransferClaim: o.GetName()})
	})
	// Transfers wait for their Tenant to become ready (after a restore, for
	// example).
	byTenant := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return transfersFor(ctx, client.InNamespace(o.(*custodyv1alpha1.Tenant).TargetNamespace()))
	})
	readinessChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return tenantUsable(e.ObjectOld.(*custodyv1alpha1.Tenant)) != tenantUsable(e.ObjectNew.(*custodyv1alpha1.Tenant))
		},
	}
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Transfer{}).
		Watches(&custodyv1alpha1.Device{}, byDevice).
		Watches(&custodyv1alpha1.Claim{}, byClaim).
		Watches(&custodyv1alpha1.Tenant{}, byTenant, builder.WithPredicates(readinessChanged)).
		WithOptions(controllerOptions(r.Options.workers("transfer"))).
		Named("transfer").
		Complete(lookingAgain(r))
}
