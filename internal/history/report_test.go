package history

import (
	"bytes"
	"strings"
	"testing"
)

// TestReportSaysWhatAWindowCannotShow: a history that does not start at
// entry 1 verifies on its own (a Device keeps its newest entries), so the
// report says the earlier entries need the audit log or an anchor; a
// history from entry 1 says nothing more.
func TestReportSaysWhatAWindowCannotShow(t *testing.T) {
	h := chain(t, 3)
	var out bytes.Buffer
	if err := Report(&out, "xr200.sn-0001", h, Options{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "not on the Device") {
		t.Errorf("a complete history got a hint: %q", out.String())
	}
	out.Reset()
	if err := Report(&out, "xr200.sn-0001", h[1:], Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "history intact: entries 2..3") || !strings.Contains(out.String(), "entries before 2 are not on the Device") || !strings.Contains(out.String(), "--audit-log") {
		t.Errorf("a window from entry 2 reads %q", out.String())
	}
}
