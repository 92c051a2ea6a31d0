package controllers

import (
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The enrollment controller's decisions, pure: what was observed (the
// DeviceProof, its Device, the tenant's trust anchors, the
// CertificateRequest) in, what to do out. The reconciler reads and writes;
// these functions decide, and are table-tested on their own.

// proofRejection says why a proof is rejected: the proof's status reason
// and message. The zero value: the proof holds.
type proofRejection struct {
	Reason  string
	Message string
}

// rejected reports whether the proof was rejected.
func (v proofRejection) rejected() bool { return v.Reason != "" }

// verifyProof checks proof p against its Device dev (nil: there is no
// such device), the device contract's checks again, trusting nothing the
// gateway checked. anchors are the trust anchors of the tenant dev is bound
// to (nil when it is not bound or the tenant publishes none), read for a
// Renew proof only. It returns the CSR of an Enroll or Renew proof when the
// proof holds.
func verifyProof(p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, anchors []*x509.Certificate, trustDomain string, now time.Time) (*x509.CertificateRequest, proofRejection) {
	invalid := func(msg string) (*x509.CertificateRequest, proofRejection) {
		return nil, proofRejection{custodyv1alpha1.DeviceProofReasonInvalid, msg}
	}
	if dev == nil {
		return invalid("No such device.")
	}
	identityKey, err := contract.DeviceKey(dev)
	if err != nil {
		return invalid("The device's identity key cannot be parsed.")
	}
	var csr *x509.CertificateRequest
	if p.Spec.Purpose != custodyv1alpha1.DeviceProofPossession {
		if csr, err = protocol.ParseCSRPEM([]byte(p.Spec.CSR)); err != nil {
			return invalid("The CSR is not valid.")
		}
	}
	switch p.Spec.Purpose {
	case custodyv1alpha1.DeviceProofEnroll, custodyv1alpha1.DeviceProofPossession:
		claims, _, _, err := challenge.Parse(p.Spec.Challenge)
		purpose, payload := protocol.PurposeEnroll, []byte(nil)
		if p.Spec.Purpose == custodyv1alpha1.DeviceProofPossession {
			purpose, payload = protocol.PurposePossession, protocol.PossessionPayload(p.Spec.Challenge, p.Spec.PairingDigest)
		} else {
			payload = protocol.EnrollPayload(p.Spec.Challenge, csr.Raw)
		}
		sig, sigErr := base64.StdEncoding.DecodeString(p.Spec.Signature)
		verdict := contract.CheckChallengeProof(dev, identityKey, claims, purpose, payload, sig)
		// The manager holds no challenge key: the proof's name (the
		// challenge's nonce) and its creation time stand in for the MAC
		// and the expiry the gateway checked.
		if err != nil || verdict == contract.ChallengeNotForDevice ||
			p.Name != contract.ProofName(claims.Nonce) || !p.CreationTimestamp.Time.Before(claims.ExpiresAt.Add(time.Second)) {
			return invalid("The challenge was not issued for this device and purpose, or had expired.")
		}
		if sigErr != nil || verdict != contract.ChallengeProven {
			return invalid("The signature does not verify under the device's identity key.")
		}
	case custodyv1alpha1.DeviceProofRenew:
		notCurrent := "The certificate presented is not a current certificate of the device's binding."
		certs, err := protocol.ParseCertificatesPEM([]byte(p.Spec.ClientCertificate))
		if err != nil {
			return nil, proofRejection{custodyv1alpha1.DeviceProofReasonCertificateNotCurrent, notCurrent}
		}
		if v := contract.AcceptCertificate(dev, trustDomain, certs[0], anchors, now); v != contract.CertificateAccepted {
			return nil, proofRejection{custodyv1alpha1.DeviceProofReasonCertificateNotCurrent,
				"The certificate presented is not a current certificate of the device's binding (" + string(v) + ")."}
		}
		if !contract.SameRenewalKey(csr, certs[0]) {
			return invalid("A renewal must keep the certificate's key; enroll with a fresh challenge to change keys.")
		}
	default:
		return invalid("Unknown purpose.")
	}
	return csr, proofRejection{}
}

// issueStep is what the enrollment controller does next for a verified
// Enroll or Renew proof.
type issueStep int

const (
	// issueReject: reject the proof (issueDecision.Rejection).
	issueReject issueStep = iota
	// issueRequest: find or create the proof's CertificateRequest and
	// record it on the proof.
	issueRequest
	// issueWait: cert-manager has not signed the request yet.
	issueWait
	// issuePublish: publish issueDecision.Chain to the Device and the
	// Claim, then mark the proof Issued with issueDecision.Message.
	issuePublish
)

// issueDecision is decideIssue's answer.
type issueDecision struct {
	Step issueStep
	// Rejection is set with issueReject.
	Rejection proofRejection
	// Withheld is set when the tenant CA issued a certificate that carries
	// more than the device's identity: it is never published, and the
	// Device gets a CertificateWithheld event saying why.
	Withheld error
	// Chain is the issued chain, leaf first (issuePublish, and with
	// Withheld).
	Chain []*x509.Certificate
	// Message is the Issued message (issuePublish).
	Message string
}

// decideIssue decides the next step for verified proof p (CSR csr) of
// Device dev. cr is the CertificateRequest p's status records, read from
// the API server (nil when p records none, or when it is gone).
func decideIssue(p *custodyv1alpha1.DeviceProof, dev *custodyv1alpha1.Device, csr *x509.CertificateRequest, cr *cmapi.CertificateRequest, trustDomain string) issueDecision {
	reject := func(reason, msg string) issueDecision {
		return issueDecision{Step: issueReject, Rejection: proofRejection{reason, msg}}
	}
	id, err := contract.CheckDeviceCSR(dev, trustDomain, csr.Raw)
	switch {
	case errors.Is(err, contract.ErrNotBound):
		return reject(custodyv1alpha1.DeviceProofReasonNotBound, "The device is not bound to a tenant.")
	case p.Status.ClaimUID != "" && p.Status.ClaimUID != dev.Spec.ClaimRef.UID:
		return reject(custodyv1alpha1.DeviceProofReasonNotBound, "The device's binding changed while its certificate was being issued.")
	case err != nil:
		return reject(custodyv1alpha1.DeviceProofReasonIdentityMismatch, "The CSR must ask for exactly the identity derived from the Device and nothing else: "+err.Error()+".")
	case p.Status.CertificateRequest == nil:
		return issueDecision{Step: issueRequest}
	case cr == nil:
		return reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "The CertificateRequest disappeared.")
	case cr.UID != p.Status.CertificateRequest.UID || (requestFailed(cr) && len(cr.Status.Certificate) == 0):
		return reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "The CertificateRequest was denied or failed.")
	case len(cr.Status.Certificate) == 0:
		return issueDecision{Step: issueWait}
	}
	// A request that was denied or failed yet carries a certificate is
	// checked like any other first, so that a certificate with content the
	// device did not ask for is reported (and withheld) as such; it is
	// never published either way.
	chain, err := protocol.ParseCertificatesPEM(cr.Status.Certificate)
	if err != nil {
		return reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "cert-manager returned an unparsable certificate.")
	}
	// Whoever's request this is (an adopted one, see requestFor), the
	// device receives only a certificate for the key it proved.
	if !protocol.SameKey(chain[0].PublicKey, csr.PublicKey) {
		return reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "The certificate is not for the key this proof's CSR holds; it was not published to the device.")
	}
	// Defence in depth: whatever the CA made of the CSR, a certificate that
	// carries more than the device's identity is never published, so the
	// gateway never accepts it.
	if err := protocol.CheckCertificateIdentity(chain[0].Raw, id); err != nil {
		d := reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "The tenant CA issued a certificate that does not carry exactly the device's identity; it was not published to the device: "+err.Error()+".")
		d.Withheld, d.Chain = err, chain
		return d
	}
	if requestFailed(cr) {
		return reject(custodyv1alpha1.DeviceProofReasonIssuanceFailed, "The CertificateRequest was denied or failed.")
	}
	return issueDecision{Step: issuePublish, Chain: chain,
		Message: fmt.Sprintf("Certificate %x issued, valid until %s.", chain[0].SerialNumber, chain[0].NotAfter.UTC().Format(time.RFC3339))}
}

// pairedClaim is the Claim, among claims (those waiting for device
// deviceName), whose pairing code the device signed (digest): its pairing
// is unexpired at now and the Claim is not being deleted. nil when there is
// none: a device never confirms a Claim it was not paired with. The digests
// are compared in constant time.
func pairedClaim(claims []custodyv1alpha1.Claim, deviceName, digest string, now time.Time) *custodyv1alpha1.Claim {
	for i := range claims {
		c := &claims[i]
		pr := c.Status.Pairing
		if pr == nil || !c.DeletionTimestamp.IsZero() || !now.Before(pr.ExpiresAt.Time) {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(protocol.PairingDigest(deviceName, pr.Code)), []byte(digest)) == 1 {
			return c
		}
	}
	return nil
}
