package v1alpha1_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/custody-dev/custody/api/v1alpha1"
)

// crdSchema reads the generated CRD of plural from config/crd/bases and
// returns its v1alpha1 schema.
func crdSchema(t *testing.T, plural string) *apiextensionsv1.JSONSchemaProps {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", v1.GroupVersion.Group+"_"+plural+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		t.Fatalf("%s: %v", plural, err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == v1.GroupVersion.Version && v.Schema != nil {
			return v.Schema.OpenAPIV3Schema
		}
	}
	t.Fatalf("%s: no %s schema", plural, v1.GroupVersion.Version)
	return nil
}

// field walks a dotted path of property names through s; "[]" steps into a
// list's items.
func field(t *testing.T, s *apiextensionsv1.JSONSchemaProps, path string) *apiextensionsv1.JSONSchemaProps {
	t.Helper()
	for _, p := range strings.Split(path, ".") {
		if p == "[]" {
			if s.Items == nil || s.Items.Schema == nil {
				t.Fatalf("%s: %q is not a list", path, p)
			}
			s = s.Items.Schema
			continue
		}
		next, ok := s.Properties[p]
		if !ok {
			t.Fatalf("%s: no property %q", path, p)
		}
		s = &next
	}
	return s
}

// cel spells a duration as the CRDs' CEL rules do: "1m", "720h".
func cel(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// TestCRDBoundsMatchGo fails when a bound the Go code relies on (a list's
// MaxItems, a number's Minimum or Maximum, a duration's range) differs
// between the generated CRDs and its Go constant: change the kubebuilder
// marker and the constant next to it together, then run make manifests.
func TestCRDBoundsMatchGo(t *testing.T) {
	maxItems := []struct {
		plural, path string
		want         int64
	}{
		{"devices", "spec.consumedClaimCodes", v1.MaxConsumedClaimCodes},
		{"devices", "spec.consumedSaleRecords", v1.MaxConsumedSaleRecords},
		{"devices", "spec.dispute.claims", v1.MaxDisputeClaims},
		{"devices", "status.history", v1.MaxHistoryEntries},
		{"devices", "status.certificates", v1.MaxDeviceCertificates},
		{"devices", "status.notifications", v1.MaxNotificationDeliveries},
		{"tenants", "status.claimThrottles", v1.MaxClaimThrottles},
		{"tenants", "status.claimThrottles.[].attempts", v1.MaxThrottleAttempts},
	}
	for _, tc := range maxItems {
		s := field(t, crdSchema(t, tc.plural), tc.path)
		if s.MaxItems == nil || *s.MaxItems != tc.want {
			t.Errorf("%s %s: maxItems %v in the CRD, %d in Go", tc.plural, tc.path, s.MaxItems, tc.want)
		}
	}

	// ClaimPolicy is in Tenants' and Devices' specs.
	for _, plural := range []string{"tenants", "devices"} {
		p := field(t, crdSchema(t, plural), "spec.claimPolicy")
		attempts := field(t, p, "maxFailedAttempts")
		if attempts.Minimum == nil || *attempts.Minimum != v1.MaxFailedAttemptsLowest ||
			attempts.Maximum == nil || *attempts.Maximum != v1.MaxFailedAttemptsHighest {
			t.Errorf("%s spec.claimPolicy.maxFailedAttempts: [%v, %v] in the CRD, [%d, %d] in Go", plural,
				attempts.Minimum, attempts.Maximum, v1.MaxFailedAttemptsLowest, v1.MaxFailedAttemptsHighest)
		}
		period := field(t, p, "coolingOff.period")
		want := fmt.Sprintf("duration(self) >= duration('%s') && duration(self) <= duration('%s')", cel(v1.CoolingOffPeriodShortest), cel(v1.CoolingOffPeriodLongest))
		if len(period.XValidations) != 1 || period.XValidations[0].Rule != want {
			t.Errorf("%s spec.claimPolicy.coolingOff.period: rules %+v in the CRD, want %q", plural, period.XValidations, want)
		}
	}
}
