package factory

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
)

// Batch bounds: a batch is 1 to MaxBatch devices, numbered
// <prefix>-<SerialDigits digits> from a first number of at least 1.
const (
	MaxBatch     = 10000
	SerialDigits = 6
	maxSerialNum = 999999
)

// Serials returns count serial numbers prefix-000001 style, from first on,
// in order. The prefix is taken as typed (no case folding): it and every
// serial must be what the Device CRD accepts.
func Serials(prefix string, first, count int) ([]string, error) {
	switch {
	case count < 1 || count > MaxBatch:
		return nil, fmt.Errorf("--count must be 1 to %d, not %d", MaxBatch, count)
	case first < 1:
		return nil, fmt.Errorf("--first must be 1 or more, not %d", first)
	case first > maxSerialNum-count+1:
		return nil, fmt.Errorf("serial numbers have %d digits: %d devices from %d would pass %d", SerialDigits, count, first, maxSerialNum)
	case prefix == "":
		return nil, errors.New("--serial-prefix is required with --count")
	}
	out := make([]string, count)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%0*d", prefix, SerialDigits, first+i)
		if !contract.ValidSerialNumber(out[i]) {
			return nil, fmt.Errorf("--serial-prefix %q makes serial numbers like %q, which a Device does not accept: use upper-case letters, digits and inner '-', at most %d characters", prefix, out[i], contract.SerialNumberMaxLength-SerialDigits-1)
		}
	}
	return out, nil
}

// ManufactureBatch makes one device of model for each serial number, in
// order, workers at a time. Each device costs one argon2id hash of its
// claim code (about 19 MiB and tens of milliseconds), which is why the
// work is spread over workers; a worker pool of the number of cores makes
// 1,000 devices in seconds.
func ManufactureBatch(model string, serials []string, workers int) ([]*Record, error) {
	if !contract.ValidModel(model) {
		return nil, fmt.Errorf("--model %q is not a model a Device accepts: 2 to %d upper-case letters, digits and inner '-'", model, contract.ModelMaxLength)
	}
	for _, s := range serials {
		if !contract.ValidSerialNumber(s) {
			return nil, fmt.Errorf("%q is not a serial number a Device accepts", s)
		}
	}
	recs := make([]*Record, len(serials))
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < min(max(workers, 1), len(serials)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(serials) {
					return
				}
				rec, err := Manufacture(model, serials[i])
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("making %s: %w", serials[i], err)
					}
					mu.Unlock()
					next.Store(int64(len(serials))) // stop the others
					return
				}
				recs[i] = rec
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return recs, nil
}

// manifestObject is the Device as the ERP applies it: no status and no
// server-set metadata. Keys are sorted when rendered, so spec comes last
// and the ERP can append the sale.
func manifestObject(d *custodyv1alpha1.Device) (map[string]any, error) {
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "status")
	if md, ok := obj["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return obj, nil
}

// Manifest renders one Device manifest for the ERP as YAML.
func Manifest(d *custodyv1alpha1.Device) ([]byte, error) {
	obj, err := manifestObject(d)
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(obj)
}

// ManifestList renders the batch's Devices as one YAML "v1 List", which
// kubectl apply, server-side apply and GitOps tools take as a whole.
func ManifestList(recs []*Record) ([]byte, error) {
	items := make([]any, len(recs))
	for i, r := range recs {
		obj, err := manifestObject(r.Device)
		if err != nil {
			return nil, err
		}
		items[i] = obj
	}
	return yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
}

// ERPColumns are the columns of the batch's CSV for the ERP, in order.
// They are what the ERP needs to find a device and record its sale: the
// serial number and model printed on it, the Device's name (the object
// the ERP applies its sale record to), the fingerprint of its identity key
// (as the label's QR code shows it) and the claim-code verifier (for a
// Device the ERP creates from its own records). Neither the claim code
// nor the private key is ever a column: the code leaves the line only on
// the device's label, and the key only on the device.
var ERPColumns = []string{"serial_number", "model", "device_name", "key_fingerprint", "claim_code_verifier"}

// WriteERPCSV writes the batch as CSV (RFC 4180, a header row, one row per
// device in serial order).
func WriteERPCSV(w io.Writer, recs []*Record) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(ERPColumns); err != nil {
		return err
	}
	for _, r := range recs {
		s := r.Device.Spec
		if s.ClaimCode == nil {
			return fmt.Errorf("%s has no claim-code verifier", s.SerialNumber)
		}
		// No cell can read as a spreadsheet formula: serial numbers and
		// models start with a letter or digit (checked when made),
		// fingerprints with "sha256:", verifiers with "$argon2id$".
		if err := cw.Write([]string{s.SerialNumber, s.Model, r.Device.Name, r.Fingerprint, s.ClaimCode.Verifier}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
