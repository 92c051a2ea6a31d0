package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/challenge"
	"github.com/custody-dev/custody/pkg/protocol"
)

func boundDevice() *custodyv1alpha1.Device {
	return &custodyv1alpha1.Device{
		ObjectMeta: metav1.ObjectMeta{Name: "xr200.sn-0042"},
		Spec: custodyv1alpha1.DeviceSpec{SerialNumber: "SN-0042", Model: "XR200",
			ClaimRef: &custodyv1alpha1.DeviceClaimReference{Tenant: "acme", Namespace: "acme", Name: "c", UID: "claim-1"}},
	}
}

// TestBoundIdentity: a bound device's identity is derived from the Device
// and its binding; an unbound or decommissioned one has none, and a CSR for
// it is refused as ErrNotBound.
func TestBoundIdentity(t *testing.T) {
	dev := boundDevice()
	id, ok := BoundIdentity(dev, DefaultTrustDomain)
	want := protocol.Identity{CommonName: "SN-0042", URI: "spiffe://custody.dev/tenants/acme/devices/xr200.sn-0042"}
	if !ok || id != want {
		t.Fatalf("%+v %v, want %+v", id, ok, want)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(want.URI)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: want.CommonName}, URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CheckDeviceCSR(dev, DefaultTrustDomain, der); err != nil {
		t.Fatalf("the device's own CSR: %v", err)
	}
	if _, err := CheckDeviceCSR(dev, "other.example", der); err == nil || errors.Is(err, ErrNotBound) {
		t.Fatalf("a CSR for another trust domain: %v", err)
	}
	dev.Spec.Decommissioned = true
	if _, ok := BoundIdentity(dev, DefaultTrustDomain); ok {
		t.Error("a decommissioned device has an identity")
	}
	if _, err := CheckDeviceCSR(dev, DefaultTrustDomain, der); !errors.Is(err, ErrNotBound) {
		t.Errorf("decommissioned: %v", err)
	}
	dev.Spec.Decommissioned, dev.Spec.ClaimRef = false, nil
	if _, err := CheckDeviceCSR(dev, DefaultTrustDomain, der); !errors.Is(err, ErrNotBound) {
		t.Errorf("unbound: %v", err)
	}
}

// TestCheckChallengeProof: a proof holds only for a challenge issued for the
// Device's serial number, model and the purpose, signed by its identity key.
func TestCheckChallengeProof(t *testing.T) {
	dev := boundDevice()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss, err := challenge.NewIssuer([][]byte{make([]byte, 32)}, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	claims := func(purpose protocol.Purpose, serial, model string) (string, challenge.Claims) {
		tok, _, err := iss.Issue(purpose, serial, model)
		if err != nil {
			t.Fatal(err)
		}
		c, _, _, err := challenge.Parse(tok)
		if err != nil {
			t.Fatal(err)
		}
		return tok, c
	}
	digest := protocol.PairingDigest(dev.Name, "ABC123")
	for _, tc := range []struct {
		name           string
		purpose        protocol.Purpose
		serial, model  string
		signer         *ecdsa.PrivateKey
		checkedPurpose protocol.Purpose
		want           ChallengeVerdict
	}{
		{"proven", protocol.PurposePossession, "SN-0042", "XR200", key, protocol.PurposePossession, ChallengeProven},
		{"another purpose", protocol.PurposeEnroll, "SN-0042", "XR200", key, protocol.PurposePossession, ChallengeNotForDevice},
		{"another serial number", protocol.PurposePossession, "SN-0043", "XR200", key, protocol.PurposePossession, ChallengeNotForDevice},
		{"another model", protocol.PurposePossession, "SN-0042", "XR300", key, protocol.PurposePossession, ChallengeNotForDevice},
		{"another key", protocol.PurposePossession, "SN-0042", "XR200", nil, protocol.PurposePossession, ChallengeBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, c := claims(tc.purpose, tc.serial, tc.model)
			payload := protocol.PossessionPayload(tok, digest)
			signer := tc.signer
			if signer == nil {
				signer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			}
			sig, err := protocol.Sign(signer, payload)
			if err != nil {
				t.Fatal(err)
			}
			if got := CheckChallengeProof(dev, &key.PublicKey, c, tc.checkedPurpose, payload, sig); got != tc.want {
				t.Fatalf("%s, want %s", got, tc.want)
			}
		})
	}
	tok, c := claims(protocol.PurposePossession, "SN-0042", "XR200")
	if got := CheckChallengeProof(dev, &key.PublicKey, c, protocol.PurposePossession, protocol.PossessionPayload(tok, digest), nil); got != ChallengeBadSignature {
		t.Errorf("no signature: %s", got)
	}
}
