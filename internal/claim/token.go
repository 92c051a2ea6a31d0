package claim

import (
	"crypto/subtle"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Pairing-token Secrets: typed Secrets in a tenant's namespace, named
// pairing-token-<id>, as Kubernetes bootstrap tokens are.
const (
	// PairingTokenSecretType is the type of a pairing-token Secret.
	PairingTokenSecretType corev1.SecretType = "custody.dev/pairing-token" //nolint:gosec // a Secret type, not a credential
	// PairingTokenSecretPrefix starts the Secret's name; the token ID ends it.
	PairingTokenSecretPrefix = "pairing-token-"
	// Data keys.
	TokenKeyID             = "token-id"
	TokenKeySecret         = "token-secret"
	TokenKeyExpiration     = "expiration"      // RFC 3339
	TokenKeyUsageLimit     = "usage-limit"     // devices it may claim
	TokenKeyAllowedSerials = "allowed-serials" // optional, comma- or space-separated
	TokenKeyRevoked        = "revoked"         // "true" revokes the token
	// AnnotationUsageCount is written by the manager: devices claimed.
	AnnotationUsageCount = "custody.dev/usage-count"
	// MaxTokenUsageLimit bounds usage-limit.
	MaxTokenUsageLimit = 100000
)

// TokenVerdict is why a pairing token was refused ("" when it was accepted).
type TokenVerdict string

// Verdicts, recorded on the DeviceProof and in an Event on the Secret.
const (
	TokenAccepted     TokenVerdict = ""
	TokenMalformed    TokenVerdict = "the Secret is not a well-formed pairing token"
	TokenMismatch     TokenVerdict = "the device presented another token"
	TokenExpired      TokenVerdict = "the token has expired"
	TokenUsedUp       TokenVerdict = "the token has claimed as many devices as its usage-limit allows"
	TokenRevoked      TokenVerdict = "the token is revoked"
	TokenSerialRefuse TokenVerdict = "the device's serial number is not in the token's allowed-serials" //nolint:gosec // a message, not a credential
)

// CheckToken decides whether the pairing-token Secret s lets the device
// named deviceName (serial number serial), which signed digest, be claimed
// at now. The comparison of digests is constant-time.
func CheckToken(s *corev1.Secret, tenant, deviceName, serial, digest string, now time.Time) TokenVerdict {
	if s.Type != PairingTokenSecretType {
		return TokenMalformed
	}
	tok := protocol.PairingToken{Tenant: tenant, ID: string(s.Data[TokenKeyID]), Secret: string(s.Data[TokenKeySecret])}
	if _, err := protocol.ParsePairingToken(tok.String()); err != nil || s.Name != PairingTokenSecretPrefix+tok.ID {
		return TokenMalformed
	}
	want := protocol.PairingTokenDigest(deviceName, tok)
	if subtle.ConstantTimeCompare([]byte(want), []byte(digest)) != 1 {
		return TokenMismatch
	}
	if strings.EqualFold(strings.TrimSpace(string(s.Data[TokenKeyRevoked])), "true") {
		return TokenRevoked
	}
	exp, err := time.Parse(time.RFC3339, strings.TrimSpace(string(s.Data[TokenKeyExpiration])))
	if err != nil {
		return TokenMalformed
	}
	if !now.Before(exp) {
		return TokenExpired
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(s.Data[TokenKeyUsageLimit])))
	if err != nil || limit < 1 || limit > MaxTokenUsageLimit {
		return TokenMalformed
	}
	if TokenUsage(s) >= limit {
		return TokenUsedUp
	}
	if allowed := strings.TrimSpace(string(s.Data[TokenKeyAllowedSerials])); allowed != "" {
		found := false
		for _, a := range strings.FieldsFunc(allowed, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
			if a == serial {
				found = true
				break
			}
		}
		if !found {
			return TokenSerialRefuse
		}
	}
	return TokenAccepted
}

// TokenUsage is how many devices the token has claimed.
func TokenUsage(s *corev1.Secret) int {
	n, err := strconv.Atoi(s.Annotations[AnnotationUsageCount])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// DeviceFree reports whether a pairing token may claim d for tenant: not
// decommissioned, not bound, not cooling off or disputed, and not in
// another tenant's custody. A token says who set a device up, not who owns
// it: it never competes with an owner.
func DeviceFree(d *custodyv1alpha1.Device, tenant string) bool {
	return !d.Spec.Decommissioned && d.Spec.ClaimRef == nil && d.Spec.PendingClaim == nil && d.Spec.Dispute == nil && !HeldUnderSale(d, tenant)
}
