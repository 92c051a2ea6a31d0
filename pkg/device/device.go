// Package device is the Custody device SDK: what firmware (or a simulator)
// needs to prove its identity to the Custody gateway, pair with its owner,
// enroll for a certificate, renew it and send heartbeats.
//
// The identity private key never leaves the device: the SDK only asks a Key
// to sign. FileKey keeps it in a file; a secure element or TPM implements
// Key with the same crypto.Signer interface.
package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/custody-dev/custody/pkg/est"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Key is a device's identity key: a crypto.Signer whose private part stays
// wherever it lives (a file, a secure element, a TPM).
type Key interface {
	crypto.Signer
}

// FileKey is a Key kept in a PEM file (PKCS#8, mode 0600).
type FileKey struct {
	crypto.Signer
}

// GenerateFileKey makes an ECDSA P-256 key and writes it to path (0600,
// refusing to overwrite).
func GenerateFileKey(path string) (*FileKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) //nolint:gosec // the path is the device directory the operator chose
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		return nil, err
	}
	return &FileKey{Signer: k}, nil
}

// LoadFileKey reads a PKCS#8 PEM key (ECDSA P-256 or Ed25519).
func LoadFileKey(path string) (*FileKey, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the path is the device directory the operator chose
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: want a PEM \"PRIVATE KEY\" (PKCS#8) block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok || protocol.CheckKeyType(s.Public()) != nil {
		return nil, fmt.Errorf("%s: want an ECDSA P-256 or Ed25519 key", path)
	}
	return &FileKey{Signer: s}, nil
}

// LoadRootCAs reads a PEM bundle of CA certificates (the gateway's, the
// data plane's) into a pool; a file without one is an error.
func LoadRootCAs(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file) //nolint:gosec // the file the user named
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// NewCSR makes a CSR signed by key for exactly id.
func NewCSR(key crypto.Signer, id protocol.Identity) ([]byte, error) {
	u, err := url.Parse(id.URI)
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.CommonName}, URIs: []*url.URL{u}}, key)
}

// Client talks to the gateway. It is safe for concurrent use and keeps
// one connection pool for the unauthenticated endpoints; mutual-TLS requests
// use a connection of their own, closed after the request (they are rare:
// heartbeats and renewals).
type Client struct {
	// BaseURL of the gateway, e.g. https://gateway.example:8443.
	BaseURL string
	// RootCAs verify the gateway's serving certificate (no evil twin).
	RootCAs *x509.CertPool
	// HTTP, when set, is used instead of a client built from RootCAs.
	HTTP *http.Client

	once  sync.Once
	plain *http.Client
}

func (c *Client) tlsConfig() *tls.Config {
	if c.HTTP != nil {
		if t, ok := c.HTTP.Transport.(*http.Transport); ok && t.TLSClientConfig != nil {
			return t.TLSClientConfig.Clone()
		}
	}
	return &tls.Config{RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12}
}

func newHTTPClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}}
}

// httpClient returns the shared client, or with cert a client of its own
// that the caller must close (CloseIdleConnections) after its request.
func (c *Client) httpClient(cert *tls.Certificate) *http.Client {
	if cert == nil {
		c.once.Do(func() {
			c.plain = c.HTTP
			if c.plain == nil {
				c.plain = newHTTPClient(c.tlsConfig())
			}
		})
		return c.plain
	}
	cfg := c.tlsConfig()
	cfg.Certificates = []tls.Certificate{*cert}
	return newHTTPClient(cfg)
}

// APIError is an error answer of the gateway.
type APIError struct {
	Status     int
	RetryAfter time.Duration
	Body       protocol.Error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("gateway: %d %s: %s", e.Status, e.Body.Code, e.Body.Message)
}

// IsCode reports whether err is an APIError with the given code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Body.Code == code
}

// doTLS sends a mutual-TLS request with cert, closes its connection, and
// returns the response body.
func (c *Client) doTLS(ctx context.Context, cert tls.Certificate, method, path, contentType string, body []byte) ([]byte, error) {
	hc := c.httpClient(&cert)
	defer hc.CloseIdleConnections()
	_, data, err := c.do(ctx, hc, method, path, contentType, body)
	return data, err
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode >= 400 {
		ae := &APIError{Status: resp.StatusCode}
		_ = json.Unmarshal(data, &ae.Body)
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			ae.RetryAfter = time.Duration(s) * time.Second
		}
		return resp.StatusCode, data, ae
	}
	return resp.StatusCode, data, nil
}

func (c *Client) postJSON(ctx context.Context, path string, in, out any) (int, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return 0, err
	}
	status, data, err := c.do(ctx, c.httpClient(nil), http.MethodPost, path, "application/json", body)
	if err != nil {
		return 0, err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return status, err
		}
	}
	return status, nil
}

// Challenge asks for a challenge.
func (c *Client) Challenge(ctx context.Context, serial, model string, purpose protocol.Purpose) (string, error) {
	var out protocol.ChallengeResponse
	if _, err := c.postJSON(ctx, protocol.PathChallenge, protocol.ChallengeRequest{SerialNumber: serial, Model: model, Purpose: purpose}, &out); err != nil {
		return "", err
	}
	return out.Challenge, nil
}

// Possession proves possession for pairingCode, given to the device by a
// claimant during set-up.
func (c *Client) Possession(ctx context.Context, key crypto.Signer, serial, model, pairingCode string) error {
	tok, err := c.Challenge(ctx, serial, model, protocol.PurposePossession)
	if err != nil {
		return err
	}
	digest := protocol.PairingDigest(protocol.DeviceName(model, serial), pairingCode)
	sig, err := protocol.Sign(key, protocol.PossessionPayload(tok, digest))
	if err != nil {
		return err
	}
	_, err = c.postJSON(ctx, protocol.PathPossession, protocol.PossessionRequest{Challenge: tok, PairingDigest: digest, Signature: sig}, nil)
	return err
}

// ClaimWithToken proves possession with one of a tenant's pairing tokens,
// given to the device at installation: if the token allows, a Claim
// appears, bound, in that tenant's namespace. The token's secret never
// leaves the device; it signs the token's digest, bound to its own name.
func (c *Client) ClaimWithToken(ctx context.Context, key crypto.Signer, serial, model string, token protocol.PairingToken) error {
	tok, err := c.Challenge(ctx, serial, model, protocol.PurposePossession)
	if err != nil {
		return err
	}
	digest := protocol.PairingTokenDigest(protocol.DeviceName(model, serial), token)
	sig, err := protocol.Sign(key, protocol.PossessionPayload(tok, digest))
	if err != nil {
		return err
	}
	_, err = c.postJSON(ctx, protocol.PathPossession, protocol.PossessionRequest{Challenge: tok, PairingDigest: digest, Signature: sig, Tenant: token.Tenant, TokenID: token.ID}, nil)
	return err
}

// Issued is an issued certificate.
type Issued struct {
	// CertificatePEM is the chain, leaf first; CAPEM the tenant CA.
	CertificatePEM, CAPEM []byte
	Leaf                  *x509.Certificate
}

// ErrPending is returned by Enroll when the certificate is not issued yet;
// poll Ticket with Enrollment.
type ErrPending struct {
	Ticket     string
	RetryAfter time.Duration
}

func (e *ErrPending) Error() string { return "enrollment pending: ticket " + e.Ticket }

// Enroll signs a fresh challenge and csrDER with the identity key and asks
// for a certificate. The CSR may be for the identity key or for another key
// the device holds: the identity key's signature endorses it.
func (c *Client) Enroll(ctx context.Context, identity crypto.Signer, serial, model string, csrDER []byte) (*Issued, error) {
	tok, err := c.Challenge(ctx, serial, model, protocol.PurposeEnroll)
	if err != nil {
		return nil, err
	}
	sig, err := protocol.Sign(identity, protocol.EnrollPayload(tok, csrDER))
	if err != nil {
		return nil, err
	}
	var out protocol.EnrollResponse
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	status, err := c.postJSON(ctx, protocol.PathEnroll, protocol.EnrollRequest{Challenge: tok, CSR: string(csrPEM), Signature: sig}, &out)
	if err != nil {
		return nil, err
	}
	return issued(status, out)
}

// Enrollment polls a pending enrollment.
func (c *Client) Enrollment(ctx context.Context, ticket string) (*Issued, error) {
	status, data, err := c.do(ctx, c.httpClient(nil), http.MethodGet, protocol.PathEnrollments+url.PathEscape(ticket), "", nil)
	if err != nil {
		return nil, err
	}
	var out protocol.EnrollResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	return issued(status, out)
}

func issued(status int, out protocol.EnrollResponse) (*Issued, error) {
	if status == http.StatusAccepted {
		return nil, &ErrPending{Ticket: out.Ticket, RetryAfter: time.Duration(out.RetryAfterSeconds) * time.Second}
	}
	chain, err := protocol.ParseCertificatesPEM([]byte(out.Certificate))
	if err != nil {
		return nil, fmt.Errorf("gateway returned no certificate: %w", err)
	}
	return &Issued{CertificatePEM: []byte(out.Certificate), CAPEM: []byte(out.CA), Leaf: chain[0]}, nil
}

// Reenroll renews cert over mutual TLS with EST simplereenroll, keeping
// the key. It returns the new leaf.
func (c *Client) Reenroll(ctx context.Context, cert tls.Certificate, csrDER []byte) (*x509.Certificate, error) {
	data, err := c.doTLS(ctx, cert, http.MethodPost, protocol.PathESTSimpleReenroll, est.ContentTypePKCS10, est.EncodeBase64(csrDER))
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &ErrPending{RetryAfter: 2 * time.Second}
	}
	der, err := est.DecodeBase64(data)
	if err != nil {
		return nil, err
	}
	certs, err := est.DecodeCertsOnly(der)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// CACerts fetches the tenant CA over mutual TLS (EST cacerts).
func (c *Client) CACerts(ctx context.Context, cert tls.Certificate) ([]*x509.Certificate, error) {
	data, err := c.doTLS(ctx, cert, http.MethodGet, protocol.PathESTCACerts, "", nil)
	if err != nil {
		return nil, err
	}
	der, err := est.DecodeBase64(data)
	if err != nil {
		return nil, err
	}
	return est.DecodeCertsOnly(der)
}

// Heartbeat reports over mutual TLS, on a connection of its own.
func (c *Client) Heartbeat(ctx context.Context, cert tls.Certificate, hb protocol.HeartbeatRequest) error {
	body, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	_, err = c.doTLS(ctx, cert, http.MethodPost, protocol.PathHeartbeat, "application/json", body)
	return err
}

// KeepAlive returns a mutual-TLS session with cert that keeps its
// connection open between requests (HTTP keep-alive), for a device that
// talks to the gateway often enough to make one handshake per request
// wasteful. The Client's own mutual-TLS requests still close theirs. Close
// the session when done.
func (c *Client) KeepAlive(cert tls.Certificate) *Session {
	return &Session{c: c, hc: c.httpClient(&cert)}
}

// Session is a mutual-TLS connection to the gateway, reused by its
// requests; see Client.KeepAlive. It is safe for concurrent use.
type Session struct {
	c  *Client
	hc *http.Client
}

// Heartbeat reports over the session's connection.
func (s *Session) Heartbeat(ctx context.Context, hb protocol.HeartbeatRequest) error {
	body, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	_, _, err = s.c.do(ctx, s.hc, http.MethodPost, protocol.PathHeartbeat, "application/json", body)
	return err
}

// Close closes the session's connection.
func (s *Session) Close() { s.hc.CloseIdleConnections() }

// IdentityFromMismatch returns the identity a gateway told the device to
// ask for, if err is an IdentityMismatch answer.
func IdentityFromMismatch(err error) (protocol.Identity, bool) {
	var ae *APIError
	if errors.As(err, &ae) && ae.Body.Code == protocol.ErrIdentityMismatch && ae.Body.Identity != nil {
		return *ae.Body.Identity, true
	}
	return protocol.Identity{}, false
}
