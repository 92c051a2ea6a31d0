package integration

import (
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
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/dataplane"
	"github.com/custody-dev/custody/internal/factory"
)

// dataPlane is an embedded nats-server (or a cluster of them) configured
// as Custody configures one, and the manager's side of it.
type dataPlane struct {
	Keys    *dataplane.Keys
	Server  *dataplane.Embedded
	Service *dataplane.Service
	// Servers are every server of the data plane (Server is the first),
	// Configs what each was started with (a server restarts with its own).
	Servers []*dataplane.Embedded
	Configs []dataplane.ServerConfig
	// Roots verifies the servers' certificate.
	Roots *x509.CertPool
	// ManagerCert is the manager's client certificate.
	ManagerCert tls.Certificate
	// CAFile is Roots as a PEM file, for third-party clients.
	CAFile string
}

// mqttHostPort is the MQTT listener's host and port.
func (dp *dataPlane) mqttHostPort() (string, string) {
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(dp.Server.MQTTURL, "ssl://"))
	return host, port
}

// startDataPlane starts a data-plane server with a fresh operator and a
// server certificate for 127.0.0.1, and the Service a manager started with
// withDataPlane answers its callout with.
func startDataPlane(t testing.TB) *dataPlane {
	t.Helper()
	return startDataPlaneServers(t, 1)
}

// startDataPlaneCluster starts n data-plane servers with the same operator
// and keys, routed to each other as one NATS cluster with JetStream, and
// waits until every server is routed to every other and JetStream has a
// leader that every server follows. The Service connects to server 0 only
// (dp.Server); dp.on(i) reaches server i.
func startDataPlaneCluster(t testing.TB, n int) *dataPlane {
	t.Helper()
	dp := startDataPlaneServers(t, n)
	waitFor(t, "the data-plane cluster to form", func() bool {
		leaders := 0
		for _, s := range dp.Servers {
			if s.NumRemotes() != n-1 || !s.JetStreamIsCurrent() {
				return false
			}
			if s.JetStreamIsLeader() {
				leaders++
			}
		}
		return leaders == 1
	})
	return dp
}

func startDataPlaneServers(t testing.TB, n int) *dataPlane {
	t.Helper()
	master := make([]byte, dataplane.MasterSecretLength)
	if _, err := rand.Read(master); err != nil {
		t.Fatal(err)
	}
	keys, err := dataplane.NewKeys(master)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caKey, caCert := selfSignedCA(t, "custody data-plane test CA")
	serverCert := issueTLS(t, caCert, caKey, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	managerCert := issueTLS(t, caCert, caKey, "custody-manager", x509.ExtKeyUsageClientAuth)
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	writePEMPair(t, serverCert, certFile, keyFile)
	// Every server of a cluster routes to every server (its own route is
	// ignored): clustered JetStream refuses to start without routes.
	clusterPorts, routes := make([]int, n), make([]string, n)
	for i := range clusterPorts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		clusterPorts[i] = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", clusterPorts[i])
	}
	var servers []*dataplane.Embedded
	var configs []dataplane.ServerConfig
	for i := range n {
		cfg := dataplane.ServerConfig{StoreDir: filepath.Join(dir, "store"), CertFile: certFile, KeyFile: keyFile}
		if n > 1 {
			cfg.Name, cfg.StoreDir = fmt.Sprintf("custody-dataplane-%d", i), filepath.Join(dir, fmt.Sprintf("store-%d", i))
			cfg.ClusterName, cfg.ClusterPort, cfg.Routes = "custody-dataplane", clusterPorts[i], routes
		}
		srv, err := keys.StartEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		servers, configs = append(servers, srv), append(configs, cfg)
	}
	srv := servers[0]
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	tlsConfig := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{managerCert}, MinVersion: tls.VersionTLS12}
	svc := &dataplane.Service{
		Keys: keys, URL: srv.ClientURL(), MQTTURL: srv.MQTTURL, TLSConfig: tlsConfig,
		Options: []nats.Option{nats.Secure(tlsConfig.Clone())},
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &dataPlane{Keys: keys, Server: srv, Servers: servers, Configs: configs, Service: svc, Roots: roots, ManagerCert: managerCert, CAFile: caFile}
}

// on is dp with server i as the one its clients connect to.
func (dp *dataPlane) on(i int) *dataPlane {
	c := *dp
	c.Server = dp.Servers[i]
	return &c
}

// withDataPlane makes a manager answer dp's callout and cut devices off it.
func withDataPlane(dp *dataPlane) func(*controllers.Options) {
	return func(o *controllers.Options) { o.DataPlane = dp.Service }
}

// clientTLS is a client's TLS configuration for the data plane.
func (dp *dataPlane) clientTLS(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: dp.Roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// natsAs connects over NATS with a client certificate only (the way a
// device does: the callout decides).
func (dp *dataPlane) natsAs(cert *tls.Certificate, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(dp.Server.ClientURL(), append([]nats.Option{nats.Secure(dp.clientTLS(cert)), nats.NoReconnect(), nats.Timeout(10 * time.Second)}, opts...)...)
}

// mqttAs connects over MQTT 3.1.1 with a client certificate and clientID.
func (dp *dataPlane) mqttAs(cert *tls.Certificate, clientID string, clean bool) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(dp.Server.MQTTURL).SetClientID(clientID).SetCleanSession(clean).
		SetTLSConfig(dp.clientTLS(cert)).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return nil, errors.New("MQTT connect timed out")
	}
	return c, tok.Error()
}

// accountUser connects as a user of tn's account that may subscribe to
// every device subject and publish to any: valid credentials for that
// account and nothing more.
func (dp *dataPlane) accountUser(t testing.TB, tn *custodyv1alpha1.Tenant) *nats.Conn {
	t.Helper()
	if err := dp.Service.PushAccount(t.Context(), tn); err != nil {
		t.Fatal(err)
	}
	account, err := dp.Keys.Tenant(tn.UID)
	if err != nil {
		t.Fatal(err)
	}
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Name = "test/" + tn.Name
	uc.Expires = time.Now().Add(time.Hour).Unix()
	token, err := uc.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	nc, err := nats.Connect(dp.Server.ClientURL(), nats.Secure(dp.clientTLS(&dp.ManagerCert)), nats.UserJWTAndSeed(token, string(seed)), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// inbox collects what a subscription receives.
type inbox struct {
	mu   sync.Mutex
	msgs []*nats.Msg
	ch   chan *nats.Msg
}

func subscribe(t testing.TB, nc *nats.Conn, subject string) *inbox {
	t.Helper()
	in := &inbox{ch: make(chan *nats.Msg, 1024)}
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		in.mu.Lock()
		in.msgs = append(in.msgs, m)
		in.mu.Unlock()
		in.ch <- m
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return in
}

// next waits for the next message (up to 20s) and fails without one.
func (in *inbox) next(t testing.TB, what string) *nats.Msg {
	t.Helper()
	select {
	case m := <-in.ch:
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: nothing received", what)
		return nil
	}
}

// count is the number of messages received so far.
func (in *inbox) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}

// topicOf is the MQTT topic of a device's subject suffix.
func topicOf(device, suffix string) string {
	return "devices/" + strings.ReplaceAll(device, ".", "/") + "/" + suffix
}

// admissions reads the callout's counter for result and reason.
func admissions(result string, reason string) float64 {
	return testutil.ToFloat64(dataplane.Admissions.WithLabelValues(result, reason))
}

func selfSignedCA(t testing.TB, cn string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return key, c
}

func issueTLS(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func writePEMPair(t testing.TB, c tls.Certificate, certFile, keyFile string) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// streamState returns the subjects (with message counts) stream holds under
// filter in the account nc belongs to; nil if the stream does not exist.
func streamState(t testing.TB, nc *nats.Conn, stream, filter string) map[string]uint64 {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"subjects_filter": filter})
	msg, err := nc.Request("$JS.API.STREAM.INFO."+stream, body, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Error *struct {
			ErrCode int `json:"err_code"`
		} `json:"error"`
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == 10059 {
			return nil
		}
		t.Fatalf("stream %s: %s", stream, msg.Data)
	}
	if resp.State.Subjects == nil {
		return map[string]uint64{}
	}
	return resp.State.Subjects
}

// consumerNames lists the durable consumers of stream in nc's account.
func consumerNames(t testing.TB, nc *nats.Conn, stream string) []string {
	t.Helper()
	msg, err := nc.Request("$JS.API.CONSUMER.NAMES."+stream, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Consumers []string `json:"consumers"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatal(err)
	}
	return resp.Consumers
}

// boundDevice binds a new device to tn with a Claim (labelled labels, if
// any), enrols it and returns its record, its Claim and its certificate.
func boundDevice(t *testing.T, g *gw, tn *custodyv1alpha1.Tenant, labels map[string]string) (*factory.Record, *custodyv1alpha1.Claim, *tls.Certificate) {
	t.Helper()
	rec := newDevice(t)
	cl := waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	if labels != nil {
		setClaimLabels(t, cl, labels)
	}
	agent := newAgent(t, g, rec)
	enrollAgent(t, agent)
	cert, _ := agent.Certificate()
	return rec, cl, cert
}

// endOwnership ends oldOwner's ownership of rec's device, held by the
// Claim held, the way how says ("transfer" to newOwner, "release",
// "decommission" by the ERP), and returns when the request that ends it
// was made.
func endOwnership(t *testing.T, how string, held *custodyv1alpha1.Claim, rec *factory.Record, oldOwner, newOwner *custodyv1alpha1.Tenant) time.Time {
	t.Helper()
	var start time.Time
	switch how {
	case "transfer":
		offer(t, admin, held, newOwner.Name)
		start = time.Now()
		waitPhase(t, proofClaim(t, admin, newOwner.Status.Namespace, rec, acceptFrom(oldOwner.Name)), custodyv1alpha1.ClaimPhaseBound)
	case "release":
		start = time.Now()
		release(t, held, false)
	case "decommission":
		start = time.Now()
		if err := updateDevice(admin, rec.Device.Name, func(d *custodyv1alpha1.Device) { d.Spec.Decommissioned = true }, client.FieldOwner(erpOwner)); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("no way to end an ownership called %q", how)
	}
	return start
}
