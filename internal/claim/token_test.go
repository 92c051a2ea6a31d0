package claim

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/custody-dev/custody/pkg/protocol"
)

func TestCheckToken(t *testing.T) {
	tok, err := protocol.GeneratePairingToken("acme")
	if err != nil {
		t.Fatal(err)
	}
	secret := func(mutate func(*corev1.Secret)) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PairingTokenSecretPrefix + tok.ID}, Type: PairingTokenSecretType,
			Data: map[string][]byte{TokenKeyID: []byte(tok.ID), TokenKeySecret: []byte(tok.Secret),
				TokenKeyExpiration: []byte(now.Add(time.Hour).Format(time.RFC3339)), TokenKeyUsageLimit: []byte("2")}}
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	digest := protocol.PairingTokenDigest("xr200.sn-1", tok)
	other, _ := protocol.GeneratePairingToken("acme")
	for name, tc := range map[string]struct {
		s      *corev1.Secret
		digest string
		want   TokenVerdict
	}{
		"valid":                 {secret(nil), digest, TokenAccepted},
		"other token's digest":  {secret(nil), protocol.PairingTokenDigest("xr200.sn-1", other), TokenMismatch},
		"other device's digest": {secret(nil), protocol.PairingTokenDigest("xr200.sn-2", tok), TokenMismatch},
		"other tenant's name":   {secret(nil), protocol.PairingTokenDigest("xr200.sn-1", protocol.PairingToken{Tenant: "globex", ID: tok.ID, Secret: tok.Secret}), TokenMismatch},
		"expired": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyExpiration] = []byte(now.Format(time.RFC3339))
		}), digest, TokenExpired},
		"used up": {secret(func(s *corev1.Secret) { s.Annotations = map[string]string{AnnotationUsageCount: "2"} }), digest, TokenUsedUp},
		"revoked": {secret(func(s *corev1.Secret) { s.Data[TokenKeyRevoked] = []byte("true") }), digest, TokenRevoked},
		"serial not allowed": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyAllowedSerials] = []byte("SN-2, SN-3")
		}), digest, TokenSerialRefuse},
		"serial allowed": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyAllowedSerials] = []byte("SN-2\nSN-1")
		}), digest, TokenAccepted},
		"untyped Secret":     {secret(func(s *corev1.Secret) { s.Type = corev1.SecretTypeOpaque }), digest, TokenMalformed},
		"no usage limit":     {secret(func(s *corev1.Secret) { delete(s.Data, TokenKeyUsageLimit) }), digest, TokenMalformed},
		"no expiration":      {secret(func(s *corev1.Secret) { delete(s.Data, TokenKeyExpiration) }), digest, TokenMalformed},
		"renamed Secret":     {secret(func(s *corev1.Secret) { s.Name = "pairing-token-zzzzzz" }), digest, TokenMalformed},
		"short token secret": {secret(func(s *corev1.Secret) { s.Data[TokenKeySecret] = []byte("abc") }), digest, TokenMalformed},
	} {
		if got := CheckToken(tc.s, "acme", "xr200.sn-1", "SN-1", tc.digest, now); got != tc.want {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}
