package controllers

import (
	"context"
	"slices"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// ApproverReconciler is the only approver of CertificateRequests that target
// a custody issuer: the root ClusterIssuer, the self-signed tenant-root
// Issuer and the tenants' Issuers in the operator namespace. It approves a
// request only if it is genuine (a tenant's root CA, requested by
// cert-manager itself from the tenant-root Issuer for the Certificate the
// Tenant controller owns, with the private key cert-manager holds for it; or
// a device certificate, requested by the enrollment controller for a
// verified DeviceProof) and denies every other request to those issuers.
// Approved and Denied are final; a decided request is never looked at again.
type ApproverReconciler struct {
	Client client.Client
	// APIReader reads past the cache where a stale object would deny a
	// genuine request for good.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Options   Options
}

// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests,verbs=get;list;watch
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests/status,verbs=update;patch
// +kubebuilder:rbac:groups=cert-manager.io,resources=signers,verbs=approve,resourceNames=clusterissuers.cert-manager.io/*;issuers.cert-manager.io/*

// Reconcile approves or denies one CertificateRequest: it reads what the
// request names (observe), lets decideRequest decide, and adds the
// decision's condition, reported in an Event unless it approves a device
// certificate.
func (r *ApproverReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	cr := &cmapi.CertificateRequest{}
	if err := r.Client.Get(ctx, req.NamespacedName, cr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if requestDecided(cr) || !requestInScope(cr, &r.Options) {
		return reconcile.Result{}, nil
	}
	facts, err := r.observe(ctx, cr)
	if err != nil {
		return reconcile.Result{}, err
	}
	d := decideRequest(cr, facts, &r.Options)
	switch d.Verdict {
	case approverIgnore:
		return reconcile.Result{}, nil
	case approverWait:
		// The manager has created the request but not yet recorded it on
		// its proof; the proof's update brings this request back.
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	cond, eventType := approverCondition(d, r.Options.Clock.Now())
	before := cr.DeepCopy()
	cr.Status.Conditions = append(cr.Status.Conditions, cond)
	// Optimistic: a decision is final, so it is written on the request as
	// read or not at all (a conflict is retried with the workqueue's
	// back-off, and decided again).
	if err := r.Client.Status().Patch(ctx, cr, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	decision := "approved"
	if d.Verdict == approverDeny {
		decision = "denied"
	}
	requestDecisions.WithLabelValues(kindOfRequest(cr, &r.Options).String(), decision).Inc()
	// Every denial is an Event. Approving a device certificate is not: it
	// is one step of every enrollment and renewal, its condition keeps the
	// reason and message, and the proof, the Device and the Claim record
	// the certificate moments later; an Event would be one more write per
	// enrollment (docs/operations.md, "Writes per enrollment").
	if d.Verdict == approverDeny || kindOfRequest(cr, &r.Options) != requestForDevice {
		r.Recorder.Eventf(cr, nil, eventType, d.Reason, "Approve", "%s", d.Message)
	}
	return reconcile.Result{}, nil
}

// Reasons on CertificateRequest conditions.
const (
	ApproverReasonApproved = "CustodyApproved"
	ApproverReasonDenied   = "CustodyDenied"
)

// observe reads the objects an in-scope request names, as far as the
// decision needs them: for a device certificate, its controller-owner
// DeviceProof and that proof's Device (from the cache); for a tenant CA,
// the Certificate its annotation names, that Certificate's Tenant and the
// Secret of the key cert-manager holds for it (from the API server: a stale
// Certificate status would deny the genuine request for good). What does
// not exist stays nil.
func (r *ApproverReconciler) observe(ctx context.Context, cr *cmapi.CertificateRequest) (approverFacts, error) {
	var f approverFacts
	get := func(reader client.Reader, key client.ObjectKey, obj client.Object) (bool, error) {
		if err := reader.Get(ctx, key, obj); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return true, nil
	}
	switch kindOfRequest(cr, &r.Options) {
	case requestForAccess:
		return f, r.observeAccess(ctx, cr, &f)
	case requestForDevice:
		owner := deviceProofOwner(cr, &r.Options)
		if owner == nil {
			return f, nil
		}
		proof := &custodyv1alpha1.DeviceProof{}
		if ok, err := get(r.Client, client.ObjectKey{Namespace: cr.Namespace, Name: owner.Name}, proof); !ok || err != nil {
			return f, err
		}
		f.Proof = proof
		if proof.UID != owner.UID || proof.Status.CertificateRequest == nil {
			return f, nil
		}
		dev := &custodyv1alpha1.Device{}
		if ok, err := get(r.Client, client.ObjectKey{Name: proof.Spec.DeviceName}, dev); !ok || err != nil {
			return f, err
		}
		f.Device = dev
	case requestForTenantCA:
		reader := r.APIReader
		if reader == nil {
			reader = r.Client
		}
		certName := cr.Annotations[cmapi.CertificateNameKey]
		if !slices.Contains(r.Options.CertManagerUsernames, cr.Spec.Username) || certName == "" {
			return f, nil
		}
		cert := &cmapi.Certificate{}
		if ok, err := get(reader, client.ObjectKey{Namespace: cr.Namespace, Name: certName}, cert); !ok || err != nil {
			return f, err
		}
		f.Certificate = cert
		if name := cert.Labels[custodyv1alpha1.LabelTenant]; name != "" {
			tenant := &custodyv1alpha1.Tenant{}
			ok, err := get(reader, client.ObjectKey{Name: name}, tenant)
			if err != nil {
				return f, err
			}
			if ok {
				f.Tenant = tenant
			}
		}
		if name := cert.Status.NextPrivateKeySecretName; name != nil {
			secret := &corev1.Secret{}
			ok, err := get(reader, client.ObjectKey{Namespace: cr.Namespace, Name: *name}, secret)
			if err != nil {
				return f, err
			}
			if ok {
				f.KeySecret = secret
			}
		}
	}
	return f, nil
}

func ownedByController(cr *cmapi.CertificateRequest, cert *cmapi.Certificate) bool {
	for _, o := range cr.OwnerReferences {
		if o.UID == cert.UID && o.Controller != nil && *o.Controller {
			return true
		}
	}
	return false
}

// SetupWithManager registers the controller.
func (r *ApproverReconciler) SetupWithManager(mgr manager.Manager) error {
	// A device request waits for its proof to record it: the proof's
	// update brings the request back.
	byProof := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		if ref := o.(*custodyv1alpha1.DeviceProof).Status.CertificateRequest; ref != nil {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: ref.Name}}}
		}
		return nil
	})
	return ctrl.ControllerManagedBy(mgr).
		For(&cmapi.CertificateRequest{}).
		Watches(&custodyv1alpha1.DeviceProof{}, byProof).
		WithOptions(controllerOptions(r.Options.workers("certificaterequest-approver"))).
		Named("certificaterequest-approver").
		Complete(r)
}
