package challenge

import (
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/custody-dev/custody/pkg/protocol"
)

func newIssuer(t *testing.T, clk *clocktesting.FakeClock, keys ...string) *Issuer {
	t.Helper()
	var ks [][]byte
	for _, k := range keys {
		ks = append(ks, []byte(k))
	}
	i, err := NewIssuer(ks, 5*time.Minute, clk)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

const (
	keyA = "0123456789abcdef0123456789abcdef"
	keyB = "fedcba9876543210fedcba9876543210"
)

func TestChallengeChecks(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	iss := newIssuer(t, clk, keyA)
	tok, exp, err := iss.Issue(protocol.PurposeEnroll, "SN-1", "XR200")
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(clk.Now().Add(5 * time.Minute)) {
		t.Fatalf("expiry %v", exp)
	}
	c, err := iss.Check(tok, protocol.PurposeEnroll, "SN-1", "XR200")
	if err != nil || c.SerialNumber != "SN-1" || len(c.Nonce) != 32 {
		t.Fatalf("genuine token refused: %v %+v", err, c)
	}
	other, _, _ := iss.Issue(protocol.PurposeEnroll, "SN-1", "XR200")
	oc, _ := iss.Check(other, protocol.PurposeEnroll, "SN-1", "XR200")
	if oc.Nonce == c.Nonce {
		t.Fatal("two challenges share a nonce")
	}

	payload, sig, _ := strings.Cut(tok, ".")
	forged := b64.EncodeToString([]byte(strings.Replace(string(must(b64.DecodeString(payload))), "SN-1", "SN-2", 1))) + "." + sig
	for name, tc := range map[string]struct {
		token, serial, model string
		purpose              protocol.Purpose
		iss                  *Issuer
	}{
		"other serial":    {tok, "SN-2", "XR200", protocol.PurposeEnroll, iss},
		"other model":     {tok, "SN-1", "XR300", protocol.PurposeEnroll, iss},
		"other purpose":   {tok, "SN-1", "XR200", protocol.PurposePossession, iss},
		"forged payload":  {forged, "SN-2", "XR200", protocol.PurposeEnroll, iss},
		"other key":       {tok, "SN-1", "XR200", protocol.PurposeEnroll, newIssuer(t, clk, keyB)},
		"padded":          {tok + "=", "SN-1", "XR200", protocol.PurposeEnroll, iss},
		"no mac":          {payload, "SN-1", "XR200", protocol.PurposeEnroll, iss},
		"truncated mac":   {tok[:len(tok)-2], "SN-1", "XR200", protocol.PurposeEnroll, iss},
		"empty":           {"", "SN-1", "XR200", protocol.PurposeEnroll, iss},
		"oversized token": {strings.Repeat("A", MaxTokenBytes+1), "SN-1", "XR200", protocol.PurposeEnroll, iss},
	} {
		if _, err := tc.iss.Check(tc.token, tc.purpose, tc.serial, tc.model); err != ErrInvalid {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}

	// Rotation: a verifier that still knows the old key accepts its tokens.
	rotated := newIssuer(t, clk, keyB, keyA)
	if _, err := rotated.Check(tok, protocol.PurposeEnroll, "SN-1", "XR200"); err != nil {
		t.Fatalf("rotated issuer refused a token of its old key: %v", err)
	}

	clk.Step(5*time.Minute - time.Second)
	if _, err := iss.Check(tok, protocol.PurposeEnroll, "SN-1", "XR200"); err != nil {
		t.Fatalf("refused a second before expiry: %v", err)
	}
	clk.Step(time.Second)
	if _, err := iss.Check(tok, protocol.PurposeEnroll, "SN-1", "XR200"); err != ErrInvalid {
		t.Fatalf("accepted an expired token: %v", err)
	}
}

// encoding/base64 skips line breaks: a token spelt with them is refused,
// so that each token has one spelling.
func TestLineBreaksAreRefused(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	iss := newIssuer(t, clk, keyA)
	tok, _, err := iss.Issue(protocol.PurposeEnroll, "SN-1", "XR200")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := Parse(tok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{tok[:4] + "\n" + tok[4:], tok[:4] + "\r" + tok[4:], tok + "\n", tok[:len(tok)-3] + "\r\n" + tok[len(tok)-3:]} {
		if _, _, _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestShortKeysAreRefused(t *testing.T) {
	if _, err := NewIssuer([][]byte{[]byte("short")}, time.Minute, nil); err == nil {
		t.Fatal("accepted a 5-byte key")
	}
	if _, err := NewIssuer(nil, time.Minute, nil); err == nil {
		t.Fatal("accepted no key")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzParse: Parse never panics, and a token it accepts has exactly one
// spelling (re-encoding its parts gives the same string).
func FuzzParse(f *testing.F) {
	clk := clocktesting.NewFakeClock(time.Unix(1_800_000_000, 0))
	iss, _ := NewIssuer([][]byte{[]byte(keyA)}, time.Minute, clk)
	tok, _, _ := iss.Issue(protocol.PurposeEnroll, "SN-1", "XR200")
	f.Add(tok)
	f.Add("")
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, s string) {
		c, payload, sig, err := Parse(s)
		if err != nil {
			return
		}
		if b64.EncodeToString([]byte(payload))+"."+b64.EncodeToString(sig) != s {
			t.Fatalf("token %q has another spelling", s)
		}
		if c.SerialNumber == "" || c.Model == "" || len(c.Nonce) != 32 {
			t.Fatalf("accepted incomplete claims %+v", c)
		}
	})
}
