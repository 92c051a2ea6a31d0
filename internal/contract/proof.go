package contract

import (
	"crypto"
	"crypto/x509"
	"errors"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/pkg/protocol"
)

// The proof checks: the gateway runs them on what a device sends, the
// enrollment controller runs them again on the DeviceProof the gateway
// recorded, and the approver runs CheckDeviceCSR once more on the
// CertificateRequest. Each check exists once, here.

// ErrNotBound: the device is not bound to a tenant, or is decommissioned;
// it has no identity to ask for.
var ErrNotBound = errors.New("the device is not bound to a tenant")

// BoundIdentity is the identity a certificate of dev's current binding
// carries, in trustDomain: the serial number as common name and the SPIFFE
// ID of the device under its binding's tenant. ok is false when dev is not
// bound or is decommissioned.
func BoundIdentity(dev *custodyv1alpha1.Device, trustDomain string) (id protocol.Identity, ok bool) {
	ref := dev.Spec.ClaimRef
	if ref == nil || dev.Spec.Decommissioned {
		return protocol.Identity{}, false
	}
	return protocol.DeriveIdentity(trustDomain, ref.Tenant, dev.Name, dev.Spec.SerialNumber), true
}

// CheckDeviceCSR checks, on the DER of a CSR, that it asks for exactly
// dev's bound identity (BoundIdentity) and nothing else (see
// protocol.CSRIdentity). It returns that identity, to tell the device what
// to ask for, and ErrNotBound when dev has none; any other error says what
// is wrong with the CSR, in words fit for a device's log.
func CheckDeviceCSR(dev *custodyv1alpha1.Device, trustDomain string, csrDER []byte) (protocol.Identity, error) {
	id, ok := BoundIdentity(dev, trustDomain)
	if !ok {
		return id, ErrNotBound
	}
	return id, protocol.CheckCSRIdentity(csrDER, id)
}

// DeviceKey parses the device's factory identity key from its Device.
func DeviceKey(dev *custodyv1alpha1.Device) (crypto.PublicKey, error) {
	return protocol.ParsePublicKeyPEM([]byte(dev.Spec.Identity.PublicKey))
}

// ChallengeVerdict is what CheckChallengeProof decided.
type ChallengeVerdict string

const (
	// ChallengeProven: the device signed payload for this challenge.
	ChallengeProven ChallengeVerdict = "Proven"
	// ChallengeNotForDevice: the challenge was issued for another
	// purpose, serial number or model.
	ChallengeNotForDevice ChallengeVerdict = "NotForDevice"
	// ChallengeBadSignature: the signature does not verify under the
	// device's identity key.
	ChallengeBadSignature ChallengeVerdict = "BadSignature"
)

// CheckChallengeProof checks a proof made with a challenge (claims, read
// from the challenge token) for purpose: the challenge names dev's serial
// number and model and that purpose, and sig is the device's signature,
// under its identity key key (DeviceKey), over payload
// (protocol.EnrollPayload or protocol.PossessionPayload). It does not check
// the challenge's MAC or expiry: the gateway's challenge.Issuer does, and the
// manager, which holds no challenge key, checks the proof's name and
// creation time against the challenge instead.
func CheckChallengeProof(dev *custodyv1alpha1.Device, key crypto.PublicKey, claims challenge.Claims, purpose protocol.Purpose, payload, sig []byte) ChallengeVerdict {
	if claims.Purpose != purpose || claims.SerialNumber != dev.Spec.SerialNumber || claims.Model != dev.Spec.Model {
		return ChallengeNotForDevice
	}
	if len(sig) == 0 || !protocol.Verify(key, payload, sig) {
		return ChallengeBadSignature
	}
	return ChallengeProven
}

// SameRenewalKey reports whether a renewal's CSR keeps the key of the
// certificate it renews: a device changes keys only by enrolling with a
// fresh challenge.
func SameRenewalKey(csr *x509.CertificateRequest, leaf *x509.Certificate) bool {
	return protocol.SameKey(csr.PublicKey, leaf.PublicKey)
}

// CheckTenantCACSR checks the CSR of a tenant CA's CertificateRequest
// (parsed with protocol.ParseCSRPEM, which checks its signature and key
// type): it asks for the CA named commonName and nothing else
// (protocol.CheckCACSR), judged on its DER.
func CheckTenantCACSR(csr *x509.CertificateRequest, commonName string) error {
	return protocol.CheckCACSR(csr.Raw, commonName)
}
