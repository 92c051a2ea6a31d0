package history

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// Report verifies records and writes one line about them to w:
// "<name>: history intact: entries A..B, head H" or "<name>: no history".
// A broken chain is returned as an error naming the device.
func Report(w io.Writer, name string, records []custodyv1alpha1.CustodyRecord, opts Options) error {
	if err := Verify(records, opts); err != nil {
		return fmt.Errorf("%s: history is NOT intact: %w", name, err)
	}
	if len(records) == 0 {
		_, err := fmt.Fprintf(w, "%s: no history\n", name)
		return err
	}
	last := records[len(records)-1]
	if _, err := fmt.Fprintf(w, "%s: history intact: entries %d..%d, head %s\n", name, records[0].Sequence, last.Sequence, last.Hash); err != nil {
		return err
	}
	if first := records[0].Sequence; first > 1 && !opts.FromGenesis {
		// A Device keeps its newest entries, and a window that does not
		// start at 1 verifies on its own: say what it cannot show.
		_, err := fmt.Fprintf(w, "%s: entries before %d are not on the Device: verify them, and that none was removed, with the manager's audit log (--audit-log) or an anchor you kept (--anchor)\n", name, first)
		return err
	}
	return nil
}

// ReadDevices reads one Device or a List of Devices in JSON, as `kubectl
// get device -o json` prints them.
func ReadDevices(r io.Reader) ([]custodyv1alpha1.Device, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var kind struct{ Kind string }
	if err := json.Unmarshal(data, &kind); err != nil {
		return nil, fmt.Errorf("not a Device in JSON: %w", err)
	}
	switch kind.Kind {
	case "Device":
		var d custodyv1alpha1.Device
		if err := json.Unmarshal(data, &d); err != nil {
			return nil, err
		}
		return []custodyv1alpha1.Device{d}, nil
	case "List", "DeviceList":
		var l custodyv1alpha1.DeviceList
		if err := json.Unmarshal(data, &l); err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	return nil, fmt.Errorf("expected a Device or a List of Devices, got kind %q", kind.Kind)
}

// ParseAnchor parses "SEQ:sha256:HEX", an entry known from elsewhere (a
// notification, an earlier audit).
func ParseAnchor(v string) (Anchor, error) {
	seq, hash, ok := strings.Cut(v, ":")
	n, err := strconv.ParseInt(seq, 10, 64)
	if !ok || err != nil || !strings.HasPrefix(hash, HashPrefix) {
		return Anchor{}, fmt.Errorf("anchor %q: want SEQ:sha256:HEX", v)
	}
	return Anchor{Sequence: n, Hash: hash}, nil
}

// VerifyAuditLog reports on device's complete history in the manager's
// audit log (JSON lines), from the first entry.
func VerifyAuditLog(w io.Writer, log io.Reader, device string, anchors []Anchor) error {
	if device == "" {
		return errors.New("verifying an audit log needs the device's name")
	}
	records, err := ReadAuditLog(log, device)
	if err != nil {
		return err
	}
	return Report(w, device, records, Options{FromGenesis: true, Anchors: anchors})
}
