package factory

import (
	"bytes"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/pkg/protocol"
)

func TestSerials(t *testing.T) {
	got, err := Serials("XR-2026W49", 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"XR-2026W49-000001", "XR-2026W49-000002", "XR-2026W49-000003"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Serials = %v, want %v", got, want)
	}
	got, err = Serials("B7", 999998, 2)
	if err != nil || strings.Join(got, ",") != "B7-999998,B7-999999" {
		t.Fatalf("Serials from 999998 = %v, %v", got, err)
	}
	if got, err := Serials("B7", 1, MaxBatch); err != nil || len(got) != MaxBatch {
		t.Fatalf("a batch of MaxBatch: %d serials, %v", len(got), err)
	}
	for _, c := range []struct {
		name, prefix string
		first, count int
		want         string
	}{
		{"no devices", "XR", 1, 0, "--count must be 1 to 10000, not 0"},
		{"negative", "XR", 1, -5, "--count must be 1 to 10000"},
		{"too many", "XR", 1, MaxBatch + 1, "--count must be 1 to 10000, not 10001"},
		{"first zero", "XR", 0, 5, "--first must be 1 or more"},
		{"past six digits", "XR", 999999, 2, "serial numbers have 6 digits"},
		{"no prefix", "", 1, 5, "--serial-prefix is required"},
		{"lower case", "xr", 1, 5, "upper-case letters"},
		{"leading dash", "-XR", 1, 5, "upper-case letters"},
		{"space", "XR 1", 1, 5, "upper-case letters"},
		{"too long", strings.Repeat("A", 58), 1, 1, "at most 57 characters"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Serials(c.prefix, c.first, c.count)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
		})
	}
	if _, err := Serials(strings.Repeat("A", 57), 1, 1); err != nil {
		t.Fatalf("the longest prefix: %v", err)
	}
}

// makeBatch makes a small batch (one argon2id hash per device).
func makeBatch(t *testing.T, n int) []*Record {
	t.Helper()
	serials, err := Serials("XR-T", 41, n)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ManufactureBatch("XR200", serials, 3)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// codeForms is every way a claim code could appear in a file.
func codeForms(c claimcode.Code) []string {
	return []string{string(c), c.String(), strings.ToLower(string(c)), strings.ToLower(c.String())}
}

func TestManufactureBatch(t *testing.T) {
	recs := makeBatch(t, 5)
	keys := map[string]bool{}
	for i, r := range recs {
		serial := []string{"XR-T-000041", "XR-T-000042", "XR-T-000043", "XR-T-000044", "XR-T-000045"}[i]
		s := r.Device.Spec
		if s.SerialNumber != serial || s.Model != "XR200" || r.Device.Name != custodyv1alpha1.DeviceName("XR200", serial) {
			t.Fatalf("record %d is %s %s (%s), want XR200 %s in order", i, s.Model, s.SerialNumber, r.Device.Name, serial)
		}
		ok, err := claimcode.Verify(r.Code, s.ClaimCode.Verifier)
		if err != nil || !ok {
			t.Fatalf("%s: its verifier does not verify its code: %v", serial, err)
		}
		if ok, _ := claimcode.Verify(recs[(i+1)%len(recs)].Code, s.ClaimCode.Verifier); ok {
			t.Fatalf("%s: another device's code verifies", serial)
		}
		if keys[r.Fingerprint] {
			t.Fatalf("%s: a key made twice", serial)
		}
		keys[r.Fingerprint] = true
		if got := fingerprintOf(t, s.Identity.PublicKey); got != r.Fingerprint {
			t.Fatalf("%s: fingerprint %s, the key's is %s", serial, r.Fingerprint, got)
		}
	}
	if _, err := ManufactureBatch("xr200", []string{"SN-1"}, 1); err == nil || !strings.Contains(err.Error(), "upper-case") {
		t.Fatalf("a lower-case model: %v", err)
	}
	if _, err := ManufactureBatch("XR200", []string{"SN-1", "sn 2"}, 1); err == nil {
		t.Fatal("a serial number a Device refuses was made")
	}
}

func fingerprintOf(t *testing.T, pubPEM string) string {
	t.Helper()
	blk, _ := pem.Decode([]byte(pubPEM))
	if blk == nil {
		t.Fatal("no PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := protocol.KeyFingerprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestERPCSV(t *testing.T) {
	recs := makeBatch(t, 4)
	var buf bytes.Buffer
	if err := WriteERPCSV(&buf, recs); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(buf.Bytes())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if want := "serial_number,model,device_name,key_fingerprint,claim_code_verifier"; strings.Join(rows[0], ",") != want {
		t.Fatalf("header %v, want %s", rows[0], want)
	}
	if len(rows) != 1+len(recs) {
		t.Fatalf("%d rows, want a header and %d devices", len(rows), len(recs))
	}
	for i, r := range recs {
		row := rows[i+1]
		want := []string{r.Device.Spec.SerialNumber, "XR200", r.Device.Name, r.Fingerprint, r.Device.Spec.ClaimCode.Verifier}
		if strings.Join(row, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("row %d = %q, want %q", i+1, row, want)
		}
		if ok, err := claimcode.Verify(r.Code, row[4]); err != nil || !ok {
			t.Fatalf("row %d: the verifier does not verify the device's code", i+1)
		}
	}
	assertNoSecrets(t, "the CSV", buf.String(), recs)
}

// assertNoSecrets fails if text holds any device's claim code (in any
// form it is printed or typed) or private key.
func assertNoSecrets(t *testing.T, what, text string, recs []*Record) {
	t.Helper()
	if strings.Contains(text, "PRIVATE KEY") {
		t.Fatalf("%s holds a private key", what)
	}
	for _, r := range recs {
		for _, form := range codeForms(r.Code) {
			if strings.Contains(text, form) {
				t.Fatalf("%s holds the claim code of %s", what, r.Device.Spec.SerialNumber)
			}
		}
		if strings.Contains(text, strings.TrimSpace(string(r.PrivateKeyPEM))) {
			t.Fatalf("%s holds the private key of %s", what, r.Device.Spec.SerialNumber)
		}
	}
}

func TestManifestList(t *testing.T) {
	recs := makeBatch(t, 3)
	data, err := ManifestList(recs)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		APIVersion string                   `json:"apiVersion"`
		Kind       string                   `json:"kind"`
		Items      []custodyv1alpha1.Device `json:"items"`
	}
	if err := yaml.UnmarshalStrict(data, &list); err != nil {
		t.Fatalf("not a list of Devices: %v", err)
	}
	if list.APIVersion != "v1" || list.Kind != "List" || len(list.Items) != len(recs) {
		t.Fatalf("got %s %s with %d items, want a v1 List of %d", list.APIVersion, list.Kind, len(list.Items), len(recs))
	}
	for i, d := range list.Items {
		r := recs[i]
		if d.APIVersion != "custody.dev/v1alpha1" || d.Kind != "Device" || d.Name != r.Device.Name ||
			d.Spec.SerialNumber != r.Device.Spec.SerialNumber || d.Spec.Model != "XR200" || d.Spec.Identity.PublicKey != r.Device.Spec.Identity.PublicKey {
			t.Fatalf("item %d is %s %s %s, want the Device %s", i, d.APIVersion, d.Kind, d.Name, r.Device.Name)
		}
		if ok, err := claimcode.Verify(r.Code, d.Spec.ClaimCode.Verifier); err != nil || !ok {
			t.Fatalf("item %d: its verifier does not verify the device's code", i)
		}
		if d.Spec.Sale != nil || d.Spec.ClaimRef != nil || !d.CreationTimestamp.IsZero() {
			t.Fatalf("item %d carries more than the factory's record", i)
		}
	}
	if strings.Contains(string(data), "status") || strings.Contains(string(data), "creationTimestamp") {
		t.Fatal("the list carries status or server-set metadata")
	}
	assertNoSecrets(t, "the manifest list", string(data), recs)
	one, err := Manifest(recs[0].Device)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecrets(t, "the manifest", string(one), recs)
}
