// Package label draws a device's printable label as SVG: a QR code with the
// claim URL (serial number, model and identity-key fingerprint, no secret),
// the same in text, and the claim code in an area marked for a scratch-off
// cover with a tamper warning. The code must be printed only where that
// cover (or the sealed documentation pack) hides it.
package label

import (
	"fmt"
	"html"
	"strings"

	"rsc.io/qr"

	"github.com/custody-dev/custody/pkg/protocol"
)

// SVG renders the label for l with the claim code code.
func SVG(l protocol.Label, code string) ([]byte, error) {
	q, err := qr.Encode(l.URL(), qr.M)
	if err != nil {
		return nil, fmt.Errorf("encoding the QR code: %w", err)
	}
	const module, quiet = 4, 4
	side := (q.Size + 2*quiet) * module
	width, height := side+360, side+150
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="monospace">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white" stroke="black"/>`+"\n", width, height)
	b.WriteString(`<g id="qr" fill="black">` + "\n")
	for y := 0; y < q.Size; y++ {
		for x := 0; x < q.Size; x++ {
			if q.Black(x, y) {
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d"/>`, (x+quiet)*module, (y+quiet)*module, module, module)
			}
		}
	}
	b.WriteString("\n</g>\n")
	e := html.EscapeString
	text := func(x, y, size int, s string) {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="%d">%s</text>`+"\n", x, y, size, e(s))
	}
	text(side+10, 30, 18, "Model "+l.Model)
	text(side+10, 56, 18, "Serial "+l.SerialNumber)
	text(side+10, 90, 11, "Device key fingerprint:")
	fp := strings.TrimPrefix(l.Fingerprint, "sha256:")
	for i := 0; i < len(fp); i += 32 {
		text(side+10, 106+(i/32)*14, 11, fp[i:min(i+32, len(fp))])
	}
	text(side+10, 150, 11, "Claim at: "+l.BaseURL)
	// The scratch-off area.
	y := side + 10
	fmt.Fprintf(&b, `<rect id="scratch-off" x="10" y="%d" width="%d" height="70" fill="#c0c0c0" stroke="black" stroke-dasharray="6 3"/>`+"\n", y, width-20)
	text(20, y+18, 12, "CLAIM CODE - under scratch-off cover:")
	fmt.Fprintf(&b, `<text id="claim-code" x="20" y="%d" font-size="22" font-weight="bold">%s</text>`+"\n", y+48, e(code))
	text(10, y+95, 12, "If this cover is scratched or damaged on delivery, do not use the code:")
	text(10, y+112, 12, "contact the seller for a new one. Never share or photograph the code.")
	b.WriteString("</svg>\n")
	return []byte(b.String()), nil
}
