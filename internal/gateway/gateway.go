// Package gateway is custody-gateway: the only Custody component devices
// talk to, over HTTPS from the internet.
//
// It is stateless, so it runs as N replicas: challenges are HMAC tokens any
// replica checks, and a challenge's single use is enforced by the API server
// (each proof is a DeviceProof named after the challenge's nonce). It holds
// no power worth stealing: it reads Devices and public trust bundles, records
// DeviceProofs and heartbeats, and never approves or signs; the manager
// verifies every proof again before anything is issued.
//
// It reads from a watch-fed cache (NewCache), never from the API server per
// request, so that a fleet's heartbeats cost no API-server reads; an
// ownership change reaches it as a watch event, and it measures how far the
// cache trails the API server and refuses mutual-TLS requests while that
// exceeds MaxStaleness (see freshness).
//
// What it must never do: tell a caller that has not proved a device's key
// whether a serial number exists (every failed proof gets the same answer),
// log a request body, or accept a certificate whose device is no longer bound
// to the tenant in it.
package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/est"
	"github.com/custody-dev/custody/pkg/protocol"
)

// FieldOwner is the field manager of the gateway's writes.
const FieldOwner = "custody-gateway"

// Options configure a Gateway.
type Options struct {
	// Client talks to the API server as the gateway's ServiceAccount: it
	// records proofs and heartbeats, and reads directly only to spot-check
	// the cache and to answer a ticket the cache does not hold yet.
	Client client.Client
	// Cache is the watch-fed cache every request reads from (NewCache).
	// Start runs it.
	Cache cache.Cache
	// MaxStaleness is how far the cache may trail the API server, as
	// measured, before mutual-TLS requests are refused as unavailable.
	// Default 1s.
	MaxStaleness time.Duration
	// CheckInterval is how often one recently used Device is read from the
	// API server and compared with the cache. Default 5s.
	CheckInterval time.Duration
	// Challenges issues and checks challenge tokens.
	Challenges *challenge.Issuer
	// Namespace is the operator namespace, where DeviceProofs are recorded.
	Namespace string
	// TrustDomain is the SPIFFE trust domain of device identities.
	TrustDomain string
	// Clock is injected for rate limits, heartbeat coalescing and
	// certificate validity.
	Clock clock.PassiveClock
	// LagClock times the cache's lag behind the API server (real time by
	// default; tests that move Clock forward leave it alone).
	LagClock clock.PassiveClock
	// Wait is how long an enrollment waits for its certificate before
	// answering 202 with a ticket. Default 10s.
	Wait time.Duration
	// HeartbeatInterval: a heartbeat writes status.lastSeen only when the
	// cached one is at least this old (or the report changed), whichever
	// replica answers: a fleet of N devices costs at most N/interval writes
	// per second however often its devices send heartbeats. Default 5m.
	HeartbeatInterval time.Duration
	// PerClientRate and PerSerialRate are requests per minute (burst the
	// same). Defaults 120 and 30.
	PerClientRate, PerSerialRate int
	// Log receives one line per request, without bodies.
	Log logr.Logger
	// Registerer receives the gateway's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Gateway serves the device protocol.
type Gateway struct {
	opts      Options
	mux       *http.ServeMux
	perClient *limiter
	perSerial *limiter
	metrics   *metrics
	fresh     *freshness
	proofs    *waiters
	anchors   anchorCache
	// ready is closed once the cache has synced.
	ready chan struct{}
	// recent is the last Device a request named, for spot checks.
	recent atomic.Pointer[string]
}

// New returns a Gateway.
func New(opts Options) (*Gateway, error) {
	if opts.Client == nil || opts.Cache == nil || opts.Challenges == nil || opts.Namespace == "" {
		return nil, errors.New("gateway: Client, Cache, Challenges and Namespace are required")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = contract.DefaultTrustDomain
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.LagClock == nil {
		opts.LagClock = clock.RealClock{}
	}
	if opts.Wait == 0 {
		opts.Wait = 10 * time.Second
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = 5 * time.Minute
	}
	if opts.MaxStaleness == 0 {
		opts.MaxStaleness = time.Second
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = 5 * time.Second
	}
	if opts.PerClientRate == 0 {
		opts.PerClientRate = 120
	}
	if opts.PerSerialRate == 0 {
		opts.PerSerialRate = 30
	}
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	g := &Gateway{
		opts:      opts,
		mux:       http.NewServeMux(),
		perClient: newLimiter(opts.PerClientRate, time.Minute, opts.Clock),
		perSerial: newLimiter(opts.PerSerialRate, time.Minute, opts.Clock),
		metrics:   newMetrics(opts.Registerer),
		fresh:     newFreshness(opts.LagClock, opts.MaxStaleness, opts.Registerer),
		proofs:    newWaiters(),
		ready:     make(chan struct{}),
	}
	// Informers are created here, before the cache starts, so that no
	// event is missed.
	ctx := context.Background()
	devices, err := opts.Cache.GetInformer(ctx, &custodyv1alpha1.Device{})
	if err != nil {
		return nil, err
	}
	if _, err := devices.AddEventHandler(g.fresh.handler()); err != nil {
		return nil, err
	}
	proofs, err := opts.Cache.GetInformer(ctx, &custodyv1alpha1.DeviceProof{})
	if err != nil {
		return nil, err
	}
	if _, err := proofs.AddEventHandler(g.proofs.handler()); err != nil {
		return nil, err
	}
	for _, obj := range []client.Object{&custodyv1alpha1.Tenant{}, &corev1.ConfigMap{}} {
		if _, err := opts.Cache.GetInformer(ctx, obj); err != nil {
			return nil, err
		}
	}
	g.handle("POST "+protocol.PathChallenge, "challenge", g.challenge)
	g.handle("POST "+protocol.PathEnroll, "enroll", g.enroll)
	g.handle("GET "+protocol.PathEnrollments+"{ticket}", "enrollment", g.enrollment)
	g.handle("POST "+protocol.PathPossession, "possession", g.possession)
	g.handle("POST "+protocol.PathHeartbeat, "heartbeat", g.heartbeat)
	// EST (RFC 7030), without a label and under the tenant's name as label.
	for _, label := range []string{"", "{label}"} {
		g.handle("GET "+estPattern(label, "cacerts"), "est-cacerts", g.estCACerts)
		g.handle("GET "+estPattern(label, "csrattrs"), "est-csrattrs", g.estCSRAttrs)
		g.handle("POST "+estPattern(label, "simpleenroll"), "est-simpleenroll", g.estReenroll)
		g.handle("POST "+estPattern(label, "simplereenroll"), "est-simplereenroll", g.estReenroll)
	}
	return g, nil
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.mux.ServeHTTP(w, r) }

// noteRecent records name as the last Device a request named. It stores
// a copy: a pointer into the request's Device would race with the decode
// of a later write's answer into that Device (the race detector saw it).
func (g *Gateway) noteRecent(name string) { g.recent.Store(&name) }

// Start runs the cache, waits for it to sync (until then every request is
// answered 503), then spot-checks it every CheckInterval until ctx ends.
func (g *Gateway) Start(ctx context.Context) error {
	errs := make(chan error, 1)
	go func() { errs <- g.opts.Cache.Start(ctx) }()
	if !g.opts.Cache.WaitForCacheSync(ctx) {
		select {
		case err := <-errs:
			if err != nil {
				return fmt.Errorf("gateway cache: %w", err)
			}
		default:
		}
		return errors.New("gateway cache: did not sync")
	}
	close(g.ready)
	t := time.NewTicker(g.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case <-t.C:
			if name := g.recent.Load(); name != nil {
				if err := g.fresh.spotCheck(ctx, g.opts.Client, g.opts.Cache, *name); err != nil && ctx.Err() == nil {
					g.opts.Log.Error(err, "spot-checking the Device cache", "device", *name)
				}
			}
		}
	}
}

// Ready is closed once the cache has synced and requests are served.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

func (g *Gateway) isReady() bool {
	select {
	case <-g.ready:
		return true
	default:
		return false
	}
}

// cachedVersion is the resourceVersion of Device name in the cache.
func (g *Gateway) cachedVersion(name string) (string, bool) {
	d := &custodyv1alpha1.Device{}
	if err := g.opts.Cache.Get(context.Background(), client.ObjectKey{Name: name}, d); err != nil {
		return "", false
	}
	return d.ResourceVersion, true
}

// WatchError is the cache's watch error handler (NewCache's watchErrors):
// it counts the error. The informer re-establishes the watch; the cache's
// measured staleness tells whether it fell behind meanwhile.
func (g *Gateway) WatchError(err error) {
	g.fresh.watchErrors.Inc()
	g.opts.Log.Info("a watch of the gateway cache ended; re-establishing", "error", err.Error())
}

// response is what a handler answers; the wrapper writes and logs it.
type response struct {
	status      int
	body        []byte
	contentType string
	// transferEncoding is sent as Content-Transfer-Encoding (EST bodies).
	transferEncoding string
	retryAfter       int
	// outcome is a short word for the log and metrics (never a secret).
	outcome string
	device  string
}

type handlerFunc func(r *http.Request, body []byte) response

func (g *Gateway) handle(pattern, name string, h handlerFunc) {
	g.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var resp response
		if !g.perClient.allow(clientKey(r)) {
			resp = rateLimited()
		} else if !g.isReady() {
			resp = unavailable()
		} else if body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, protocol.MaxBodyBytes)); err != nil {
			resp = errorResponse(http.StatusRequestEntityTooLarge, protocol.ErrBadRequest, "The request body is too large or unreadable.")
		} else {
			resp = h(r, body)
		}
		if resp.contentType == "" {
			resp.contentType = "application/json"
		}
		w.Header().Set("Content-Type", resp.contentType)
		w.Header().Set("Cache-Control", "no-store")
		if resp.transferEncoding != "" {
			w.Header().Set("Content-Transfer-Encoding", resp.transferEncoding)
		}
		if resp.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(resp.retryAfter))
		}
		w.WriteHeader(resp.status)
		_, _ = w.Write(resp.body)
		elapsed := time.Since(start)
		g.metrics.observe(name, resp.status, elapsed)
		g.opts.Log.Info("request", "endpoint", name, "status", resp.status, "outcome", resp.outcome, "device", resp.device,
			"client", clientKey(r), "mtls", r.TLS != nil && len(r.TLS.PeerCertificates) > 0, "durationMs", elapsed.Milliseconds())
	})
}

func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func jsonResponse(status int, v any, outcome string) response {
	b, err := json.Marshal(v)
	if err != nil {
		return errorResponse(http.StatusInternalServerError, protocol.ErrUnavailable, "Internal error.")
	}
	return response{status: status, body: b, outcome: outcome}
}

func errorResponse(status int, code, msg string) response {
	b, _ := json.Marshal(protocol.Error{Code: code, Message: msg})
	return response{status: status, body: b, outcome: code}
}

// notAccepted is the one answer to every failed proof, whether the serial
// number exists or not.
func notAccepted() response {
	return errorResponse(http.StatusForbidden, protocol.ErrProofNotAccepted, "The proof was not accepted.")
}

func badRequest(msg string) response {
	return errorResponse(http.StatusBadRequest, protocol.ErrBadRequest, msg)
}

func unavailable() response {
	r := errorResponse(http.StatusServiceUnavailable, protocol.ErrUnavailable, "Try again later.")
	r.retryAfter = 5
	return r
}

func rateLimited() response {
	const after = 60 // seconds: the limiters' window
	r := errorResponse(http.StatusTooManyRequests, protocol.ErrRateLimited, "Too many requests; retry after the Retry-After delay.")
	r.retryAfter = after
	return r
}

func decode(body []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// ParseChallengeRequest parses and checks a challenge request.
func ParseChallengeRequest(body []byte) (protocol.ChallengeRequest, error) {
	var req protocol.ChallengeRequest
	if err := decode(body, &req); err != nil {
		return req, errors.New("malformed JSON")
	}
	if !contract.ValidSerialNumber(req.SerialNumber) || !contract.ValidModel(req.Model) {
		return req, errors.New("serialNumber and model must be upper-case letters, digits and '-'")
	}
	if req.Purpose != protocol.PurposeEnroll && req.Purpose != protocol.PurposePossession {
		return req, errors.New("purpose must be enroll or possession")
	}
	return req, nil
}

// challenge issues a challenge for any well-formed serial number: whether
// the device exists is not looked up, so the answer tells nothing.
func (g *Gateway) challenge(_ *http.Request, body []byte) response {
	req, err := ParseChallengeRequest(body)
	if err != nil {
		return badRequest(err.Error())
	}
	if !g.perSerial.allow(req.Model + "/" + req.SerialNumber) {
		return rateLimited()
	}
	tok, exp, err := g.opts.Challenges.Issue(req.Purpose, req.SerialNumber, req.Model)
	if err != nil {
		return unavailable()
	}
	return jsonResponse(http.StatusOK, protocol.ChallengeResponse{Challenge: tok, ExpiresAt: exp.UTC().Format(time.RFC3339)}, "issued")
}

// ParseEnrollRequest parses an enrollment and its CSR.
func ParseEnrollRequest(body []byte) (protocol.EnrollRequest, *x509.CertificateRequest, challenge.Claims, error) {
	var req protocol.EnrollRequest
	if err := decode(body, &req); err != nil {
		return req, nil, challenge.Claims{}, errors.New("malformed JSON")
	}
	csr, err := protocol.ParseCSRPEM([]byte(req.CSR))
	if err != nil {
		return req, nil, challenge.Claims{}, err
	}
	c, _, _, err := challenge.Parse(req.Challenge)
	if err != nil || len(req.Signature) == 0 || len(req.Signature) > 512 {
		return req, nil, challenge.Claims{}, errors.New("malformed challenge or signature")
	}
	return req, csr, c, nil
}

// proveDevice checks a challenge and the device's signature over payload.
// It returns the Device when both hold, or else the answer to send: the
// same for every failed proof, so that it never tells whether the serial
// number exists.
func (g *Gateway) proveDevice(ctx context.Context, token string, purpose protocol.Purpose, c challenge.Claims, payload, sig []byte) (*custodyv1alpha1.Device, *response) {
	fail := func(r response) (*custodyv1alpha1.Device, *response) { return nil, &r }
	if !g.perSerial.allow(c.Model + "/" + c.SerialNumber) {
		return fail(rateLimited())
	}
	if _, err := g.opts.Challenges.Check(token, purpose, c.SerialNumber, c.Model); err != nil {
		return fail(notAccepted())
	}
	dev := &custodyv1alpha1.Device{}
	if err := g.opts.Cache.Get(ctx, client.ObjectKey{Name: custodyv1alpha1.DeviceName(c.Model, c.SerialNumber)}, dev); err != nil {
		if apierrors.IsNotFound(err) {
			return fail(notAccepted())
		}
		return fail(unavailable())
	}
	g.noteRecent(dev.Name)
	key, err := contract.DeviceKey(dev)
	if err != nil || contract.CheckChallengeProof(dev, key, c, purpose, payload, sig) != contract.ChallengeProven {
		return fail(notAccepted())
	}
	return dev, nil
}

// notBoundRetry is how long an unbound device waits before trying again
// (seconds): short enough that a device powered up before its owner's claim
// gets its certificate soon after the claim binds, long enough that waiting devices cost
// little.
const notBoundRetry = 15

func (g *Gateway) enroll(r *http.Request, body []byte) response {
	req, csr, c, err := ParseEnrollRequest(body)
	if err != nil {
		return badRequest("Malformed enrollment: " + err.Error())
	}
	dev, failed := g.proveDevice(r.Context(), req.Challenge, protocol.PurposeEnroll, c, protocol.EnrollPayload(req.Challenge, csr.Raw), req.Signature)
	if failed != nil {
		return *failed
	}
	// From here on the caller has proved the device's key.
	id, err := contract.CheckDeviceCSR(dev, g.opts.TrustDomain, csr.Raw)
	if errors.Is(err, contract.ErrNotBound) {
		resp := errorResponse(http.StatusConflict, protocol.ErrNotBound, "The device is not bound to a tenant yet; retry later.")
		resp.retryAfter, resp.device = notBoundRetry, dev.Name
		return resp
	}
	if err != nil {
		b, _ := json.Marshal(protocol.Error{Code: protocol.ErrIdentityMismatch, Message: "The CSR must ask for exactly this identity and nothing else: " + err.Error() + ".", Identity: &id})
		return response{status: http.StatusConflict, body: b, outcome: protocol.ErrIdentityMismatch, device: dev.Name}
	}
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(c.Nonce), Namespace: g.opts.Namespace, Labels: map[string]string{contract.LabelDevice: dev.Name}},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofEnroll, DeviceName: dev.Name, Challenge: req.Challenge,
			Signature: base64.StdEncoding.EncodeToString(req.Signature), CSR: req.CSR},
	}
	return g.record(r.Context(), proof, false)
}

// record creates a proof and waits for its outcome. A proof that exists
// already is a replayed challenge (refused) unless idempotent is set (a
// renewal retried with the same certificate and CSR).
func (g *Gateway) record(ctx context.Context, proof *custodyv1alpha1.DeviceProof, idempotent bool) response {
	err := g.opts.Client.Create(ctx, proof, client.FieldOwner(FieldOwner))
	switch {
	case apierrors.IsAlreadyExists(err) && !idempotent:
		return notAccepted()
	case err != nil && !apierrors.IsAlreadyExists(err):
		g.opts.Log.Error(err, "recording a device proof", "device", proof.Spec.DeviceName)
		return unavailable()
	}
	return g.await(ctx, proof.Name, g.opts.Wait)
}

// await waits, on the cache's watch of DeviceProofs, until the proof is
// decided or wait has passed. A proof the cache does not hold yet (it was
// just created) is pending; when wait is over and the cache still lacks
// it, the API server is asked once, so that a ticket is answered truly.
func (g *Gateway) await(ctx context.Context, name string, wait time.Duration) response {
	wake := g.proofs.add(name)
	defer g.proofs.remove(name, wake)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		p := &custodyv1alpha1.DeviceProof{}
		err := g.opts.Cache.Get(ctx, client.ObjectKey{Namespace: g.opts.Namespace, Name: name}, p)
		switch {
		case err == nil:
			if r, decided := proofOutcome(p); decided {
				return r
			}
		case !apierrors.IsNotFound(err):
			return unavailable()
		}
		select {
		case <-wake:
			continue
		case <-ctx.Done():
		case <-timer.C:
		}
		if err != nil {
			// Not in the cache: ask the API server whether it exists.
			if err := g.opts.Client.Get(ctx, client.ObjectKey{Namespace: g.opts.Namespace, Name: name}, p); err != nil {
				if apierrors.IsNotFound(err) {
					return notAccepted()
				}
				return unavailable()
			}
			if r, decided := proofOutcome(p); decided {
				return r
			}
		}
		r := jsonResponse(http.StatusAccepted, protocol.EnrollResponse{Ticket: name, RetryAfterSeconds: 2}, "pending")
		r.retryAfter, r.device = 2, p.Spec.DeviceName
		return r
	}
}

// proofOutcome is the answer to a decided proof.
func proofOutcome(p *custodyv1alpha1.DeviceProof) (response, bool) {
	switch p.Status.Phase {
	case custodyv1alpha1.DeviceProofPhaseIssued:
		r := jsonResponse(http.StatusOK, protocol.EnrollResponse{Certificate: p.Status.Certificate, CA: p.Status.CA}, "issued")
		r.device = p.Spec.DeviceName
		return r, true
	case custodyv1alpha1.DeviceProofPhaseRejected:
		r := errorResponse(http.StatusForbidden, protocol.ErrProofNotAccepted, "The proof was not accepted.")
		if p.Status.Reason == custodyv1alpha1.DeviceProofReasonNotBound {
			r = errorResponse(http.StatusConflict, protocol.ErrNotBound, "The device is not bound to a tenant; retry later.")
		}
		r.device = p.Spec.DeviceName
		return r, true
	}
	return response{}, false
}

// enrollment answers a ticket: the proof's name, as unguessable as the
// challenge nonce it came from. The certificate it returns is public.
func (g *Gateway) enrollment(r *http.Request, _ []byte) response {
	ticket := r.PathValue("ticket")
	if !contract.ValidTicket(ticket) {
		return notAccepted()
	}
	return g.await(r.Context(), ticket, 0)
}

// ParsePossessionRequest parses a possession proof.
func ParsePossessionRequest(body []byte) (protocol.PossessionRequest, challenge.Claims, error) {
	var req protocol.PossessionRequest
	if err := decode(body, &req); err != nil {
		return req, challenge.Claims{}, errors.New("malformed JSON")
	}
	if d, err := hex.DecodeString(req.PairingDigest); err != nil || len(d) != sha256.Size || strings.ToLower(req.PairingDigest) != req.PairingDigest {
		return req, challenge.Claims{}, errors.New("pairingDigest must be 64 lower-case hex digits")
	}
	c, _, _, err := challenge.Parse(req.Challenge)
	if err != nil || len(req.Signature) == 0 || len(req.Signature) > 512 {
		return req, challenge.Claims{}, errors.New("malformed challenge or signature")
	}
	if (req.Tenant != "" || req.TokenID != "") && (!protocol.ValidPairingTokenTenant(req.Tenant) || !protocol.ValidPairingTokenID(req.TokenID)) {
		return req, challenge.Claims{}, errors.New("tenant and tokenID must name a pairing token")
	}
	return req, c, nil
}

// possession records a possession proof. The answer is the same whether or
// not a Claim waits for the pairing code: the device learns nothing about
// claims, and a claimant sees the outcome on its own Claim.
func (g *Gateway) possession(r *http.Request, body []byte) response {
	req, c, err := ParsePossessionRequest(body)
	if err != nil {
		return badRequest("Malformed possession proof: " + err.Error())
	}
	dev, failed := g.proveDevice(r.Context(), req.Challenge, protocol.PurposePossession, c, protocol.PossessionPayload(req.Challenge, req.PairingDigest), req.Signature)
	if failed != nil {
		return *failed
	}
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.ProofName(c.Nonce), Namespace: g.opts.Namespace, Labels: map[string]string{contract.LabelDevice: dev.Name}},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofPossession, DeviceName: dev.Name, Challenge: req.Challenge,
			Signature: base64.StdEncoding.EncodeToString(req.Signature), PairingDigest: req.PairingDigest},
	}
	if req.TokenID != "" {
		proof.Spec.PairingToken = &custodyv1alpha1.DeviceProofToken{Tenant: req.Tenant, TokenID: req.TokenID}
	}
	if err := g.opts.Client.Create(r.Context(), proof, client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return notAccepted()
		}
		return unavailable()
	}
	resp := jsonResponse(http.StatusAccepted, map[string]string{"status": "recorded"}, "recorded")
	resp.device = dev.Name
	return resp
}

// authenticate accepts a client certificate only if it is a current
// certificate of a device bound to the tenant it names: see
// acceptCertificate. The Device
// is read from the watch-fed cache, which holds a release, transfer or
// decommission as soon as the watch delivers it, so the device is cut off
// at its next request; while the cache is measured to trail the API server
// by more than MaxStaleness, every mutual-TLS request is refused as
// unavailable instead.
func (g *Gateway) authenticate(ctx context.Context, r *http.Request) (*custodyv1alpha1.Device, *x509.Certificate, []*x509.Certificate, response, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil, nil, errorResponse(http.StatusUnauthorized, protocol.ErrCertificateRefused, "A client certificate is required."), false
	}
	refused := errorResponse(http.StatusForbidden, protocol.ErrCertificateRefused, "The client certificate is not a current certificate of a bound device.")
	leaf := r.TLS.PeerCertificates[0]
	// The identity is read from the certificate's DER, which must hold it
	// and nothing else; Go's parsed view is not trusted with it.
	claimed, err := protocol.CertificateIdentity(leaf.Raw)
	if err != nil {
		return nil, nil, nil, refused, false
	}
	u, err := url.Parse(claimed.URI)
	if err != nil {
		return nil, nil, nil, refused, false
	}
	tenant, name, ok := protocol.ParseSPIFFEID(g.opts.TrustDomain, u)
	if !ok {
		return nil, nil, nil, refused, false
	}
	if g.fresh.stale(g.cachedVersion) {
		g.opts.Log.Info("refusing a mutual-TLS request: " + g.fresh.describeStale())
		return nil, nil, nil, unavailable(), false
	}
	dev := &custodyv1alpha1.Device{}
	if err := g.opts.Cache.Get(ctx, client.ObjectKey{Name: name}, dev); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, nil, refused, false
		}
		return nil, nil, nil, unavailable(), false
	}
	g.noteRecent(dev.Name)
	ref := dev.Spec.ClaimRef
	if ref == nil || ref.Tenant != tenant {
		refused.device = dev.Name
		return nil, nil, nil, refused, false
	}
	cas, resp, ok := g.acceptCertificate(ctx, dev, leaf)
	if !ok {
		return nil, nil, nil, resp, false
	}
	return dev, leaf, cas, response{}, true
}

// acceptCertificate applies the certificate-acceptance rule
// (contract.AcceptCertificate) to leaf, presented for bound device dev,
// against the tenant's published CA bundle, which it returns.
func (g *Gateway) acceptCertificate(ctx context.Context, dev *custodyv1alpha1.Device, leaf *x509.Certificate) ([]*x509.Certificate, response, bool) {
	cas, err := g.anchors.get(ctx, g.opts.Cache, dev.Spec.ClaimRef.Namespace)
	if err != nil {
		return nil, unavailable(), false
	}
	if v := contract.AcceptCertificate(dev, g.opts.TrustDomain, leaf, cas, g.opts.Clock.Now()); v != contract.CertificateAccepted {
		refused := errorResponse(http.StatusForbidden, protocol.ErrCertificateRefused, "The client certificate is not a current certificate of a bound device.")
		refused.outcome, refused.device = "refused-"+string(v), dev.Name
		return nil, refused, false
	}
	return cas, response{}, true
}

// ParseHeartbeat parses a heartbeat.
func ParseHeartbeat(body []byte) (protocol.HeartbeatRequest, error) {
	var hb protocol.HeartbeatRequest
	if len(strings.TrimSpace(string(body))) == 0 {
		return hb, nil
	}
	if err := decode(body, &hb); err != nil {
		return hb, errors.New("malformed JSON")
	}
	if len(hb.FirmwareVersion) > 64 || len(hb.State) > 64 {
		return hb, errors.New("firmwareVersion and state are at most 64 characters")
	}
	return hb, nil
}

// heartbeat records lastSeen and what the device reports. It writes only
// when the report changed or the cached lastSeen is HeartbeatInterval old,
// so that however often devices send heartbeats, and whichever replica
// answers, a device costs at most one write per interval.
func (g *Gateway) heartbeat(r *http.Request, body []byte) response {
	dev, _, _, resp, ok := g.authenticate(r.Context(), r)
	if !ok {
		return resp
	}
	hb, err := ParseHeartbeat(body)
	if err != nil {
		return badRequest(err.Error())
	}
	now := g.opts.Clock.Now()
	report := &custodyv1alpha1.DeviceReport{FirmwareVersion: hb.FirmwareVersion, State: hb.State}
	recent := func(last *custodyv1alpha1.DeviceReport, at time.Time) bool {
		return last != nil && *last == *report && now.Sub(at) < g.opts.HeartbeatInterval
	}
	if dev.Status.LastSeen != nil && recent(dev.Status.Reported, dev.Status.LastSeen.Time) {
		return response{status: http.StatusNoContent, outcome: "coalesced", device: dev.Name}
	}
	// This replica's own write the watch has not delivered yet.
	if last, at, ok := g.fresh.written(dev.Name); ok && recent(last, at) {
		return response{status: http.StatusNoContent, outcome: "coalesced", device: dev.Name}
	}
	patch := map[string]any{"status": map[string]any{"lastSeen": metav1.NewTime(now), "reported": report}}
	raw, err := json.Marshal(patch)
	if err != nil {
		return unavailable()
	}
	if err := g.opts.Client.Status().Patch(r.Context(), dev, client.RawPatch("application/merge-patch+json", raw), client.FieldOwner(FieldOwner)); err != nil {
		g.opts.Log.Error(err, "recording a heartbeat", "device", dev.Name)
		return unavailable()
	}
	// The answer is the Device as the API server now holds it: the watch
	// must deliver that version, which measures the cache's lag.
	g.fresh.expect(dev.Name, dev.ResourceVersion, report, now)
	// The watch may have delivered it before the expectation was recorded;
	// the cache's store is updated before its handlers run, so this read
	// sees anything the handler missed.
	cached := &custodyv1alpha1.Device{}
	if err := g.opts.Cache.Get(r.Context(), client.ObjectKey{Name: dev.Name}, cached); err == nil {
		g.fresh.observed(dev.Name, cached.ResourceVersion, false)
	}
	return response{status: http.StatusNoContent, outcome: "recorded", device: dev.Name}
}

// estPattern is the ServeMux pattern of EST operation op under label ("":
// none).
func estPattern(label, op string) string {
	if label == "" {
		return "/.well-known/est/" + op
	}
	return protocol.ESTPath(label, op)
}

// estOK is a 200 EST answer: base64 DER with Content-Transfer-Encoding.
func estOK(der []byte, contentType, outcome, device string) response {
	return response{status: http.StatusOK, body: est.EncodeBase64(der), contentType: contentType, transferEncoding: est.TransferEncodingBase64,
		outcome: outcome, device: device}
}

// noCACerts is the one answer to a cacerts request that names no tenant
// with a published CA: an unknown or malformed label, a tenant that is not
// ready or being deleted, or no label and no client certificate.
func noCACerts() response {
	return errorResponse(http.StatusNotFound, protocol.ErrNotFound,
		"No CA certificates are published under this EST label. The label is the tenant's name: /.well-known/est/<tenant>/cacerts.")
}

// estCACerts returns a tenant's CA bundle as certs-only PKCS#7. Under a
// label (the tenant's name) it needs no client certificate (RFC 7030
// §4.1.1): a CA certificate is public, and tenant names are not secret (each
// device certificate and its tenant CA's subject carry one). Every label
// that names no ready tenant gets the same 404. Without a label the device's
// client certificate selects its tenant; without either there is nothing
// to return (there is no CA common to all tenants), and the answer is that
// same 404.
func (g *Gateway) estCACerts(r *http.Request, _ []byte) response {
	label := r.PathValue("label")
	if label == "" {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return noCACerts()
		}
		dev, _, cas, resp, ok := g.authenticate(r.Context(), r)
		if !ok {
			return resp
		}
		der, err := est.EncodeCertsOnly(cas)
		if err != nil {
			return unavailable()
		}
		return estOK(der, est.ContentTypeCertsOnly, "cacerts", dev.Name)
	}
	if !protocol.ValidPairingTokenTenant(label) {
		return noCACerts()
	}
	tn := &custodyv1alpha1.Tenant{}
	if err := g.opts.Cache.Get(r.Context(), client.ObjectKey{Name: label}, tn); err != nil {
		if apierrors.IsNotFound(err) {
			return noCACerts()
		}
		return unavailable()
	}
	if !tn.DeletionTimestamp.IsZero() {
		return noCACerts()
	}
	cas, err := g.anchors.get(r.Context(), g.opts.Cache, tn.TargetNamespace())
	switch {
	case apierrors.IsNotFound(err) || errors.Is(err, contract.ErrNoTrustBundle):
		return noCACerts()
	case err != nil:
		return unavailable()
	}
	der, err := est.EncodeCertsOnly(cas)
	if err != nil {
		return unavailable()
	}
	return estOK(der, est.ContentTypeCertsOnly, "cacerts", "")
}

// estCSRAttrs tells an EST client what its CSR must hold (RFC 7030 §4.5):
// the same answer for everyone, with or without a label or a certificate.
func (g *Gateway) estCSRAttrs(_ *http.Request, _ []byte) response {
	der, err := est.EncodeCSRAttrs()
	if err != nil {
		return unavailable()
	}
	return estOK(der, est.ContentTypeCSRAttrs, "csrattrs", "")
}

// ParseESTCSR parses an EST enrollment body: a base64 DER PKCS#10. The body
// is base64 whatever Content-Transfer-Encoding says, or if it is absent
// (RFC 8951 §3).
func ParseESTCSR(body []byte) (*x509.CertificateRequest, error) {
	der, err := est.DecodeBase64(body)
	if err != nil {
		return nil, errors.New("the body must be a base64 DER PKCS#10 CSR (RFC 7030, RFC 8951)")
	}
	return protocol.ParseCSRDER(der)
}

// estReenroll renews the certificate the device authenticated with, for a
// CSR of the same key and identity. Under a label, the label must be the
// device's tenant. Retries of the same request are idempotent; a pending one
// answers 202 with Retry-After (RFC 7030 §4.2.3).
func (g *Gateway) estReenroll(r *http.Request, body []byte) response {
	dev, leaf, _, resp, ok := g.authenticate(r.Context(), r)
	if !ok {
		return resp
	}
	ref := dev.Spec.ClaimRef
	if label := r.PathValue("label"); label != "" && label != ref.Tenant {
		refused := errorResponse(http.StatusForbidden, protocol.ErrCertificateRefused, "The client certificate is not a current certificate of a bound device.")
		refused.device = dev.Name
		return refused
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != est.ContentTypePKCS10 {
		return errorResponse(http.StatusUnsupportedMediaType, protocol.ErrUnsupportedMediaType, "An EST enrollment is a base64 DER PKCS#10 CSR with Content-Type application/pkcs10.")
	}
	csr, err := ParseESTCSR(body)
	if err != nil {
		return badRequest(err.Error())
	}
	if !contract.SameRenewalKey(csr, leaf) {
		return errorResponse(http.StatusBadRequest, protocol.ErrIdentityMismatch, "A renewal keeps the certificate's key and identity; enroll with a fresh challenge to change keys.")
	}
	if _, err := contract.CheckDeviceCSR(dev, g.opts.TrustDomain, csr.Raw); err != nil {
		return errorResponse(http.StatusBadRequest, protocol.ErrIdentityMismatch, "A renewal asks for the certificate's identity and nothing else: "+err.Error()+".")
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})
	proof := &custodyv1alpha1.DeviceProof{
		ObjectMeta: metav1.ObjectMeta{Name: contract.RenewProofName(leaf.Raw, csr.Raw), Namespace: g.opts.Namespace, Labels: map[string]string{contract.LabelDevice: dev.Name}},
		Spec: custodyv1alpha1.DeviceProofSpec{Purpose: custodyv1alpha1.DeviceProofRenew, DeviceName: dev.Name, CSR: string(csrPEM),
			ClientCertificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}))},
	}
	out := g.record(r.Context(), proof, true)
	if out.status != http.StatusOK {
		if out.status == http.StatusAccepted {
			out.body, out.contentType = nil, "text/plain"
		}
		return out
	}
	var er protocol.EnrollResponse
	if err := json.Unmarshal(out.body, &er); err != nil {
		return unavailable()
	}
	chain, err := protocol.ParseCertificatesPEM([]byte(er.Certificate))
	if err != nil {
		return unavailable()
	}
	der, err := est.EncodeCertsOnly(chain[:1])
	if err != nil {
		return unavailable()
	}
	return estOK(der, est.ContentTypeCertsOnly, "issued", dev.Name)
}
