package operator

import (
	"bytes"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/history"
)

// TestAuditLoggerKeepsEveryLine: a burst of audit lines far beyond the
// general logger's sampling (100 a second per message) is kept whole, and
// in the format the audit log reader and custodyctl read.
func TestAuditLoggerKeepsEveryLine(t *testing.T) {
	var buf bytes.Buffer
	log := AuditLogger(&buf)
	const n = 1000
	for i := range n {
		e := history.Link(nil, custodyv1alpha1.CustodyRecord{Type: custodyv1alpha1.CustodyEventSold, Time: metav1.Now(), Reference: fmt.Sprint(i)})
		log.Info(history.AuditMessage, "device", "xr200-sn1", "entry", e)
	}
	got, err := history.ReadAuditLog(&buf, "xr200-sn1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("the audit log kept %d of %d lines", len(got), n)
	}
}
