package claim

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/custody-dev/custody/pkg/protocol"
)

// PairingTokenRequest is what a tenant asks of a new pairing token.
type PairingTokenRequest struct {
	// Tenant whose devices the token claims.
	Tenant string
	// Namespace of the tenant (default: the tenant's name).
	Namespace string
	// ExpiresIn is how long the token is valid.
	ExpiresIn time.Duration
	// UsageLimit is how many devices the token may claim.
	UsageLimit int
	// Serials limits the token to these serial numbers (comma-separated;
	// empty: any).
	Serials string
}

// NewPairingTokenSecret generates a pairing token and the typed Secret that
// makes it valid once applied in the tenant's namespace. The token (with
// its secret) is for field staff; the Secret is for the cluster.
func NewPairingTokenSecret(req PairingTokenRequest, now time.Time) (*corev1.Secret, protocol.PairingToken, error) {
	switch {
	case !protocol.ValidPairingTokenTenant(req.Tenant):
		return nil, protocol.PairingToken{}, fmt.Errorf("tenant %q is not a valid tenant name for a pairing token", req.Tenant)
	case req.ExpiresIn <= 0:
		return nil, protocol.PairingToken{}, errors.New("the token's lifetime must be positive")
	case req.UsageLimit < 1 || req.UsageLimit > MaxTokenUsageLimit:
		return nil, protocol.PairingToken{}, fmt.Errorf("the usage limit must be between 1 and %d", MaxTokenUsageLimit)
	}
	ns := req.Namespace
	if ns == "" {
		ns = req.Tenant
	}
	tok, err := protocol.GeneratePairingToken(req.Tenant)
	if err != nil {
		return nil, protocol.PairingToken{}, err
	}
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: PairingTokenSecretPrefix + tok.ID, Namespace: ns},
		Type:       PairingTokenSecretType,
		StringData: map[string]string{
			TokenKeyID: tok.ID, TokenKeySecret: tok.Secret,
			TokenKeyExpiration: now.Add(req.ExpiresIn).UTC().Format(time.RFC3339), TokenKeyUsageLimit: strconv.Itoa(req.UsageLimit),
		},
	}
	if req.Serials != "" {
		s.StringData[TokenKeyAllowedSerials] = req.Serials
	}
	return s, tok, nil
}
