package controllers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// maxDeviceCertificates bounds Device.status.certificates (CRD MaxItems).
const maxDeviceCertificates = custodyv1alpha1.MaxDeviceCertificates

// EnrollmentReconciler acts on DeviceProofs the gateway records. It trusts
// nothing the gateway checked: it verifies the device's signature against the
// Device's factory key, the challenge's binding to the serial number, the
// binding of the device to a tenant, and the identity the CSR asks for, then
// requests the certificate from the tenant's Issuer and publishes it.
// For possession proofs it confirms the one Claim whose pairing code the
// device signed.
type EnrollmentReconciler struct {
	Client client.Client
	// APIReader reads pairing-token Secrets, never cached.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Options   Options

	// written keeps the proofs' status writes until the cache has them.
	written ownWrites
	// begun is when this manager first looked at each unfinished proof,
	// for custody_device_proof_duration_seconds (a proof's
	// creationTimestamp has whole seconds only).
	begun proofStarts
}

// proofStarts keeps when each unfinished proof was first reconciled.
type proofStarts struct {
	mu sync.Mutex
	m  map[types.UID]time.Time
}

// maxProofStarts bounds proofStarts: past it, entries older than an hour
// (proofs deleted before they finished) are dropped.
const maxProofStarts = 10000

// start records now for uid unless it has a time already.
func (s *proofStarts) start(uid types.UID, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[types.UID]time.Time{}
	}
	if _, ok := s.m[uid]; ok {
		return
	}
	if len(s.m) >= maxProofStarts {
		for k, t := range s.m {
			if now.Sub(t) > time.Hour {
				delete(s.m, k)
			}
		}
	}
	s.m[uid] = now
}

// finish returns and forgets uid's start.
func (s *proofStarts) finish(uid types.UID) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[uid]
	delete(s.m, uid)
	return t, ok
}

// +kubebuilder:rbac:groups=custody.dev,resources=deviceproofs,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=custody.dev,resources=deviceproofs/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificaterequests,verbs=get;create
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;update

// Reconcile verifies one proof and moves it on.
func (r *EnrollmentReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	p := &custodyv1alpha1.DeviceProof{}
	if err := r.Client.Get(ctx, req.NamespacedName, p); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if r.written.stale(p) {
		// The cache has not seen this controller's last status write yet
		// (a CertificateRequest's event queued the proof meanwhile): that
		// write's own event brings the proof back.
		return reconcile.Result{}, nil
	}
	now := r.Options.Clock.Now()
	if p.Status.CompletionTime == nil {
		r.begun.start(p.UID, now)
	}
	if p.Status.CompletionTime != nil {
		// Finished: keep it an hour for support staff, then delete it.
		if left := p.Status.CompletionTime.Add(r.Options.ProofRetention).Sub(now); left > 0 {
			return reconcile.Result{RequeueAfter: left}, nil
		}
		r.written.forget(p.UID)
		return reconcile.Result{}, client.IgnoreNotFound(r.Client.Delete(ctx, p))
	}

	before := p.DeepCopy()
	defer func() {
		if p.Status.Phase != custodyv1alpha1.DeviceProofPhasePending && p.Status.Phase != "" && p.Status.CompletionTime == nil {
			t := metav1.NewTime(now)
			p.Status.CompletionTime = &t
			result.RequeueAfter = r.Options.ProofRetention
		}
		if equality.Semantic.DeepEqual(before.Status, p.Status) {
			return
		}
		if err := r.Client.Status().Patch(ctx, p, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			// A conflict is retried with the workqueue's back-off.
			retErr = errors.Join(retErr, client.IgnoreNotFound(err))
			return
		}
		r.written.wrote(p, before.ResourceVersion)
		if before.Status.CompletionTime == nil && p.Status.CompletionTime != nil {
			proofOutcomes.WithLabelValues(string(p.Spec.Purpose), string(p.Status.Phase)).Inc()
			if begun, ok := r.begun.finish(p.UID); ok {
				proofDuration.WithLabelValues(string(p.Spec.Purpose)).Observe(r.Options.Clock.Since(begun).Seconds())
			}
		}
	}()

	dev, csr, err := r.verify(ctx, p)
	if err != nil {
		return reconcile.Result{}, err
	}
	if dev == nil {
		return reconcile.Result{}, nil // rejected; the status says why
	}
	if p.Spec.Purpose == custodyv1alpha1.DeviceProofPossession && p.Spec.PairingToken != nil {
		return reconcile.Result{}, r.claimWithToken(ctx, p, dev, now)
	}
	if p.Spec.Purpose == custodyv1alpha1.DeviceProofPossession {
		return reconcile.Result{}, r.confirmPossession(ctx, p, dev, now)
	}
	return r.issue(ctx, p, dev, csr)
}

func reject(p *custodyv1alpha1.DeviceProof, reason, msg string) {
	p.Status.Phase, p.Status.Reason, p.Status.Message = custodyv1alpha1.DeviceProofPhaseRejected, reason, msg
}

// verify checks the proof against the Device (verifyProof). It returns
// the Device (and the CSR of an Enroll or Renew proof) when the proof holds,
// nil after rejecting it.
func (r *EnrollmentReconciler) verify(ctx context.Context, p *custodyv1alpha1.DeviceProof) (*custodyv1alpha1.Device, *x509.CertificateRequest, error) {
	if p.Status.Phase == "" {
		p.Status.Phase = custodyv1alpha1.DeviceProofPhasePending
	}
	dev := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: p.Spec.DeviceName}, dev); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, nil, err
		}
		dev = nil
	}
	var anchors []*x509.Certificate
	if dev != nil && p.Spec.Purpose == custodyv1alpha1.DeviceProofRenew && dev.Spec.ClaimRef != nil {
		var err error
		if anchors, err = contract.TenantTrustAnchors(ctx, r.APIReader, dev.Spec.ClaimRef.Namespace); err != nil && !apierrors.IsNotFound(err) && !errors.Is(err, contract.ErrNoTrustBundle) {
			return nil, nil, err
		}
	}
	csr, v := verifyProof(p, dev, anchors, r.Options.TrustDomain, r.Options.Clock.Now())
	if v.rejected() {
		reject(p, v.Reason, v.Message)
		return nil, nil, nil
	}
	return dev, csr, nil
}

// issue requests the certificate for a verified Enroll or Renew proof and
// publishes it once cert-manager has signed it (decideIssue decides which).
func (r *EnrollmentReconciler) issue(ctx context.Context, p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, csr *x509.CertificateRequest) (reconcile.Result, error) {
	var cr *cmapi.CertificateRequest
	if rec := p.Status.CertificateRequest; rec != nil {
		cr = &cmapi.CertificateRequest{}
		key := client.ObjectKey{Namespace: p.Namespace, Name: rec.Name}
		if err := r.Client.Get(ctx, key, cr); err != nil {
			if !apierrors.IsNotFound(err) {
				return reconcile.Result{}, err
			}
			// The cache may not have seen the request this manager just
			// made: only the API server can say it is gone.
			if err := r.APIReader.Get(ctx, key, cr); err != nil {
				if !apierrors.IsNotFound(err) {
					return reconcile.Result{}, err
				}
				cr = nil
			}
		}
	}
	d := decideIssue(p, dev, csr, cr, r.Options.TrustDomain)
	switch d.Step {
	case issueReject:
		reject(p, d.Rejection.Reason, d.Rejection.Message)
		if d.Withheld != nil {
			r.Recorder.Eventf(dev, p, corev1.EventTypeWarning, "CertificateWithheld", "Enroll", "Certificate %s from CertificateRequest %s was not published: %s.",
				protocol.CertFingerprint(d.Chain[0].Raw), cr.Name, d.Withheld.Error())
		}
		return reconcile.Result{}, nil
	case issueWait:
		return reconcile.Result{}, nil // cert-manager's progress is watched
	case issueRequest:
		created, err := r.requestFor(ctx, p, dev, csr)
		if err != nil {
			return reconcile.Result{}, err
		}
		if created == nil {
			reject(p, custodyv1alpha1.DeviceProofReasonInvalid, "A CertificateRequest of this name exists and was not made for this proof.")
			return reconcile.Result{}, nil
		}
		if fp := r.Options.FailPoint; fp != nil {
			if err := fp(FailPointCertificateRequested, client.ObjectKeyFromObject(p)); err != nil {
				return reconcile.Result{}, err
			}
		}
		ref := dev.Spec.ClaimRef
		p.Status.Tenant, p.Status.ClaimUID = ref.Tenant, ref.UID
		p.Status.CertificateRequest = &custodyv1alpha1.ObjectReference{Name: created.Name, UID: created.UID}
		p.Status.Reason, p.Status.Message = "Issuing", "The certificate is being issued by the tenant's CA."
		return reconcile.Result{}, nil
	}
	leaf := d.Chain[0]
	if err := r.publish(ctx, dev, leaf, string(cr.Status.Certificate)); err != nil {
		return reconcile.Result{}, err
	}
	p.Status.Certificate = string(cr.Status.Certificate)
	p.Status.CA = caBundle(d.Chain, cr.Status.CA)
	// No Event: the certificate is on the Device's and the Claim's status,
	// and the proof says it was issued for as long as an Event would; one
	// more write per enrollment and renewal would say it a fourth time
	// (docs/operations.md, "Writes per enrollment").
	p.Status.Phase, p.Status.Reason, p.Status.Message = custodyv1alpha1.DeviceProofPhaseIssued, custodyv1alpha1.DeviceProofReasonIssued, d.Message
	return reconcile.Result{}, nil
}

// caBundle is the issuing tenant CA: the chain above the leaf, or cert-manager's
// CA field when the chain holds the leaf only.
func caBundle(chain []*x509.Certificate, ca []byte) string {
	if len(chain) < 2 {
		return string(ca)
	}
	var out []byte
	for _, c := range chain[1:] {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return string(out)
}

func requestFailed(cr *cmapi.CertificateRequest) bool {
	for _, c := range cr.Status.Conditions {
		switch {
		case c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue,
			c.Type == cmapi.CertificateRequestConditionInvalidRequest && c.Status == cmmeta.ConditionTrue,
			c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionFalse && c.Reason == cmapi.CertificateRequestReasonFailed:
			return true
		}
	}
	return false
}

// FailPointCertificateRequested is the fail point (Options.FailPoint, called
// with the DeviceProof's key) between creating a proof's CertificateRequest
// and recording it on the proof.
const FailPointCertificateRequested = "certificate-requested"

// EnrollRequestName is the name of the CertificateRequest of an Enroll
// proof: one name per device, binding (the Claim's UID) and CSR public key
// (SHA-256 of its SubjectPublicKeyInfo), so that a device that starts its
// enrollment over with a fresh challenge, as after a dropped connection,
// finds the request of its first attempt instead of making a second one.
func EnrollRequestName(device string, claimUID types.UID, csr *x509.CertificateRequest) string {
	spki := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	h := sha256.New()
	for _, part := range [][]byte{[]byte(device), []byte(claimUID), spki[:]} {
		_, _ = h.Write(part)
		_, _ = h.Write([]byte{0})
	}
	return "enroll-" + hex.EncodeToString(h.Sum(nil))[:40]
}

// requestFor returns the CertificateRequest a verified Enroll or Renew proof
// waits on, creating it if need be; nil if a request named after p exists
// that p does not own (someone tried to pre-empt it).
//
// An Enroll proof first tries the request named EnrollRequestName. It
// creates and owns it, or adopts it when another Enroll proof of the same
// device, binding and key made it and the request is still good
// (adoptable): both proofs then deliver the one certificate. Otherwise (a
// failed, denied or half-spent request, or one the manager did not make)
// the proof gets a request named after itself, as a Renew proof always
// does. A request under the computed name that the manager did not create
// is never used. The approver judges a request by its controller-owner proof only,
// so an adopting proof never gets a request approved that its owner did not
// prove; a kill between any two writes leaves at most an unrecorded request
// named after a proof whose status names another, which the approver
// denies.
func (r *EnrollmentReconciler) requestFor(ctx context.Context, p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, csr *x509.CertificateRequest) (*cmapi.CertificateRequest, error) {
	if p.Spec.Purpose == custodyv1alpha1.DeviceProofEnroll {
		cr, err := r.createRequest(ctx, p, dev, EnrollRequestName(dev.Name, dev.Spec.ClaimRef.UID, csr))
		if err != nil {
			return nil, err
		}
		if r.managerRequested(cr) {
			if metav1.IsControlledBy(cr, p) {
				return cr, nil
			}
			ok, err := r.adoptable(ctx, cr, dev, csr)
			if err != nil || ok {
				return cr, err
			}
		}
	}
	cr, err := r.createRequest(ctx, p, dev, p.Name)
	if err != nil || !metav1.IsControlledBy(cr, p) || !r.managerRequested(cr) {
		// A request under this proof's name that someone else made (even
		// with a forged owner reference) is never taken for ours.
		return nil, err
	}
	return cr, nil
}

// managerRequested reports whether the manager created cr: cert-manager's
// admission stamps the authenticated creator in spec.username. A request
// someone else made under a name the manager computes is never taken for
// the manager's own.
func (r *EnrollmentReconciler) managerRequested(cr *cmapi.CertificateRequest) bool {
	return slices.Contains(r.Options.ManagerUsernames, cr.Spec.Username)
}

// adoptable reports whether an Enroll proof of dev for the key of csr may
// wait on cr, a request it did not make: cr must be the request another
// Enroll proof of the same device, binding and key made (its controller
// owner, which exists, has cr's exact CSR, and names cr or is still
// pending), neither failed nor denied, and, if signed, with less than half
// of the certificate's lifetime spent.
func (r *EnrollmentReconciler) adoptable(ctx context.Context, cr *cmapi.CertificateRequest, dev *custodyv1alpha1.Device, csr *x509.CertificateRequest) (bool, error) {
	ref := dev.Spec.ClaimRef
	if requestFailed(cr) || cr.Labels[contract.LabelDevice] != dev.Name || cr.Spec.IssuerRef.Name != TenantIssuerName(ref.Tenant) {
		return false, nil
	}
	theirs, err := protocol.ParseCSRPEM(cr.Spec.Request)
	if err != nil || !bytes.Equal(theirs.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
		return false, nil
	}
	owner := metav1.GetControllerOf(cr)
	if owner == nil || owner.Kind != "DeviceProof" || owner.APIVersion != custodyv1alpha1.GroupVersion.String() {
		return false, nil
	}
	first := &custodyv1alpha1.DeviceProof{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: cr.Namespace, Name: owner.Name}, first); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if first.UID != owner.UID || first.Spec.Purpose != custodyv1alpha1.DeviceProofEnroll || first.Spec.DeviceName != dev.Name ||
		first.Spec.CSR != string(cr.Spec.Request) || (first.Status.ClaimUID != "" && first.Status.ClaimUID != ref.UID) {
		return false, nil
	}
	if rec := first.Status.CertificateRequest; rec != nil {
		if rec.Name != cr.Name || rec.UID != cr.UID {
			return false, nil
		}
	} else if first.Status.Phase != "" && first.Status.Phase != custodyv1alpha1.DeviceProofPhasePending {
		return false, nil // finished without it: the approver denies it
	}
	if len(cr.Status.Certificate) == 0 {
		return true, nil
	}
	chain, err := protocol.ParseCertificatesPEM(cr.Status.Certificate)
	if err != nil {
		return false, nil
	}
	leaf := chain[0]
	return r.Options.Clock.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)), nil
}

// createRequest creates the CertificateRequest for p, named name and owned
// by p. If a request of that name exists, it returns that one, whoever owns
// it.
func (r *EnrollmentReconciler) createRequest(ctx context.Context, p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, name string) (*cmapi.CertificateRequest, error) {
	ref := dev.Spec.ClaimRef
	duration := r.Options.CertificateDuration
	tenant := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: ref.Tenant}, tenant); err != nil {
		return nil, err
	}
	if c := tenant.Spec.Certificates; c != nil && c.Duration != nil {
		duration = c.Duration.Duration
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: p.Namespace,
			Labels: map[string]string{custodyv1alpha1.LabelTenant: ref.Tenant, contract.LabelDevice: dev.Name,
				custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   []byte(p.Spec.CSR),
			IssuerRef: cmmeta.IssuerReference{Name: TenantIssuerName(ref.Tenant), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
			Duration:  &metav1.Duration{Duration: duration},
			Usages:    slices.Clone(deviceCertificateUsages),
		},
	}
	if err := controllerutil.SetControllerReference(p, cr, r.Client.Scheme()); err != nil {
		return nil, err
	}
	err := r.Client.Create(ctx, cr, client.FieldOwner(FieldOwner))
	if apierrors.IsAlreadyExists(err) {
		// Read past the cache: the request may be minutes old or just made.
		existing := &cmapi.CertificateRequest{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(cr), existing); err != nil {
			return nil, err
		}
		return existing, nil
	}
	if err != nil {
		return nil, err
	}
	return cr, nil
}

// publish records the issued leaf on the Device (so that the gateway accepts
// it) and on the bound Claim (so that the tenant sees it).
func (r *EnrollmentReconciler) publish(ctx context.Context, dev *custodyv1alpha1.Device, leaf *x509.Certificate, chainPEM string) error {
	fp := protocol.CertFingerprint(leaf.Raw)
	ref := *dev.Spec.ClaimRef
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &custodyv1alpha1.Device{}
		if err := r.Client.Get(ctx, client.ObjectKeyFromObject(dev), d); err != nil {
			return err
		}
		if d.Spec.ClaimRef == nil || d.Spec.ClaimRef.UID != ref.UID {
			return nil // unbound meanwhile: the certificate is never accepted
		}
		before := d.DeepCopy()
		d.Status.Certificates = addCertificate(d.Status.Certificates, custodyv1alpha1.DeviceCertificate{
			Fingerprint: fp, SerialNumber: protocol.CertSerial(leaf.SerialNumber), NotAfter: metav1.NewTime(leaf.NotAfter),
			Tenant: ref.Tenant, ClaimUID: ref.UID,
		}, r.Options.Clock.Now())
		if equality.Semantic.DeepEqual(before.Status, d.Status) {
			return nil
		}
		return r.Client.Status().Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
	})
	if err != nil {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		c := &custodyv1alpha1.Claim{}
		if err := r.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, c); err != nil {
			return client.IgnoreNotFound(err)
		}
		if c.UID != ref.UID {
			return nil
		}
		if cur := c.Status.Certificate; cur != nil && !leaf.NotAfter.After(cur.NotAfter.Time) {
			return nil // a newer certificate is already shown
		}
		before := c.DeepCopy()
		c.Status.Certificate = &custodyv1alpha1.ClaimCertificate{Certificate: chainPEM, Fingerprint: fp, NotAfter: metav1.NewTime(leaf.NotAfter)}
		return r.Client.Status().Patch(ctx, c, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
	})
}

// addCertificate adds c to list, dropping expired entries and entries of
// other bindings, and keeps the newest maxDeviceCertificates.
func addCertificate(list []custodyv1alpha1.DeviceCertificate, c custodyv1alpha1.DeviceCertificate, now time.Time) []custodyv1alpha1.DeviceCertificate {
	out := make([]custodyv1alpha1.DeviceCertificate, 0, len(list)+1)
	for _, e := range list {
		if e.Fingerprint == c.Fingerprint {
			return list
		}
		if e.ClaimUID == c.ClaimUID && e.NotAfter.After(now) {
			out = append(out, e)
		}
	}
	out = append(out, c)
	if len(out) > maxDeviceCertificates {
		out = out[len(out)-maxDeviceCertificates:]
	}
	return out
}

// confirmPossession confirms the Claim, among those waiting for this
// device, whose pairing code the device signed. A device never confirms a
// Claim it was not paired with.
func (r *EnrollmentReconciler) confirmPossession(ctx context.Context, p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, now time.Time) error {
	var claims custodyv1alpha1.ClaimList
	if err := r.Client.List(ctx, &claims, client.MatchingFields{indexClaimDevice: dev.Name}); err != nil {
		return err
	}
	if c := pairedClaim(claims.Items, dev.Name, p.Spec.PairingDigest, now); c != nil {
		if c.Status.Pairing.ConfirmedAt == nil {
			before := c.DeepCopy()
			t := metav1.NewTime(now)
			c.Status.Pairing.ConfirmedAt = &t
			if err := r.Client.Status().Patch(ctx, c, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
				return err
			}
			r.Recorder.Eventf(c, p, corev1.EventTypeNormal, "PossessionProven", "Pair", "The device proved possession with this Claim's pairing code.")
		}
		p.Status.Phase, p.Status.Reason, p.Status.Message = custodyv1alpha1.DeviceProofPhaseConfirmed, custodyv1alpha1.DeviceProofReasonConfirmed,
			fmt.Sprintf("Confirmed Claim %s/%s.", c.Namespace, c.Name)
		p.Status.ClaimUID = c.UID
		return nil
	}
	reject(p, custodyv1alpha1.DeviceProofReasonNoMatchingClaim, "No Claim of this device waits for this pairing code.")
	return nil
}

// claimWithToken opens a Claim, in the token's tenant's namespace, for a
// device that proved possession with one of that tenant's pairing tokens.
// The token must be valid for the device (expiry, usage limit, revocation,
// allowed serials) and the device free: a token never takes a device that
// is bound, claimed, disputed, decommissioned or in another's custody. Its
// use is counted, in the manager's claim.TokenStateConfigMap, before the
// Claim is created, once per DeviceProof: a retry after a crash in between
// creates the Claim without counting again. The claim controller binds the
// Claim as it binds any other, under the tenant's claim policy.
func (r *EnrollmentReconciler) claimWithToken(ctx context.Context, p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, now time.Time) error {
	tok := p.Spec.PairingToken
	refuse := func(why string) error {
		reject(p, custodyv1alpha1.DeviceProofReasonTokenRefused, "Pairing token "+tok.TokenID+" of tenant "+tok.Tenant+" refused: "+why+".")
		return nil
	}
	tenant := &custodyv1alpha1.Tenant{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: tok.Tenant}, tenant); err != nil {
		if apierrors.IsNotFound(err) {
			return refuse("no such tenant")
		}
		return err
	}
	if !tenantUsable(tenant) {
		return refuse("the tenant is not ready")
	}
	ns := tenant.TargetNamespace()
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ns, Name: claim.PairingTokenSecretPrefix + tok.TokenID}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return refuse("no such token (deleted tokens are revoked)")
		}
		return err
	}
	// Already done by an earlier reconcile: confirm without counting again.
	existing := &custodyv1alpha1.Claim{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: dev.Name}, existing)
	switch {
	case err == nil && existing.Spec.PairingToken != nil && existing.Spec.PairingToken.SecretName == secret.Name && existing.Annotations[annotationProof] == p.Name:
		confirmToken(p, existing)
		return nil
	case err == nil:
		return refuse("a Claim named " + dev.Name + " already exists in namespace " + ns)
	case !apierrors.IsNotFound(err):
		return err
	}
	// The state (usage count, revocation) is the manager's, in
	// claim.TokenStateConfigMap: what a tenant user writes to the Secret
	// never resets the count or un-revokes the token. The use is checked
	// and counted in one write under optimistic locking, so the count is
	// exact under concurrent devices; it is counted once per DeviceProof, so
	// a retry after a crash before the Claim exists does not count again.
	var verdict claim.TokenVerdict
	st, err := updateTokenState(ctx, r.Client, r.APIReader, ns, tok.TokenID, func(st *claim.TokenState) bool {
		var changed bool
		verdict, changed = claim.UseToken(st, secret, tok.Tenant, dev, p.Spec.PairingDigest, p.Name, now)
		return changed
	})
	if err != nil {
		return err
	}
	switch verdict {
	case claim.TokenAccepted:
	case claim.TokenDeviceNotFree:
		r.Recorder.Eventf(secret, nil, corev1.EventTypeWarning, "PairingTokenRefused", "Claim", "Device %s presented this token but is not free to claim (bound, claimed, disputed, decommissioned or in another's custody); support staff can help.", dev.Name)
		return refuse(string(verdict))
	default:
		r.Recorder.Eventf(secret, nil, corev1.EventTypeWarning, "PairingTokenRefused", "Claim", "Device %s presented this token: %s.", dev.Name, verdict)
		return refuse(string(verdict))
	}
	used := st.Used
	c := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: dev.Name, Namespace: ns,
			Labels:      map[string]string{custodyv1alpha1.LabelManagedBy: custodyv1alpha1.ManagedByValue},
			Annotations: map[string]string{annotationProof: p.Name}},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: dev.Spec.SerialNumber, Model: dev.Spec.Model, Possession: &custodyv1alpha1.PossessionProof{},
			PairingToken: &custodyv1alpha1.PairingTokenProof{SecretName: secret.Name}, ReleasePolicy: custodyv1alpha1.ReleasePolicyRetain},
	}
	if err := r.Client.Create(ctx, c, client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	r.Recorder.Eventf(secret, nil, corev1.EventTypeNormal, "PairingTokenUsed", "Claim", "Device %s claimed itself with this token (use %d of %s); see Claim %s.", dev.Name, used, secret.Data[claim.TokenKeyUsageLimit], c.Name)
	confirmToken(p, c)
	return nil
}

// annotationProof on a pairing-token Claim names the DeviceProof that
// opened it.
const annotationProof = "custody.dev/device-proof"

func confirmToken(p *custodyv1alpha1.DeviceProof, c *custodyv1alpha1.Claim) {
	p.Status.Phase, p.Status.Reason, p.Status.Message = custodyv1alpha1.DeviceProofPhaseConfirmed, custodyv1alpha1.DeviceProofReasonConfirmed,
		fmt.Sprintf("Opened Claim %s/%s with a pairing token.", c.Namespace, c.Name)
	p.Status.ClaimUID = c.UID
}

// indexProofRequest indexes DeviceProofs by the CertificateRequest their
// status names: an adopting proof does not own its request.
const indexProofRequest = "status.certificateRequest.name"

// SetupWithManager registers the controller: DeviceProofs in the operator
// namespace, and the CertificateRequests they own or wait on.
func (r *EnrollmentReconciler) SetupWithManager(mgr manager.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &custodyv1alpha1.DeviceProof{}, indexProofRequest, func(o client.Object) []string {
		if ref := o.(*custodyv1alpha1.DeviceProof).Status.CertificateRequest; ref != nil {
			return []string{ref.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	waiting := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		var proofs custodyv1alpha1.DeviceProofList
		if err := r.Client.List(ctx, &proofs, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexProofRequest: o.GetName()}); err != nil {
			return nil
		}
		out := make([]reconcile.Request, 0, len(proofs.Items))
		for i := range proofs.Items {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&proofs.Items[i])})
		}
		return out
	})
	inOperatorNamespace := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetNamespace() == r.Options.OperatorNamespace })
	return ctrl.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.DeviceProof{}, ctrl.WithPredicates(inOperatorNamespace)).
		Owns(&cmapi.CertificateRequest{}).
		Watches(&cmapi.CertificateRequest{}, waiting, ctrl.WithPredicates(inOperatorNamespace)).
		WithOptions(controllerOptions(r.Options.workers("enrollment"))).
		Named("enrollment").
		Complete(r)
}
