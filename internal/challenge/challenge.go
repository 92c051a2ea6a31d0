// Package challenge issues and checks the gateway's challenges: short-lived
// tokens bound to a serial number, a model and a purpose, authenticated with
// HMAC-SHA256 under a key every gateway replica shares. The gateway keeps no
// state: any replica checks any token, and single use is enforced by the API
// server (the proof made with a token is named after its nonce).
//
// A token is "<payload>.<mac>", both unpadded base64url; the payload is
// "v1|<purpose>|<serial>|<model>|<nonce hex>|<unix expiry>". Tokens are
// parsed strictly, so that one token has exactly one spelling.
package challenge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"k8s.io/utils/clock"

	"github.com/custody-dev/custody/pkg/protocol"
)

// MinKeyBytes is the shortest HMAC key accepted.
const MinKeyBytes = 32

// MaxTokenBytes bounds what Parse looks at.
const MaxTokenBytes = 400

// ErrInvalid is the one error for every token that does not check out.
var ErrInvalid = errors.New("invalid challenge")

var b64 = base64.RawURLEncoding.Strict()

// Claims are what a token asserts.
type Claims struct {
	Purpose      protocol.Purpose
	SerialNumber string
	Model        string
	// Nonce is 16 random bytes in hex: it names the proof made with it.
	Nonce     string
	ExpiresAt time.Time
}

// Issuer issues and checks tokens.
type Issuer struct {
	// Keys: the first signs; any verifies (rotation).
	keys  [][]byte
	ttl   time.Duration
	clock clock.PassiveClock
}

// NewIssuer returns an Issuer. keys must hold at least one key of
// MinKeyBytes or more; the first signs new tokens.
func NewIssuer(keys [][]byte, ttl time.Duration, clk clock.PassiveClock) (*Issuer, error) {
	if len(keys) == 0 {
		return nil, errors.New("no challenge key")
	}
	for _, k := range keys {
		if len(k) < MinKeyBytes {
			return nil, errors.New("challenge keys must be at least 32 bytes")
		}
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Issuer{keys: keys, ttl: ttl, clock: clk}, nil
}

// Issue returns a token for serial/model/purpose and its expiry.
func (i *Issuer) Issue(purpose protocol.Purpose, serial, model string) (string, time.Time, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", time.Time{}, err
	}
	exp := i.clock.Now().Add(i.ttl).Truncate(time.Second)
	payload := strings.Join([]string{"v1", string(purpose), serial, model, hex.EncodeToString(nonce), strconv.FormatInt(exp.Unix(), 10)}, "|")
	return b64.EncodeToString([]byte(payload)) + "." + b64.EncodeToString(mac(i.keys[0], payload)), exp, nil
}

// Check verifies a token's MAC and expiry and that it was issued for
// purpose, serial and model.
func (i *Issuer) Check(token string, purpose protocol.Purpose, serial, model string) (Claims, error) {
	c, payload, sig, err := Parse(token)
	if err != nil {
		return Claims{}, err
	}
	ok := false
	for _, k := range i.keys {
		if hmac.Equal(sig, mac(k, payload)) {
			ok = true
		}
	}
	if !ok || c.Purpose != purpose || c.SerialNumber != serial || c.Model != model || !i.clock.Now().Before(c.ExpiresAt) {
		return Claims{}, ErrInvalid
	}
	return c, nil
}

// Parse splits a token into its claims, signed payload and MAC without
// checking the MAC. The manager uses it to read what the gateway checked.
func Parse(token string) (Claims, string, []byte, error) {
	if len(token) > MaxTokenBytes {
		return Claims{}, "", nil, ErrInvalid
	}
	p, s, ok := strings.Cut(token, ".")
	if !ok {
		return Claims{}, "", nil, ErrInvalid
	}
	raw, err := decodeExact(p)
	if err != nil {
		return Claims{}, "", nil, ErrInvalid
	}
	sig, err := decodeExact(s)
	if err != nil || len(sig) != sha256.Size {
		return Claims{}, "", nil, ErrInvalid
	}
	f := strings.Split(string(raw), "|")
	if len(f) != 6 || f[0] != "v1" || f[2] == "" || f[3] == "" || len(f[4]) != 32 {
		return Claims{}, "", nil, ErrInvalid
	}
	if _, err := hex.DecodeString(f[4]); err != nil || strings.ToLower(f[4]) != f[4] {
		return Claims{}, "", nil, ErrInvalid
	}
	exp, err := strconv.ParseInt(f[5], 10, 64)
	if err != nil || strconv.FormatInt(exp, 10) != f[5] {
		return Claims{}, "", nil, ErrInvalid
	}
	purpose := protocol.Purpose(f[1])
	if purpose != protocol.PurposeEnroll && purpose != protocol.PurposePossession {
		return Claims{}, "", nil, ErrInvalid
	}
	return Claims{Purpose: purpose, SerialNumber: f[2], Model: f[3], Nonce: f[4], ExpiresAt: time.Unix(exp, 0)}, string(raw), sig, nil
}

// decodeExact decodes s, refusing the line breaks encoding/base64 skips,
// so that a token has one spelling only.
func decodeExact(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, ErrInvalid
	}
	return b64.DecodeString(s)
}

func mac(key []byte, payload string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(payload))
	return h.Sum(nil)
}
