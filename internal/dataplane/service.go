package dataplane

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// CalloutQueue is the queue group the callout answers in, so that several
// answering processes share the requests.
const CalloutQueue = "custody-callout"

// Metrics of the data plane, registered by the manager.
var (
	Admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_dataplane_admissions_total",
		Help: "Data-plane connections the auth callout decided on, by result (admitted, refused) and reason.",
	}, []string{"result", "reason"})
	CutOffSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custody_dataplane_cutoff_seconds",
		Help:    "Time from an ownership change being observed to the last of the device's data-plane connections outside its current tenant being closed.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	})
	ConnectionsClosed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custody_dataplane_connections_closed_total",
		Help: "Data-plane connections the cut-off closed.",
	})
)

// Collectors are the data plane's metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{Admissions, CutOffSeconds, ConnectionsClosed}
}

// Service is the manager's side of the data plane: it answers the auth
// callout, pushes tenant accounts, and closes connections on cut-off.
type Service struct {
	Keys        *Keys
	TrustDomain string
	// Reader reads Devices, Tenants and trust bundles (the manager's cache:
	// the same one the cut-off is driven from, so a client that reconnects
	// after its connection was closed is decided on the state that closed
	// it).
	Reader client.Reader
	Clock  clock.PassiveClock
	Log    logr.Logger
	// URL lists the data plane's NATS servers (comma separated) and
	// Options add how to reach them (TLS, a client certificate).
	URL     string
	Options []nats.Option
	// MQTTURL is a data-plane server's MQTT listener (ssl://host:port) and
	// TLSConfig the client TLS configuration to reach it: the purge ends a
	// device's MQTT session over MQTT.
	MQTTURL   string
	TLSConfig *tls.Config
	// GatherWait bounds how long a question to every server waits for
	// answers beyond the servers already known to answer (default 250ms).
	GatherWait time.Duration

	mu      sync.Mutex
	sys     *nats.Conn
	callout *nats.Conn
	pushed  map[string][32]byte  // account public key → hash of the JWT pushed
	owners  map[string]types.UID // account public key → its Tenant's UID (stable: its keys derive from it)
	servers int                  // most servers that ever answered one question
	grants  accessGrants         // what the callout granted each DataAccess's holders
}

// Connect opens the system and callout connections.
func (s *Service) Connect() error {
	sysJWT, sysSeed, err := s.Keys.SystemUserCreds()
	if err != nil {
		return err
	}
	coJWT, coSeed, err := s.Keys.CalloutUserCreds()
	if err != nil {
		return err
	}
	// A server that restarts may have lost the accounts pushed to it (an
	// embedded one without a persistent store): push again after a
	// reconnect.
	forget := nats.ReconnectHandler(func(*nats.Conn) { s.forgetPushed() })
	sys, err := nats.Connect(s.URL, append(append([]nats.Option{}, s.Options...), nats.UserJWTAndSeed(sysJWT, string(sysSeed)), nats.Name("custody-system"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), forget)...)
	if err != nil {
		return fmt.Errorf("connecting to the data plane as its system user: %w", err)
	}
	co, err := nats.Connect(s.URL, append(append([]nats.Option{}, s.Options...), nats.UserJWTAndSeed(coJWT, string(coSeed)), nats.Name("custody-callout"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))...)
	if err != nil {
		sys.Close()
		return fmt.Errorf("connecting to the data plane as its callout user: %w", err)
	}
	s.mu.Lock()
	s.sys, s.callout, s.pushed = sys, co, map[string][32]byte{}
	s.mu.Unlock()
	return nil
}

func (s *Service) forgetPushed() {
	s.mu.Lock()
	s.pushed = map[string][32]byte{}
	s.mu.Unlock()
}

// NeedLeaderElection: the callout answers in the leader only, the process
// whose cache drives the cut-off.
func (s *Service) NeedLeaderElection() bool { return true }

// Close closes both connections.
func (s *Service) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.callout != nil {
		s.callout.Close()
	}
	if s.sys != nil {
		s.sys.Close()
	}
}

// Start answers the auth callout until ctx ends (a manager Runnable; it
// needs leader election, so that the answering process is the one whose
// cache drives the cut-off).
func (s *Service) Start(ctx context.Context) error {
	if s.callout == nil {
		if err := s.Connect(); err != nil {
			return err
		}
	}
	sub, err := s.callout.QueueSubscribe(AuthCalloutSubject, CalloutQueue, func(m *nats.Msg) { s.answer(ctx, m) })
	if err != nil {
		return err
	}
	// A data plane that is not reachable yet does not stop the manager:
	// the connections keep trying, and the subscription is made when they
	// connect (until then no client is admitted, and the cut-off retries).
	if err := s.callout.Flush(); err != nil {
		s.Log.Info("the data plane is not reachable yet; connecting in the background", "error", err.Error())
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	s.Close()
	return nil
}

// AuthCalloutSubject is the subject servers ask the callout on.
const AuthCalloutSubject = "$SYS.REQ.USER.AUTH"

func (s *Service) now() time.Time {
	if s.Clock == nil {
		return time.Now()
	}
	return s.Clock.Now()
}

// answer decides on one authorization request and answers it. A request it
// cannot read is not answered: the server refuses the client when its
// authorization timeout passes.
func (s *Service) answer(ctx context.Context, m *nats.Msg) {
	req, _, err := ParseRequest(m.Data)
	if err != nil {
		Admissions.WithLabelValues("refused", string(ReasonMalformed)).Inc()
		s.Log.V(1).Info("unreadable authorization request", "error", err.Error())
		return
	}
	grant, reason := s.decide(ctx, req)
	if reason != Admitted {
		Admissions.WithLabelValues("refused", string(reason)).Inc()
		s.Log.V(1).Info("data-plane connection refused", "reason", reason, "server", req.ServerID, "type", req.Type)
		s.respond(m, req, "", RefusedMessage)
		return
	}
	token, err := s.userJWT(ctx, req, grant)
	if err != nil {
		Admissions.WithLabelValues("refused", "Internal").Inc()
		s.Log.Error(err, "issuing a data-plane user", "user", grant.User)
		s.respond(m, req, "", RefusedMessage)
		return
	}
	Admissions.WithLabelValues("admitted", string(Admitted)).Inc()
	s.respond(m, req, token, "")
}

func (s *Service) respond(m *nats.Msg, req *Request, userJWT, msg string) {
	rc := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	rc.Audience = req.ServerID
	rc.Jwt, rc.Error = userJWT, msg
	token, err := rc.Encode(s.Keys.Auth())
	if err != nil {
		s.Log.Error(err, "signing an authorization response")
		return
	}
	_ = m.Respond([]byte(token))
}

// decide looks up what the request's certificate names and decides.
func (s *Service) decide(ctx context.Context, req *Request) (Grant, Reason) {
	if req.Leaf == nil {
		return Grant{}, ReasonNoCertificate
	}
	if len(req.Leaf.URIs) != 1 {
		return Grant{}, ReasonUnknownIdentity
	}
	tenantName, device, ok := protocol.ParseSPIFFEID(s.TrustDomain, req.Leaf.URIs[0])
	if !ok {
		if tenantName, name, ok := s.parseAccess(req); ok {
			return s.decideAccess(ctx, req, tenantName, name)
		}
		return Grant{}, ReasonUnknownIdentity
	}
	dev := &custodyv1alpha1.Device{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: device}, dev); err != nil {
		return Grant{}, ReasonUnknownIdentity
	}
	if dev.Spec.ClaimRef == nil || dev.Spec.ClaimRef.Tenant != tenantName {
		// Decided below without the anchors of a tenant the device is not
		// bound to.
		return DecideDevice(req, dev, s.TrustDomain, nil, s.now())
	}
	tn := &custodyv1alpha1.Tenant{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: tenantName}, tn); err != nil || tn.Status.Namespace == "" {
		return Grant{}, ReasonTenantNotReady
	}
	anchors, err := contract.TenantTrustAnchors(ctx, s.Reader, tn.Status.Namespace)
	if err != nil {
		return Grant{}, ReasonTenantNotReady
	}
	return DecideDevice(req, dev, s.TrustDomain, anchors, s.now())
}

// userJWT issues the admitted client's user JWT, signed by its tenant's
// account (pushed first if this process has not pushed it yet).
func (s *Service) userJWT(ctx context.Context, req *Request, g Grant) (string, error) {
	tn := &custodyv1alpha1.Tenant{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: g.Tenant}, tn); err != nil {
		return "", err
	}
	if err := s.PushAccount(ctx, tn); err != nil {
		return "", err
	}
	kp, err := s.Keys.Tenant(tn.UID)
	if err != nil {
		return "", err
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = g.User
	uc.Expires = g.Expires.Unix()
	// An empty allow list would allow everything: nothing allowed is a
	// deny of everything.
	if len(g.Publish) == 0 {
		uc.Pub.Deny.Add(">")
	}
	if len(g.Subscribe) == 0 {
		uc.Sub.Deny.Add(">")
	}
	uc.Pub.Allow.Add(g.Publish...)
	uc.Sub.Allow.Add(g.Subscribe...)
	return uc.Encode(kp)
}

// PushAccount pushes tn's account JWT to the data plane's account resolver
// unless this process already pushed the same JWT.
func (s *Service) PushAccount(ctx context.Context, tn *custodyv1alpha1.Tenant) error {
	token, err := s.Keys.TenantAccountJWT(tn.Name, string(tn.UID))
	if err != nil {
		return err
	}
	kp, _ := s.Keys.Tenant(tn.UID)
	pub := PublicKey(kp)
	sum := sha256.Sum256([]byte(tokenBody(token)))
	s.mu.Lock()
	done := s.pushed[pub] == sum
	sys := s.sys
	s.mu.Unlock()
	if done {
		return nil
	}
	if sys == nil {
		return errors.New("not connected to the data plane")
	}
	msg, err := sys.RequestWithContext(ctx, "$SYS.REQ.CLAIMS.UPDATE", []byte(token))
	if err != nil {
		return fmt.Errorf("pushing the account of tenant %s: %w", tn.Name, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err == nil && resp.Error != nil {
		return fmt.Errorf("the data plane refused the account of tenant %s: %s", tn.Name, resp.Error.Description)
	}
	s.mu.Lock()
	s.pushed[pub] = sum
	s.rememberOwner(pub, tn.UID)
	s.mu.Unlock()
	return nil
}

// rememberOwner records that pub is the account of the Tenant uid; s.mu
// is held.
func (s *Service) rememberOwner(pub string, uid types.UID) {
	if s.owners == nil {
		s.owners = map[string]types.UID{}
	}
	s.owners[pub] = uid
}

// tokenBody is what an account JWT says, without its issue time and ID:
// two encodings of the same claims differ in those, so a push is skipped
// when the claims are those pushed before, whatever their encoding.
func tokenBody(token string) string {
	ac, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return token
	}
	ac.IssuedAt, ac.ID = 0, ""
	b, _ := json.Marshal(ac)
	return string(b)
}

// TenantAccount returns the public key of tn's account.
func (s *Service) TenantAccount(tn *custodyv1alpha1.Tenant) (string, error) {
	kp, err := s.Keys.Tenant(tn.UID)
	if err != nil {
		return "", err
	}
	return PublicKey(kp), nil
}

// Connection is one client connection a server reported.
type Connection struct {
	Server  string
	CID     uint64
	Account string
	User    string
	// MQTTClientID is an MQTT connection's client ID ("" for NATS).
	MQTTClientID string
}

// Connections asks every server for the connections of user (every
// connection when user is empty) and returns them.
func (s *Service) Connections(ctx context.Context, user string) ([]Connection, error) {
	q := map[string]any{"auth": true, "limit": 100000}
	if user != "" {
		q["user"] = user
	}
	body, _ := json.Marshal(q)
	replies, err := s.gather(ctx, "$SYS.REQ.SERVER.PING.CONNZ", body)
	if err != nil {
		return nil, err
	}
	var out []Connection
	for _, r := range replies {
		var resp struct {
			Server struct {
				ID string `json:"id"`
			} `json:"server"`
			Data struct {
				Connections []struct {
					CID     uint64 `json:"cid"`
					Account string `json:"account"`
					User    string `json:"authorized_user"`
					MQTT    string `json:"mqtt_client"`
				} `json:"connections"`
			} `json:"data"`
		}
		if err := json.Unmarshal(r, &resp); err != nil {
			return nil, fmt.Errorf("reading a server's connections: %w", err)
		}
		for _, c := range resp.Data.Connections {
			if user != "" && c.User != user {
				continue
			}
			out = append(out, Connection{Server: resp.Server.ID, CID: c.CID, Account: c.Account, User: c.User, MQTTClientID: c.MQTT})
		}
	}
	return out, nil
}

// gather publishes a question every server answers and collects the
// answers: it returns once as many servers have answered as there are
// (the most that ever answered one question, and at least the servers
// routed to the one the Service is connected to, asked afresh each time,
// so that a server that joined since is waited for), or GatherWait after
// the last answer.
func (s *Service) gather(ctx context.Context, subject string, body []byte) ([][]byte, error) {
	s.mu.Lock()
	sys, known := s.sys, s.servers
	s.mu.Unlock()
	if sys == nil {
		return nil, errors.New("not connected to the data plane")
	}
	wait := s.GatherWait
	if wait == 0 {
		wait = 250 * time.Millisecond
	}
	// Until the cluster's size is known, no number of answers is enough.
	sizes := make(chan int, 1)
	go func() { sizes <- s.clusterSize(ctx, sys) }()
	expected := 0
	inbox := sys.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := sys.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sys.PublishRequest(subject, inbox, body); err != nil {
		return nil, err
	}
	var out [][]byte
	timer := time.NewTimer(2 * time.Second)
	defer timer.Stop()
	for {
		select {
		case n := <-sizes:
			if n > 0 {
				expected = max(known, n)
			}
		case m := <-ch:
			out = append(out, m.Data)
			timer.Reset(wait)
		case <-timer.C:
			if len(out) == 0 {
				return nil, errors.New("no data-plane server answered")
			}
			s.noteServers(len(out))
			return out, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if expected > 0 && len(out) >= expected {
			s.noteServers(len(out))
			return out, nil
		}
	}
}

// clusterSize is the number of servers in the cluster of the server the
// system connection is connected to (itself and every server it is routed
// to), 0 if it does not say within a second.
func (s *Service) clusterSize(ctx context.Context, sys *nats.Conn) int {
	id := sys.ConnectedServerId()
	if id == "" {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	msg, err := sys.RequestWithContext(ctx, "$SYS.REQ.SERVER."+id+".ROUTEZ", nil)
	if err != nil {
		return 0
	}
	var resp struct {
		Data struct {
			Routes []struct {
				RemoteID string `json:"remote_id"`
			} `json:"routes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0
	}
	// A server may hold several routes (a pool) to another.
	remotes := map[string]bool{id: true}
	for _, r := range resp.Data.Routes {
		remotes[r.RemoteID] = true
	}
	return len(remotes)
}

func (s *Service) noteServers(n int) {
	s.mu.Lock()
	if n > s.servers {
		s.servers = n
	}
	s.mu.Unlock()
}

// Kick closes one connection; gone reports that it had already closed.
func (s *Service) Kick(ctx context.Context, c Connection) (gone bool, err error) {
	s.mu.Lock()
	sys := s.sys
	s.mu.Unlock()
	if sys == nil {
		return false, errors.New("not connected to the data plane")
	}
	body, _ := json.Marshal(map[string]uint64{"cid": c.CID})
	msg, err := sys.RequestWithContext(ctx, "$SYS.REQ.SERVER."+c.Server+".KICK", body)
	if err != nil {
		return false, fmt.Errorf("closing connection %d on server %s: %w", c.CID, c.Server, err)
	}
	var resp struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err == nil && resp.Error != nil {
		if isGone(resp.Error.Description) {
			return true, nil
		}
		return false, fmt.Errorf("closing connection %d on server %s: %s", c.CID, c.Server, resp.Error.Description)
	}
	ConnectionsClosed.Inc()
	return false, nil
}

// isGone: nats-server's answer to a kick of a connection that has closed
// ("no such client or leafnode id").
func isGone(desc string) bool { return strings.HasPrefix(desc, "no such client") }

// CloseDevice closes every connection of device on every server except
// those in the account keep (its current tenant's, empty for none), and
// returns how many it closed.
func (s *Service) CloseDevice(ctx context.Context, device, keep string) (int, error) {
	return s.CloseUser(ctx, DeviceUser(device), keep)
}

// CloseUser closes every connection of user on every server except those in
// the account keep (none when empty), and returns how many it closed.
func (s *Service) CloseUser(ctx context.Context, user, keep string) (int, error) {
	conns, err := s.Connections(ctx, user)
	if err != nil {
		return 0, err
	}
	closed := 0
	for _, c := range conns {
		if keep != "" && c.Account == keep {
			continue
		}
		tookOver := false
		if c.MQTTClientID != "" {
			// Closed by the server, an MQTT connection would publish its
			// will (a retained "offline", say) to the account it is cut
			// off from. A takeover of its session ends it without one.
			if err := s.takeOver(ctx, c); err != nil {
				s.Log.Info("could not take over an MQTT session before closing it; its will may be published", "account", c.Account, "clientID", c.MQTTClientID, "error", err.Error())
			} else {
				tookOver = true
			}
		}
		gone, err := s.Kick(ctx, c) // also where a takeover did not reach
		if err != nil {
			return closed, err
		}
		if tookOver && gone {
			ConnectionsClosed.Inc()
		}
		if tookOver || !gone {
			closed++
		}
	}
	return closed, nil
}

// takeOver connects to c's account over MQTT with c's client ID and a
// clean session, which ends c's connection and session without publishing
// its will (MQTT: a client replaced by a new connection with its client ID
// is closed by the server, and nats-server discards the old connection's
// will on a takeover).
func (s *Service) takeOver(ctx context.Context, c Connection) error {
	account, err := s.accountKey(ctx, c.Account)
	if err != nil {
		return err
	}
	mc, err := s.mqttAs(ctx, account, c.MQTTClientID, nil)
	if err != nil {
		return err
	}
	mc.Disconnect(0)
	return nil
}

// accountKey returns the key pair of the tenant account whose public key
// is pub: known from a push, else found among the Tenants (a cut-off
// right after a restart, before this process pushed that account).
func (s *Service) accountKey(ctx context.Context, pub string) (nkeys.KeyPair, error) {
	s.mu.Lock()
	uid, ok := s.owners[pub]
	s.mu.Unlock()
	if ok {
		return s.Keys.Tenant(uid)
	}
	tenants := &custodyv1alpha1.TenantList{}
	if err := s.Reader.List(ctx, tenants); err != nil {
		return nil, err
	}
	for _, tn := range tenants.Items {
		kp, err := s.Keys.Tenant(tn.UID)
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.rememberOwner(PublicKey(kp), tn.UID)
		s.mu.Unlock()
		if PublicKey(kp) == pub {
			return kp, nil
		}
	}
	return nil, fmt.Errorf("no tenant has account %s", pub)
}

// CurrentAccount returns the account a device may be connected in now: its
// bound tenant's, or "" when it is not bound, decommissioned, or its tenant
// is gone.
func (s *Service) CurrentAccount(ctx context.Context, dev *custodyv1alpha1.Device) (string, error) {
	if dev.Spec.ClaimRef == nil || dev.Spec.Decommissioned {
		return "", nil
	}
	tn := &custodyv1alpha1.Tenant{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: dev.Spec.ClaimRef.Tenant}, tn); err != nil {
		if apierrors.IsNotFound(err) {
			return "", nil
		}
		return "", err
	}
	if !tn.DeletionTimestamp.IsZero() {
		return "", nil
	}
	return s.TenantAccount(tn)
}
