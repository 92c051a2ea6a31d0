package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The identity the crafted CSRs and certificates below aim at.
const testSerial = "SN-0042"

var testID = DeriveIdentity("custody.dev", "acme", "xr200.sn-0042", testSerial)

// Hand-built DER: what an attacker sends, not what crypto/x509 would make.

// atv is one AttributeTypeAndValue.
type atv struct {
	oid   asn1.ObjectIdentifier
	tag   cbasn1.Tag
	value string
}

func cn(v string) atv { return atv{oidCommonName, cbasn1.PrintableString, v} }

func utf8CN(v string) atv { return atv{oidCommonName, cbasn1.UTF8String, v} }

// rawName builds a Name: one SET per RDN, one SEQUENCE per attribute.
func rawName(rdns ...[]atv) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, rdn := range rdns {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				for _, a := range rdn {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(a.oid)
						b.AddASN1(a.tag, func(b *cryptobyte.Builder) { b.AddBytes([]byte(a.value)) })
					})
				}
			})
		}
	})
	return b.BytesOrPanic()
}

// gn is one GeneralName: its context-specific tag and its contents.
type gn struct {
	tag   cbasn1.Tag
	value []byte
}

func uriName(u string) gn { return gn{cbasn1.Tag(6).ContextSpecific(), []byte(u)} }

func sanValue(names ...gn) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddASN1(n.tag, func(b *cryptobyte.Builder) { b.AddBytes(n.value) })
		}
	})
	return b.BytesOrPanic()
}

// ext builds an Extension; critical is omitted when false (DER).
func ext(oid asn1.ObjectIdentifier, critical bool, value []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1OctetString(value)
	})
	return b.BytesOrPanic()
}

func sanExt(names ...gn) []byte { return ext(oidSubjectAltName, false, sanValue(names...)) }

// attribute builds an Attribute with the given DER values.
func attribute(oid asn1.ObjectIdentifier, values ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			for _, v := range values {
				b.AddBytes(v)
			}
		})
	})
	return b.BytesOrPanic()
}

// extRequest builds an extensionRequest attribute holding exts.
func extRequest(exts ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, e := range exts {
			b.AddBytes(e)
		}
	})
	return attribute(oidExtensionRequest, b.BytesOrPanic())
}

func derOf(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// rawCSR builds and signs (ECDSA P-256 with SHA-256) a CSR. attrs nil
// omits the attributes field altogether.
func rawCSR(t testing.TB, key *ecdsa.PrivateKey, version int64, name []byte, attrs [][]byte) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var ib cryptobyte.Builder
	ib.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(version)
		b.AddBytes(name)
		b.AddBytes(spki)
		if attrs != nil {
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				for _, a := range attrs {
					b.AddBytes(a)
				}
			})
		}
	})
	info := ib.BytesOrPanic()
	sum := sha256.Sum256(info)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(info)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2})
		})
		b.AddASN1BitString(sig)
	})
	return b.BytesOrPanic()
}

var (
	oidUID              = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	oidDC               = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
	oidTitle            = asn1.ObjectIdentifier{2, 5, 4, 12}
	oidEmailAddress     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	oidOrganization     = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidChallengePass    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}
	oidNameConstraints  = asn1.ObjectIdentifier{2, 5, 29, 30}
	oidUnknownExtension = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
)

// craftedCSR is one case of the table: a CSR, and the words its refusal
// must contain ("" for a CSR that must pass).
type craftedCSR struct {
	name    string
	der     []byte
	wantErr string
}

// craftedCSRs builds every attack the table and the fuzz seeds use.
func craftedCSRs(t testing.TB) []craftedCSR {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	goodName := rawName([]atv{cn(testSerial)})
	goodSAN := sanExt(uriName(testID.URI))
	good := [][]byte{extRequest(goodSAN)}
	csr := func(name []byte, attrs ...[]byte) []byte { return rawCSR(t, key, 0, name, attrs) }
	withSAN := func(names ...gn) []byte { return csr(goodName, extRequest(sanExt(names...))) }
	dirName := gn{cbasn1.Tag(4).Constructed().ContextSpecific(), rawName([]atv{cn("admin")})}
	otherName := func() gn {
		var b cryptobyte.Builder
		b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}) // Microsoft UPN
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte("admin@example.com")) })
		})
		return gn{cbasn1.Tag(0).Constructed().ContextSpecific(), b.BytesOrPanic()}
	}()
	registeredID := gn{cbasn1.Tag(8).ContextSpecific(), derOf(asn1.ObjectIdentifier{1, 2, 3, 4})[2:]}
	nameConstraints := derOf(struct {
		Permitted []asn1.RawValue `asn1:"optional,tag:0"`
	}{Permitted: []asn1.RawValue{{FullBytes: derOf(struct {
		Base asn1.RawValue
	}{asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("example.com")}})}}})
	bmp := func(s string) string {
		var out []byte
		for _, r := range s {
			out = append(out, byte(r>>8), byte(r))
		}
		return string(out)
	}
	goDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: testSerial},
		URIs: []*url.URL{mustURL(testID.URI)}}, key)
	if err != nil {
		t.Fatal(err)
	}
	twoExtReq := csr(goodName, extRequest(goodSAN), extRequest(goodSAN))
	return []craftedCSR{
		{"genuine, made by crypto/x509", goDER, ""},
		{"genuine, hand-built PrintableString CN", csr(goodName, good...), ""},
		{"genuine, hand-built UTF8String CN", csr(rawName([]atv{utf8CN(testSerial)}), good...), ""},
		{"genuine, critical SAN", csr(goodName, extRequest(ext(oidSubjectAltName, true, sanValue(uriName(testID.URI))))), ""},

		{"repeated CN /CN=admin/CN=serial", csr(rawName([]atv{cn("admin")}, []atv{cn(testSerial)}), good...), "more than one RDN"},
		{"repeated CN /CN=serial/CN=admin", csr(rawName([]atv{cn(testSerial)}, []atv{cn("admin")}), good...), "more than one RDN"},
		{"multi-valued RDN CN=x+CN=serial", csr(rawName([]atv{cn("x"), cn(testSerial)}), good...), "multi-valued RDN"},
		{"multi-valued RDN CN=serial+UID=admin", csr(rawName([]atv{cn(testSerial), {oidUID, cbasn1.UTF8String, "admin"}}), good...), "multi-valued RDN"},
		{"extra UID", csr(rawName([]atv{cn(testSerial)}, []atv{{oidUID, cbasn1.UTF8String, "admin"}}), good...), "more than one RDN"},
		{"extra DC", csr(rawName([]atv{{oidDC, cbasn1.IA5String, "corp"}}, []atv{cn(testSerial)}), good...), "more than one RDN"},
		{"extra title", csr(rawName([]atv{cn(testSerial)}, []atv{{oidTitle, cbasn1.UTF8String, "admin"}}), good...), "more than one RDN"},
		{"extra emailAddress", csr(rawName([]atv{cn(testSerial)}, []atv{{oidEmailAddress, cbasn1.IA5String, "root@example.com"}}), good...), "more than one RDN"},
		{"extra organisation", csr(rawName([]atv{{oidOrganization, cbasn1.UTF8String, "system:masters"}}, []atv{cn(testSerial)}), good...), "more than one RDN"},
		{"UID instead of CN", csr(rawName([]atv{{oidUID, cbasn1.UTF8String, testSerial}}), good...), "userId"},
		{"empty subject", csr(rawName(), good...), "subject is empty"},
		{"empty RDN", csr(rawName([]atv{}), good...), "malformed"},
		{"wrong CN", csr(rawName([]atv{cn("admin")}), good...), "common name is \"admin\""},
		{"CN with a trailing NUL", csr(rawName([]atv{utf8CN(testSerial + "\x00")}), good...), "common name"},
		{"CN with a trailing space", csr(rawName([]atv{cn(testSerial + " ")}), good...), "common name"},
		{"CN as BMPString", csr(rawName([]atv{{oidCommonName, cbasn1.Tag(30), bmp(testSerial)}}), good...), "UTF8String or PrintableString"},
		{"CN as T61String", csr(rawName([]atv{{oidCommonName, cbasn1.T61String, testSerial}}), good...), "UTF8String or PrintableString"},
		{"CN as IA5String", csr(rawName([]atv{{oidCommonName, cbasn1.IA5String, testSerial}}), good...), "UTF8String or PrintableString"},
		{"PrintableString CN with '*'", csr(rawName([]atv{cn(testSerial + "*")}), good...), "PrintableString"},

		{"otherName SAN next to the URI", withSAN(uriName(testID.URI), otherName), "otherName"},
		{"registeredID SAN next to the URI", withSAN(uriName(testID.URI), registeredID), "registeredID"},
		{"directoryName SAN next to the URI", withSAN(dirName, uriName(testID.URI)), "directoryName"},
		{"DNS SAN next to the URI", withSAN(uriName(testID.URI), gn{cbasn1.Tag(2).ContextSpecific(), []byte("gateway.example")}), "DNS name"},
		{"IP SAN next to the URI", withSAN(uriName(testID.URI), gn{cbasn1.Tag(7).ContextSpecific(), net.ParseIP("10.0.0.1").To4()}), "IP address"},
		{"email SAN next to the URI", withSAN(uriName(testID.URI), gn{cbasn1.Tag(1).ContextSpecific(), []byte("root@example.com")}), "email address"},
		{"two URI SANs", withSAN(uriName(testID.URI), uriName("spiffe://custody.dev/tenants/other/devices/xr200.sn-0042")), "URI, URI"},
		{"the same URI twice", withSAN(uriName(testID.URI), uriName(testID.URI)), "URI, URI"},
		{"constructed [6] URI", withSAN(gn{cbasn1.Tag(6).Constructed().ContextSpecific(), []byte(testID.URI)}), "only the device's SPIFFE URI"},
		{"empty SAN", withSAN(), "subjectAltName is empty"},
		{"upper-case scheme SPIFFE://", withSAN(uriName(strings.Replace(testID.URI, "spiffe://", "SPIFFE://", 1))), "URI SAN is"},
		{"upper-case host", withSAN(uriName(strings.Replace(testID.URI, "custody.dev", "CUSTODY.dev", 1))), "URI SAN is"},
		{"trailing slash", withSAN(uriName(testID.URI + "/")), "URI SAN is"},
		{"percent-encoded path", withSAN(uriName(strings.Replace(testID.URI, "/devices/", "/%64evices/", 1))), "URI SAN is"},
		{"percent-encoded slash", withSAN(uriName(strings.Replace(testID.URI, "/devices/", "%2Fdevices/", 1))), "URI SAN is"},
		{"URI with a query", withSAN(uriName(testID.URI + "?x=1")), "URI SAN is"},
		{"URI with a non-ASCII byte", withSAN(uriName(testID.URI + "\xc3\xa9")), "IA5String"},
		{"another tenant's URI", withSAN(uriName("spiffe://custody.dev/tenants/other/devices/xr200.sn-0042")), "URI SAN is"},
		{"no SAN", csr(goodName, extRequest()), "lack a subjectAltName"},

		{"NameConstraints", csr(goodName, extRequest(goodSAN, ext(oidNameConstraints, true, nameConstraints))), "nameConstraints"},
		{"basicConstraints CA:TRUE", csr(goodName, extRequest(goodSAN, ext(oidBasicConstraints, true, derOf(struct{ CA bool }{true})))), "basicConstraints"},
		{"basicConstraints CA:FALSE", csr(goodName, extRequest(goodSAN, ext(oidBasicConstraints, false, derOf(struct{}{})))), "basicConstraints"},
		{"keyUsage", csr(goodName, extRequest(goodSAN, ext(oidKeyUsage, true, derOf(asn1.BitString{Bytes: []byte{0x04}, BitLength: 6})))), "keyUsage"},
		{"extKeyUsage serverAuth", csr(goodName, extRequest(goodSAN, ext(oidExtKeyUsage, false, derOf([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}})))), "extKeyUsage"},
		{"critical unknown extension", csr(goodName, extRequest(goodSAN, ext(oidUnknownExtension, true, []byte{0x05, 0x00}))), "1.3.6.1.4.1.99999.1"},
		{"two SAN extensions", csr(goodName, extRequest(goodSAN, sanExt(gn{cbasn1.Tag(2).ContextSpecific(), []byte("x.example")}))), "more than once"},
		{"critical flag encoded FALSE", csr(goodName, extRequest(func() []byte {
			var b cryptobyte.Builder
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidSubjectAltName)
				b.AddASN1Boolean(false)
				b.AddASN1OctetString(sanValue(uriName(testID.URI)))
			})
			return b.BytesOrPanic()
		}())), "critical flag"},

		{"two extensionRequest attributes", twoExtReq, "more than one extensionRequest"},
		{"extensionRequest with two values", csr(goodName, attribute(oidExtensionRequest, derOf([]asn1.RawValue{{FullBytes: goodSAN}}), derOf([]asn1.RawValue{{FullBytes: goodSAN}}))), "exactly one list"},
		{"challengePassword attribute", csr(goodName, extRequest(goodSAN), attribute(oidChallengePass, derOf("hunter2"))), "challengePassword"},
		{"challengePassword first", csr(goodName, attribute(oidChallengePass, derOf("hunter2")), extRequest(goodSAN)), "challengePassword"},
		{"no attributes at all", rawCSR(t, key, 0, goodName, nil), "no attributes"},
		{"empty attributes", rawCSR(t, key, 0, goodName, [][]byte{}), "no extensionRequest"},
		{"version 1", rawCSR(t, key, 1, goodName, good), "version is 1"},
		{"trailing bytes", append(csr(goodName, good...), 0), "not a DER PKCS#10"},
		{"not a CSR", []byte("hello"), "not a DER PKCS#10"},
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestCheckCSRIdentity: every crafted CSR (signed, so that only its content
// is wrong) is refused with words that say what is wrong; the genuine ones
// pass. Many of these pass crypto/x509's parsed view (the old check).
func TestCheckCSRIdentity(t *testing.T) {
	for _, c := range craftedCSRs(t) {
		t.Run(c.name, func(t *testing.T) {
			if c.name != "not a CSR" && c.name != "trailing bytes" {
				if csr, err := x509.ParseCertificateRequest(c.der); err == nil {
					if err := csr.CheckSignature(); err != nil {
						t.Fatalf("the crafted CSR's signature does not verify: %v", err)
					}
				}
			}
			err := CheckCSRIdentity(c.der, testID)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused a genuine CSR: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatal("accepted")
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not say %q", err, c.wantErr)
			}
		})
	}
}

// TestCheckCSRIdentityOpenSSL: CSRs made by the openssl command line, as a
// user with standard tools would make them.
func TestCheckCSRIdentityOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not found")
	}
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	san := "subjectAltName=URI:" + testID.URI
	for _, c := range []struct {
		name    string
		conf    string // more lines of the [req] section and other sections
		args    []string
		wantErr string
	}{
		{"genuine", "", []string{"-subj", "/CN=" + testSerial, "-addext", san}, ""},
		{"/CN=admin/CN=serial", "", []string{"-subj", "/CN=admin/CN=" + testSerial, "-addext", san}, "more than one RDN"},
		{"CN=x+CN=serial", "", []string{"-multivalue-rdn", "-subj", "/CN=x+CN=" + testSerial, "-addext", san}, "multi-valued RDN"},
		{"UID, DC, title, emailAddress", "", []string{"-subj", "/DC=corp/UID=admin/title=root/emailAddress=a@b.c/CN=" + testSerial, "-addext", san}, "more than one RDN"},
		{"otherName and registeredID SANs", "", []string{"-subj", "/CN=" + testSerial, "-addext", san + ",otherName:1.3.6.1.4.1.311.20.2.3;UTF8:admin@example.com,RID:1.2.3.4"}, "otherName"},
		{"dirName SAN", "[dir_sect]\nCN = admin\n", []string{"-subj", "/CN=" + testSerial, "-addext", "subjectAltName=dirName:dir_sect,URI:" + testID.URI}, "directoryName"},
		{"SPIFFE:// scheme", "", []string{"-subj", "/CN=" + testSerial, "-addext", "subjectAltName=URI:" + strings.Replace(testID.URI, "spiffe", "SPIFFE", 1)}, "URI SAN is"},
		{"NameConstraints", "", []string{"-subj", "/CN=" + testSerial, "-addext", san, "-addext", "nameConstraints=critical,permitted;DNS:example.com"}, "nameConstraints"},
		{"basicConstraints CA:TRUE", "", []string{"-subj", "/CN=" + testSerial, "-addext", san, "-addext", "basicConstraints=critical,CA:TRUE"}, "basicConstraints"},
		{"challengePassword", "prompt = no\nattributes = attrs\n[dn]\nCN = " + testSerial + "\n[attrs]\nchallengePassword = hunter2hunter2\n", []string{"-addext", san}, "challengePassword"},
		{"BMPString CN", "string_mask = MASK:0x800\n", []string{"-subj", "/CN=" + testSerial, "-addext", san}, "UTF8String or PrintableString"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := filepath.Join(dir, "openssl.cnf")
			text := "[req]\ndistinguished_name = dn\n" + c.conf
			if !strings.Contains(text, "[dn]") {
				text += "[dn]\n"
			}
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			args := c.args
			cfg := conf
			out := filepath.Join(dir, "csr.der")
			cmd := exec.Command(bin, append([]string{"req", "-new", "-config", cfg, "-key", keyFile, "-outform", "DER", "-out", out}, args...)...)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("openssl req: %v: %s", err, b)
			}
			der, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ParseCSRDER(der); err != nil {
				t.Fatalf("openssl's CSR does not parse: %v", err)
			}
			err = CheckCSRIdentity(der, testID)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused a genuine CSR: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatal("accepted")
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not say %q", err, c.wantErr)
			}
		})
	}
}

// FuzzCheckCSRIdentity: whatever the bytes, the check does not panic, and
// a CSR it accepts says, in crypto/x509's view too, exactly the identity.
func FuzzCheckCSRIdentity(f *testing.F) {
	for _, c := range craftedCSRs(f) {
		f.Add(c.der)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		if CheckCSRIdentity(der, testID) != nil {
			return
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		s := csr.Subject
		if len(s.Names) != 1 || s.CommonName != testID.CommonName || len(csr.URIs) != 1 || csr.URIs[0].String() != testID.URI ||
			len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 || len(csr.Extensions) != 1 {
			t.Fatalf("accepted a CSR that asks for more: %+v %v", s, csr.URIs)
		}
	})
}

// testCA is a CA that signs the crafted certificates.
func testCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tenant CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key
}

// TestCheckCertificateIdentity: an issued certificate with anything beyond
// the identity and what a client leaf needs is refused, however it was
// signed; what cert-manager's CA issuer makes for a genuine CSR passes.
func TestCheckCertificateIdentity(t *testing.T) {
	ca, caKey := testCA(t)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// genuine is what cert-manager's CA issuer makes of a genuine CSR.
	genuine := func() *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(2), RawSubject: rawName([]atv{cn(testSerial)}), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			ExtraExtensions: []pkix.Extension{{Id: oidSubjectAltName, Value: sanValue(uriName(testID.URI))}}}
	}
	with := func(f func(*x509.Certificate)) *x509.Certificate { c := genuine(); f(c); return c }
	withExt := func(e pkix.Extension) *x509.Certificate {
		return with(func(c *x509.Certificate) { c.ExtraExtensions = append(c.ExtraExtensions, e) })
	}
	withSAN := func(names ...gn) *x509.Certificate {
		return with(func(c *x509.Certificate) { c.ExtraExtensions[0].Value = sanValue(names...) })
	}
	for _, c := range []struct {
		name    string
		tmpl    *x509.Certificate
		wantErr string
	}{
		{"genuine, as cert-manager issues it", genuine(), ""},
		{"genuine, UTF8String CN, key identifiers, key agreement", with(func(c *x509.Certificate) {
			c.RawSubject, c.SubjectKeyId, c.KeyUsage = rawName([]atv{utf8CN(testSerial)}), []byte{1, 2, 3}, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyAgreement
		}), ""},
		{"genuine, no basicConstraints", with(func(c *x509.Certificate) { c.BasicConstraintsValid = false }), ""},
		{"genuine, crypto/x509 subject and URIs", with(func(c *x509.Certificate) {
			c.RawSubject, c.Subject, c.ExtraExtensions, c.URIs = nil, pkix.Name{CommonName: testSerial}, nil, []*url.URL{mustURL(testID.URI)}
		}), ""},

		{"repeated CN", with(func(c *x509.Certificate) { c.RawSubject = rawName([]atv{cn("admin")}, []atv{cn(testSerial)}) }), "more than one RDN"},
		{"multi-valued RDN", with(func(c *x509.Certificate) { c.RawSubject = rawName([]atv{cn("x"), cn(testSerial)}) }), "multi-valued RDN"},
		{"extra UID", with(func(c *x509.Certificate) {
			c.RawSubject = rawName([]atv{cn(testSerial)}, []atv{{oidUID, cbasn1.UTF8String, "admin"}})
		}), "more than one RDN"},
		{"empty subject", with(func(c *x509.Certificate) { c.RawSubject = rawName(); c.ExtraExtensions[0].Critical = true }), "subject is empty"},
		{"wrong CN", with(func(c *x509.Certificate) { c.RawSubject = rawName([]atv{cn("admin")}) }), "common name"},
		{"CN as BMPString", with(func(c *x509.Certificate) {
			c.RawSubject = rawName([]atv{{oidCommonName, cbasn1.Tag(30), "\x00S\x00N"}})
		}), "UTF8String or PrintableString"},
		{"otherName SAN", withSAN(uriName(testID.URI), gn{cbasn1.Tag(0).Constructed().ContextSpecific(), derOf(asn1.ObjectIdentifier{1, 2, 3})}), "otherName"},
		{"DNS SAN", with(func(c *x509.Certificate) {
			c.RawSubject, c.ExtraExtensions, c.URIs, c.DNSNames = rawName([]atv{cn(testSerial)}), nil, []*url.URL{mustURL(testID.URI)}, []string{"x.example"}
		}), "DNS name"},
		{"two URIs", withSAN(uriName(testID.URI), uriName(testID.URI)), "URI, URI"},
		{"SPIFFE:// scheme", withSAN(uriName(strings.Replace(testID.URI, "spiffe", "SPIFFE", 1))), "URI SAN is"},
		{"no SAN", with(func(c *x509.Certificate) { c.ExtraExtensions = nil }), "lack a subjectAltName"},
		{"NameConstraints", with(func(c *x509.Certificate) { c.PermittedDNSDomains = []string{"example.com"} }), "nameConstraints"},
		{"CA:TRUE", with(func(c *x509.Certificate) { c.IsCA = true }), "CA:FALSE"},
		{"CA:FALSE with a path length", with(func(c *x509.Certificate) {
			c.BasicConstraintsValid = false
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: oidBasicConstraints, Critical: true, Value: derOf(struct{ Len int }{0})})
		}), "CA:FALSE"},
		{"keyCertSign", with(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }), "keyUsage"},
		{"cRLSign", with(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }), "keyUsage"},
		{"serverAuth too", with(func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) }), "clientAuth only"},
		{"serverAuth only", with(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), "clientAuth only"},
		{"no extKeyUsage", with(func(c *x509.Certificate) { c.ExtKeyUsage = nil }), "lack extKeyUsage"},
		{"any extKeyUsage", with(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} }), "clientAuth only"},
		{"critical unknown extension", withExt(pkix.Extension{Id: oidUnknownExtension, Critical: true, Value: []byte{5, 0}}), "1.3.6.1.4.1.99999.1"},
		{"CRL distribution points", with(func(c *x509.Certificate) { c.CRLDistributionPoints = []string{"http://x.example/crl"} }), "cRLDistributionPoints"},
		{"certificate policies", withExt(pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 32}, Value: derOf([]struct{ ID asn1.ObjectIdentifier }{{asn1.ObjectIdentifier{1, 2, 3}}})}), "certificatePolicies"},
	} {
		t.Run(c.name, func(t *testing.T) {
			der, err := x509.CreateCertificate(rand.Reader, c.tmpl, ca, &leafKey.PublicKey, caKey)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckCertificateIdentity(der, testID)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused a genuine certificate: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatal("accepted")
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q does not say %q", err, c.wantErr)
			}
		})
	}
	// Not a certificate, or one with bytes after it.
	for _, b := range [][]byte{[]byte("hello"), append(ca.Raw, 0), ca.Raw} {
		if CheckCertificateIdentity(b, testID) == nil {
			t.Errorf("accepted %x", b[:8])
		}
	}
}

// FuzzCheckCertificateIdentity: no panic on any input.
func FuzzCheckCertificateIdentity(f *testing.F) {
	ca, _ := testCA(f)
	f.Add(ca.Raw)
	f.Fuzz(func(_ *testing.T, der []byte) { _ = CheckCertificateIdentity(der, testID) })
}

// TestCertSerialAsOpenSSLPrintsIt: CertSerial gives what `openssl x509
// -serial` prints, for serials with a leading zero nibble too (about one
// certificate in sixteen), so a serial copied from one is found in the
// other.
func TestCertSerialAsOpenSSLPrintsIt(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not found")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, hexSerial := range []string{"22e24205aa", "022e24205aa1", "1", "ff", "0100", "7fffffffffffffffffffffffffffffffffffffff"} {
		n, _ := new(big.Int).SetString(hexSerial, 16)
		tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "SN-1"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "x509", "-noout", "-serial")
		cmd.Stdin = bytes.NewReader(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if want, got := strings.TrimPrefix(strings.TrimSpace(string(out)), "serial="), CertSerial(n); got != want {
			t.Errorf("serial %s: CertSerial %q, openssl %q", hexSerial, got, want)
		}
	}
}
