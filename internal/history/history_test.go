package history

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

func chain(t *testing.T, n int) []custodyv1alpha1.CustodyRecord {
	t.Helper()
	var h []custodyv1alpha1.CustodyRecord
	at := time.Date(2026, 11, 22, 9, 0, 0, 123456789, time.UTC)
	kinds := []custodyv1alpha1.CustodyEventType{custodyv1alpha1.CustodyEventSold, custodyv1alpha1.CustodyEventBound, custodyv1alpha1.CustodyEventTransferred, custodyv1alpha1.CustodyEventReleased}
	for i := range n {
		var added *custodyv1alpha1.CustodyRecord
		h, added = Append(h, custodyv1alpha1.CustodyRecord{
			Time: metav1.NewTime(at.Add(time.Duration(i) * time.Minute)), Type: kinds[i%len(kinds)],
			Tenant: "acme", Claim: "acme/c", ClaimUID: types.UID("uid-" + string(rune('a'+i))), Proof: "ClaimCode", Actor: "user:alice",
		}, 32)
		if added == nil {
			t.Fatalf("entry %d not added", i)
		}
	}
	return h
}

func TestChainVerifies(t *testing.T) {
	h := chain(t, 5)
	if err := Verify(h, Options{FromGenesis: true, Anchors: []Anchor{{5, h[4].Hash}}}); err != nil {
		t.Fatal(err)
	}
	if h[0].Sequence != 1 || h[0].PreviousHash != "" || h[4].Sequence != 5 || h[4].PreviousHash != h[3].Hash {
		t.Fatalf("links: %+v", h)
	}
	if h[0].Time.Nanosecond() != 0 {
		t.Fatal("time not truncated to the second the API server keeps")
	}
}

func TestAppendIsIdempotent(t *testing.T) {
	h := chain(t, 3)
	again := h[1]
	again.Hash, again.PreviousHash, again.Sequence = "", "", 0
	h2, added := Append(h, again, 32)
	if added != nil || len(h2) != 3 {
		t.Fatalf("a retried entry was added again: %v", added)
	}
}

func TestAppendKeepsNewestAndWindowVerifies(t *testing.T) {
	var h []custodyv1alpha1.CustodyRecord
	for i := range 40 {
		h, _ = Append(h, custodyv1alpha1.CustodyRecord{Time: metav1.Now(), Type: custodyv1alpha1.CustodyEventBound, Reference: strings.Repeat("x", i+1)}, 32)
	}
	if len(h) != 32 || h[0].Sequence != 9 || h[31].Sequence != 40 {
		t.Fatalf("window: %d entries, %d..%d", len(h), h[0].Sequence, h[31].Sequence)
	}
	if err := Verify(h, Options{}); err != nil {
		t.Fatalf("window: %v", err)
	}
	if err := Verify(h, Options{FromGenesis: true}); err == nil {
		t.Fatal("a window passed as a complete history")
	}
}

// Every kind of tampering is detected, each with its own reason.
func TestTamperingIsDetected(t *testing.T) {
	cases := []struct {
		name   string
		tamper func([]custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord
		opts   func([]custodyv1alpha1.CustodyRecord) Options
		want   string
	}{
		{"edited tenant", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			h[2].Tenant = "mallory"
			return h
		}, nil, "edited"},
		{"edited time", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			h[1].Time = metav1.NewTime(h[1].Time.Add(time.Hour))
			return h
		}, nil, "edited"},
		{"edited and rehashed", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			h[2].Actor = "user:mallory"
			h[2].Hash = Hash(h[2])
			return h
		}, nil, "replaced"},
		{"removed from the middle", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			return append(h[:2:2], h[3:]...)
		}, nil, "removed"},
		{"removed the first", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			return h[1:]
		}, func([]custodyv1alpha1.CustodyRecord) Options { return Options{FromGenesis: true} }, "removed"},
		{"removed the last", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			return h[:len(h)-1]
		}, func(h []custodyv1alpha1.CustodyRecord) Options {
			return Options{Anchors: []Anchor{{5, h[4].Hash}}}
		}, "removed from the end"},
		{"swapped", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			h[1], h[2] = h[2], h[1]
			return h
		}, nil, "reordered"},
		{"whole tail rewritten", func(h []custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
			h[3].Tenant = "mallory"
			h[3].Hash = Hash(h[3])
			h[4].PreviousHash = h[3].Hash
			h[4].Hash = Hash(h[4])
			return h
		}, func(h []custodyv1alpha1.CustodyRecord) Options {
			return Options{Anchors: []Anchor{{5, h[4].Hash}}}
		}, "rewritten"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := chain(t, 5)
			opts := Options{}
			if tc.opts != nil {
				opts = tc.opts(chain(t, 5))
			}
			err := Verify(tc.tamper(h), opts)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("tampering not detected: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("detected for the wrong reason: %v", err)
			}
		})
	}
}

func FuzzVerifyNeverPanics(f *testing.F) {
	f.Add(int64(1), "Bound", "acme", "", "sha256:00")
	f.Fuzz(func(t *testing.T, seq int64, typ, tenant, prev, hash string) {
		r := custodyv1alpha1.CustodyRecord{Sequence: seq, Type: custodyv1alpha1.CustodyEventType(typ), Tenant: tenant, PreviousHash: prev, Hash: hash}
		_ = Verify([]custodyv1alpha1.CustodyRecord{r, r}, Options{FromGenesis: true, Anchors: []Anchor{{seq, hash}, {seq + 1, hash}}})
	})
}

// BenchmarkAppend and BenchmarkVerifyWindow show the chain costs little on
// the claim path: one SHA-256 per entry written, 32 per Device verified.
func BenchmarkAppend(b *testing.B) {
	var h []custodyv1alpha1.CustodyRecord
	r := custodyv1alpha1.CustodyRecord{Time: metav1.Now(), Type: custodyv1alpha1.CustodyEventBound, Tenant: "acme", Claim: "acme/c", Proof: "ClaimCode", Actor: "user:alice"}
	for i := 0; b.Loop(); i++ {
		r.ClaimUID = types.UID(strconv.Itoa(i))
		h, _ = Append(h, r, 32)
	}
}

func BenchmarkVerifyWindow(b *testing.B) {
	var h []custodyv1alpha1.CustodyRecord
	for i := range 32 {
		h, _ = Append(h, custodyv1alpha1.CustodyRecord{Time: metav1.Now(), Type: custodyv1alpha1.CustodyEventBound, ClaimUID: types.UID(strconv.Itoa(i))}, 32)
	}
	for b.Loop() {
		if err := Verify(h, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A repair that no longer knows the reference of a change (the Transfer
// completed meanwhile) must not record the change again.
func TestRepairWithoutReferenceIsNotRecordedTwice(t *testing.T) {
	orig := custodyv1alpha1.CustodyRecord{Time: metav1.Now(), Type: custodyv1alpha1.CustodyEventTransferred, Tenant: "acme", FromTenant: "wholesale", ClaimUID: "u1", Reference: "wholesale/offer"}
	h, _ := Append(nil, orig, 32)
	repair := orig
	repair.Reference = ""
	if _, added := Append(h, repair, 32); added != nil {
		t.Fatal("the repair recorded the transfer a second time")
	}
	other := orig
	other.Reference = "wholesale/another-offer"
	if _, added := Append(h, other, 32); added == nil {
		t.Fatal("a different referenced change was taken for the same one")
	}
}
