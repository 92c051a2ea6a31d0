package label

import (
	"encoding/xml"
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
