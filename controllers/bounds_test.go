package controllers

import (
	"testing"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/custody"
)

// TestBoundsAreTheAPIs: the lists the controllers keep bounded use the
// API's bounds (which api/v1alpha1's TestCRDBoundsMatchGo checks against
// the CRDs), so a changed MaxItems cannot leave a controller writing more
// than the API server accepts.
func TestBoundsAreTheAPIs(t *testing.T) {
	for name, tc := range map[string]struct{ got, want int }{
		"maxDeviceCertificates":              {maxDeviceCertificates, custodyv1alpha1.MaxDeviceCertificates},
		"custody.MaxHistory":                 {custody.MaxHistory, custodyv1alpha1.MaxHistoryEntries},
		"custody.MaxDisputeClaims":           {custody.MaxDisputeClaims, custodyv1alpha1.MaxDisputeClaims},
		"custody.MaxConsumed (codes)":        {custody.MaxConsumed, custodyv1alpha1.MaxConsumedClaimCodes},
		"custody.MaxConsumed (sale records)": {custody.MaxConsumed, custodyv1alpha1.MaxConsumedSaleRecords},
	} {
		if tc.got != tc.want {
			t.Errorf("%s is %d, the API's bound %d", name, tc.got, tc.want)
		}
	}
}
