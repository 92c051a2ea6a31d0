package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/custody-dev/custody/pkg/protocol"
)

// Files of a device directory.
const (
	FilePrivateKey = "device.key"
	FileIdentity   = "identity.json"
	FilePairing    = "pairing.code"
	// FilePairingToken holds a tenant's pairing token; it is removed once
	// the device has enrolled.
	FilePairingToken = "pairing.token"
	FileCertificate  = "cert.pem"
	FileCA           = "ca.pem"
)

// IdentityFile is identity.json: who the device is.
type IdentityFile struct {
	SerialNumber string `json:"serialNumber"`
	Model        string `json:"model"`
}

// Agent runs a device's life with the gateway: pair, enroll, renew before
// expiry, send heartbeats; back off on errors; when the gateway refuses the
// certificate (the device was released, transferred or decommissioned),
// drop it and enroll again, which succeeds only once the device is bound.
type Agent struct {
	Dir    string
	Key    Key
	ID     IdentityFile
	Client *Client
	Clock  clock.PassiveClock
	Log    logr.Logger
	// Firmware is reported in heartbeats.
	Firmware string
	// HeartbeatInterval between heartbeats. Default 1m.
	HeartbeatInterval time.Duration

	identity *protocol.Identity
	backoff  time.Duration
	// proved: possession was proved since the last NotBound answer, so the
	// next enrollment step need not prove it again.
	proved bool
}

// LoadAgent reads a device directory made by `custody-device init`.
func LoadAgent(dir string, c *Client) (*Agent, error) {
	key, err := LoadFileKey(filepath.Join(dir, FilePrivateKey))
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, FileIdentity)) //nolint:gosec // the device directory
	if err != nil {
		return nil, err
	}
	a := &Agent{Dir: dir, Key: key, Client: c}
	if err := json.Unmarshal(data, &a.ID); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) defaults() {
	if a.Clock == nil {
		a.Clock = clock.RealClock{}
	}
	if a.Log.GetSink() == nil {
		a.Log = logr.Discard()
	}
	if a.HeartbeatInterval == 0 {
		a.HeartbeatInterval = time.Minute
	}
}

// Certificate returns the device's current certificate, if any.
func (a *Agent) Certificate() (*tls.Certificate, *x509.Certificate) {
	data, err := os.ReadFile(filepath.Join(a.Dir, FileCertificate))
	if err != nil {
		return nil, nil
	}
	var chain [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		chain = append(chain, b.Bytes)
	}
	if len(chain) == 0 {
		return nil, nil
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, nil
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: a.Key, Leaf: leaf}, leaf
}

// Run steps until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	for {
		next, err := a.Step(ctx)
		if err != nil {
			a.Log.Info("step failed; backing off", "error", err.Error(), "retryIn", next.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(next):
		}
	}
}

// Step does one thing and says how long to wait before the next.
func (a *Agent) Step(ctx context.Context) (time.Duration, error) {
	a.defaults()
	cert, leaf := a.Certificate()
	if cert == nil {
		return a.enroll(ctx)
	}
	now := a.Clock.Now()
	renewAt := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
	if !now.Before(renewAt) {
		return a.renew(ctx, *cert, leaf)
	}
	err := a.Client.Heartbeat(ctx, *cert, protocol.HeartbeatRequest{FirmwareVersion: a.Firmware, State: "ok"})
	if IsCode(err, protocol.ErrCertificateRefused) {
		return a.cutOff()
	}
	if err != nil {
		return a.fail(err)
	}
	a.backoff = 0
	return min(a.HeartbeatInterval, renewAt.Sub(now)), nil
}

// cutOff drops a certificate the gateway no longer accepts.
func (a *Agent) cutOff() (time.Duration, error) {
	a.Log.Info("the gateway refused the certificate: the device no longer belongs to its tenant; enrolling again")
	a.identity = nil
	_ = os.Remove(filepath.Join(a.Dir, FileCertificate))
	return 0, nil
}

func (a *Agent) fail(err error) (time.Duration, error) {
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return ae.RetryAfter, err
	}
	a.backoff = min(max(2*a.backoff, time.Second), 5*time.Minute)
	return a.backoff, err
}

// pairedRetry is how soon a device that has just proved possession tries
// to enroll again: its owner's Claim binds within moments of the proof.
const pairedRetry = 2 * time.Second

func (a *Agent) enroll(ctx context.Context) (time.Duration, error) {
	paired := false
	if code, err := os.ReadFile(filepath.Join(a.Dir, FilePairing)); err == nil && !a.proved { //nolint:gosec // the device directory
		if err := a.Client.Possession(ctx, a.Key, a.ID.SerialNumber, a.ID.Model, string(code)); err != nil {
			return a.fail(err)
		}
		a.Log.Info("proved possession with the pairing code")
		paired, a.proved = true, true
	}
	if raw, err := os.ReadFile(filepath.Join(a.Dir, FilePairingToken)); err == nil && !a.proved { //nolint:gosec // the device directory
		token, err := protocol.ParsePairingToken(string(raw))
		if err != nil {
			return a.fail(err)
		}
		if err := a.Client.ClaimWithToken(ctx, a.Key, a.ID.SerialNumber, a.ID.Model, token); err != nil {
			return a.fail(err)
		}
		a.Log.Info("claimed with the tenant's pairing token", "tenant", token.Tenant)
		paired, a.proved = true, true
	}
	id := protocol.Identity{CommonName: a.ID.SerialNumber, URI: "spiffe://unknown/"}
	if a.identity != nil {
		id = *a.identity
	}
	csr, err := NewCSR(a.Key, id)
	if err != nil {
		return a.fail(err)
	}
	iss, err := a.Client.Enroll(ctx, a.Key, a.ID.SerialNumber, a.ID.Model, csr)
	if want, ok := IdentityFromMismatch(err); ok {
		// The gateway said which identity the Device gives us: ask for it.
		a.identity = &want
		return 0, nil
	}
	var pending *ErrPending
	for errors.As(err, &pending) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pending.RetryAfter):
		}
		iss, err = a.Client.Enrollment(ctx, pending.Ticket)
	}
	if IsCode(err, protocol.ErrNotBound) {
		a.Log.Info("not bound to a tenant yet; waiting for the owner's claim")
		a.proved = false // the Claim may come later: prove again next time
		if paired {
			return pairedRetry, err
		}
		return a.fail(err)
	}
	if err != nil {
		return a.fail(err)
	}
	if err := a.save(iss.CertificatePEM, iss.CAPEM); err != nil {
		return a.fail(err)
	}
	_ = os.Remove(filepath.Join(a.Dir, FilePairing))
	_ = os.Remove(filepath.Join(a.Dir, FilePairingToken))
	a.backoff = 0
	a.Log.Info("enrolled", "notAfter", iss.Leaf.NotAfter.UTC().Format(time.RFC3339), "uri", id.URI)
	return 0, nil
}

// Renew renews the device's certificate now, whatever its age, as Step
// does at two thirds of its life: EST simplereenroll over mutual TLS with
// the same key and identity. It is for tests and load runs.
func (a *Agent) Renew(ctx context.Context) error {
	a.defaults()
	cert, leaf := a.Certificate()
	if cert == nil {
		return errors.New("the device holds no certificate to renew")
	}
	before := leaf.SerialNumber
	if _, err := a.renew(ctx, *cert, leaf); err != nil {
		return err
	}
	if _, now := a.Certificate(); now == nil || now.SerialNumber.Cmp(before) == 0 {
		return errors.New("the gateway refused the certificate; the device enrols again")
	}
	return nil
}

func (a *Agent) renew(ctx context.Context, cert tls.Certificate, leaf *x509.Certificate) (time.Duration, error) {
	csr, err := NewCSR(a.Key, protocol.Identity{CommonName: leaf.Subject.CommonName, URI: leaf.URIs[0].String()})
	if err != nil {
		return a.fail(err)
	}
	var newLeaf *x509.Certificate
	for {
		newLeaf, err = a.Client.Reenroll(ctx, cert, csr)
		var pending *ErrPending
		if !errors.As(err, &pending) {
			break
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pending.RetryAfter):
		}
	}
	if IsCode(err, protocol.ErrCertificateRefused) {
		return a.cutOff()
	}
	if err != nil {
		return a.fail(err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: newLeaf.Raw})
	for _, c := range cert.Certificate[1:] {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	if err := a.save(chain, nil); err != nil {
		return a.fail(err)
	}
	a.Log.Info("renewed", "notAfter", newLeaf.NotAfter.UTC().Format(time.RFC3339))
	return 0, nil
}

func (a *Agent) save(chain, ca []byte) error {
	if err := writeAtomic(filepath.Join(a.Dir, FileCertificate), chain); err != nil {
		return err
	}
	if len(ca) > 0 {
		return writeAtomic(filepath.Join(a.Dir, FileCA), ca)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
