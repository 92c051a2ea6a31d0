package controllers

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The DataAccess controller's decisions, pure: what the manager holds for a
// DataAccess (its pending key, its CertificateRequests, its credential
// Secret) in, the one next step out. DataAccessReconciler.Reconcile reads
// those objects, takes the step and comes back for the next one, so that a
// kill between any two writes is repaired by the next reconcile:
//
//  1. a new private key is written to the manager's key Secret in the
//     operator namespace (accessKeySecretName) before anything asks for a
//     certificate of it;
//  2. the CertificateRequest for that key is created, under a name derived
//     from the DataAccess's UID and the key (accessRequestName), so that a
//     retry finds it instead of making a second one;
//  3. once the tenant's CA has signed it, the credential Secret is written
//     (certificate, key, trust bundle), then the status names the new
//     certificate (and keeps the one it replaced as previousCertificate);
//  4. the key Secret is deleted, then the request.
//
// A request whose key is not the pending key (a key lost to a crash, a
// request left by step 4) is deleted before anything else happens, and
// redone if still needed.

// accessStep is the next thing the DataAccess controller does.
type accessStep int

const (
	// accessIdle: nothing to do until RequeueAfter (renewal) or a watched
	// change.
	accessIdle accessStep = iota
	// accessWait: waiting for the Tenant or the tenant's CA; the
	// condition says which.
	accessWait
	// accessDeleteRequests: delete the requests named in Delete (and the
	// pending key when DropKey).
	accessDeleteRequests
	// accessNewKey: generate a private key and write the key Secret.
	accessNewKey
	// accessCreateRequest: request a certificate for the pending key.
	accessCreateRequest
	// accessPublish: write the credential Secret with the certificate of
	// Request and the pending key, then record the certificate in status.
	accessPublish
	// accessCleanUp: the certificate of Request is published: delete the
	// key Secret, then Request.
	accessCleanUp
	// accessRefreshBundle: the credential Secret's ca.crt is not the
	// tenant's trust bundle any more: rewrite it.
	accessRefreshBundle
)

// accessFacts is what the DataAccess controller read.
type accessFacts struct {
	// DataAccess is the object reconciled.
	DataAccess *custodyv1alpha1.DataAccess
	// Tenant owns the DataAccess's namespace; nil when no Tenant does.
	Tenant *custodyv1alpha1.Tenant
	// TrustBundle is the tenant's trust bundle (PEM), "" if not published.
	TrustBundle string
	// KeyPEM is the pending private key (PKCS#8 PEM) in the manager's key
	// Secret; nil when there is none.
	KeyPEM []byte
	// Requests are the CertificateRequests labelled with the DataAccess's
	// UID.
	Requests []cmapi.CertificateRequest
	// Output is the credential Secret; nil when it does not exist.
	Output *corev1.Secret
	// Now is the manager's clock.
	Now time.Time
}

// accessDecision is decideAccess's answer.
type accessDecision struct {
	Step accessStep
	// Delete names the requests to delete (accessDeleteRequests).
	Delete []string
	// DropKey deletes the pending key too (a failed request).
	DropKey bool
	// Failed is the request the tenant's CA refused or failed, dropped
	// with its key (accessDeleteRequests).
	Failed *cmapi.CertificateRequest
	// Request is the signed request (accessPublish, accessCleanUp).
	Request *cmapi.CertificateRequest
	// Leaf is Request's certificate (accessPublish).
	Leaf *x509.Certificate
	// Ready is the Ready condition's status, reason and message.
	Ready           metav1.ConditionStatus
	Reason, Message string
	// RequeueAfter brings the DataAccess back (renewal, a retry after a
	// failed request); zero when a watched change will.
	RequeueAfter time.Duration
}

// accessRetryAfter is how long a failed or denied request stays before the
// manager tries again with a fresh key: a CA that keeps refusing is asked
// once a minute, not in a loop.
const accessRetryAfter = time.Minute

// accessTenantRecheck is how often a DataAccess waiting for its Tenant looks
// again, on top of the Tenant watch.
const accessTenantRecheck = 5 * time.Minute

// accessBundleRecheck bounds the time between two looks at a DataAccess
// with a valid certificate, so that a change of the tenant's trust bundle
// reaches ca.crt.
const accessBundleRecheck = time.Hour

// accessRenewAt is when a certificate valid from notBefore to notAfter is
// renewed: two thirds into its lifetime.
func accessRenewAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(notAfter.Sub(notBefore) * 2 / 3)
}

// decideAccess decides the next step for f.DataAccess (not being deleted).
func decideAccess(f accessFacts) accessDecision {
	da := f.DataAccess
	if f.Tenant == nil {
		return accessDecision{Step: accessWait, Ready: metav1.ConditionFalse, Reason: custodyv1alpha1.DataAccessReasonNotATenantNamespace,
			Message: fmt.Sprintf("No Tenant owns namespace %s: create the DataAccess in a tenant namespace.", da.Namespace), RequeueAfter: accessTenantRecheck}
	}
	if !tenantUsable(f.Tenant) || f.TrustBundle == "" {
		return accessDecision{Step: accessWait, Ready: metav1.ConditionFalse, Reason: custodyv1alpha1.DataAccessReasonTenantNotReady,
			Message: fmt.Sprintf("Tenant %s is not Ready (its CA or trust bundle is not issued yet); the credential is issued once it is.", f.Tenant.Name), RequeueAfter: accessTenantRecheck}
	}
	if da.Spec.Selector != nil {
		if _, err := metav1.LabelSelectorAsSelector(da.Spec.Selector); err != nil {
			return accessDecision{Step: accessWait, Ready: metav1.ConditionFalse, Reason: custodyv1alpha1.DataAccessReasonInvalidSelector,
				Message: "spec.selector is invalid: " + err.Error() + "."}
		}
	}
	if f.Output != nil && !metav1.IsControlledBy(f.Output, da) {
		return accessDecision{Step: accessWait, Ready: metav1.ConditionFalse, Reason: custodyv1alpha1.DataAccessReasonSecretConflict,
			Message: fmt.Sprintf("Secret %s exists and does not belong to this DataAccess: delete or rename it.", f.Output.Name)}
	}
	d := accessDecision{}
	current := currentCredential(f)
	if current != nil {
		d.Ready, d.Reason = metav1.ConditionTrue, custodyv1alpha1.DataAccessReasonIssued
		d.Message = fmt.Sprintf("Secret %s holds a certificate valid until %s.", custodyv1alpha1.DataAccessSecretName(da.Name), current.NotAfter.UTC().Format(time.RFC3339))
	}
	notReady := func(reason, msg string) {
		if current == nil {
			d.Ready, d.Reason, d.Message = metav1.ConditionFalse, reason, msg
		}
	}

	// Requests for anything but the pending key go first.
	var keyPub any
	if f.KeyPEM != nil {
		if key, err := parseAccessKey(f.KeyPEM); err == nil {
			keyPub = key.Public()
		}
	}
	var ours *cmapi.CertificateRequest
	for i := range f.Requests {
		cr := &f.Requests[i]
		if keyPub != nil && ours == nil && cr.Name == accessRequestName(da.UID, keyPub) && requestKeyIs(cr, keyPub) {
			ours = cr
			continue
		}
		d.Delete = append(d.Delete, cr.Name)
	}
	if len(d.Delete) > 0 {
		d.Step = accessDeleteRequests
		notReady(custodyv1alpha1.DataAccessReasonIssuing, "Cleaning up an unfinished certificate request; a new one follows.")
		return d
	}

	if ours != nil {
		if requestFailed(ours) {
			notReady(custodyv1alpha1.DataAccessReasonRequestFailed, "The tenant's CA did not issue the certificate; the manager asks again with a fresh key.")
			if left := failedAt(ours).Add(accessRetryAfter).Sub(f.Now); left > 0 {
				d.Step, d.RequeueAfter = accessWait, left
				return d
			}
			d.Step, d.Delete, d.DropKey, d.Failed = accessDeleteRequests, []string{ours.Name}, true, ours
			return d
		}
		if len(ours.Status.Certificate) == 0 {
			d.Step = accessWait
			notReady(custodyv1alpha1.DataAccessReasonIssuing, "The certificate has been requested from the tenant's CA.")
			return d
		}
		chain, err := protocol.ParseCertificatesPEM(ours.Status.Certificate)
		if err != nil || !protocol.SameKey(chain[0].PublicKey, keyPub) {
			// Not what was asked for: start over.
			d.Step, d.Delete, d.DropKey = accessDeleteRequests, []string{ours.Name}, true
			notReady(custodyv1alpha1.DataAccessReasonRequestFailed, "The tenant's CA returned an unusable certificate; the manager asks again with a fresh key.")
			return d
		}
		d.Request, d.Leaf = ours, chain[0]
		fp := protocol.CertFingerprint(chain[0].Raw)
		if c := da.Status.Certificate; c != nil && c.Fingerprint == fp && outputHolds(f.Output, fp) {
			d.Step = accessCleanUp
			return d
		}
		d.Step = accessPublish
		return d
	}
	if f.KeyPEM != nil {
		if keyPub == nil {
			// An unreadable key is dropped and made anew.
			d.Step, d.DropKey = accessDeleteRequests, true
			notReady(custodyv1alpha1.DataAccessReasonIssuing, "Making a new private key.")
			return d
		}
		d.Step = accessCreateRequest
		notReady(custodyv1alpha1.DataAccessReasonIssuing, "Requesting a certificate from the tenant's CA.")
		return d
	}
	if current == nil || !f.Now.Before(accessRenewAt(current.NotBefore, current.NotAfter)) {
		d.Step = accessNewKey
		if c := da.Status.Certificate; current == nil && c != nil && !f.Now.Before(c.NotAfter.Time) {
			notReady(custodyv1alpha1.DataAccessReasonExpired, "The certificate has expired; a new one is being requested.")
		} else {
			notReady(custodyv1alpha1.DataAccessReasonIssuing, "Making a private key for a new certificate.")
		}
		return d
	}
	if string(f.Output.Data[accessCAKey]) != f.TrustBundle {
		d.Step = accessRefreshBundle
		return d
	}
	d.Step = accessIdle
	d.RequeueAfter = min(accessRenewAt(current.NotBefore, current.NotAfter).Sub(f.Now), accessBundleRecheck)
	return d
}

// currentCredential is the certificate the credential Secret holds when it
// is status.certificate and valid at f.Now; nil otherwise.
func currentCredential(f accessFacts) *x509.Certificate {
	c := f.DataAccess.Status.Certificate
	if c == nil || !outputHolds(f.Output, c.Fingerprint) {
		return nil
	}
	chain, err := protocol.ParseCertificatesPEM(f.Output.Data[corev1.TLSCertKey])
	if err != nil || !f.Now.Before(chain[0].NotAfter) {
		return nil
	}
	return chain[0]
}

// outputHolds reports whether the credential Secret's tls.crt starts with
// the certificate of fingerprint fp.
func outputHolds(s *corev1.Secret, fp string) bool {
	if s == nil {
		return false
	}
	chain, err := protocol.ParseCertificatesPEM(s.Data[corev1.TLSCertKey])
	return err == nil && protocol.CertFingerprint(chain[0].Raw) == fp
}

// requestKeyIs reports whether cr's CSR is for public key pub.
func requestKeyIs(cr *cmapi.CertificateRequest, pub any) bool {
	csr, err := protocol.ParseCSRPEM(cr.Spec.Request)
	return err == nil && protocol.SameKey(csr.PublicKey, pub)
}

// failedAt is when a failed request failed: the time of its Denied,
// InvalidRequest or failed Ready condition.
func failedAt(cr *cmapi.CertificateRequest) time.Time {
	var at time.Time
	for _, c := range cr.Status.Conditions {
		if c.Status != cmmeta.ConditionTrue && c.Type != cmapi.CertificateRequestConditionReady || c.LastTransitionTime == nil {
			continue
		}
		if t := c.LastTransitionTime.Time; t.After(at) {
			at = t
		}
	}
	if at.IsZero() {
		at = cr.CreationTimestamp.Time
	}
	return at
}

// accessCAKey is the credential Secret's key of the tenant's trust bundle.
const accessCAKey = "ca.crt"

// accessSecretData is the credential Secret's data: the certificate chain,
// its private key and the tenant's trust bundle.
func accessSecretData(chainPEM, keyPEM []byte, bundle string) map[string][]byte {
	return map[string][]byte{corev1.TLSCertKey: bytes.Clone(chainPEM), corev1.TLSPrivateKeyKey: bytes.Clone(keyPEM), accessCAKey: []byte(bundle)}
}
