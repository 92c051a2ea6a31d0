// Package protocol is the contract between a Custody device and the Custody
// gateway: the JSON messages, what a device signs, the identity a device
// certificate carries, and the claim URL printed in a device's QR code.
//
// It is imported by the gateway, the manager and the device SDK (pkg/device),
// so it holds no I/O and no secrets; firmware can vendor it alone.
package protocol

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
)

// Paths served by the gateway.
const (
	PathChallenge   = "/v1/challenge"
	PathEnroll      = "/v1/enroll"
	PathEnrollments = "/v1/enrollments/" // + ticket
	PathPossession  = "/v1/possession"
	PathHeartbeat   = "/v1/heartbeat"
	// EST (RFC 7030) paths. Renewal needs the device's current certificate;
	// cacerts and csrattrs do not when asked under a label (ESTPath).
	PathESTCACerts        = "/.well-known/est/cacerts"
	PathESTCSRAttrs       = "/.well-known/est/csrattrs"
	PathESTSimpleEnroll   = "/.well-known/est/simpleenroll"
	PathESTSimpleReenroll = "/.well-known/est/simplereenroll"
)

// ESTPath is the path of EST operation op ("cacerts", "csrattrs",
// "simpleenroll", "simplereenroll") under label (RFC 7030 §3.2.2): the
// name of the device's tenant, whose CA bundle cacerts returns.
func ESTPath(label, op string) string { return "/.well-known/est/" + label + "/" + op }

// MaxBodyBytes is the largest request body the gateway reads.
const MaxBodyBytes = 16 << 10

// Purpose is what a challenge may be used for.
type Purpose string

const (
	// PurposeEnroll: sign a CSR to get a certificate.
	PurposeEnroll Purpose = "enroll"
	// PurposePossession: sign a pairing code to confirm a Claim.
	PurposePossession Purpose = "possession"
)

// ChallengeRequest asks the gateway for a challenge.
type ChallengeRequest struct {
	SerialNumber string  `json:"serialNumber"`
	Model        string  `json:"model"`
	Purpose      Purpose `json:"purpose"`
}

// ChallengeResponse carries a challenge: an opaque token, bound to the
// serial number, model and purpose, valid until ExpiresAt (RFC 3339).
type ChallengeResponse struct {
	Challenge string `json:"challenge"`
	ExpiresAt string `json:"expiresAt"`
}

// EnrollRequest proves possession of the identity key and asks for a
// certificate for CSR (PEM). Signature is over EnrollPayload.
type EnrollRequest struct {
	Challenge string `json:"challenge"`
	CSR       string `json:"csr"`
	Signature []byte `json:"signature"`
}

// EnrollResponse is the gateway's answer to an enrollment. Status 200:
// Certificate (PEM chain, leaf first) and CA are set. Status 202: Ticket is
// set; GET PathEnrollments+Ticket after RetryAfterSeconds.
type EnrollResponse struct {
	Certificate       string `json:"certificate,omitempty"`
	CA                string `json:"ca,omitempty"`
	Ticket            string `json:"ticket,omitempty"`
	RetryAfterSeconds int    `json:"retryAfterSeconds,omitempty"`
}

// PossessionRequest proves that the device holds its identity key and was
// given the pairing code whose digest is PairingDigest (PairingDigest of the
// code). Signature is over PossessionPayload.
//
// With a pairing token, PairingDigest is PairingTokenDigest of the token and
// Tenant and TokenID name it (its secret is never sent): a Claim appears,
// bound, in that tenant's namespace if the token allows.
type PossessionRequest struct {
	Challenge     string `json:"challenge"`
	PairingDigest string `json:"pairingDigest"`
	Signature     []byte `json:"signature"`
	Tenant        string `json:"tenant,omitempty"`
	TokenID       string `json:"tokenID,omitempty"`
}

// HeartbeatRequest is sent over mutual TLS with the device's certificate.
type HeartbeatRequest struct {
	FirmwareVersion string `json:"firmwareVersion,omitempty"`
	State           string `json:"state,omitempty"`
}

// Error is every error body the gateway sends.
type Error struct {
	// Code is a stable CamelCase code (see the Err* constants).
	Code    string `json:"error"`
	Message string `json:"message"`
	// Identity is set with ErrIdentityMismatch: what the CSR must ask for.
	Identity *Identity `json:"identity,omitempty"`
}

// Error codes.
const (
	// ErrProofNotAccepted (403): the one answer to every failed proof,
	// whether the serial number exists or not.
	ErrProofNotAccepted = "ProofNotAccepted"
	// ErrBadRequest (400): the request is malformed.
	ErrBadRequest = "BadRequest"
	// ErrNotBound (409): the proof was accepted but the device is not bound
	// to a tenant yet; retry later. Only told to the proven device.
	ErrNotBound = "NotBound"
	// ErrIdentityMismatch (409): the CSR asks for another identity than the
	// device's; Identity says which. Only told to the proven device.
	ErrIdentityMismatch = "IdentityMismatch"
	// ErrCertificateRefused (403): the client certificate is not a current
	// certificate of a bound device.
	ErrCertificateRefused = "CertificateRefused"
	// ErrRateLimited (429): slow down; Retry-After says how long.
	ErrRateLimited = "RateLimited"
	// ErrUnavailable (503): a transient error; retry.
	ErrUnavailable = "Unavailable"
	// ErrNotFound (404): no EST CA certificates under this label; the same
	// answer whether or not a tenant of that name exists.
	ErrNotFound = "NotFound"
	// ErrUnsupportedMediaType (415): an EST request's Content-Type is not
	// application/pkcs10.
	ErrUnsupportedMediaType = "UnsupportedMediaType"
)

// DeviceName is the name of the Device resource for a model and serial
// number: "<model>.<serial>" in lower case.
func DeviceName(model, serial string) string {
	b := []byte(model + "." + serial)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// Identity is what a device certificate says: the common name is the serial
// number and the only SAN is the SPIFFE ID. It is derived from the Device and
// its binding, never from what the device asks for.
type Identity struct {
	CommonName string `json:"commonName"`
	URI        string `json:"uri"`
}

// DeriveIdentity returns the identity of device deviceName (serial number
// serial) bound to tenant, in trust domain trustDomain.
func DeriveIdentity(trustDomain, tenant, deviceName, serial string) Identity {
	return Identity{
		CommonName: serial,
		URI:        fmt.Sprintf("spiffe://%s/tenants/%s/devices/%s", trustDomain, tenant, deviceName),
	}
}

// ParseSPIFFEID returns the tenant and device named by a device SPIFFE ID in
// trustDomain.
func ParseSPIFFEID(trustDomain string, u *url.URL) (tenant, device string, ok bool) {
	if u == nil || u.Scheme != "spiffe" || u.Host != trustDomain || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", "", false
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "tenants" || parts[3] != "devices" || parts[2] == "" || parts[4] == "" {
		return "", "", false
	}
	return parts[2], parts[4], true
}

// Signing payloads. Each starts with a per-purpose prefix so that a signature
// made for one purpose is worthless for another.
const (
	enrollPrefix     = "custody-enroll-v1\n"
	possessionPrefix = "custody-possession-v1\n"
)

// EnrollPayload is what the device signs to enroll: the challenge and the
// SHA-256 of the CSR's DER.
func EnrollPayload(challenge string, csrDER []byte) []byte {
	sum := sha256.Sum256(csrDER)
	return []byte(enrollPrefix + challenge + "\n" + hex.EncodeToString(sum[:]))
}

// PossessionPayload is what the device signs to prove possession for the
// pairing code whose digest is pairingDigest.
func PossessionPayload(challenge, pairingDigest string) []byte {
	return []byte(possessionPrefix + challenge + "\n" + pairingDigest)
}

// NormalizePairingCode upper-cases a pairing code and drops spaces and dashes.
func NormalizePairingCode(code string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(code) {
		if r == ' ' || r == '-' || r == '\t' {
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// PairingDigest is the hex SHA-256 of a normalised pairing code, bound to
// the device name so that one code's digest means nothing for another device.
func PairingDigest(deviceName, code string) string {
	sum := sha256.Sum256([]byte("custody-pairing-v1\n" + deviceName + "\n" + NormalizePairingCode(code)))
	return hex.EncodeToString(sum[:])
}

// Sign signs payload with key: ECDSA P-256 over SHA-256 (ASN.1), or Ed25519
// over the payload itself.
func Sign(key crypto.Signer, payload []byte) ([]byte, error) {
	switch key.Public().(type) {
	case ed25519.PublicKey:
		return key.Sign(nil, payload, crypto.Hash(0))
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(payload)
		return key.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	return nil, errors.New("unsupported key type: want ECDSA P-256 or Ed25519")
}

// Verify checks a signature made by Sign.
func Verify(pub crypto.PublicKey, payload, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, payload, sig)
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(payload)
		return ecdsa.VerifyASN1(k, sum[:], sig)
	}
	return false
}

// ParsePublicKeyPEM parses a single PEM "PUBLIC KEY" block holding an ECDSA
// P-256 or Ed25519 key: the form of Device.spec.identity.publicKey.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("must be one PEM \"PUBLIC KEY\" block (PKIX SubjectPublicKeyInfo)")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("must hold exactly one PEM block")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, errors.New("is not a valid PKIX public key")
	}
	if err := CheckKeyType(key); err != nil {
		return nil, err
	}
	return key, nil
}

// CheckKeyType accepts ECDSA P-256 and Ed25519 public keys only.
func CheckKeyType(key crypto.PublicKey) error {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("ECDSA keys must use curve P-256")
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return errors.New("must be an ECDSA P-256 or Ed25519 key")
}

// SameKey reports whether two public keys are equal.
func SameKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// KeyFingerprint is "sha256:<hex>" of a public key's PKIX DER: what the
// device label's QR code shows.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// CertFingerprint is "sha256:<hex>" of a certificate's DER.
func CertFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CertSerial is a certificate serial number as openssl x509 -serial
// prints it: upper-case hex, an even number of digits (a leading zero
// kept), so that a serial copied from either is found in the other.
func CertSerial(n *big.Int) string {
	if n == nil {
		return ""
	}
	b := n.Bytes()
	if len(b) == 0 {
		b = []byte{0}
	}
	return strings.ToUpper(hex.EncodeToString(b))
}

// ParseCSRPEM parses one PEM CERTIFICATE REQUEST, checks its self-signature
// and its key type, and returns it with its DER.
func ParseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("want exactly one PEM CERTIFICATE REQUEST block")
	}
	return ParseCSRDER(block.Bytes)
}

// ParseCSRDER parses a DER CSR, checks its self-signature and key type.
func ParseCSRDER(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errors.New("the CSR's signature does not verify")
	}
	if err := CheckKeyType(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// ParseCertificatesPEM parses every CERTIFICATE block of a PEM bundle and
// fails if there is none or anything else.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) > 0 || len(out) == 0 {
		return nil, errors.New("want one or more PEM CERTIFICATE blocks")
	}
	return out, nil
}

// Label is what a device's QR code holds: the claim URL with the serial
// number, model and identity-key fingerprint. It carries no secret: anyone
// who photographs the label learns only these.
type Label struct {
	BaseURL      string
	SerialNumber string
	Model        string
	Fingerprint  string
}

// URL renders the label's claim URL.
func (l Label) URL() string {
	q := url.Values{}
	q.Set("serial", l.SerialNumber)
	q.Set("model", l.Model)
	q.Set("fp", l.Fingerprint)
	return strings.TrimRight(l.BaseURL, "/") + "/claim?" + q.Encode()
}

// ParseLabelURL parses a claim URL made by Label.URL.
func ParseLabelURL(s string) (Label, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || !strings.HasSuffix(u.Path, "/claim") ||
		u.User != nil || u.Fragment != "" {
		return Label{}, errors.New("not a Custody claim URL")
	}
	q := u.Query()
	l := Label{SerialNumber: q.Get("serial"), Model: q.Get("model"), Fingerprint: q.Get("fp")}
	if l.SerialNumber == "" || l.Model == "" || !strings.HasPrefix(l.Fingerprint, "sha256:") || len(l.Fingerprint) != 71 {
		return Label{}, errors.New("claim URL lacks serial, model or key fingerprint")
	}
	if _, err := hex.DecodeString(l.Fingerprint[7:]); err != nil {
		return Label{}, errors.New("claim URL has a malformed key fingerprint")
	}
	// The base URL is kept in the one form Label.URL writes back: without
	// trailing slashes ("https://h//claim" is "https://h"), its path escaped
	// as it was given, so a label read and written again is the same.
	base := strings.TrimRight(strings.TrimSuffix(u.EscapedPath(), "/claim"), "/")
	l.BaseURL = u.Scheme + "://" + u.Host + base
	return l, nil
}

// Pairing tokens let a tenant's field staff claim devices from the device
// side: the tenant creates a token (a typed Secret in its namespace), the
// device is given "<tenant>.<id>.<secret>" at installation, and proves
// possession with the token's digest instead of a Claim's pairing code.
const (
	// PairingTokenIDLength and PairingTokenSecretLength are the lengths of
	// the token's parts, in lower-case letters and digits (the secret holds
	// about 165 bits).
	PairingTokenIDLength     = 6
	PairingTokenSecretLength = 32
	pairingTokenAlphabet     = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// PairingToken is a parsed pairing token.
type PairingToken struct {
	Tenant, ID, Secret string
}

// String formats the token as the device is given it.
func (t PairingToken) String() string { return t.Tenant + "." + t.ID + "." + t.Secret }

// ParsePairingToken parses "<tenant>.<id>.<secret>".
func ParsePairingToken(s string) (PairingToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || !ValidPairingTokenTenant(parts[0]) || !onlyAlphabet(parts[1], PairingTokenIDLength) || !onlyAlphabet(parts[2], PairingTokenSecretLength) {
		return PairingToken{}, errors.New("a pairing token is <tenant>.<6 letters or digits>.<32 letters or digits>")
	}
	return PairingToken{Tenant: parts[0], ID: parts[1], Secret: parts[2]}, nil
}

// ValidPairingTokenTenant reports whether s can name a Tenant.
func ValidPairingTokenTenant(s string) bool {
	if len(s) == 0 || len(s) > 50 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

// ValidPairingTokenID reports whether s is a token ID.
func ValidPairingTokenID(s string) bool { return onlyAlphabet(s, PairingTokenIDLength) }

func onlyAlphabet(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune(pairingTokenAlphabet, r) {
			return false
		}
	}
	return true
}

// GeneratePairingToken returns a new random token for tenant.
func GeneratePairingToken(tenant string) (PairingToken, error) {
	gen := func(n int) (string, error) {
		b := make([]byte, n)
		for i := range b {
			v, err := rand.Int(rand.Reader, big.NewInt(int64(len(pairingTokenAlphabet))))
			if err != nil {
				return "", err
			}
			b[i] = pairingTokenAlphabet[v.Int64()]
		}
		return string(b), nil
	}
	id, err := gen(PairingTokenIDLength)
	if err != nil {
		return PairingToken{}, err
	}
	secret, err := gen(PairingTokenSecretLength)
	if err != nil {
		return PairingToken{}, err
	}
	return PairingToken{Tenant: tenant, ID: id, Secret: secret}, nil
}

// PairingTokenDigest is the hex SHA-256 of a pairing token bound to the
// device name: what the device signs in place of a pairing code's digest.
// The token itself never leaves the device.
func PairingTokenDigest(deviceName string, t PairingToken) string {
	sum := sha256.Sum256([]byte("custody-pairing-token-v1\n" + deviceName + "\n" + t.String()))
	return hex.EncodeToString(sum[:])
}
