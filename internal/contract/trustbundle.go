package contract

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"time"

	"github.com/custody-dev/custody/pkg/protocol"
)

// TrustBundle is what a tenant's trust-bundle ConfigMap holds: the tenant's
// current CA first, then the CAs it replaced that may still have signed a
// valid device certificate, each with the time it leaves the bundle.
type TrustBundle struct {
	// Certificates are the bundle's CA certificates, the current CA first.
	Certificates []*x509.Certificate
	// Retained maps the fingerprint of every replaced CA still in the
	// bundle to the time it leaves it.
	Retained map[string]time.Time
}

// NextTrustBundle computes a tenant's trust bundle from the CA cert-manager
// holds now (current) and the bundle published before (previous, nil when
// there is none). The rule for a replaced CA (the intermediate of a tenant
// made by an earlier version, or a root renewed with a new key): it stays in
// the bundle for keep after the manager first sees it replaced, so that the
// device certificates it signed (at most keep long) keep verifying until
// the devices renew under the new CA; it also leaves once it expires itself.
// Only a replaced CA with the current CA's subject is kept: whatever else a
// previous bundle held (a shared root or intermediate) is never carried over,
// so the bundle never trusts another tenant's chain.
func NextTrustBundle(current *x509.Certificate, previous *TrustBundle, now time.Time, keep time.Duration) TrustBundle {
	next := TrustBundle{Certificates: []*x509.Certificate{current}, Retained: map[string]time.Time{}}
	if previous == nil {
		return next
	}
	seen := map[string]bool{protocol.CertFingerprint(current.Raw): true}
	for _, c := range previous.Certificates {
		fp := protocol.CertFingerprint(c.Raw)
		if seen[fp] || !c.IsCA || !bytes.Equal(c.RawSubject, current.RawSubject) {
			continue
		}
		seen[fp] = true
		until, ok := previous.Retained[fp]
		if !ok {
			until = now.Add(keep)
		}
		if c.NotAfter.Before(until) {
			until = c.NotAfter
		}
		if !now.Before(until) {
			continue
		}
		next.Certificates = append(next.Certificates, c)
		next.Retained[fp] = until.UTC().Truncate(time.Second)
	}
	return next
}

// NextChange is the earliest time a retained CA leaves the bundle, zero if
// none is retained.
func (b TrustBundle) NextChange() time.Time {
	var first time.Time
	for _, until := range b.Retained {
		if first.IsZero() || until.Before(first) {
			first = until
		}
	}
	return first
}

// PEM encodes the bundle's certificates.
func (b TrustBundle) PEM() string {
	var out []byte
	for _, c := range b.Certificates {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return string(out)
}

// RetainedAnnotation encodes Retained for AnnotationRetainedCAs; empty
// when nothing is retained.
func (b TrustBundle) RetainedAnnotation() string {
	if len(b.Retained) == 0 {
		return ""
	}
	out := make(map[string]string, len(b.Retained))
	for fp, until := range b.Retained {
		out[fp] = until.UTC().Format(time.RFC3339)
	}
	data, _ := json.Marshal(out) // a map of strings always marshals
	return string(data)
}

// ParseTrustBundle reads a published bundle: its PEM certificates and its
// AnnotationRetainedCAs value. An unreadable annotation counts as absent
// (the replaced CAs then get a full retention period from now).
func ParseTrustBundle(pemData, retained string) (*TrustBundle, error) {
	certs, err := protocol.ParseCertificatesPEM([]byte(pemData))
	if err != nil {
		return nil, err
	}
	b := &TrustBundle{Certificates: certs, Retained: map[string]time.Time{}}
	var raw map[string]string
	if retained != "" && json.Unmarshal([]byte(retained), &raw) == nil {
		for fp, s := range raw {
			if until, err := time.Parse(time.RFC3339, s); err == nil {
				b.Retained[fp] = until
			}
		}
	}
	return b, nil
}
