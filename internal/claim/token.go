package claim

import (
	"crypto/subtle"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

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
	// AnnotationUsageCount is where releases before issue 9 counted a
	// token's uses, on the Secret tenant Admins write. It is only read once,
	// when the manager first records the token's state, so that an upgrade
	// does not forget earlier uses; the count lives in TokenStateConfigMap.
	AnnotationUsageCount = "custody.dev/usage-count"
	// TokenStateConfigMap is the ConfigMap, in the tenant's namespace, in
	// which the manager records each pairing token's state (TokenState,
	// as JSON under the token ID). Tenant users may read it, never write it.
	TokenStateConfigMap = "custody-pairing-tokens"
	// maxRecentTokenUses bounds TokenState.Recent.
	maxRecentTokenUses = 16
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
	// TokenDeviceNotFree: the token is valid, but the device is bound,
	// cooling off, disputed, decommissioned or in another tenant's custody
	// (DeviceFree).
	TokenDeviceNotFree TokenVerdict = "the device is not free to claim"
)

// UseToken is the whole decision whether device d, which proved possession
// and signed digest with a pairing token of tenant kept in Secret s, may
// claim itself for that tenant with DeviceProof proof at now. st is the
// manager's record of the token; UseToken updates it as the decision
// requires (what it sees of the Secret, ObserveToken; the use, counted once
// per proof, RecordUse, only when it accepts) and reports whether st
// changed, for the caller to write back under optimistic locking before it
// opens the Claim. The token is judged first (CheckToken); a valid token on
// a device that is not free (DeviceFree) is TokenDeviceNotFree and is not
// counted.
func UseToken(st *TokenState, s *corev1.Secret, tenant string, d *custodyv1alpha1.Device, digest, proof string, now time.Time) (TokenVerdict, bool) {
	changed := ObserveToken(st, s, now)
	verdict := CheckToken(s, st, tenant, d.Name, d.Spec.SerialNumber, digest, proof, now)
	if verdict == TokenAccepted && !DeviceFree(d, tenant) {
		verdict = TokenDeviceNotFree
	}
	if verdict != TokenAccepted {
		return verdict, changed
	}
	return verdict, RecordUse(st, d.Name, proof, now) || changed
}

// CheckToken decides whether the pairing-token Secret s, whose state the
// manager recorded in st, lets the device named deviceName (serial number
// serial), which signed digest, be claimed at now. The usage count and the
// revocation come from st, which only the manager writes; the Secret's
// revoked key revokes too, but clearing it never un-revokes. A use st
// already records for proof is not counted against the limit again (a
// retry after a crash). The comparison of digests is constant-time.
func CheckToken(s *corev1.Secret, st *TokenState, tenant, deviceName, serial, digest, proof string, now time.Time) TokenVerdict {
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
	if st.RevokedAt != nil || (st.UID != "" && st.UID != s.UID) || MarkedRevoked(s) {
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
	used := st.Used
	if st.usedBy(proof) {
		used--
	}
	if used >= limit {
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

// MarkedRevoked reports whether the Secret says the token is revoked.
func MarkedRevoked(s *corev1.Secret) bool {
	return strings.EqualFold(strings.TrimSpace(string(s.Data[TokenKeyRevoked])), "true")
}

// TokenState is the manager's record of one pairing token, kept in
// TokenStateConfigMap where only the manager writes. Tenant Admins and
// Operators write the Secret, so nothing the manager relies on to limit a
// token lives there.
type TokenState struct {
	// UID is the uid of the token's Secret when the manager first saw it.
	// A Secret of the same name with another uid was deleted (revoking the
	// token) and created again: it stays revoked.
	UID types.UID `json:"uid,omitempty"`
	// Used is how many devices the token has claimed.
	Used int `json:"used"`
	// RevokedAt is when the manager saw the token revoked; once set it is
	// never cleared.
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
	// Revoked says how it was revoked.
	Revoked string `json:"revoked,omitempty"`
	// Recent are the latest uses, newest last (at most 16).
	Recent []TokenUse `json:"recent,omitempty"`
}

// TokenUse is one device claimed with a token.
type TokenUse struct {
	Device string    `json:"device"`
	Proof  string    `json:"proof"`
	At     time.Time `json:"at"`
}

// Revocation reasons recorded in TokenState.Revoked.
const (
	RevokedMarked    = "the Secret was marked revoked"
	RevokedDeleted   = "the Secret was deleted"
	RevokedRecreated = "the Secret was deleted and created again"
)

func (st *TokenState) usedBy(proof string) bool {
	for _, u := range st.Recent {
		if proof != "" && u.Proof == proof {
			return true
		}
	}
	return false
}

func (st *TokenState) revoke(why string, now time.Time) bool {
	if st.RevokedAt != nil {
		return false
	}
	t := now.UTC().Truncate(time.Second)
	st.RevokedAt, st.Revoked = &t, why
	return true
}

// ObserveToken updates st from what the manager sees of the token's Secret
// s (nil when it does not exist) at now, and reports whether st changed.
// It records the Secret's uid when it first sees it (with the count an
// earlier release kept on the Secret), and a revocation: the Secret marked
// revoked, deleted, or replaced by another of the same name. It never
// un-revokes.
func ObserveToken(st *TokenState, s *corev1.Secret, now time.Time) bool {
	switch {
	case st.RevokedAt != nil:
		return false
	case s == nil:
		return st.revoke(RevokedDeleted, now)
	case st.UID == "":
		st.UID = s.UID
		if n, err := strconv.Atoi(s.Annotations[AnnotationUsageCount]); err == nil && n > st.Used && n <= MaxTokenUsageLimit {
			st.Used = n
		}
		if MarkedRevoked(s) {
			st.revoke(RevokedMarked, now)
		}
		return true
	case st.UID != s.UID:
		return st.revoke(RevokedRecreated, now)
	case MarkedRevoked(s):
		return st.revoke(RevokedMarked, now)
	}
	return false
}

// RecordUse counts the claim of device by proof at now, unless st already
// counts it (a retry), and reports whether st changed.
func RecordUse(st *TokenState, device, proof string, now time.Time) bool {
	if st.usedBy(proof) {
		return false
	}
	st.Used++
	st.Recent = append(st.Recent, TokenUse{Device: device, Proof: proof, At: now.UTC().Truncate(time.Second)})
	if len(st.Recent) > maxRecentTokenUses {
		st.Recent = st.Recent[len(st.Recent)-maxRecentTokenUses:]
	}
	return true
}

// DeviceFree reports whether a pairing token may claim d for tenant: not
// decommissioned, not bound, not cooling off or disputed, and not in
// another tenant's custody. A token says who set a device up, not who owns
// it: it never competes with an owner.
func DeviceFree(d *custodyv1alpha1.Device, tenant string) bool {
	return !d.Spec.Decommissioned && d.Spec.ClaimRef == nil && d.Spec.PendingClaim == nil && d.Spec.Dispute == nil && !HeldUnderSale(d, tenant)
}
