package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/custody-dev/custody/pkg/protocol"
)

// Telemetry is what Publisher sends on the device's telemetry topic.
type Telemetry struct {
	Sequence uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	State    string    `json:"state"`
}

// Publisher connects a device to the data plane over MQTT 3.1.1 with the
// certificate its Agent holds, and publishes telemetry. It always connects
// with the certificate in the device directory at that moment, so a renewed
// certificate is used from the next connection on, and a device transferred
// to a new owner reaches the new owner's account once its Agent has
// enrolled again: the data plane closes the old connection at the transfer
// and refuses the old certificate, and Publisher keeps reconnecting with
// back-off until the new certificate is admitted. When the certificate it
// is connected with changes, it reconnects with the new one.
type Publisher struct {
	// Agent holds the device's directory and key.
	Agent *Agent
	// URL is a data-plane server's MQTT listener (ssl://host:port).
	URL string
	// RootCAs verifies the data-plane server's certificate.
	RootCAs *x509.CertPool
	// Interval between telemetry messages.
	Interval time.Duration
	// Clock paces publishing and reconnecting.
	Clock clock.WithTicker
	Log   logr.Logger

	mu        sync.Mutex
	client    mqtt.Client
	connected string // fingerprint of the certificate of the open connection
	seq       uint64
	lost      chan struct{}
	endLost   func() // closes lost, once
}

// ErrNoCertificate: the device has no certificate yet (its Agent has not
// enrolled).
var ErrNoCertificate = errors.New("the device has no certificate yet")

// Run publishes every Interval until ctx ends, (re)connecting as needed.
func (p *Publisher) Run(ctx context.Context) error {
	p.defaults()
	defer p.Close()
	ticker := p.Clock.NewTicker(p.Interval)
	defer ticker.Stop()
	for {
		if err := p.PublishOnce(ctx); err != nil {
			p.Log.V(1).Info("telemetry not sent", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}

func (p *Publisher) defaults() {
	if p.Clock == nil {
		p.Clock = clock.RealClock{}
	}
	if p.Log.GetSink() == nil {
		p.Log = logr.Discard()
	}
	if p.Interval == 0 {
		p.Interval = 10 * time.Second
	}
}

// PublishOnce sends one telemetry message, connecting first if there is no
// connection with the device's current certificate.
func (p *Publisher) PublishOnce(ctx context.Context) error {
	p.defaults()
	c, err := p.connect(ctx)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.seq++
	msg := Telemetry{Sequence: p.seq, Time: p.Clock.Now().UTC(), State: "ok"}
	p.mu.Unlock()
	body, _ := json.Marshal(msg)
	name := protocol.DeviceName(p.Agent.ID.Model, p.Agent.ID.SerialNumber)
	if err := wait(ctx, c.Publish(protocol.DeviceTopic(name, protocol.SuffixTelemetry), 1, false, body)); err != nil {
		p.drop()
		return err
	}
	return nil
}

// Connected reports whether a connection is open.
func (p *Publisher) Connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client != nil && p.client.IsConnectionOpen()
}

// Lost is closed when the current connection ends: lost, closed by the
// data plane, or replaced by one with a new certificate (nil before the
// first connection).
func (p *Publisher) Lost() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lost
}

// connect returns an open connection made with the device's current
// certificate, opening one if needed.
func (p *Publisher) connect(ctx context.Context) (mqtt.Client, error) {
	cert, leaf := p.Agent.Certificate()
	if cert == nil {
		p.drop()
		return nil, ErrNoCertificate
	}
	fp := protocol.CertFingerprint(leaf.Raw)
	p.mu.Lock()
	if p.client != nil && p.client.IsConnectionOpen() && p.connected == fp {
		c := p.client
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	p.drop()
	name := protocol.DeviceName(p.Agent.ID.Model, p.Agent.ID.SerialNumber)
	lost := make(chan struct{})
	var once sync.Once
	endLost := func() { once.Do(func() { close(lost) }) }
	opts := mqtt.NewClientOptions().AddBroker(p.URL).SetClientID(protocol.MQTTClientID(name)).
		SetCleanSession(false).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(30 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: p.RootCAs, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			p.Log.Info("data-plane connection lost", "error", err.Error())
			endLost()
		})
	c := mqtt.NewClient(opts)
	if err := wait(ctx, c.Connect()); err != nil {
		return nil, err // tried again at the next tick
	}
	p.Log.Info("connected to the data plane", "certificate", fp, "validUntil", leaf.NotAfter)
	p.mu.Lock()
	p.client, p.connected, p.lost, p.endLost = c, fp, lost, endLost
	p.mu.Unlock()
	return c, nil
}

// drop closes the current connection, if any.
func (p *Publisher) drop() {
	p.mu.Lock()
	c, end := p.client, p.endLost
	p.client, p.connected = nil, ""
	p.mu.Unlock()
	if c != nil {
		c.Disconnect(100)
	}
	if end != nil {
		end()
	}
}

// Close ends the connection.
func (p *Publisher) Close() { p.drop() }

func wait(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}
