// Package notification is the wire contract of Custody's notifications:
// CloudEvents 1.0 in structured JSON mode, POSTed over HTTPS, signed with
// HMAC-SHA256. Receivers (an ERP, a tenant's systems) import it to verify
// what they receive.
//
// Delivery is at least once: an event whose delivery failed, or whose
// answer was lost, is sent again with the same ID. The ID is also sent as
// the Idempotency-Key header; a receiver processes each key once.
package notification

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Headers and content type of a delivery.
const (
	// HeaderSignature carries "t=<unix seconds>,v1=<hex HMAC-SHA256 of
	// "<t>.<body>">".
	HeaderSignature = "Custody-Signature"
	// HeaderIdempotencyKey repeats the event's ID.
	HeaderIdempotencyKey = "Idempotency-Key"
	// ContentType is the CloudEvents structured JSON mode.
	ContentType = "application/cloudevents+json"
	// SpecVersion is the CloudEvents version.
	SpecVersion = "1.0"
	// TypePrefix starts every event type: "dev.custody.device.bound".
	TypePrefix = "dev.custody.device."
)

// Event is a CloudEvent announcing one custody history entry.
type Event struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject"`
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	Data            Data   `json:"data"`
}

// Data is the payload of an Event.
type Data struct {
	// Device is the Device's name; SerialNumber and Model identify it.
	Device       string `json:"device"`
	SerialNumber string `json:"serialNumber"`
	Model        string `json:"model"`
	// OrderReference and BuyerContact come from the sale record, so that
	// the ERP can tell its contact (for example during a cooling-off).
	OrderReference string `json:"orderReference,omitempty"`
	BuyerContact   string `json:"buyerContact,omitempty"`
	// Entry is the custody history entry, hash included: it anchors the
	// device's chain (custodyctl history verify --anchor SEQ:HASH).
	Entry any `json:"entry"`
}

// Sign returns the signature header value for body at time t.
func Sign(key, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(key, ts, body)
}

func mac(key []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Errors of Verify.
var (
	ErrMalformed = errors.New("malformed signature header")
	ErrMismatch  = errors.New("signature does not match")
	ErrStale     = errors.New("signature timestamp outside the tolerance")
)

// Verify checks a signature header against body and key, and that its
// timestamp is within tolerance of now (a replayed delivery is refused).
func Verify(key []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return ErrMalformed
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return ErrMalformed
	}
	if !hmac.Equal([]byte(sig), []byte(mac(key, ts, body))) {
		return ErrMismatch
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed at %s", ErrStale, time.Unix(sec, 0).UTC().Format(time.RFC3339))
	}
	return nil
}
