package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/label"
	"github.com/custody-dev/custody/internal/testtools"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

func runInit(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"init"}, args...), &out, &out)
	return out.String(), err
}

// batchDevice is what a test reads back about one device of a batch: from
// its own directory (the device's key and its label.txt) and from the
// batch's shared files.
type batchDevice struct {
	serial      string
	fingerprint string // of the key in DIR/<serial>/device.key
	code        string // from DIR/<serial>/label.txt
	manifest    custodyv1alpha1.Device
}

func readBatchDevice(t *testing.T, dir, serial string) batchDevice {
	t.Helper()
	p := filepath.Join(dir, serial)
	a, err := device.LoadAgent(p, nil)
	if err != nil {
		t.Fatalf("%s is not a device directory: %v", p, err)
	}
	if a.ID.SerialNumber != serial || a.ID.Model != "XR200" {
		t.Fatalf("%s: identity %+v", p, a.ID)
	}
	fp, err := protocol.KeyFingerprint(a.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(p, device.FilePrivateKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: the key is not 0600: %v", p, err)
	}
	text, err := os.ReadFile(filepath.Join(p, "label.txt"))
	if err != nil {
		t.Fatal(err)
	}
	d := batchDevice{serial: serial, fingerprint: fp}
	for _, line := range strings.Split(string(text), "\n") {
		if v, ok := strings.CutPrefix(line, "Claim code:"); ok {
			d.code = strings.TrimSpace(v)
		}
	}
	if _, err := claimcode.Parse(d.code); err != nil {
		t.Fatalf("%s: label.txt holds no claim code", p)
	}
	raw, err := os.ReadFile(filepath.Join(p, "device.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &d.manifest); err != nil {
		t.Fatal(err)
	}
	return d
}

func serialsOf(prefix string, first, n int) []string {
	var out []string
	for i := first; i < first+n; i++ {
		out = append(out, fmt.Sprintf("%s-%06d", prefix, i))
	}
	return out
}

const testClaimURL = "https://claim.example.test"

// tempDirs outlive one test (the shared batch); TestMain removes them.
var tempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		_ = os.RemoveAll(d)
	}
	os.Exit(code)
}

// makeTestBatch makes n devices XR-T-000001... into a new directory,
// removed when the tests end, and reads them back.
func makeTestBatch(t *testing.T, n int) (string, []batchDevice) {
	t.Helper()
	d, err := os.MkdirTemp("", "custody-batch-")
	if err != nil {
		t.Fatal(err)
	}
	tempDirs = append(tempDirs, d)
	dir := filepath.Join(d, "batch")
	out, err := runInit(t, "--model", "XR200", "--count", fmt.Sprint(n), "--serial-prefix", "XR-T", "--dir", dir, "--claim-url", testClaimURL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("made %d XR200 devices, XR-T-000001 to XR-T-%06d", n, n)) {
		t.Fatalf("init said %q", out)
	}
	// The sheets to print, by name: one, or the first to the last.
	sheets := fmt.Sprintf("print %s (", fmt.Sprintf(batchSheet, 1))
	if pages := (n + label.PerPage - 1) / label.PerPage; pages > 1 {
		sheets = fmt.Sprintf("print %s to %s (", fmt.Sprintf(batchSheet, 1), fmt.Sprintf(batchSheet, pages))
	}
	if !strings.Contains(out, sheets) {
		t.Fatalf("init said %q, not %q", out, sheets)
	}
	var devs []batchDevice
	for _, s := range serialsOf("XR-T", 1, n) {
		devs = append(devs, readBatchDevice(t, dir, s))
	}
	return dir, devs
}

var shared struct {
	once sync.Once
	dir  string
	devs []batchDevice
	ok   bool
}

// testBatch is one batch of 12 devices (two pages of labels) that tests
// read and never change; it is made once, since every device costs an
// argon2id hash.
func testBatch(t *testing.T) (string, []batchDevice) {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.devs = makeTestBatch(t, 12)
		shared.ok = true
	})
	if !shared.ok {
		t.Fatal("making the shared batch failed")
	}
	return shared.dir, shared.devs
}

func TestInitBatch(t *testing.T) {
	dir, devs := testBatch(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := append(serialsOf("XR-T", 1, 12), "devices.csv", "devices.yaml", "labels-0001.svg", "labels-0002.svg")
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("the batch directory holds %v, want %v", names, want)
	}

	// The CSV: one row per device in serial order, what the device's own
	// files say, and a verifier of its code.
	f, err := os.ReadFile(filepath.Join(dir, "devices.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(f)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 13 || strings.Join(rows[0], ",") != "serial_number,model,device_name,key_fingerprint,claim_code_verifier" {
		t.Fatalf("the CSV has %d rows, header %v", len(rows), rows[0])
	}
	for i, d := range devs {
		row := rows[i+1]
		if row[0] != d.serial || row[1] != "XR200" || row[2] != custodyv1alpha1.DeviceName("XR200", d.serial) || row[3] != d.fingerprint {
			t.Fatalf("row %d = %v, want %s with the fingerprint of its key %s", i+1, row, d.serial, d.fingerprint)
		}
		if ok, err := claimcode.Verify(claimcode.Code(mustParse(t, d.code)), row[4]); err != nil || !ok {
			t.Fatalf("row %d: the verifier does not verify the code on %s's label", i+1, d.serial)
		}
	}

	// The manifest list: the same Devices as the per-device manifests.
	raw, err := os.ReadFile(filepath.Join(dir, "devices.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		APIVersion string                   `json:"apiVersion"`
		Kind       string                   `json:"kind"`
		Items      []custodyv1alpha1.Device `json:"items"`
	}
	if err := yaml.UnmarshalStrict(raw, &list); err != nil || list.APIVersion != "v1" || list.Kind != "List" || len(list.Items) != 12 {
		t.Fatalf("devices.yaml is not a v1 List of 12 Devices: %v", err)
	}
	for i, d := range devs {
		item := list.Items[i]
		if item.Kind != "Device" || item.Name != d.manifest.Name || item.Spec.SerialNumber != d.serial ||
			item.Spec.Identity.PublicKey != d.manifest.Spec.Identity.PublicKey || item.Spec.ClaimCode.Verifier != d.manifest.Spec.ClaimCode.Verifier {
			t.Fatalf("item %d (%s) is not the Device in %s/device.yaml", i, item.Name, d.serial)
		}
		if ok, err := claimcode.Verify(claimcode.Code(mustParse(t, d.code)), item.Spec.ClaimCode.Verifier); err != nil || !ok {
			t.Fatalf("item %d: the verifier does not verify the code on %s's label", i, d.serial)
		}
	}

	// The claim codes: never in the ERP's files; each exactly once on the
	// label sheets, in its own label's scratch-off area.
	for _, name := range []string{"devices.csv", "devices.yaml"} {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		for _, d := range devs {
			c := mustParse(t, d.code)
			for _, form := range []string{d.code, c, strings.ToLower(c), strings.ToLower(d.code)} {
				if strings.Contains(string(data), form) {
					t.Fatalf("%s holds the claim code of %s", name, d.serial)
				}
			}
		}
		if bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Fatalf("%s holds a private key", name)
		}
	}
	labels := sheetLabels(t, dir, 2)
	if len(labels[0]) != label.PerPage || len(labels[1]) != 2 {
		t.Fatalf("the pages hold %d and %d labels, want %d and 2", len(labels[0]), len(labels[1]), label.PerPage)
	}
	var all []sheetLabel
	all = append(append(all, labels[0]...), labels[1]...)
	sheets := ""
	for p := 1; p <= 2; p++ {
		data, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("labels-%04d.svg", p)))
		sheets += string(data)
		if fi, _ := os.Stat(filepath.Join(dir, fmt.Sprintf("labels-%04d.svg", p))); fi.Mode().Perm() != 0o600 {
			t.Fatalf("labels-%04d.svg, which holds claim codes, is %v", p, fi.Mode().Perm())
		}
	}
	for i, d := range devs {
		if all[i].ID != "label-"+d.serial || all[i].Code != d.code {
			t.Fatalf("label %d is %s with code %q, want %s with the code on its label.txt", i, all[i].ID, all[i].Code, d.serial)
		}
		if n := strings.Count(sheets, d.code); n != 1 {
			t.Fatalf("the code of %s is %d times on the sheets", d.serial, n)
		}
		if !strings.Contains(all[i].Text, "TAMPER WARNING") || !all[i].ScratchOff {
			t.Fatalf("label %s has no tamper warning or no scratch-off area", d.serial)
		}
	}

	// The single-device init is as before.
	one := filepath.Join(t.TempDir(), "sn-1")
	if _, err := runInit(t, "--model", "XR200", "--serial", "SN-1", "--dir", one); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{device.FilePrivateKey, device.FileIdentity, "device.yaml", "label.svg", "label.txt"} {
		if _, err := os.Stat(filepath.Join(one, f)); err != nil {
			t.Fatalf("single init: %v", err)
		}
	}
}

func mustParse(t *testing.T, s string) string {
	t.Helper()
	c, err := claimcode.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(c)
}

// sheetLabel is one label group read from a sheet.
type sheetLabel struct {
	ID         string
	Code       string
	Text       string
	ScratchOff bool
}

// sheetLabels parses the pages' SVG and returns their labels, page by page.
func sheetLabels(t *testing.T, dir string, pages int) [][]sheetLabel {
	t.Helper()
	type node struct {
		XMLName  xml.Name
		Attrs    []xml.Attr `xml:",any,attr"`
		Text     string     `xml:",chardata"`
		Children []node     `xml:",any"`
	}
	attr := func(n node, name string) string {
		for _, a := range n.Attrs {
			if a.Name.Local == name {
				return a.Value
			}
		}
		return ""
	}
	var out [][]sheetLabel
	for p := 1; p <= pages+1; p++ {
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("labels-%04d.svg", p)))
		if p == pages+1 {
			if err == nil {
				t.Fatalf("a page %d beyond the %d expected", p, pages)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var root node
		if err := xml.Unmarshal(data, &root); err != nil {
			t.Fatalf("page %d is not well-formed SVG: %v", p, err)
		}
		if attr(root, "width") != "210mm" || attr(root, "height") != "297mm" {
			t.Fatalf("page %d is %sx%s, not A4", p, attr(root, "width"), attr(root, "height"))
		}
		var page []sheetLabel
		for _, g := range root.Children {
			if g.XMLName.Local != "g" {
				continue
			}
			l := sheetLabel{ID: attr(g, "id")}
			for _, c := range g.Children {
				switch {
				case attr(c, "class") == "claim-code":
					l.Code = c.Text
				case attr(c, "class") == "scratch-off":
					l.ScratchOff = true
				}
				l.Text += c.Text + "\n"
			}
			page = append(page, l)
		}
		out = append(out, page)
	}
	return out
}

func TestInitBatchRefusesToOverwrite(t *testing.T) {
	dir, devs := makeTestBatch(t, 2)
	csvBefore, _ := os.ReadFile(filepath.Join(dir, "devices.csv"))
	keyBefore, _ := os.ReadFile(filepath.Join(dir, devs[0].serial, device.FilePrivateKey))
	_, err := runInit(t, "--model", "XR200", "--count", "2", "--serial-prefix", "XR-T", "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "already exists: a device is made once") {
		t.Fatalf("a second batch into the same directory: %v", err)
	}
	csvAfter, _ := os.ReadFile(filepath.Join(dir, "devices.csv"))
	keyAfter, _ := os.ReadFile(filepath.Join(dir, devs[0].serial, device.FilePrivateKey))
	if !bytes.Equal(csvBefore, csvAfter) || !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("a refused batch changed the files of the first")
	}
	// Going on numbering in the same directory is refused too: the
	// batch's shared files would be overwritten.
	if _, err := runInit(t, "--model", "XR200", "--count", "2", "--first", "3", "--serial-prefix", "XR-T", "--dir", dir); err == nil || !strings.Contains(err.Error(), "devices.yaml already exists") {
		t.Fatalf("a second batch's shared files over the first's: %v", err)
	}

	// One device directory in the way: nothing at all is written.
	other := filepath.Join(t.TempDir(), "other")
	if err := os.MkdirAll(filepath.Join(other, "XR-T-000004"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := runInit(t, "--model", "XR200", "--count", "5", "--serial-prefix", "XR-T", "--dir", other); err == nil || !strings.Contains(err.Error(), "XR-T-000004 already exists") {
		t.Fatalf("a batch over an existing device directory: %v", err)
	}
	if entries, _ := os.ReadDir(other); len(entries) != 1 {
		t.Fatalf("a refused batch wrote %d entries", len(entries)-1)
	}
	// A batch that goes on numbering, in a directory of its own, is made.
	next := filepath.Join(t.TempDir(), "next")
	out, err := runInit(t, "--model", "XR200", "--count", "1", "--first", "3", "--serial-prefix", "XR-T", "--dir", next)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "made 1 XR200 device, XR-T-000003, in ") {
		t.Fatalf("init of one device said %q", out)
	}
	readBatchDevice(t, next, "XR-T-000003")
}

func TestInitBatchFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no devices", []string{"--model", "XR200", "--count", "0", "--serial-prefix", "XR"}, "--count must be 1 to 10000, not 0"},
		{"too many", []string{"--model", "XR200", "--count", "10001", "--serial-prefix", "XR"}, "--count must be 1 to 10000, not 10001"},
		{"no prefix", []string{"--model", "XR200", "--count", "3"}, "--serial-prefix is required"},
		{"no count", []string{"--model", "XR200", "--serial-prefix", "XR"}, "give its size with --count"},
		{"no model", []string{"--count", "3", "--serial-prefix", "XR"}, "--model is required"},
		{"a serial too", []string{"--model", "XR200", "--count", "3", "--serial-prefix", "XR", "--serial", "SN-1"}, "give one of them"},
		{"lower-case prefix", []string{"--model", "XR200", "--count", "3", "--serial-prefix", "xr"}, "upper-case letters"},
		{"lower-case model", []string{"--model", "xr200", "--count", "3", "--serial-prefix", "XR"}, "upper-case letters"},
		{"past six digits", []string{"--model", "XR200", "--count", "3", "--serial-prefix", "XR", "--first", "999998"}, "6 digits"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, c.name)
			_, err := runInit(t, append(c.args, "--dir", d)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
			if _, err := os.Stat(d); err == nil {
				t.Fatal("a refused batch made its directory")
			}
		})
	}
}

// TestLabelSheetScans prints a batch's label sheets to PNG with a
// third-party SVG renderer (librsvg's rsvg-convert) and reads every
// label's QR code back with a third-party decoder (zbar's zbarimg): each
// label, cut out where the sheet says it is, holds exactly one QR code,
// and it is that device's claim URL, with the fingerprint of the key in
// the device's directory.
func TestLabelSheetScans(t *testing.T) {
	rsvg := testtools.Need(t, "rsvg-convert", "librsvg2-bin")
	zbar := testtools.Need(t, "zbarimg", "zbar-tools")
	dir, devs := testBatch(t)
	work := t.TempDir()
	// render prints the region (x, y, w, h) of a page, in mm, to PNG at
	// 200 dpi: the page's own SVG with its viewBox narrowed to the region,
	// so the renderer cuts the label out where the sheet says it is.
	render := func(page int, x, y, w, h float64, name string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("labels-%04d.svg", page+1)))
		if err != nil {
			t.Fatal(err)
		}
		whole := fmt.Sprintf(`width="%gmm" height="%gmm" viewBox="0 0 %g %g"`, label.PageWidth, label.PageHeight, label.PageWidth, label.PageHeight)
		if !bytes.Contains(data, []byte(whole)) {
			t.Fatalf("page %d is not an A4 page in mm", page+1)
		}
		data = bytes.Replace(data, []byte(whole), []byte(fmt.Sprintf(`width="%gmm" height="%gmm" viewBox="%g %g %g %g"`, w, h, x, y, w, h)), 1)
		in, out := filepath.Join(work, name+".svg"), filepath.Join(work, name+".png")
		if err := os.WriteFile(in, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(rsvg, "--dpi-x", "200", "--dpi-y", "200", "-b", "white", "-o", out, in).CombinedOutput(); err != nil {
			t.Fatalf("rsvg-convert: %v: %s", err, b)
		}
		return out
	}
	scan := func(png string) []string {
		t.Helper()
		out, err := exec.Command(zbar, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", png).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 4 { // no symbol found
			return nil
		}
		if err != nil {
			t.Fatalf("zbarimg: %v", err)
		}
		return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	}
	for i, d := range devs {
		page, x, y := label.Cell(i)
		got := scan(render(page, x, y, label.LabelWidth, label.LabelHeight, d.serial))
		want := protocol.Label{BaseURL: testClaimURL, SerialNumber: d.serial, Model: "XR200", Fingerprint: d.fingerprint}.URL()
		if len(got) != 1 || got[0] != want {
			t.Fatalf("the label of %s (page %d at %g,%g mm) scans as %q, want exactly %q", d.serial, page+1, x, y, got, want)
		}
		l, err := protocol.ParseLabelURL(got[0])
		if err != nil || l.SerialNumber != d.serial || l.Fingerprint != d.fingerprint {
			t.Fatalf("the scanned URL of %s does not parse back: %+v, %v", d.serial, l, err)
		}
		if strings.Contains(got[0], mustParse(t, d.code)) || strings.Contains(got[0], d.code) {
			t.Fatalf("the QR code of %s carries its claim code", d.serial)
		}
	}
	// Each whole page scans as exactly its labels: no stray or doubled
	// codes, none in the second page's empty cells.
	for p, n := range []int{label.PerPage, len(devs) - label.PerPage} {
		if got := scan(render(p, 0, 0, label.PageWidth, label.PageHeight, fmt.Sprintf("page-%d", p+1))); len(got) != n {
			t.Fatalf("page %d scans as %d codes, want %d", p+1, len(got), n)
		}
	}
}

// TestInitRefusesBadClaimURLs: the claim URL goes into every label's QR
// code; one a phone would open wrongly, or that carries a query of its
// own, is refused before anything is made.
func TestInitRefusesBadClaimURLs(t *testing.T) {
	for _, u := range []string{"", "javascript:alert(1)", "http://claim.example.com", "https://", "https://a/p?x=1&y=\"<b>", "https://claim.example.com/#x", "https://user@claim.example.com", "https:claim.example.com"} {
		dir := filepath.Join(t.TempDir(), "d")
		for _, args := range [][]string{
			{"--model", "XR200", "--serial", "SN-0001", "--dir", dir, "--claim-url", u},
			{"--model", "XR200", "--count", "2", "--serial-prefix", "XR", "--dir", dir, "--claim-url", u},
		} {
			if _, err := runInit(t, args...); err == nil || !strings.Contains(err.Error(), "--claim-url") {
				t.Errorf("init %v: %v", args, err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("init %v made %s before refusing", args, dir)
			}
		}
	}
	if _, err := runInit(t, "--model", "XR200", "--serial", "SN-0001", "--dir", filepath.Join(t.TempDir(), "ok"), "--claim-url", "https://claim.example.com/devices/"); err != nil {
		t.Errorf("a good claim URL refused: %v", err)
	}
}
