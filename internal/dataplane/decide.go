package dataplane

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// MaxRequestSize bounds an authorization request the callout reads: a
// request carries the client's connect options and certificate chain, a few
// KiB; anything larger is refused unread.
const MaxRequestSize = 64 << 10

// Reason names why the callout refused a client (a metric label); the
// client itself is always told the same thing, RefusedMessage.
type Reason string

const (
	// Admitted: not refused.
	Admitted Reason = "Admitted"
	// ReasonMalformed: the request could not be read.
	ReasonMalformed Reason = "Malformed"
	// ReasonNoCertificate: the client presented no certificate.
	ReasonNoCertificate Reason = "NoCertificate"
	// ReasonUnknownIdentity: the certificate names no device of this
	// trust domain, or a device or tenant that does not exist.
	ReasonUnknownIdentity Reason = "UnknownIdentity"
	// ReasonClientID: an MQTT client whose client ID is not its device's
	// name.
	ReasonClientID Reason = "ClientID"
	// ReasonTenantNotReady: the tenant has no namespace or trust bundle yet.
	ReasonTenantNotReady Reason = "TenantNotReady"
)

// RefusedMessage is the one answer every refused client gets: it never
// tells whether a device exists, is bound, or to whom.
const RefusedMessage = "not authorized"

// Request is what the callout decides on, read from a server's
// authorization request.
type Request struct {
	// UserNkey is the key the server generated for the connection: the
	// answer's user JWT must be for it.
	UserNkey string
	// ServerID is the server that asks; the answer is addressed to it.
	ServerID string
	// Type is the client's protocol: "nats", "mqtt", "websocket", ...
	Type string
	// MQTTClientID is an MQTT client's client identifier.
	MQTTClientID string
	// Leaf is the client's certificate (nil if it presented none).
	Leaf *x509.Certificate
}

// ParseRequest reads and checks a server's authorization request (a JWT
// signed by the server). It fails closed: anything it cannot read fully is
// an error, and the callout answers nothing (the server then refuses the
// client when its authorization timeout passes).
func ParseRequest(data []byte) (*Request, *jwt.AuthorizationRequestClaims, error) {
	if len(data) == 0 || len(data) > MaxRequestSize {
		return nil, nil, errors.New("authorization request empty or too large")
	}
	claims, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		return nil, nil, err
	}
	if claims.UserNkey == "" || claims.Server.ID == "" {
		return nil, nil, errors.New("authorization request without user key or server")
	}
	req := &Request{
		UserNkey:     claims.UserNkey,
		ServerID:     claims.Server.ID,
		Type:         claims.ClientInformation.Type,
		MQTTClientID: claims.ClientInformation.MQTT,
	}
	if claims.TLS != nil {
		var first string
		switch {
		case len(claims.TLS.VerifiedChains) > 0 && len(claims.TLS.VerifiedChains[0]) > 0:
			first = claims.TLS.VerifiedChains[0][0]
		case len(claims.TLS.Certs) > 0:
			first = claims.TLS.Certs[0]
		}
		if first != "" {
			block, rest := pem.Decode([]byte(first))
			if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
				return nil, nil, errors.New("authorization request with an unreadable certificate")
			}
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, nil, err
			}
			req.Leaf = leaf
		}
	}
	return req, claims, nil
}

// Grant is an admitted client's place and rights in the data plane.
type Grant struct {
	// Tenant names the tenant whose account the client lands in.
	Tenant string
	// User is the name the client's connection carries (and is found by
	// when it must be closed): "device/<device>".
	User string
	// Publish and Subscribe are the only subjects it may use.
	Publish, Subscribe []string
	// Expires is when its authorization ends: no later than its
	// certificate.
	Expires time.Time
}

// DeviceUser is the user name a device's connections carry.
func DeviceUser(device string) string { return "device/" + device }

// MQTTClientID is the MQTT client identifier a device connects with
// (protocol.MQTTClientID).
func MQTTClientID(device string) string { return protocol.MQTTClientID(device) }

// DeviceSubjects returns the subject space of a device (a device's name is
// "<model>.<serial>", neither part containing a dot, so the space is two
// tokens that no other device shares) and its command subjects.
func DeviceSubjects(device string) (space, commands string) {
	return "devices." + device, protocol.DeviceSubject(device, protocol.SuffixCommands)
}

// DecideDevice decides on a device's connection: dev is the Device its
// certificate names (nil if none), anchors its current tenant's CA bundle.
// It admits the client only if AcceptCertificate accepts its certificate for
// the Device's current binding (bound, not decommissioned, exact identity,
// chains to the tenant's CA, unexpired, issued within the binding) and, for
// MQTT, its client ID is MQTTClientID; it then lands in the tenant's
// account, may publish under devices.<device>.> only and subscribe to its
// commands only, until its certificate expires.
func DecideDevice(req *Request, dev *custodyv1alpha1.Device, trustDomain string, anchors []*x509.Certificate, now time.Time) (Grant, Reason) {
	if req.Leaf == nil {
		return Grant{}, ReasonNoCertificate
	}
	if dev == nil {
		return Grant{}, ReasonUnknownIdentity
	}
	if v := contract.AcceptCertificate(dev, trustDomain, req.Leaf, anchors, now); v != contract.CertificateAccepted {
		return Grant{}, Reason(v)
	}
	if req.Type == "mqtt" || req.MQTTClientID != "" {
		if req.MQTTClientID != MQTTClientID(dev.Name) {
			return Grant{}, ReasonClientID
		}
	}
	space, commands := DeviceSubjects(dev.Name)
	return Grant{
		Tenant:    dev.Spec.ClaimRef.Tenant,
		User:      DeviceUser(dev.Name),
		Publish:   []string{space + ".>"},
		Subscribe: []string{commands, commands + ".>"},
		Expires:   req.Leaf.NotAfter,
	}, Admitted
}
