package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
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
	// proved holds the pairing codes and tokens proved since provedAt
	// (the first of them): none is proved again before reproveAfter, and a
	// new one is proved at once.
	proved   map[string]bool
	provedAt time.Time
	// lastProof is the code or token proved last: proving another is
	// told at Info even while waiting (field staff re-paired the device).
	lastProof string

	// state is what the agent last told at Info (see say), and toldAt when.
	state  string
	toldAt time.Time
	// heartbeats counts the heartbeats the gateway accepted since start.
	heartbeats int
}

// remindEvery is how often a state that goes on (heartbeats accepted,
// waiting for the binding) is told again at Info. A device agent runs for
// months with a heartbeat a minute: a line per heartbeat would be 1,440 a
// day of "still fine" that bury what matters, while a silent agent reads
// as a hung one. So a change of state (enrolled, first heartbeat, renewed,
// cut off, waiting, failing, recovered) is one Info line at once, the same
// state again is V(1) (shown with --verbose), and once an hour the agent
// says at Info that it goes on, with how many heartbeats it has sent.
const remindEvery = time.Hour

// say logs msg at Info when the agent's state changes or was last told
// at Info remindEvery ago, and at V(1) otherwise.
func (a *Agent) say(state, msg string, kv ...any) {
	now := a.Clock.Now()
	if state != a.state || now.Sub(a.toldAt) >= remindEvery {
		a.state, a.toldAt = state, now
		a.Log.Info(msg, kv...)
		return
	}
	a.Log.V(1).Info(msg, kv...)
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

// sayOncePerWait logs a proof at Info unless the agent is waiting for its
// binding: a paired device proves again at every retry until its owner's
// Claim binds, and the first proof of the wait is enough to tell.
func (a *Agent) sayOncePerWait(msg string, kv ...any) {
	if a.state == "waiting" {
		a.Log.V(1).Info(msg, kv...)
		return
	}
	a.Log.Info(msg, kv...)
}

// Run steps until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	for {
		next, err := a.Step(ctx)
		a.report(err, next)
		select {
		case <-ctx.Done():
			return nil
		case <-a.after(next):
		}
	}
}

// Once runs one cycle of the agent: it enrols if the device holds no
// certificate, renews the certificate if it is due, and sends one
// heartbeat. It returns nil once the gateway has accepted the heartbeat.
// Waiting is part of the cycle: for the device to be bound to a tenant
// (NotBound: its owner's Claim has not bound yet) and for a gateway that
// says when to come back (Retry-After); Once then waits as Run does, until
// ctx ends, and returns an error that says what it was waiting for. Any
// other failure ends it at once with that error.
func (a *Agent) Once(ctx context.Context) error {
	a.defaults()
	for {
		before := a.heartbeats
		next, err := a.Step(ctx)
		a.report(err, next)
		if a.heartbeats > before {
			return nil
		}
		var ae *APIError
		if err != nil && !IsCode(err, protocol.ErrNotBound) && (!errors.As(err, &ae) || ae.RetryAfter <= 0) {
			return err
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%w (%w)", waitingFor(err), ctx.Err())
			}
			return ctx.Err()
		case <-a.after(next):
		}
	}
}

// waitingFor says what a step that must wait was told.
func waitingFor(err error) error {
	if IsCode(err, protocol.ErrNotBound) {
		return errors.New("the device is not bound to a tenant: no Claim of its owner holds it yet")
	}
	return err
}

// report logs the outcome of a step that failed. The device not being
// bound yet is not a failure: it is what a device sees until its owner's
// Claim binds (a race right after pairing, or a device nobody has claimed
// yet), and enroll has said so.
func (a *Agent) report(err error, next time.Duration) {
	if err == nil || IsCode(err, protocol.ErrNotBound) {
		return
	}
	a.state = "failed" // the next success is told at Info: recovered
	a.Log.Info("step failed; backing off", "error", err.Error(), "retryIn", next.String())
}

// after waits on the agent's clock when it can (a fake clock in tests),
// else on the real one.
func (a *Agent) after(d time.Duration) <-chan time.Time {
	if c, ok := a.Clock.(interface {
		After(time.Duration) <-chan time.Time
	}); ok {
		return c.After(d)
	}
	return time.After(d)
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
	a.heartbeats++
	next := min(a.HeartbeatInterval, renewAt.Sub(now))
	a.say("heartbeat", "heartbeat accepted", "heartbeats", a.heartbeats, "next", next.String(), "renewAt", renewAt.UTC().Format(time.RFC3339))
	return next, nil
}

// cutOff drops a certificate the gateway no longer accepts.
func (a *Agent) cutOff() (time.Duration, error) {
	a.say("cutoff", "the gateway refused the certificate: the device no longer belongs to its tenant; enrolling again")
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

// reproveAfter is how long a device that proved possession (or presented a
// pairing token) and is still not bound waits before it proves again. Its
// owner's Claim binds within moments of the proof; proved again at once,
// on the first NotBound, the proof would only find that Claim already
// confirmed (a DeviceProof Rejected, NoMatchingClaim, for nothing).
const reproveAfter = time.Minute

// mayProve says whether the pairing code or token with is to be proved
// now: it was not proved since provedAt.
func (a *Agent) mayProve(with []byte) bool {
	return !a.proved[string(with)]
}

func (a *Agent) provedNow(with []byte) {
	if len(a.proved) == 0 {
		a.proved, a.provedAt = map[string]bool{}, a.Clock.Now()
	}
	a.proved[string(with)] = true
	a.lastProof = string(with)
}

// sayProved tells a proof made with with: at Info when it is made with
// something other than the last proof (a device paired anew), else once
// per wait.
func (a *Agent) sayProved(with []byte, msg string, kv ...any) {
	if string(with) != a.lastProof {
		a.Log.Info(msg, kv...)
		return
	}
	a.sayOncePerWait(msg, kv...)
}

// pairedRetry is how soon a device that has just sent its possession proof tries
// to enroll again: its owner's Claim binds within moments of the proof.
const pairedRetry = 2 * time.Second

func (a *Agent) enroll(ctx context.Context) (time.Duration, error) {
	paired := false
	if code, err := os.ReadFile(filepath.Join(a.Dir, FilePairing)); err == nil && a.mayProve(code) { //nolint:gosec // the device directory
		if err := a.Client.Possession(ctx, a.Key, a.ID.SerialNumber, a.ID.Model, string(code)); err != nil {
			return a.fail(err)
		}
		a.sayProved(code, "sent its proof of possession with the pairing code (a Claim with the same code binds the device)")
		a.provedNow(code)
		paired = true
	}
	if raw, err := os.ReadFile(filepath.Join(a.Dir, FilePairingToken)); err == nil && !paired && a.mayProve(raw) { //nolint:gosec // the device directory
		token, err := protocol.ParsePairingToken(string(raw))
		if err != nil {
			return a.fail(err)
		}
		if err := a.Client.ClaimWithToken(ctx, a.Key, a.ID.SerialNumber, a.ID.Model, token); err != nil {
			return a.fail(err)
		}
		a.sayProved(raw, "presented the tenant's pairing token (the manager binds the device if the token holds)", "tenant", token.Tenant)
		a.provedNow(raw)
		paired = true
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
		if len(a.proved) > 0 && a.Clock.Now().Sub(a.provedAt) >= reproveAfter {
			// Still not bound long after the proof: it may have been lost
			// (or the Claim made later); prove again.
			a.proved = nil
		}
		next, err := pairedRetry, err
		if !paired {
			next, err = a.fail(err)
		}
		a.say("waiting", "waiting for the device to be bound to a tenant (its owner's Claim); enrolling when it is", "retryIn", next.String())
		return next, err
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
	a.say("enrolled", "enrolled", "notAfter", iss.Leaf.NotAfter.UTC().Format(time.RFC3339), "uri", id.URI)
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
	a.say("renewed", "renewed", "notAfter", newLeaf.NotAfter.UTC().Format(time.RFC3339))
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
