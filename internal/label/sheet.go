package label

import (
	"fmt"
	"html"
	"strings"

	"rsc.io/qr"

	"github.com/custody-dev/custody/pkg/protocol"
)

// Sheet geometry, in millimetres: A4 portrait pages of SheetColumns ×
// SheetRows labels of LabelWidth × LabelHeight, row by row, centred on the
// page, each framed by a light cut line.
const (
	PageWidth    = 210.0
	PageHeight   = 297.0
	SheetColumns = 2
	SheetRows    = 5
	LabelWidth   = 95.0
	LabelHeight  = 54.0
	// PerPage is the number of labels on one page.
	PerPage = SheetColumns * SheetRows

	marginX = (PageWidth - SheetColumns*LabelWidth) / 2
	marginY = (PageHeight - SheetRows*LabelHeight) / 2

	// The QR code's square, quiet zone included, at the label's top left.
	qrInset = 2.0
	qrSide  = 31.0
	// minModule is the smallest QR module that prints and scans reliably.
	minModule = 0.35
)

// Item is one device on a label sheet.
type Item struct {
	Label protocol.Label
	// Code is the claim code, printed in the scratch-off area.
	Code string
}

// Cell is where the i-th label of a sheet series is printed: its page
// (from 0) and the top-left corner of its label on that page, in mm.
func Cell(i int) (page int, x, y float64) {
	page, i = i/PerPage, i%PerPage
	return page, marginX + float64(i%SheetColumns)*LabelWidth, marginY + float64(i/SheetColumns)*LabelHeight
}

// Sheet renders items as print-ready A4 pages of labels, one SVG document
// per page, in order. Each label holds the model, the serial number, a QR
// code with the claim URL (no secret), the key fingerprint, the claim code
// in an area marked for a scratch-off cover, and a tamper warning. The
// pages carry the claim codes: print them and keep them as the codes
// themselves (see docs/devices.md, "Factory batches").
func Sheet(items []Item) ([][]byte, error) {
	var pages [][]byte
	var b *strings.Builder
	for i, it := range items {
		_, x, y := Cell(i)
		if b == nil {
			b = new(strings.Builder)
			fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%gmm" height="%gmm" viewBox="0 0 %g %g">`+"\n", PageWidth, PageHeight, PageWidth, PageHeight)
			fmt.Fprintf(b, `<rect width="%g" height="%g" fill="white"/>`+"\n", PageWidth, PageHeight)
		}
		if err := sheetLabel(b, it, x, y); err != nil {
			return nil, err
		}
		if (i+1)%PerPage == 0 || i == len(items)-1 {
			b.WriteString("</svg>\n")
			pages = append(pages, []byte(b.String()))
			b = nil
		}
	}
	return pages, nil
}

// sheetLabel draws one label with its top-left corner at (x, y).
func sheetLabel(b *strings.Builder, it Item, x, y float64) error {
	l := it.Label
	q, err := qr.Encode(l.URL(), qr.M)
	if err != nil {
		return fmt.Errorf("encoding the QR code of %s: %w", l.SerialNumber, err)
	}
	const quiet = 4
	module := qrSide / float64(q.Size+2*quiet)
	if module < minModule {
		return fmt.Errorf("the claim URL of %s is too long for a QR code on the label (%.3f mm modules; shorten --claim-url)", l.SerialNumber, module)
	}
	e := html.EscapeString
	fmt.Fprintf(b, `<g id="label-%s" transform="translate(%g %g)">`+"\n", e(l.SerialNumber), x, y)
	fmt.Fprintf(b, `<rect width="%g" height="%g" fill="white" stroke="#999999" stroke-width="0.2"/>`+"\n", LabelWidth, LabelHeight)
	// The QR code as one path of horizontal runs, in module units: one
	// path has no seams between modules when rasterised.
	fmt.Fprintf(b, `<path class="qr" transform="translate(%g %g) scale(%g)" fill="black" d="`, qrInset+quiet*module, qrInset+quiet*module, module)
	for r := 0; r < q.Size; r++ {
		for c := 0; c < q.Size; {
			if !q.Black(c, r) {
				c++
				continue
			}
			start := c
			for c < q.Size && q.Black(c, r) {
				c++
			}
			fmt.Fprintf(b, "M%d %dh%dv1h-%dz", start, r, c-start, c-start)
		}
	}
	b.WriteString(`"/>` + "\n")
	text := func(x, y, size float64, attrs, s string) {
		fmt.Fprintf(b, `<text x="%g" y="%g" font-size="%g" %s>%s</text>`+"\n", x, y, size, attrs, e(s))
	}
	const tx, mono, sans = qrInset + qrSide + 2, `font-family="monospace"`, `font-family="sans-serif"`
	text(tx, 8, 3.4, sans, "Model "+l.Model)
	text(tx, 14, 4.2, mono+` font-weight="bold"`, l.SerialNumber)
	text(tx, 19.5, 2.2, sans, "Device key fingerprint (SHA-256):")
	fp := strings.TrimPrefix(l.Fingerprint, "sha256:")
	for i := 0; i < len(fp); i += 32 {
		text(tx, 22.8+float64(i/32)*2.9, 2.4, mono, fp[i:min(i+32, len(fp))])
	}
	claimAt := "Scan to claim, or go to " + l.BaseURL
	// Fit the line into what is left of the label's width (a sans-serif
	// character is about half its size wide).
	text(tx, 31, min(2.2, (LabelWidth-tx-2)/(0.55*float64(len(claimAt)))), sans, claimAt)
	// The scratch-off area: the code is printed, then covered.
	const sy = 34.0
	fmt.Fprintf(b, `<rect class="scratch-off" x="2" y="%g" width="%g" height="11" fill="#e8e8e8" stroke="black" stroke-width="0.3" stroke-dasharray="1.2 0.6"/>`+"\n", sy, LabelWidth-4)
	text(4, sy+3.2, 2.1, sans, "CLAIM CODE - under the scratch-off cover")
	fmt.Fprintf(b, `<text class="claim-code" x="%g" y="%g" font-size="4.2" font-family="monospace" font-weight="bold" text-anchor="middle">%s</text>`+"\n", LabelWidth/2, sy+8.7, e(it.Code))
	text(2, 48.6, 2.1, sans+` font-weight="bold"`, "TAMPER WARNING: if the cover is scratched or damaged on delivery,")
	text(2, 51.6, 2.1, sans, "do not use the code: ask the seller for a new one. Never share or photograph it.")
	b.WriteString("</g>\n")
	return nil
}
