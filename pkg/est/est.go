// Package est holds what Custody needs of EST (RFC 7030): the "certs-only"
// PKCS#7 (CMS SignedData without signers, RFC 5652 / RFC 8551 §3.2.2) in
// which EST returns certificates, encoded and decoded with encoding/asn1.
package est

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"strings"
)

// ContentTypeCertsOnly is the media type of EST certificate responses.
const ContentTypeCertsOnly = "application/pkcs7-mime; smime-type=certs-only"

// ContentTypePKCS10 is the media type of EST enrollment requests.
const ContentTypePKCS10 = "application/pkcs10"

// ContentTypeCSRAttrs is the media type of the EST csrattrs response.
const ContentTypeCSRAttrs = "application/csrattrs"

// TransferEncodingBase64 is the Content-Transfer-Encoding of every EST body
// (RFC 7030 §4). RFC 8951 makes base64 the only encoding and the header
// optional; clients in the field still check it on responses, so responses
// carry it, and requests are read as base64 whatever it says.
const TransferEncodingBase64 = "base64"

// Object identifiers of the CSR attributes Custody asks for.
var (
	oidECDSAWithSHA256  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECPublicKey      = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidP256             = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidExtensionRequest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
)

// attribute is an Attribute of a CsrAttrs (RFC 7030 §4.5.2).
type attribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.ObjectIdentifier `asn1:"set"`
}

// EncodeCSRAttrs returns the DER CsrAttrs (RFC 7030 §4.5.2) describing the
// CSR the gateway accepts: an ECDSA P-256 key signed with SHA-256 (Ed25519
// is accepted too), a subject common name (the serial number) and a
// subjectAltName extension (the device's SPIFFE ID), nothing else.
func EncodeCSRAttrs() ([]byte, error) {
	return asn1.Marshal([]any{
		oidECDSAWithSHA256,
		attribute{Type: oidECPublicKey, Values: []asn1.ObjectIdentifier{oidP256}},
		oidCommonName,
		attribute{Type: oidExtensionRequest, Values: []asn1.ObjectIdentifier{oidSubjectAltName}},
	})
}

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue // [0] EXPLICIT, built and read by hand
}

type encapsulatedContentInfo struct {
	ContentType asn1.ObjectIdentifier
}

type signedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue // SET OF, empty
	EncapContentInfo encapsulatedContentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	SignerInfos      asn1.RawValue // SET OF, empty
}

var emptySet = asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}}

// EncodeCertsOnly returns the DER of a certs-only PKCS#7 holding certs.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, errors.New("no certificates")
	}
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	sd := signedData{
		Version:          1,
		DigestAlgorithms: emptySet,
		EncapContentInfo: encapsulatedContentInfo{ContentType: oidData},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: raw},
		SignerInfos:      emptySet,
	}
	inner, err := asn1.Marshal(sd)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(contentInfo{ContentType: oidSignedData, Content: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner}})
}

// DecodeCertsOnly parses the DER of a certs-only PKCS#7 and returns its
// certificates.
func DecodeCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil || len(rest) > 0 || !ci.ContentType.Equal(oidSignedData) || ci.Content.Class != asn1.ClassContextSpecific || ci.Content.Tag != 0 {
		return nil, errors.New("not a PKCS#7 SignedData")
	}
	var sd signedData
	rest, err = asn1.Unmarshal(ci.Content.Bytes, &sd)
	if err != nil || len(rest) > 0 {
		return nil, errors.New("malformed PKCS#7 SignedData")
	}
	if len(sd.Certificates.Bytes) == 0 {
		return nil, errors.New("PKCS#7 holds no certificates")
	}
	certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
	if err != nil {
		return nil, err
	}
	return certs, nil
}

// EncodeBase64 encodes DER as EST's base64 body (RFC 7030 §4: base64 with
// line breaks allowed; we write 64-column lines).
func EncodeBase64(der []byte) []byte {
	s := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteString("\r\n")
		s = s[64:]
	}
	b.WriteString(s)
	b.WriteString("\r\n")
	return []byte(b.String())
}

// DecodeBase64 decodes an EST base64 body, ignoring whitespace.
func DecodeBase64(body []byte) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, string(body))
	return base64.StdEncoding.DecodeString(clean)
}
