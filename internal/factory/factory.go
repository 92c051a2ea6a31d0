// Package factory makes what the manufacturing line makes for one device: an
// identity keypair, a claim code and its verifier, and the Device manifest
// the ERP applies. The private key and the claim code are returned to the
// caller, which writes them to the device and the documentation pack; only
// the public key and the verifier go into the manifest.
package factory

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/pkg/protocol"
)

// Record is the output of manufacturing one device.
type Record struct {
	// Device is the manifest for the ERP, without sale data.
	Device *custodyv1alpha1.Device
	// PrivateKeyPEM stays on the device ("EC PRIVATE KEY" PKCS#8 PEM).
	PrivateKeyPEM []byte
	// Code goes under the scratch-off / into the documentation pack.
	Code claimcode.Code
	// Fingerprint is the SHA-256 of the public key's DER, printed in the QR
	// code so that the device can be recognised before it is trusted.
	Fingerprint string
}

// Manufacture makes a keypair (ECDSA P-256), a claim code and its verifier.
func Manufacture(model, serial string) (*Record, error) {
	code, err := claimcode.Generate()
	if err != nil {
		return nil, err
	}
	verifier, err := claimcode.NewVerifier(code)
	if err != nil {
		return nil, err
	}
	return ManufactureWithCode(model, serial, code, verifier)
}

// ManufactureWithCode is Manufacture with a claim code and its verifier
// made beforehand. The load harness uses it to give many devices codes
// from a small pool, since one argon2id hash per device would dominate the
// making of a large fleet; a real line calls Manufacture.
func ManufactureWithCode(model, serial string, code claimcode.Code, verifier string) (*Record, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	fingerprint, err := protocol.KeyFingerprint(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &Record{
		Device: &custodyv1alpha1.Device{
			TypeMeta:   metav1.TypeMeta{APIVersion: custodyv1alpha1.GroupVersion.String(), Kind: "Device"},
			ObjectMeta: metav1.ObjectMeta{Name: custodyv1alpha1.DeviceName(model, serial)},
			Spec: custodyv1alpha1.DeviceSpec{
				SerialNumber: serial,
				Model:        model,
				Identity:     custodyv1alpha1.DeviceIdentity{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))},
				ClaimCode:    &custodyv1alpha1.DeviceClaimCode{Verifier: verifier},
			},
		},
		PrivateKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}),
		Code:          code,
		Fingerprint:   fingerprint,
	}, nil
}
