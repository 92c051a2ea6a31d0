package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"testing"

	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/est"
	"github.com/custody-dev/custody/pkg/protocol"
)

func seedCSR(f *testing.F) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://custody.dev/tenants/acme/devices/xr200.sn-1")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-1"}, URIs: []*url.URL{u}}, k)
	if err != nil {
		f.Fatal(err)
	}
	return der
}

// The parsers of everything the gateway reads from the internet never
// panic, and what they accept is well-formed.

func FuzzParseChallengeRequest(f *testing.F) {
	f.Add([]byte(`{"serialNumber":"SN-1","model":"XR200","purpose":"enroll"}`))
	f.Add([]byte(`{"serialNumber":"sn","model":"","purpose":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseChallengeRequest(b)
		if err == nil && (!contract.ValidSerialNumber(req.SerialNumber) || !contract.ValidModel(req.Model)) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

func FuzzParseEnrollRequest(f *testing.F) {
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: seedCSR(f)})
	b, _ := json.Marshal(protocol.EnrollRequest{Challenge: "a.b", CSR: string(csr), Signature: []byte{1, 2, 3}})
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, c, _, err := ParseEnrollRequest(b)
		if err == nil && c == nil {
			t.Fatal("accepted a request without a CSR")
		}
	})
}

func FuzzParsePossessionRequest(f *testing.F) {
	f.Add([]byte(`{"challenge":"a.b","pairingDigest":"00","signature":"AQID"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, _, err := ParsePossessionRequest(b)
		if err == nil && len(req.PairingDigest) != 64 {
			t.Fatalf("accepted digest %q", req.PairingDigest)
		}
	})
}

func FuzzParseHeartbeat(f *testing.F) {
	f.Add([]byte(`{"firmwareVersion":"1.0.0","state":"ok"}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, err := ParseHeartbeat(b)
		if err == nil && (len(hb.FirmwareVersion) > 64 || len(hb.State) > 64) {
			t.Fatal("accepted an oversized report")
		}
	})
}

func FuzzParseESTCSR(f *testing.F) {
	f.Add(est.EncodeBase64(seedCSR(f)))
	f.Add([]byte("not base64"))
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := ParseESTCSR(b)
		if err == nil && csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}
