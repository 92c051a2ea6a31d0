package claim

import (
	"strconv"
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
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PairingTokenSecretPrefix + tok.ID, UID: "uid-1"}, Type: PairingTokenSecretType,
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
		st     *TokenState
		digest string
		want   TokenVerdict
	}{
		"valid":                 {secret(nil), nil, digest, TokenAccepted},
		"other token's digest":  {secret(nil), nil, protocol.PairingTokenDigest("xr200.sn-1", other), TokenMismatch},
		"other device's digest": {secret(nil), nil, protocol.PairingTokenDigest("xr200.sn-2", tok), TokenMismatch},
		"other tenant's name":   {secret(nil), nil, protocol.PairingTokenDigest("xr200.sn-1", protocol.PairingToken{Tenant: "globex", ID: tok.ID, Secret: tok.Secret}), TokenMismatch},
		"expired": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyExpiration] = []byte(now.Format(time.RFC3339))
		}), nil, digest, TokenExpired},
		"used up":                     {secret(nil), &TokenState{UID: "uid-1", Used: 2}, digest, TokenUsedUp},
		"used up, annotation reset":   {secret(func(s *corev1.Secret) { s.Annotations = map[string]string{AnnotationUsageCount: "0"} }), &TokenState{UID: "uid-1", Used: 2}, digest, TokenUsedUp},
		"retry of a counted use":      {secret(nil), &TokenState{UID: "uid-1", Used: 2, Recent: []TokenUse{{Device: "xr200.sn-1", Proof: "proof-1"}}}, digest, TokenAccepted},
		"revoked":                     {secret(func(s *corev1.Secret) { s.Data[TokenKeyRevoked] = []byte("true") }), nil, digest, TokenRevoked},
		"revoked, Secret un-revoked":  {secret(func(s *corev1.Secret) { s.Data[TokenKeyRevoked] = []byte("false") }), &TokenState{UID: "uid-1", RevokedAt: &now, Revoked: RevokedMarked}, digest, TokenRevoked},
		"deleted and created again":   {secret(nil), &TokenState{UID: "uid-0"}, digest, TokenRevoked},
		"first sight, old annotation": {secret(func(s *corev1.Secret) { s.Annotations = map[string]string{AnnotationUsageCount: "2"} }), &TokenState{}, digest, TokenAccepted},
		"serial not allowed": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyAllowedSerials] = []byte("SN-2, SN-3")
		}), nil, digest, TokenSerialRefuse},
		"serial allowed": {secret(func(s *corev1.Secret) {
			s.Data[TokenKeyAllowedSerials] = []byte("SN-2\nSN-1")
		}), nil, digest, TokenAccepted},
		"untyped Secret":     {secret(func(s *corev1.Secret) { s.Type = corev1.SecretTypeOpaque }), nil, digest, TokenMalformed},
		"no usage limit":     {secret(func(s *corev1.Secret) { delete(s.Data, TokenKeyUsageLimit) }), nil, digest, TokenMalformed},
		"no expiration":      {secret(func(s *corev1.Secret) { delete(s.Data, TokenKeyExpiration) }), nil, digest, TokenMalformed},
		"renamed Secret":     {secret(func(s *corev1.Secret) { s.Name = "pairing-token-zzzzzz" }), nil, digest, TokenMalformed},
		"short token secret": {secret(func(s *corev1.Secret) { s.Data[TokenKeySecret] = []byte("abc") }), nil, digest, TokenMalformed},
	} {
		st := tc.st
		if st == nil {
			st = &TokenState{UID: "uid-1"}
		}
		if got := CheckToken(tc.s, st, "acme", "xr200.sn-1", "SN-1", tc.digest, "proof-1", now); got != tc.want {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}

// TestObserveToken: the manager records a token's Secret uid when it first
// sees it, and a revocation (marked, deleted, replaced) for good: nothing a
// tenant user writes to the Secret afterwards un-revokes it.
func TestObserveToken(t *testing.T) {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{UID: "uid-1", Annotations: map[string]string{AnnotationUsageCount: "3"}}, Data: map[string][]byte{}}
	st := &TokenState{}
	if !ObserveToken(st, s, now) || st.UID != "uid-1" || st.Used != 3 || st.RevokedAt != nil {
		t.Fatalf("first sight: %+v", st)
	}
	s.Annotations[AnnotationUsageCount] = "0"
	if ObserveToken(st, s, now) || st.Used != 3 {
		t.Fatalf("a reset annotation changed the state: %+v", st)
	}
	s.Data[TokenKeyRevoked] = []byte("TRUE")
	if !ObserveToken(st, s, now) || st.RevokedAt == nil || st.Revoked != RevokedMarked {
		t.Fatalf("marked revoked: %+v", st)
	}
	s.Data[TokenKeyRevoked] = []byte("false")
	if ObserveToken(st, s, now) || st.RevokedAt == nil {
		t.Fatalf("un-revoked: %+v", st)
	}
	for name, tc := range map[string]struct {
		s    *corev1.Secret
		want string
	}{
		"deleted":       {nil, RevokedDeleted},
		"created again": {&corev1.Secret{ObjectMeta: metav1.ObjectMeta{UID: "uid-2"}}, RevokedRecreated},
	} {
		st := &TokenState{UID: "uid-1", Used: 1}
		if !ObserveToken(st, tc.s, now) || st.Revoked != tc.want || st.Used != 1 {
			t.Errorf("%s: %+v", name, st)
		}
		if ObserveToken(st, s, now) || st.Revoked != tc.want {
			t.Errorf("%s: un-revoked by the original Secret: %+v", name, st)
		}
	}
}

// TestRecordUse: a use is counted once per proof (a retry after a crash
// does not count again), and only the latest uses are kept.
func TestRecordUse(t *testing.T) {
	st := &TokenState{}
	if !RecordUse(st, "d1", "p1", now) || RecordUse(st, "d1", "p1", now) || st.Used != 1 {
		t.Fatalf("retry counted again: %+v", st)
	}
	for i := range 40 {
		RecordUse(st, "d", "p-"+strconv.Itoa(i), now)
	}
	if st.Used != 41 || len(st.Recent) != maxRecentTokenUses || st.Recent[len(st.Recent)-1].Proof != "p-39" {
		t.Fatalf("after 41 uses: used %d, %d recent", st.Used, len(st.Recent))
	}
}
