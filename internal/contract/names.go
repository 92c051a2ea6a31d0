package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// DefaultTrustDomain is the SPIFFE trust domain of device identities unless
// the gateway and the manager are configured with another (the same one).
const DefaultTrustDomain = "custody.dev"

// LabelDevice names the Device a DeviceProof or a device CertificateRequest
// is for.
const LabelDevice = "custody.dev/device"

// Names of the objects of a tenant's CA and trust bundle.
const (
	// TrustBundleName is the ConfigMap in a tenant namespace holding the
	// tenant's CA certificates under TrustBundleKey.
	TrustBundleName = "custody-trust-bundle"
	// TrustBundleKey is the ConfigMap key of the PEM CA certificates.
	TrustBundleKey = "ca.crt"
	// AnnotationRetainedCAs, on the trust bundle, maps the fingerprint of
	// each replaced tenant CA still in the bundle to the time (RFC 3339) it
	// leaves it (JSON).
	AnnotationRetainedCAs = "custody.dev/retained-cas"
	// TenantRootIssuerName is the SelfSigned Issuer in the operator namespace
	// that issues every tenant CA as a root of its own, signed with that
	// tenant's own key: a tenant's bundle holds one self-signed trust anchor
	// that no other tenant's certificates chain to. Only the Custody manager
	// approves requests to it.
	TenantRootIssuerName = "custody-tenant-root-selfsigned"
	// tenantPrefix starts the name of every tenant's Issuer and CA in the
	// operator namespace.
	tenantPrefix = "tenant-"
)

// TenantCAName is the name of the Certificate and Secret of a tenant's root
// CA in the operator namespace.
func TenantCAName(tenant string) string { return tenantPrefix + tenant + "-ca" }

// TenantIssuerName is the name of the tenant's Issuer in the operator
// namespace.
func TenantIssuerName(tenant string) string { return tenantPrefix + tenant }

// IsTenantIssuerName reports whether an Issuer name in the operator
// namespace starts like the names TenantIssuerName and TenantCAName make:
// the approver judges (and denies unless genuine) every request to such an
// issuer, whether or not a tenant of that name exists.
func IsTenantIssuerName(name string) bool { return strings.HasPrefix(name, tenantPrefix) }

// Names of DeviceProofs.
const (
	// proofPrefix starts the name of a proof made with a challenge.
	proofPrefix = "proof-"
	// renewPrefix starts the name of a renewal proof.
	renewPrefix = "renew-"
	// maxTicketLength bounds an enrollment ticket: "proof-" and a nonce.
	maxTicketLength = 80
)

// ProofName is the name of the DeviceProof made with a challenge nonce: the
// API server's name uniqueness makes each challenge single-use across every
// gateway replica.
func ProofName(nonce string) string { return proofPrefix + nonce }

// RenewProofName is the name of the DeviceProof of an EST renewal with
// client certificate leafDER and CSR csrDER: the same request retried finds
// the same proof.
func RenewProofName(leafDER, csrDER []byte) string {
	sum := sha256.Sum256(append(append([]byte{}, leafDER...), csrDER...))
	return renewPrefix + hex.EncodeToString(sum[:16])
}

// ValidTicket reports whether an enrollment ticket can name a proof made
// with a challenge (ProofName); nothing else is looked up.
func ValidTicket(ticket string) bool {
	return strings.HasPrefix(ticket, proofPrefix) && len(ticket) > len(proofPrefix) && len(ticket) <= maxTicketLength
}

// Bounds of a serial number and a model, as the Device and Claim CRDs have
// them.
const (
	SerialNumberMinLength = 3
	SerialNumberMaxLength = 64
	ModelMinLength        = 2
	ModelMaxLength        = 32
)

// ValidSerialNumber reports whether s is a serial number the Device CRD
// accepts: 3 to 64 upper-case letters, digits and inner '-'.
func ValidSerialNumber(s string) bool {
	return validName(s, SerialNumberMinLength, SerialNumberMaxLength)
}

// ValidModel reports whether s is a model the Device CRD accepts: 2 to 32
// upper-case letters, digits and inner '-'.
func ValidModel(s string) bool { return validName(s, ModelMinLength, ModelMaxLength) }

// validName checks ^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$ and the length bounds.
func validName(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for i, c := range s {
		ok := (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c == '-' && i > 0 && i < len(s)-1)
		if !ok {
			return false
		}
	}
	return true
}
