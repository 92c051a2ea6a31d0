// Package history keeps a Device's custody history as a hash chain. Each
// entry's hash covers its fields and the previous entry's hash, and entries
// are numbered without gaps, so that editing, inserting or removing an entry
// breaks the chain. The Device keeps the newest entries; the manager's audit
// log keeps every one, and Verify checks either.
package history

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// HashPrefix starts every hash.
const HashPrefix = "sha256:"

// AuditMessage is the message of the manager's audit log line for each
// history entry; the line carries the device name ("device") and the entry
// ("entry").
const AuditMessage = "custody history entry"

// Hash returns the hash of r: SHA-256 over a length-prefixed encoding of
// every field except Hash, including PreviousHash. Time is hashed as the
// API stores it (RFC 3339, seconds, UTC), so that a record read back from
// the API server hashes as it did when it was written.
func Hash(r custodyv1alpha1.CustodyRecord) string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("custody.dev/history/v1")
	field(strconv.FormatInt(r.Sequence, 10))
	field(r.Time.UTC().Truncate(time.Second).Format(time.RFC3339))
	field(string(r.Type))
	field(r.Tenant)
	field(r.FromTenant)
	field(r.Claim)
	field(string(r.ClaimUID))
	field(r.Proof)
	field(r.Actor)
	field(r.Reference)
	field(r.Reason)
	field(r.PreviousHash)
	return HashPrefix + hex.EncodeToString(h.Sum(nil))
}

// Link makes r the next entry after prev (nil for the first entry of a
// device): it sets Sequence, PreviousHash and Hash, and truncates Time to
// the second the API server keeps.
func Link(prev *custodyv1alpha1.CustodyRecord, r custodyv1alpha1.CustodyRecord) custodyv1alpha1.CustodyRecord {
	r.Time.Time = r.Time.UTC().Truncate(time.Second)
	r.Sequence, r.PreviousHash = 1, ""
	if prev != nil {
		r.Sequence, r.PreviousHash = prev.Sequence+1, prev.Hash
	}
	r.Hash = Hash(r)
	return r
}

// Anchor pins a chain to a known point: the hash of the entry with the
// given sequence number (for example the head announced in a notification
// or an audit line).
type Anchor struct {
	Sequence int64
	Hash     string
}

// Options say how much of a chain Verify expects.
type Options struct {
	// FromGenesis requires the first entry to be entry 1 with no previous
	// hash: the records are the complete history (the audit log). When
	// false the first entry is trusted as the start of a window (the
	// Device keeps only its newest entries).
	FromGenesis bool
	// Anchors are known (sequence, hash) pairs the chain must contain;
	// an anchor beyond the last entry means entries were removed from the
	// end.
	Anchors []Anchor
}

// Error is a broken chain: which entry, and what is wrong with it.
type Error struct {
	// Index of the offending entry in the records given.
	Index    int
	Sequence int64
	Problem  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("entry %d (sequence %d): %s", e.Index, e.Sequence, e.Problem)
}

// Verify checks that records are an unbroken chain, oldest first. It
// returns the first break it finds.
func Verify(records []custodyv1alpha1.CustodyRecord, opts Options) error {
	var prev *custodyv1alpha1.CustodyRecord
	for i, r := range records {
		if got := Hash(r); got != r.Hash {
			return &Error{i, r.Sequence, "its hash does not match its contents: the entry was edited"}
		}
		if prev == nil {
			if opts.FromGenesis && (r.Sequence != 1 || r.PreviousHash != "") {
				return &Error{i, r.Sequence, "the history does not start at entry 1: earlier entries were removed"}
			}
			if r.Sequence < 1 {
				return &Error{i, r.Sequence, "sequence numbers start at 1"}
			}
			prev = &records[i]
			continue
		}
		if r.Sequence != prev.Sequence+1 {
			return &Error{i, r.Sequence, fmt.Sprintf("follows entry %d: entries were removed or reordered", prev.Sequence)}
		}
		if r.PreviousHash != prev.Hash {
			return &Error{i, r.Sequence, "its previous hash is not the hash of the entry before it: an entry was replaced"}
		}
		prev = &records[i]
	}
	for _, a := range opts.Anchors {
		if err := checkAnchor(records, a); err != nil {
			return err
		}
	}
	return nil
}

func checkAnchor(records []custodyv1alpha1.CustodyRecord, a Anchor) error {
	if len(records) == 0 {
		return &Error{0, a.Sequence, "the history is empty but the anchor expects this entry"}
	}
	first, last := records[0].Sequence, records[len(records)-1].Sequence
	switch {
	case a.Sequence > last:
		return &Error{len(records) - 1, a.Sequence, fmt.Sprintf("the anchor expects entry %d but the history ends at %d: entries were removed from the end", a.Sequence, last)}
	case a.Sequence < first:
		return nil // outside the window kept; the audit log has it
	}
	r := records[a.Sequence-first]
	if r.Hash != a.Hash {
		return &Error{int(a.Sequence - first), a.Sequence, "its hash is not the anchored hash: the history was rewritten"}
	}
	return nil
}

// SameEvent reports whether the recorded entry a already records b: the
// same type and reference (an order, a Transfer, a SupportAction name one
// change each); or, when b has no reference (a repair that no longer knows
// it), the same type, tenant and Claim UID.
func SameEvent(a, b custodyv1alpha1.CustodyRecord) bool {
	if a.Type != b.Type {
		return false
	}
	if b.Reference != "" {
		return a.Reference == b.Reference
	}
	return a.ClaimUID == b.ClaimUID && a.Tenant == b.Tenant
}

// Append adds r as the next entry of history, keeping the newest max
// entries, unless SameEvent finds it already there (a retried reconcile). It returns the new
// history and the entry added (nil if none was).
func Append(history []custodyv1alpha1.CustodyRecord, r custodyv1alpha1.CustodyRecord, max int) ([]custodyv1alpha1.CustodyRecord, *custodyv1alpha1.CustodyRecord) {
	for _, h := range history {
		if SameEvent(h, r) {
			return history, nil
		}
	}
	var prev *custodyv1alpha1.CustodyRecord
	if n := len(history); n > 0 {
		prev = &history[n-1]
	}
	linked := Link(prev, r)
	history = append(history, linked)
	if n := len(history); n > max {
		history = history[n-max:]
	}
	return history, &linked
}

// ReadAuditLog returns the history entries of device from the manager's
// JSON log lines, in the order logged. Lines that are not audit lines are
// skipped; an entry logged twice (a restarted manager) is kept once.
func ReadAuditLog(r io.Reader, device string) ([]custodyv1alpha1.CustodyRecord, error) {
	var out []custodyv1alpha1.CustodyRecord
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), AuditMessage) {
			continue
		}
		var l struct {
			Msg    string                        `json:"msg"`
			Device string                        `json:"device"`
			Entry  custodyv1alpha1.CustodyRecord `json:"entry"`
		}
		if err := json.Unmarshal(line, &l); err != nil || l.Msg != AuditMessage || l.Device != device {
			continue
		}
		if seen[l.Entry.Hash] {
			continue
		}
		seen[l.Entry.Hash] = true
		out = append(out, l.Entry)
	}
	return out, sc.Err()
}
