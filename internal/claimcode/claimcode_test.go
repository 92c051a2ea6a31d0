package claimcode

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	seen := map[Code]bool{}
	for range 200 {
		c, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(c) != Symbols {
			t.Fatalf("code %d symbols long, want %d", len(c), Symbols)
		}
		if seen[c] {
			t.Fatal("Generate repeated a code")
		}
		seen[c] = true
		for _, typed := range []string{c.String(), string(c), strings.ToLower(c.String()), strings.ReplaceAll(c.String(), "-", " ")} {
			got, err := Parse(typed)
			if err != nil || got != c {
				t.Fatalf("Parse(%q) = %q, %v; want %q", typed, got, err, c)
			}
		}
		if !Contains("the code is " + c.String() + ".") {
			t.Fatalf("Contains missed a grouped code")
		}
	}
}

func TestEntropyIsAtLeast80Bits(t *testing.T) {
	if EntropyBits < 80 {
		t.Fatalf("claim codes carry %d bits, the design requires at least 80", EntropyBits)
	}
}

// TestCheckSymbolCatchesEverySingleTypo substitutes every symbol of a code
// with every other symbol of the alphabet: each must fail to parse.
func TestCheckSymbolCatchesEverySingleTypo(t *testing.T) {
	c, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(c); i++ {
		for j := 0; j < len(alphabet); j++ {
			if alphabet[j] == c[i] {
				continue
			}
			typo := string(c[:i]) + string(alphabet[j]) + string(c[i+1:])
			if _, err := Parse(typo); err != ErrCheckSymbol {
				t.Fatalf("substituting position %d: Parse error = %v, want ErrCheckSymbol", i, err)
			}
		}
	}
}

func TestParseRejects(t *testing.T) {
	c, _ := Generate()
	for name, in := range map[string]string{
		"empty":     "",
		"too short": string(c[:Symbols-1]),
		"too long":  string(c) + "0",
		"bad rune":  string(c[:5]) + "U" + string(c[6:]),
		"unicode":   string(c[:5]) + "é" + string(c[6:]),
	} {
		if _, err := Parse(in); err != ErrShape || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse error = %v, want ErrShape (an ErrMalformed)", name, err)
		}
	}
	// Look-alikes read as digits.
	alike := strings.NewReplacer("1", "l", "0", "o").Replace(string(c))
	if got, err := Parse(alike); err != nil || got != c {
		t.Errorf("look-alike letters not normalised: %v", err)
	}
}

func TestVerifier(t *testing.T) {
	c, _ := Generate()
	other, _ := Generate()
	v, err := NewVerifier(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v, string(c)) {
		t.Fatal("verifier contains the code")
	}
	if !strings.HasPrefix(v, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("unexpected verifier format %q", v)
	}
	if ok, err := Verify(c, v); err != nil || !ok {
		t.Fatalf("Verify(right code) = %v, %v", ok, err)
	}
	if ok, err := Verify(other, v); err != nil || ok {
		t.Fatalf("Verify(wrong code) = %v, %v", ok, err)
	}
	v2, _ := NewVerifier(c)
	if v2 == v {
		t.Fatal("two verifiers of one code are equal: salt missing")
	}
	if Digest(v) == Digest(v2) || !strings.HasPrefix(Digest(v), "sha256:") || len(Digest(v)) != 71 {
		t.Fatalf("bad digest %q", Digest(v))
	}
}

func TestVerifierBounds(t *testing.T) {
	salt := make([]byte, saltBytes)
	hash := make([]byte, hashBytes)
	for name, p := range map[string]Params{
		"memory too low":     {MemoryKiB: 1024, Iterations: 2, Threads: 1},
		"memory too high":    {MemoryKiB: 1 << 20, Iterations: 2, Threads: 1},
		"iterations too low": {MemoryKiB: DefaultMemoryKiB, Iterations: 1, Threads: 1},
		"too many threads":   {MemoryKiB: DefaultMemoryKiB, Iterations: 2, Threads: 16},
	} {
		if err := ValidateVerifier(encode(p, salt, hash)); err != ErrInvalidVerifier {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, v := range map[string]string{
		"plain code":  "9G01-8BC1-MY21-P614-FY40",
		"argon2i":     strings.Replace(encode(DefaultParams, salt, hash), "argon2id", "argon2i", 1),
		"short salt":  encode(DefaultParams, salt[:8], hash),
		"short hash":  encode(DefaultParams, salt, hash[:16]),
		"extra param": strings.Replace(encode(DefaultParams, salt, hash), "p=1", "p=1,x=2", 1),
		// encoding/base64 skips line breaks; a second spelling is refused.
		"line break in salt": strings.Replace(encode(DefaultParams, salt, hash), "$AAAA", "$AA\nAA", 1),
		"CR in hash":         encode(DefaultParams, salt, hash) + "\r",
	} {
		if err := ValidateVerifier(v); err != ErrInvalidVerifier {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestContains(t *testing.T) {
	c, _ := Generate()
	for _, s := range []string{string(c), c.String(), "code=" + strings.ToLower(c.String()), "x " + strings.ReplaceAll(c.String(), "-", " ") + " y"} {
		if !Contains(s) {
			t.Errorf("Contains missed the code in a %d-byte string", len(s))
		}
	}
	for _, s := range []string{
		"", "please claim this device for the north site warehouse",
		"this will help when that said read more here then done okay",
		"8c3b5a0e-1f2d-4e6a-9b7c-0d1e2f3a4b5c", // a UID
		string(c[:Symbols-1]),
	} {
		if Contains(s) {
			t.Errorf("Contains reported a code in %q", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("9G01-8BC1-MY21-P614-FY40")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(c.String())
		if err != nil || again != c {
			t.Fatalf("parsed code does not round-trip")
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	c, _ := Generate()
	v, _ := NewVerifier(c)
	for b.Loop() {
		_, _ = Verify(c, v)
	}
}

// BenchmarkVerifyParallel is what the machine's cores can verify together
// (-cpu sets how many): the ceiling of claims by code.
func BenchmarkVerifyParallel(b *testing.B) {
	c, _ := Generate()
	v, _ := NewVerifier(c)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = Verify(c, v)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

// TestContainsIgnoresUIDs: UIDs are hex in 8-4-4-4-12 groups, which are all
// alphabet symbols; none may be taken for a code.
func TestContainsIgnoresUIDs(t *testing.T) {
	for i := range 5000 {
		b := make([]byte, 16)
		for j := range b {
			b[j] = byte(i*31 + j*17 + i*j)
		}
		uid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
		if Contains(uid) {
			t.Fatalf("UID %s taken for a claim code", uid)
		}
	}
}

// The two kinds of malformed code say what is wrong and never hold the
// input.
func TestMalformedMessagesAreTrueAndEchoNothing(t *testing.T) {
	c, _ := Generate()
	if !strings.Contains(ErrCheckSymbol.Error(), "check character") || strings.Contains(ErrCheckSymbol.Error(), "exactly 20") {
		t.Errorf("ErrCheckSymbol = %q: it should name the check character, not the length", ErrCheckSymbol)
	}
	if !strings.Contains(ErrShape.Error(), "20 letters and digits") || strings.Contains(ErrShape.Error(), "check character") {
		t.Errorf("ErrShape = %q: it should name the length and characters, not the check character", ErrShape)
	}
	last := byte('0')
	if c[Symbols-1] == last {
		last = '1'
	}
	for _, in := range []string{string(c[:Symbols-1]), string(c[:Symbols-1]) + string(last)} {
		_, err := Parse(in)
		if err == nil {
			t.Fatalf("Parse accepted a malformed code")
		}
		if strings.Contains(strings.ToUpper(err.Error()), string(c[:6])) {
			t.Errorf("error %q echoes the code", err)
		}
	}
}
