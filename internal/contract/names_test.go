package contract

import (
	"strings"
	"testing"
)

// TestNames: the names the gateway and the manager compute agree with the
// checks on them, and the serial-number and model rules are the CRDs'.
func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  bool
		want bool
	}{
		{"a tenant's issuer", IsTenantIssuerName(TenantIssuerName("acme")), true},
		{"a tenant's CA", IsTenantIssuerName(TenantCAName("acme")), true},
		{"the bare prefix", IsTenantIssuerName("tenant-"), true},
		{"the tenant-root issuer", IsTenantIssuerName(TenantRootIssuerName), false},
		{"another issuer", IsTenantIssuerName("letsencrypt"), false},
		{"a proof's ticket", ValidTicket(ProofName(strings.Repeat("0", 32))), true},
		{"a renewal's name as ticket", ValidTicket(RenewProofName([]byte("a"), []byte("b"))), false},
		{"the bare prefix as ticket", ValidTicket("proof-"), false},
		{"a long ticket", ValidTicket(ProofName(strings.Repeat("0", 75))), false},
		{"a serial number", ValidSerialNumber("SN-0042"), true},
		{"a 3-character serial number", ValidSerialNumber("SN1"), true},
		{"a 2-character serial number (the CRD's MinLength is 3)", ValidSerialNumber("SN"), false},
		{"a 64-character serial number", ValidSerialNumber(strings.Repeat("A", 64)), true},
		{"a 65-character serial number", ValidSerialNumber(strings.Repeat("A", 65)), false},
		{"a lower-case serial number", ValidSerialNumber("sn-0042"), false},
		{"a serial number ending in '-'", ValidSerialNumber("SN-"), false},
		{"a serial number starting with '-'", ValidSerialNumber("-SN1"), false},
		{"a 2-character model", ValidModel("XR"), true},
		{"a 1-character model", ValidModel("X"), false},
		{"a 33-character model", ValidModel(strings.Repeat("X", 33)), false},
		{"a model with a dot", ValidModel("XR.200"), false},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if a, b := RenewProofName([]byte("leaf"), []byte("csr")), RenewProofName([]byte("leaf"), []byte("csr")); a != b || !strings.HasPrefix(a, "renew-") || len(a) != len("renew-")+32 {
		t.Errorf("RenewProofName is not a stable renew-<32 hex> name: %q, %q", a, b)
	}
}
