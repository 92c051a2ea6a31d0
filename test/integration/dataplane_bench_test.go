package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/dataplane"
	"github.com/custody-dev/custody/internal/factory"
)

// The data-plane benchmarks run with `make bench` on the real stack (the
// control plane, a manager answering the callout of an embedded
// nats-server). Each reports its figure next to the machine's ceiling for
// the same work measured in the same run, and none asserts timing. They do
// a fixed minimum of work whatever b.N (b.N above it, e.g.
// -benchtime 300x, does more); their timer runs through their setup, so
// that `make bench` (-benchtime 1s) runs each once, and they drop ns/op:
// the figures are their metrics.

// benchFleet creates n devices, claims them for tn by code and waits until
// every claim is Bound; it returns the records and the Bound claims.
func benchFleet(b *testing.B, tn *custodyv1alpha1.Tenant, n int) ([]*factory.Record, []*custodyv1alpha1.Claim) {
	b.Helper()
	var recs []*factory.Record
	var claims []*custodyv1alpha1.Claim
	for range n {
		rec := newDevice(b)
		recs = append(recs, rec)
		claims = append(claims, claimWithCode(b, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()))
	}
	for i, c := range claims {
		claims[i] = waitPhase(b, c, custodyv1alpha1.ClaimPhaseBound)
	}
	return recs, claims
}

// tenantIssuer signs device certificates with a tenant's CA key, as the
// tenant's issuer does for an enrolled device (the same identity, key usage
// and chain; valid from now, so within the current binding): the
// benchmarks measure the data plane, not enrollment.
type tenantIssuer struct {
	tn  *custodyv1alpha1.Tenant
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

func newTenantIssuer(b *testing.B, tn *custodyv1alpha1.Tenant) *tenantIssuer {
	b.Helper()
	ca, key := tenantCAKey(b, tn)
	return &tenantIssuer{tn: tn, ca: ca, key: key}
}

func (i *tenantIssuer) issue(b *testing.B, rec *factory.Record) *tls.Certificate {
	b.Helper()
	serial := rec.Device.Spec.SerialNumber
	now := time.Now()
	return forgeDeviceCert(b, i.ca, i.key, serial, identityOf(serial, i.tn.Name, rec.Device.Name).URI, now, now.Add(time.Hour))
}

// lostConn is an MQTT connection and when the broker closed it.
type lostConn struct {
	mqtt.Client
	lost   chan struct{}
	lostAt atomic.Int64
}

// mqttDevice connects over MQTT as a device (clean session) and notes when
// the connection is lost; a refused connect is retried for up to 10s (the
// callout decides on the manager's cache, which may not have seen the
// binding yet).
func (dp *dataPlane) mqttDevice(cert *tls.Certificate, device string) (*lostConn, error) {
	var err error
	for range 100 {
		lc := &lostConn{lost: make(chan struct{})}
		o := mqtt.NewClientOptions().AddBroker(dp.Server.MQTTURL).SetClientID(dataplane.MQTTClientID(device)).SetCleanSession(true).
			SetTLSConfig(dp.clientTLS(cert)).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
			SetConnectTimeout(10 * time.Second).
			SetConnectionLostHandler(func(mqtt.Client, error) { lc.lostAt.Store(time.Now().UnixNano()); close(lc.lost) })
		lc.Client = mqtt.NewClient(o)
		tok := lc.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return nil, errors.New("MQTT connect timed out")
		}
		if err = tok.Error(); err == nil {
			return lc, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// quantile is the nearest-rank q-quantile of sorted.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func reportDurations(b *testing.B, prefix string, ds []time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(quantile(s, 0.5)), prefix+"-p50-ms")
	b.ReportMetric(ms(quantile(s, 0.99)), prefix+"-p99-ms")
	b.ReportMetric(ms(s[len(s)-1]), prefix+"-max-ms")
	b.Logf("%s: %d samples, min %v", prefix, len(s), s[0])
}

// epochLog records, per device and epoch (the payload), how many messages
// a tenant's subscriber received and when the last arrived.
type epochLog struct {
	mu   sync.Mutex
	seen map[string]epochSeen
}

type epochSeen struct {
	n    int
	last time.Time
}

func logEpochs(b *testing.B, nc *nats.Conn) *epochLog {
	b.Helper()
	l := &epochLog{seen: map[string]epochSeen{}}
	sub, err := nc.Subscribe("devices.>", func(m *nats.Msg) {
		now := time.Now()
		tok := strings.Split(m.Subject, ".")
		if len(tok) < 3 {
			return
		}
		key := tok[1] + "." + tok[2] + "#" + string(m.Data)
		l.mu.Lock()
		s := l.seen[key]
		s.n++
		s.last = now
		l.seen[key] = s
		l.mu.Unlock()
	})
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return l
}

func (l *epochLog) get(device string, epoch int) epochSeen {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[device+"#"+strconv.Itoa(epoch)]
}

// bindingWatch notes when the API server's watch first shows a Device bound
// under each claim (by the claim's UID).
type bindingWatch struct {
	mu   sync.Mutex
	seen map[types.UID]time.Time
}

func watchBindings(b *testing.B) *bindingWatch {
	b.Helper()
	wc, err := client.NewWithWatch(cp.Config, client.Options{Scheme: cp.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	bw := &bindingWatch{seen: map[types.UID]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	start := func() watch.Interface {
		w, err := wc.Watch(ctx, &custodyv1alpha1.DeviceList{})
		if err != nil {
			b.Fatal(err)
		}
		return w
	}
	w := start()
	go func() {
		for {
			ev, ok := <-w.ResultChan()
			if !ok {
				if ctx.Err() != nil {
					return
				}
				w = start()
				continue
			}
			d, isDevice := ev.Object.(*custodyv1alpha1.Device)
			if !isDevice || d.Spec.ClaimRef == nil {
				continue
			}
			now := time.Now()
			bw.mu.Lock()
			if _, ok := bw.seen[d.Spec.ClaimRef.UID]; !ok {
				bw.seen[d.Spec.ClaimRef.UID] = now
			}
			bw.mu.Unlock()
		}
	}()
	return bw
}

func (bw *bindingWatch) at(b *testing.B, uid types.UID) time.Time {
	b.Helper()
	var at time.Time
	waitFor(b, "the watch to show the binding of claim "+string(uid), func() bool {
		bw.mu.Lock()
		defer bw.mu.Unlock()
		t, ok := bw.seen[uid]
		at = t
		return ok
	})
	return at
}

// cutOffHistogram reads the manager's cut-off histogram: its observations'
// count and sum (seconds).
func cutOffHistogram(b *testing.B) (uint64, float64) {
	b.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(dataplane.CutOffSeconds); err != nil {
		b.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		b.Fatalf("gathering the cut-off histogram: %v", err)
	}
	h := mfs[0].GetMetric()[0].GetHistogram()
	return h.GetSampleCount(), h.GetSampleSum()
}

// BenchmarkDataPlaneCutOff transfers devices back and forth between two
// tenants, one transfer at a time (at least 100; b.N if larger), each
// device holding an open MQTT connection in its current owner's account
// and publishing every 10ms while the owner's subscriber listens. For each
// transfer it measures, from the moment the API server's watch shows the
// Device bound to the accepting Claim, the time until the device's
// connection is closed (paho's connection-lost handler: "close") and until
// the last message the old owner received from it ("quiet", 0 when none
// arrived after the change), and reports their p50/p99/max; "accept-close"
// runs from the accepting Claim's creation, and "manager" is the manager's
// own measure (custody_dataplane_cutoff_seconds: from its cache seeing the
// change to the kick answered; transfers are one at a time, so the
// histogram's sum grows by each one's). The watch and the manager's cache
// hear of the change at about the same moment, each when the scheduler
// lets it: "close" can be a few milliseconds short, even negative. After each transfer the device
// reconnects with a certificate of its new owner before it is transferred
// again, and no transfer of a device starts before its previous purge is
// in its history. Messages carry the transfer they were sent before: the
// benchmark fails if a tenant receives a message sent while the device was
// not its own, or if the cut-off's kicks closed fewer connections than
// there were transfers. The goal is close p99 < 1 s.
func BenchmarkDataPlaneCutOff(b *testing.B) {
	transfers := max(b.N, 100)
	const fleet = 10
	dp := startDataPlane(b)
	m := startManager(b, withDataPlane(dp))
	tenants := []*custodyv1alpha1.Tenant{newTenant(b), newTenant(b)}
	issuers := []*tenantIssuer{newTenantIssuer(b, tenants[0]), newTenantIssuer(b, tenants[1])}
	subs := []*nats.Conn{dp.accountUser(b, tenants[0]), dp.accountUser(b, tenants[1])}
	logs := []*epochLog{logEpochs(b, subs[0]), logEpochs(b, subs[1])}
	bindings := watchBindings(b)
	recs, held := benchFleet(b, tenants[0], fleet)
	owner := make([]int, fleet)
	moved := make([]int, fleet)
	conns := make([]*lostConn, fleet)
	for d, rec := range recs {
		c, err := dp.mqttDevice(issuers[0].issue(b, rec), rec.Device.Name)
		if err != nil {
			b.Fatalf("device %s: %v", rec.Device.Name, err)
		}
		conns[d] = c
	}
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Disconnect(0)
			}
		}
	})

	kicked := testutil.ToFloat64(dataplane.ConnectionsClosed)
	var closeAfter, quietAfter, acceptClose, managerSaw []time.Duration
	for i := range transfers {
		d := i % fleet
		rec, name := recs[d], recs[d].Device.Name
		from, to := owner[d], 1-owner[d]
		waitFor(b, "the purge of "+name+"'s previous owner", func() bool {
			return len(entries(getDevice(b, name), custodyv1alpha1.CustodyEventDataPurged)) == moved[d]
		})

		// The device publishes, tagged with this transfer, until its
		// connection is lost; its owner hears it.
		conn := conns[d]
		stop := make(chan struct{})
		publishing := make(chan struct{})
		go func() {
			defer close(publishing)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-conn.lost:
					return
				case <-tick.C:
					conn.Publish(topicOf(name, "telemetry"), 0, false, strconv.Itoa(i))
				}
			}
		}()
		waitFor(b, name+"'s owner to hear it", func() bool { return logs[from].get(name, i).n > 0 })

		// The manager's clock is the wall clock's at each transfer: the new
		// binding begins after the old owner's certificates were issued,
		// and the offer is fresh.
		m.Clock.SetTime(time.Now())
		offer(b, admin, held[d], tenants[to].Name)
		observed, observedSum := cutOffHistogram(b)
		accepted := time.Now()
		cl := proofClaim(b, admin, tenants[to].Status.Namespace, rec, acceptFrom(tenants[from].Name))
		select {
		case <-conn.lost:
		case <-time.After(30 * time.Second):
			got := &custodyv1alpha1.Claim{}
			_ = admin.Get(context.Background(), client.ObjectKeyFromObject(cl), got)
			b.Fatalf("transfer %d: %s's connection in its old owner's account is still open after 30s (claim %+v, device %+v)", i, name, got.Status, getDevice(b, name).Spec.ClaimRef)
		}
		close(stop)
		<-publishing
		lostAt := time.Unix(0, conn.lostAt.Load())
		changed := bindings.at(b, cl.UID)
		// Whatever the old owner's subscriber will still receive was sent
		// before the connection closed, and reaches it ahead of a marker
		// sent now.
		if err := subs[from].Publish("devices.bench.flush", []byte(strconv.Itoa(i))); err != nil {
			b.Fatal(err)
		}
		waitFor(b, "the marker", func() bool { return logs[from].get("bench.flush", i).n > 0 })
		quiet := logs[from].get(name, i).last.Sub(changed)
		var count uint64
		var sum float64
		waitFor(b, "the manager to observe the cut-off", func() bool {
			count, sum = cutOffHistogram(b)
			return count > observed
		})
		if count-observed > 1 {
			b.Logf("transfer %d: the manager's histogram grew by %d observations", i, count-observed)
		}
		managerSaw = append(managerSaw, time.Duration((sum-observedSum)/float64(count-observed)*float64(time.Second)))
		closeAfter = append(closeAfter, lostAt.Sub(changed))
		quietAfter = append(quietAfter, max(quiet, 0))
		acceptClose = append(acceptClose, lostAt.Sub(accepted))

		// The device is its new owner's: it reconnects with a
		// certificate of the new binding.
		held[d] = waitPhase(b, cl, custodyv1alpha1.ClaimPhaseBound)
		c, err := dp.mqttDevice(issuers[to].issue(b, rec), name)
		if err != nil {
			b.Fatalf("transfer %d: %s under its new owner: %v", i, name, err)
		}
		conns[d], owner[d] = c, to
		moved[d]++
	}

	// The cut-off closed the connections (not, say, the purge's MQTT
	// session takeover).
	if n := testutil.ToFloat64(dataplane.ConnectionsClosed) - kicked; n < float64(transfers) {
		b.Fatalf("the cut-off closed %v connections in %d transfers", n, transfers)
	}
	// No tenant received a message sent while the device was not its own.
	for i := range transfers {
		d := i % fleet
		name := recs[d].Device.Name
		// Transfer i was from the owner the device had before it.
		from := 0
		if (i/fleet)%2 == 1 {
			from = 1
		}
		if n := logs[1-from].get(name, i).n; n != 0 {
			b.Fatalf("tenant %s received %d messages %s sent while it belonged to %s", tenants[1-from].Name, n, name, tenants[from].Name)
		}
		if logs[from].get(name, i).n == 0 {
			b.Fatalf("transfer %d: the owner heard nothing", i)
		}
	}
	reportDurations(b, "close", closeAfter)
	reportDurations(b, "quiet", quietAfter)
	reportDurations(b, "accept-close", acceptClose)
	reportDurations(b, "manager", managerSaw)
	b.ReportMetric(float64(transfers), "transfers")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDataPlaneAdmissions measures devices admitted per second through
// the auth callout: bound devices (at least 100; b.N if larger) connect
// over NATS with their certificates, 16 at a time, each decided by the
// manager's callout and landing in its tenant's account. Next to it, the
// ceiling: as many TLS handshakes and connects, with the same client
// certificates and concurrency, to the same server by users with
// pre-signed JWT credentials of the tenant's account (no callout). The two
// alternate, twice each, so that the machine's load drifts over both.
func BenchmarkDataPlaneAdmissions(b *testing.B) {
	n := max(b.N, 100)
	const workers, rounds = 16, 2
	dp := startDataPlane(b)
	startManager(b, withDataPlane(dp))
	tn := newTenant(b)
	iss := newTenantIssuer(b, tn)
	recs, _ := benchFleet(b, tn, n)
	certs := make([]*tls.Certificate, n)
	for i, rec := range recs {
		certs[i] = iss.issue(b, rec)
	}
	if err := dp.Service.PushAccount(b.Context(), tn); err != nil {
		b.Fatal(err)
	}
	account, err := dp.Keys.Tenant(tn.UID)
	if err != nil {
		b.Fatal(err)
	}
	type creds struct{ jwt, seed string }
	users := make([]creds, n)
	for i := range users {
		user, _ := nkeys.CreateUser()
		pub, _ := user.PublicKey()
		uc := jwt.NewUserClaims(pub)
		uc.Name = "bench/" + strconv.Itoa(i)
		uc.Expires = time.Now().Add(time.Hour).Unix()
		token, err := uc.Encode(account)
		if err != nil {
			b.Fatal(err)
		}
		seed, _ := user.Seed()
		users[i] = creds{token, string(seed)}
	}
	viaCallout := func(i int) (*nats.Conn, error) { return dp.natsAs(certs[i]) }
	withJWT := func(i int) (*nats.Conn, error) {
		return dp.natsAs(certs[i], nats.UserJWTAndSeed(users[i].jwt, users[i].seed))
	}
	connectAll := func(connect func(int) (*nats.Conn, error)) time.Duration {
		conns := make([]*nats.Conn, n)
		errs := make(chan error, n)
		sem := make(chan struct{}, workers)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := connect(i)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}
		return elapsed
	}
	// One of each first: the account pushed, the connections' code warm.
	for _, connect := range []func(int) (*nats.Conn, error){viaCallout, withJWT} {
		c, err := connect(0)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}

	var callout, ceiling time.Duration
	admitted := admissions("admitted", string(dataplane.Admitted))
	for range rounds {
		callout += connectAll(viaCallout)
		ceiling += connectAll(withJWT)
	}
	if got := admissions("admitted", string(dataplane.Admitted)) - admitted; got != float64(rounds*n) {
		b.Fatalf("the callout admitted %v connections, want %d", got, rounds*n)
	}
	b.ReportMetric(float64(rounds*n)/callout.Seconds(), "admissions/s")
	b.ReportMetric(float64(rounds*n)/ceiling.Seconds(), "ceiling-connects/s")
	b.ReportMetric(float64(n), "devices")
	b.ReportMetric(0, "ns/op")
}

// counter counts the messages a subscription receives and notes when the
// last one arrived.
type counter struct {
	n    atomic.Int64
	last atomic.Int64
}

func countMessages(b *testing.B, nc *nats.Conn, subject string) *counter {
	b.Helper()
	c := &counter{}
	sub, err := nc.Subscribe(subject, func(*nats.Msg) {
		c.last.Store(time.Now().UnixNano())
		c.n.Add(1)
	})
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return c
}

// await waits until c counted want messages since from or no message came
// for 3s, and returns the count and the rate (messages per second from
// start to the last arrival).
func (c *counter) await(from int64, want int64, start time.Time) (int64, float64) {
	for got, idle := c.n.Load()-from, 0; ; {
		if got >= want || idle >= 3000 {
			last := time.Unix(0, c.last.Load())
			return got, float64(got) / last.Sub(start).Seconds()
		}
		time.Sleep(time.Millisecond)
		if now := c.n.Load() - from; now != got {
			got, idle = now, 0
		} else {
			idle++
		}
	}
}

// BenchmarkDataPlaneTelemetry measures telemetry messages per second end to
// end: 10 and then 100 bound devices, over MQTT 3.1.1 (QoS 0, paho) and
// over NATS, publish as fast as they can (at least 100000 messages of 128
// bytes in all, split among them; b.N if larger), and their owner's
// subscriber (one NATS connection on devices.>) counts them; the rate runs
// from the first publish to the last arrival. Next to each, the ceiling:
// as many plain users of the same account on the same server (pre-signed
// JWTs, no device permissions) publishing the same messages over NATS to
// one subscriber. Messages a subscriber never received (QoS 0 may drop)
// are reported as lost-msgs.
func BenchmarkDataPlaneTelemetry(b *testing.B) {
	total := max(b.N, 100000)
	dp := startDataPlane(b)
	startManager(b, withDataPlane(dp))
	tn := newTenant(b)
	iss := newTenantIssuer(b, tn)
	recs, _ := benchFleet(b, tn, 100)
	owner := countMessages(b, dp.accountUser(b, tn), "devices.>")
	plain := countMessages(b, dp.accountUser(b, tn), "bench.>")
	payload := []byte(strings.Repeat("t", 128))
	idle := dp.Server.NumClients()
	var lost int64

	// round connects n publishers with connect, which returns one's
	// publishing and closing, runs them at once and reports the rate sub
	// counted.
	round := func(n int, unit string, sub *counter, connect func(i, per int) (func() error, func())) {
		per := total / n
		publish := make([]func() error, n)
		closers := make([]func(), n)
		for i := range n {
			publish[i], closers[i] = connect(i, per)
		}
		from := sub.n.Load()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, p := range publish {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		got, rate := sub.await(from, int64(per*n), start)
		select {
		case err := <-errs:
			b.Fatalf("%s: %v", unit, err)
		default:
		}
		lost += int64(per*n) - got
		b.ReportMetric(rate, unit)
		for _, c := range closers {
			c()
		}
		// The closed connections go before the next round.
		waitFor(b, "the publishers' connections to close", func() bool { return dp.Server.NumClients() <= idle })
	}
	natsPublisher := func(c *nats.Conn, subject string, per int) (func() error, func()) {
		return func() error {
			for range per {
				if err := c.Publish(subject, payload); err != nil {
					return err
				}
			}
			return c.Flush()
		}, c.Close
	}

	for _, n := range []int{10, 100} {
		round(n, fmt.Sprintf("ceiling-%dconn-msgs/s", n), plain, func(i, per int) (func() error, func()) {
			return natsPublisher(dp.accountUser(b, tn), fmt.Sprintf("bench.%d.telemetry", i), per)
		})
		round(n, fmt.Sprintf("nats-%ddev-msgs/s", n), owner, func(i, per int) (func() error, func()) {
			name := recs[i].Device.Name
			c, err := dp.natsAs(iss.issue(b, recs[i]))
			if err != nil {
				b.Fatalf("%s over NATS: %v", name, err)
			}
			return natsPublisher(c, "devices."+name+".telemetry", per)
		})
		round(n, fmt.Sprintf("mqtt-%ddev-msgs/s", n), owner, func(i, per int) (func() error, func()) {
			name := recs[i].Device.Name
			c, err := dp.mqttDevice(iss.issue(b, recs[i]), name)
			if err != nil {
				b.Fatalf("%s over MQTT: %v", name, err)
			}
			topic := topicOf(name, "telemetry")
			return func() error {
				var tok mqtt.Token
				for range per {
					tok = c.Publish(topic, 0, false, payload)
				}
				tok.Wait()
				return tok.Error()
			}, func() { c.Disconnect(0) }
		})
	}
	b.ReportMetric(float64(lost), "lost-msgs")
	b.ReportMetric(0, "ns/op")
}
