// Package claimcode makes, parses and verifies device claim codes.
//
// A claim code is 19 random symbols of Crockford's base32 alphabet (95 bits)
// and one check symbol, printed as five groups of four:
//
//	9G01-8BC1-MY21-P614-FY40
//
// Reading is forgiving: case, spaces and dashes are ignored, and the look-alike
// letters I and L read as 1, O as 0. The check symbol (Luhn mod 32) catches
// every single mistyped symbol and most swaps of neighbours before anything
// is compared, so a typo is reported as a typo and never counts as a failed
// claim attempt.
//
// Only a verifier of the code is ever stored: argon2id (RFC 9106) in PHC
// string format, "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>" with a 16-byte
// random salt and a 32-byte hash, both unpadded standard base64. With 95 bits
// of entropy an offline search of a leaked verifier is out of reach even for
// a fast hash; the memory-hard hash multiplies that cost by ~2^14 per guess.
//
// This package must never log, print or return a code except to the caller
// that made it (the factory tool).
package claimcode

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

const (
	// alphabet is Crockford's base32: digits and letters without I, L, O, U.
	alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	// dataSymbols is the number of random symbols (95 bits).
	dataSymbols = 19
	// Symbols is the length of a normalised code, check symbol included.
	Symbols = dataSymbols + 1
	// EntropyBits is the entropy of a code.
	EntropyBits = dataSymbols * 5
)

// Default argon2id parameters (OWASP's recommended minimum for argon2id) and
// the bounds a verifier's parameters must keep to be accepted: the lower
// bounds keep verifiers expensive to attack, the upper ones keep a verifier
// from being a denial of service on the manager.
const (
	DefaultMemoryKiB  = 19 * 1024
	DefaultIterations = 2
	DefaultThreads    = 1
	saltBytes         = 16
	hashBytes         = 32

	minMemoryKiB  = 19 * 1024
	maxMemoryKiB  = 256 * 1024
	minIterations = 2
	maxIterations = 10
	maxThreads    = 4
)

// ErrMalformed is what Parse's errors wrap (errors.Is) for input that is not
// a well-formed claim code. Parse returns one of its two kinds, which tell
// the user what to look at; neither message holds the input.
var ErrMalformed = errors.New("not a well-formed claim code")

// The two kinds of malformed input, each wrapping ErrMalformed. Both are
// found from the input alone, without any device, so telling them apart
// reveals nothing about a serial number.
var (
	// ErrShape: the input does not have 20 letters and digits of the
	// alphabet once spaces and dashes are dropped (wrong length, or a
	// character such as U or a punctuation mark that no code holds).
	ErrShape = fmt.Errorf("%w: a claim code has exactly 20 letters and digits, printed in five groups of four, and holds no U and no punctuation", ErrMalformed)
	// ErrCheckSymbol: 20 symbols of the alphabet, but the last one, a
	// check character computed from the other 19, does not match them:
	// almost always one mistyped or two swapped characters.
	ErrCheckSymbol = fmt.Errorf("%w: its last character is a check character and does not match the other 19, so at least one character was mistyped or two were swapped", ErrMalformed)
)

// Code is a normalised claim code: 20 symbols of the alphabet. Its String
// method prints it grouped.
type Code string

// String formats the code in five groups of four symbols.
func (c Code) String() string {
	var b strings.Builder
	for i := 0; i < len(c); i++ {
		if i > 0 && i%4 == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(c[i])
	}
	return b.String()
}

// Generate returns a new random claim code. Every code holds at least one
// digit and one letter, which lets Contains tell codes from prose.
func Generate() (Code, error) {
	for {
		var raw [dataSymbols]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return "", err
		}
		sym := make([]byte, 0, Symbols)
		for _, r := range raw {
			sym = append(sym, alphabet[r&31])
		}
		if !hasDigitAndLetter(string(sym)) {
			continue
		}
		sym = append(sym, alphabet[checkValue(sym)])
		return Code(sym), nil
	}
}

// Parse normalises s and checks its length, alphabet and check symbol.
func Parse(s string) (Code, error) {
	norm, ok := normalise(s)
	if !ok || len(norm) != Symbols {
		return "", ErrShape
	}
	if alphabet[checkValue([]byte(norm[:dataSymbols]))] != norm[dataSymbols] {
		return "", ErrCheckSymbol
	}
	return Code(norm), nil
}

// normalise upper-cases s, drops spaces and dashes, and maps look-alikes.
func normalise(s string) (string, bool) {
	b := make([]byte, 0, Symbols)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r':
			continue
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		}
		switch c {
		case 'I', 'L':
			c = '1'
		case 'O':
			c = '0'
		}
		if strings.IndexByte(alphabet, c) < 0 {
			return "", false
		}
		if len(b) == Symbols*2 { // far too long: stop early
			return "", false
		}
		b = append(b, c)
	}
	return string(b), true
}

// checkValue computes the Luhn mod 32 check value of the data symbols.
func checkValue(data []byte) int {
	const n = len(alphabet)
	factor, sum := 2, 0
	for i := len(data) - 1; i >= 0; i-- {
		addend := factor * strings.IndexByte(alphabet, data[i])
		addend = addend/n + addend%n
		sum += addend
		if factor == 2 {
			factor = 1
		} else {
			factor = 2
		}
	}
	return (n - sum%n) % n
}

func hasDigitAndLetter(s string) bool {
	return strings.ContainsAny(s, "0123456789") && strings.ContainsAny(s, "ABCDEFGHJKMNPQRSTVWXYZ")
}

// Params are argon2id parameters.
type Params struct {
	MemoryKiB  uint32
	Iterations uint32
	Threads    uint8
}

// DefaultParams are the parameters NewVerifier uses.
var DefaultParams = Params{MemoryKiB: DefaultMemoryKiB, Iterations: DefaultIterations, Threads: DefaultThreads}

// NewVerifier returns the verifier of code with a fresh random salt and
// DefaultParams.
func NewVerifier(code Code) (string, error) {
	salt := make([]byte, saltBytes)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	p := DefaultParams
	hash := argon2.IDKey([]byte(code), salt, p.Iterations, p.MemoryKiB, p.Threads, hashBytes)
	return encode(p, salt, hash), nil
}

func encode(p Params, salt, hash []byte) string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.MemoryKiB, p.Iterations, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(hash))
}

// ErrInvalidVerifier is returned for a verifier that is not an argon2id PHC
// string within the accepted parameter bounds.
var ErrInvalidVerifier = errors.New("claim code verifier is not an argon2id PHC string with accepted parameters")

// decoded is a parsed verifier.
type decoded struct {
	params     Params
	salt, hash []byte
}

func decode(verifier string) (decoded, error) {
	parts := strings.Split(verifier, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return decoded{}, ErrInvalidVerifier
	}
	var d decoded
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return decoded{}, ErrInvalidVerifier
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return decoded{}, ErrInvalidVerifier
		}
		switch k {
		case "m":
			d.params.MemoryKiB = uint32(n)
		case "t":
			d.params.Iterations = uint32(n)
		case "p":
			if n > 255 {
				return decoded{}, ErrInvalidVerifier
			}
			d.params.Threads = uint8(n)
		default:
			return decoded{}, ErrInvalidVerifier
		}
	}
	p := d.params
	if p.MemoryKiB < minMemoryKiB || p.MemoryKiB > maxMemoryKiB || p.Iterations < minIterations || p.Iterations > maxIterations || p.Threads < 1 || p.Threads > maxThreads {
		return decoded{}, ErrInvalidVerifier
	}
	// encoding/base64 skips line breaks; a verifier has none.
	if strings.ContainsAny(parts[4]+parts[5], "\r\n") {
		return decoded{}, ErrInvalidVerifier
	}
	var err error
	if d.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(d.salt) < saltBytes {
		return decoded{}, ErrInvalidVerifier
	}
	if d.hash, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(d.hash) != hashBytes {
		return decoded{}, ErrInvalidVerifier
	}
	return d, nil
}

// ValidateVerifier reports whether verifier is acceptable, without a code.
func ValidateVerifier(verifier string) error {
	_, err := decode(verifier)
	return err
}

// Verify reports whether code matches verifier. The hash comparison is in
// constant time.
func Verify(code Code, verifier string) (bool, error) {
	d, err := decode(verifier)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(code), d.salt, d.params.Iterations, d.params.MemoryKiB, d.params.Threads, uint32(len(d.hash)))
	return subtle.ConstantTimeCompare(got, d.hash) == 1, nil
}

// dummyVerifier has the default parameters; VerifyNothing hashes against it.
var dummyVerifier = encode(DefaultParams, make([]byte, saltBytes), make([]byte, hashBytes))

// VerifyNothing spends the same work as Verify with default parameters and
// returns false. Callers use it when there is no verifier to check against
// (unknown serial, no claim code set), so that the answer takes as long as
// for a wrong code.
func VerifyNothing(code Code) {
	_, _ = Verify(code, dummyVerifier)
}

// Digest identifies a verifier without revealing anything about the code:
// "sha256:<hex>" of the verifier string. Devices record the digests of
// verifiers whose code has been used.
func Digest(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// GeneratePairingCode returns a random pairing code: 16 symbols of the
// alphabet (80 bits) in four groups of four. A pairing code is shown in a
// Claim's status and typed into a device; it is good for one Claim and
// expires, so it needs no check symbol.
func GeneratePairingCode() (string, error) {
	buf := make([]byte, 16)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	var b strings.Builder
	for i, x := range buf {
		if i > 0 && i%4 == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(alphabet[x&31])
	}
	return b.String(), nil
}
