package label

import (
	"encoding/xml"
	"fmt"
	"strings"
	"testing"

	"rsc.io/qr"

	"github.com/custody-dev/custody/pkg/protocol"
)

func TestSVG(t *testing.T) {
	l := protocol.Label{BaseURL: "https://claim.example", SerialNumber: "SN-1", Model: "XR200", Fingerprint: "sha256:" + strings.Repeat("ab", 32)}
	svg, err := SVG(l, "9G01-8BC1-MY21-P614-FY40")
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(struct{})); err != nil {
		t.Fatalf("not well-formed XML: %v", err)
	}
	s := string(svg)
	for _, want := range []string{`id="scratch-off"`, "9G01-8BC1-MY21-P614-FY40", "scratch-off cover", "SN-1", "XR200", strings.Repeat("ab", 16)} {
		if !strings.Contains(s, want) {
			t.Errorf("label lacks %q", want)
		}
	}
	// The QR modules drawn are exactly those of the claim URL's QR code
	// (the payload is checked by encoding it again; the URL round trip by
	// protocol.ParseLabelURL).
	q, _ := qr.Encode(l.URL(), qr.M)
	n := 0
	for y := 0; y < q.Size; y++ {
		for x := 0; x < q.Size; x++ {
			if q.Black(x, y) {
				n++
			}
		}
	}
	qrGroup := s[strings.Index(s, `<g id="qr"`):strings.Index(s, "</g>")]
	if got := strings.Count(qrGroup, "<rect"); got != n {
		t.Fatalf("%d QR modules drawn, want %d", got, n)
	}
	if strings.Contains(l.URL(), "9G01") {
		t.Fatal("the QR payload carries the claim code")
	}
}

func TestSheetLayout(t *testing.T) {
	// Every cell lies on its A4 page, and no two overlap.
	for i := 0; i < PerPage; i++ {
		page, x, y := Cell(i)
		if page != 0 || x < 5 || y < 5 || x+LabelWidth > PageWidth-5 || y+LabelHeight > PageHeight-5 {
			t.Fatalf("cell %d at page %d (%g, %g) is off the printable page", i, page, x, y)
		}
		for j := 0; j < i; j++ {
			_, x2, y2 := Cell(j)
			if x < x2+LabelWidth && x2 < x+LabelWidth && y < y2+LabelHeight && y2 < y+LabelHeight {
				t.Fatalf("cells %d and %d overlap", i, j)
			}
		}
	}
	if page, _, _ := Cell(PerPage); page != 1 {
		t.Fatalf("label %d is on page %d, want the second", PerPage, page)
	}
	items := make([]Item, 2*PerPage+1)
	for i := range items {
		items[i] = Item{Label: protocol.Label{BaseURL: "https://claim.example", SerialNumber: fmt.Sprintf("SN-%06d", i+1), Model: "XR200", Fingerprint: "sha256:" + strings.Repeat("ab", 32)}, Code: "9G01-8BC1-MY21-P614-FY40"}
	}
	pages, err := Sheet(items)
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) != 3 {
		t.Fatalf("%d pages for %d labels, want 3", len(pages), len(items))
	}
	for p, want := range []int{PerPage, PerPage, 1} {
		if err := xml.Unmarshal(pages[p], new(struct{})); err != nil {
			t.Fatalf("page %d is not well-formed XML: %v", p+1, err)
		}
		if got := strings.Count(string(pages[p]), `<g id="label-`); got != want {
			t.Fatalf("page %d holds %d labels, want %d", p+1, got, want)
		}
	}
	if !strings.Contains(string(pages[2]), `id="label-SN-000021"`) {
		t.Fatal("the last page does not hold the last label")
	}
	// A claim URL too long for a QR code that prints and scans is refused.
	items[0].Label.BaseURL = "https://claim.example/" + strings.Repeat("x", 300)
	if _, err := Sheet(items[:1]); err == nil || !strings.Contains(err.Error(), "shorten --claim-url") {
		t.Fatalf("an over-long claim URL: %v", err)
	}
}
