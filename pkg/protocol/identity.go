package protocol

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The identity checks below read the DER itself, never Go's parsed view:
// crypto/x509 drops or merges what it does not model (a second CN, a
// multi-valued RDN, otherName SANs, the case of a URI's scheme), and the CA
// that signs a device certificate copies the raw subject and extensions of
// the CSR. What is not read here cannot reach a certificate.

var (
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidExtensionRequest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSubjectKeyID     = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// oidNames names the OIDs an attacker is likely to try, for messages.
var oidNames = map[string]string{
	"2.5.4.3":                    "commonName",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "countryName",
	"2.5.4.10":                   "organizationName",
	"2.5.4.11":                   "organizationalUnitName",
	"2.5.4.12":                   "title",
	"0.9.2342.19200300.100.1.1":  "userId",
	"0.9.2342.19200300.100.1.25": "domainComponent",
	"1.2.840.113549.1.9.1":       "emailAddress",
	"1.2.840.113549.1.9.7":       "challengePassword",
	"1.2.840.113549.1.9.14":      "extensionRequest",
	"2.5.29.14":                  "subjectKeyIdentifier",
	"2.5.29.15":                  "keyUsage",
	"2.5.29.17":                  "subjectAltName",
	"2.5.29.19":                  "basicConstraints",
	"2.5.29.30":                  "nameConstraints",
	"2.5.29.31":                  "cRLDistributionPoints",
	"2.5.29.32":                  "certificatePolicies",
	"2.5.29.35":                  "authorityKeyIdentifier",
	"2.5.29.37":                  "extKeyUsage",
	"1.3.6.1.5.5.7.1.1":          "authorityInfoAccess",
}

func oidName(oid asn1.ObjectIdentifier) string {
	if n, ok := oidNames[oid.String()]; ok {
		return n + " (" + oid.String() + ")"
	}
	return oid.String()
}

// generalNameKinds names the GeneralName choices (RFC 5280 §4.2.1.6) by tag.
var generalNameKinds = [...]string{"otherName", "email address (rfc822Name)", "DNS name", "x400Address", "directoryName",
	"ediPartyName", "URI", "IP address", "registeredID"}

func generalNameKind(tag cbasn1.Tag) string {
	n := int(tag & 0x1f)
	if tag&0xc0 == 0x80 && n < len(generalNameKinds) {
		return generalNameKinds[n]
	}
	return fmt.Sprintf("name with ASN.1 tag 0x%02x", uint8(tag))
}

var errNotCSR = errors.New("the CSR is not a DER PKCS#10 certification request")

// CSRIdentity reads the identity a CSR asks for from its DER, and fails,
// saying why, unless the CSR asks for that identity and nothing else:
// version 0; a subject of exactly one RDN holding one commonName (a
// UTF8String or PrintableString); a single extensionRequest attribute
// holding a single subjectAltName extension whose only name is one URI. It
// does not check the CSR's signature (ParseCSRDER does).
func CSRIdentity(der []byte) (Identity, error) {
	cn, exts, err := readCSR(der)
	if err != nil {
		return Identity{}, err
	}
	if exts == nil {
		return Identity{}, errors.New("the CSR has no extensionRequest attribute; it must request a subjectAltName extension with the device's SPIFFE URI")
	}
	uri, err := readExtensions(*exts, extensionsDeviceCSR)
	if err != nil {
		return Identity{}, err
	}
	return Identity{CommonName: cn, URI: uri}, nil
}

// CheckCACSR checks, on a CSR's DER, that it asks for a CA named
// commonName and nothing a requester could add: version 0; a subject of
// exactly one RDN holding one commonName (a UTF8String or PrintableString)
// byte for byte equal to commonName; no attribute but at most one
// extensionRequest, which may request keyUsage, extKeyUsage and
// basicConstraints (what cert-manager encodes for a CA Certificate), each
// once, and nothing else: no subjectAltName in any form. It does not check
// the CSR's signature (ParseCSRDER does).
func CheckCACSR(der []byte, commonName string) error {
	cn, exts, err := readCSR(der)
	if err != nil {
		return err
	}
	if cn != commonName {
		return fmt.Errorf("the CSR's common name is %q; it must be %q", cn, commonName)
	}
	if exts != nil {
		if _, err := readExtensions(*exts, extensionsCACSR); err != nil {
			return err
		}
	}
	return nil
}

// readCSR reads a CSR's DER: version 0, its subject's one commonName (see
// readSubject) and its attributes, of which only one extensionRequest is
// allowed. exts is that attribute's list of extensions, nil without it.
func readCSR(der []byte) (cn string, exts *cryptobyte.String, err error) {
	in := cryptobyte.String(der)
	var req, info cryptobyte.String
	if !in.ReadASN1(&req, cbasn1.SEQUENCE) || !in.Empty() ||
		!req.ReadASN1(&info, cbasn1.SEQUENCE) || !req.SkipASN1(cbasn1.SEQUENCE) || !req.SkipASN1(cbasn1.BIT_STRING) || !req.Empty() {
		return "", nil, errNotCSR
	}
	var version int64
	if !info.ReadASN1Integer(&version) {
		return "", nil, errNotCSR
	}
	if version != 0 {
		return "", nil, fmt.Errorf("the CSR's version is %d; it must be 0 (PKCS#10 v1)", version)
	}
	var subject cryptobyte.String
	if !info.ReadASN1(&subject, cbasn1.SEQUENCE) || !info.SkipASN1(cbasn1.SEQUENCE) {
		return "", nil, errNotCSR
	}
	if cn, err = readSubject(subject); err != nil {
		return "", nil, err
	}
	var attrs cryptobyte.String
	if !info.ReadASN1(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) || !info.Empty() {
		return "", nil, errors.New("the CSR has no attributes; it must request a subjectAltName extension with the device's SPIFFE URI")
	}
	for !attrs.Empty() {
		var attr, values, list cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !attrs.ReadASN1(&attr, cbasn1.SEQUENCE) || !attr.ReadASN1ObjectIdentifier(&oid) || !attr.ReadASN1(&values, cbasn1.SET) || !attr.Empty() {
			return "", nil, errors.New("the CSR has a malformed attribute")
		}
		if !oid.Equal(oidExtensionRequest) {
			return "", nil, fmt.Errorf("the CSR carries the attribute %s; only the extensionRequest attribute is allowed", oidName(oid))
		}
		if exts != nil {
			return "", nil, errors.New("the CSR carries more than one extensionRequest attribute; it must carry exactly one")
		}
		if !values.ReadASN1(&list, cbasn1.SEQUENCE) || !values.Empty() {
			return "", nil, errors.New("the CSR's extensionRequest attribute must hold exactly one list of extensions")
		}
		exts = &list
	}
	return cn, exts, nil
}

// CheckCSRIdentity checks, on the CSR's DER, that it asks for exactly id
// (see CSRIdentity): the common name byte for byte equal to the serial
// number, the only SAN byte for byte equal to the SPIFFE URI, nothing else.
// The error says what is wrong, in words fit for a device's log.
func CheckCSRIdentity(der []byte, id Identity) error {
	got, err := CSRIdentity(der)
	if err != nil {
		return err
	}
	return sameIdentity("the CSR", got, id)
}

// CertificateIdentity reads the identity a device certificate carries from
// its DER, and fails, saying why, unless the certificate carries that
// identity and nothing else a client leaf does not need: an X.509 v3
// certificate without unique identifiers; a subject of exactly one RDN
// holding one commonName; a subjectAltName whose only name is one URI; and
// beyond it only keyUsage (digitalSignature, keyEncipherment or
// keyAgreement), extKeyUsage (clientAuth only, required), basicConstraints
// (CA:FALSE), subjectKeyIdentifier and authorityKeyIdentifier, each once.
func CertificateIdentity(der []byte) (Identity, error) {
	notCert := errors.New("the certificate is not a DER X.509 certificate")
	in := cryptobyte.String(der)
	var cert, tbs, ver, subject, outer, exts cryptobyte.String
	var hasVer bool
	if !in.ReadASN1(&cert, cbasn1.SEQUENCE) || !in.Empty() ||
		!cert.ReadASN1(&tbs, cbasn1.SEQUENCE) || !cert.SkipASN1(cbasn1.SEQUENCE) || !cert.SkipASN1(cbasn1.BIT_STRING) || !cert.Empty() ||
		!tbs.ReadOptionalASN1(&ver, &hasVer, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return Identity{}, notCert
	}
	var version int64
	if !hasVer || !ver.ReadASN1Integer(&version) || !ver.Empty() || version != 2 {
		return Identity{}, errors.New("the certificate is not an X.509 v3 certificate")
	}
	if !tbs.SkipASN1(cbasn1.INTEGER) || !tbs.SkipASN1(cbasn1.SEQUENCE) || !tbs.SkipASN1(cbasn1.SEQUENCE) || !tbs.SkipASN1(cbasn1.SEQUENCE) ||
		!tbs.ReadASN1(&subject, cbasn1.SEQUENCE) || !tbs.SkipASN1(cbasn1.SEQUENCE) {
		return Identity{}, notCert
	}
	cn, err := readSubject(subject)
	if err != nil {
		return Identity{}, fmt.Errorf("the certificate's %w", err)
	}
	if tbs.PeekASN1Tag(cbasn1.Tag(1).ContextSpecific()) || tbs.PeekASN1Tag(cbasn1.Tag(2).ContextSpecific()) {
		return Identity{}, errors.New("the certificate carries issuer or subject unique identifiers")
	}
	if !tbs.ReadASN1(&outer, cbasn1.Tag(3).Constructed().ContextSpecific()) || !outer.ReadASN1(&exts, cbasn1.SEQUENCE) || !outer.Empty() || !tbs.Empty() {
		return Identity{}, errors.New("the certificate has no extensions or is malformed after its public key")
	}
	uri, err := readExtensions(exts, extensionsLeaf)
	if err != nil {
		return Identity{}, fmt.Errorf("the certificate's %w", err)
	}
	return Identity{CommonName: cn, URI: uri}, nil
}

// CheckCertificateIdentity checks, on a device certificate's DER, that it
// carries exactly id and nothing a client leaf does not need (see
// CertificateIdentity). The error says what is wrong.
func CheckCertificateIdentity(der []byte, id Identity) error {
	got, err := CertificateIdentity(der)
	if err != nil {
		return err
	}
	return sameIdentity("the certificate", got, id)
}

func sameIdentity(what string, got, want Identity) error {
	if got.CommonName != want.CommonName {
		return fmt.Errorf("%s's common name is %q; it must be the device's serial number %q", what, got.CommonName, want.CommonName)
	}
	if got.URI != want.URI {
		return fmt.Errorf("%s's URI SAN is %q; it must be exactly %q", what, got.URI, want.URI)
	}
	return nil
}

// readSubject reads the contents of a Name: exactly one RDN of exactly one
// commonName, a UTF8String or PrintableString. Errors start with "subject"
// so that callers can prefix whose subject it is.
func readSubject(name cryptobyte.String) (string, error) {
	var rdn, atv, value cryptobyte.String
	var oid asn1.ObjectIdentifier
	var tag cbasn1.Tag
	if name.Empty() {
		return "", errors.New("subject is empty; it must be exactly CN=<serial number>")
	}
	if !name.ReadASN1(&rdn, cbasn1.SET) {
		return "", errors.New("subject is malformed")
	}
	if !name.Empty() {
		return "", errors.New("subject has more than one RDN (a repeated CN or other attributes); it must be exactly CN=<serial number>")
	}
	if !rdn.ReadASN1(&atv, cbasn1.SEQUENCE) {
		return "", errors.New("subject is malformed")
	}
	if !rdn.Empty() {
		return "", errors.New("subject has a multi-valued RDN (such as CN=x+CN=y); it must be exactly CN=<serial number>")
	}
	if !atv.ReadASN1ObjectIdentifier(&oid) || !atv.ReadAnyASN1(&value, &tag) || !atv.Empty() {
		return "", errors.New("subject is malformed")
	}
	if !oid.Equal(oidCommonName) {
		return "", fmt.Errorf("subject holds %s; it must be exactly CN=<serial number>", oidName(oid))
	}
	switch tag {
	case cbasn1.UTF8String:
		if !utf8.Valid(value) {
			return "", errors.New("subject's common name is not valid UTF-8")
		}
	case cbasn1.PrintableString:
		for _, c := range value {
			if !isPrintable(c) {
				return "", errors.New("subject's common name is not a valid PrintableString")
			}
		}
	default:
		return "", fmt.Errorf("subject's common name has ASN.1 type 0x%02x; it must be a UTF8String or PrintableString", uint8(tag))
	}
	return string(value), nil
}

func isPrintable(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(" '()+,-./:=?", c) >= 0
}

// extensionsKind says whose extensions readExtensions reads.
type extensionsKind int

const (
	// extensionsDeviceCSR: a device CSR requests the subjectAltName only.
	extensionsDeviceCSR extensionsKind = iota
	// extensionsLeaf: a device certificate carries what a client leaf
	// needs.
	extensionsLeaf
	// extensionsCACSR: a tenant CA's CSR requests keyUsage, extKeyUsage
	// and basicConstraints only, and no subjectAltName.
	extensionsCACSR
)

// readExtensions reads a list of extensions. A device CSR may request only
// the subjectAltName; a certificate may carry the extensions a client leaf
// needs; a CA's CSR may request key usages and basic constraints and no
// subjectAltName. It returns the one URI of the subjectAltName (none for a
// CA). Errors start with a noun so that callers can prefix whose it is.
func readExtensions(exts cryptobyte.String, kind extensionsKind) (string, error) {
	leaf := kind == extensionsLeaf
	uri, seen := "", map[string]bool{}
	hasEKU := false
	for !exts.Empty() {
		var ext, value cryptobyte.String
		var oid asn1.ObjectIdentifier
		critical := false
		if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1ObjectIdentifier(&oid) {
			return "", errors.New("extensions are malformed")
		}
		if ext.PeekASN1Tag(cbasn1.BOOLEAN) && (!ext.ReadASN1Boolean(&critical) || !critical) {
			return "", fmt.Errorf("extension %s has a malformed critical flag", oidName(oid))
		}
		if !ext.ReadASN1(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
			return "", fmt.Errorf("extension %s is malformed", oidName(oid))
		}
		if seen[oid.String()] {
			return "", fmt.Errorf("extensions hold %s more than once", oidName(oid))
		}
		seen[oid.String()] = true
		var err error
		switch {
		case kind == extensionsCACSR:
			if !oid.Equal(oidKeyUsage) && !oid.Equal(oidExtKeyUsage) && !oid.Equal(oidBasicConstraints) {
				err = fmt.Errorf("extension request holds %s; a CA's request may ask only for keyUsage, extKeyUsage and basicConstraints, and never for a subjectAltName", oidName(oid))
			}
		case oid.Equal(oidSubjectAltName):
			uri, err = readSAN(value)
		case leaf && oid.Equal(oidKeyUsage):
			err = checkKeyUsage(value)
		case leaf && oid.Equal(oidExtKeyUsage):
			hasEKU, err = true, checkExtKeyUsage(value)
		case leaf && oid.Equal(oidBasicConstraints):
			err = checkBasicConstraints(value)
		case leaf && oid.Equal(oidSubjectKeyID):
			var id cryptobyte.String
			if !value.ReadASN1(&id, cbasn1.OCTET_STRING) || !value.Empty() {
				err = errors.New("subjectKeyIdentifier is malformed")
			}
		case leaf && oid.Equal(oidAuthorityKeyID):
			var aki cryptobyte.String
			if !value.ReadASN1(&aki, cbasn1.SEQUENCE) || !value.Empty() {
				err = errors.New("authorityKeyIdentifier is malformed")
			}
		case leaf:
			err = fmt.Errorf("extensions hold %s; a device certificate carries only subjectAltName, keyUsage, extKeyUsage, basicConstraints and key identifiers", oidName(oid))
		default:
			err = fmt.Errorf("extension request holds %s; only a subjectAltName with the device's SPIFFE URI may be requested", oidName(oid))
		}
		if err != nil {
			return "", err
		}
	}
	if kind == extensionsCACSR {
		return "", nil
	}
	if !seen[oidSubjectAltName.String()] {
		return "", errors.New("extensions lack a subjectAltName; it must hold the device's SPIFFE URI")
	}
	if leaf && !hasEKU {
		return "", errors.New("extensions lack extKeyUsage clientAuth")
	}
	return uri, nil
}

// readSAN reads a subjectAltName's value: exactly one URI.
func readSAN(value cryptobyte.String) (string, error) {
	var names cryptobyte.String
	if !value.ReadASN1(&names, cbasn1.SEQUENCE) || !value.Empty() {
		return "", errors.New("subjectAltName is malformed")
	}
	var kinds []string
	uri, uris := "", 0
	for !names.Empty() {
		var name cryptobyte.String
		var tag cbasn1.Tag
		if !names.ReadAnyASN1(&name, &tag) {
			return "", errors.New("subjectAltName is malformed")
		}
		kinds = append(kinds, generalNameKind(tag))
		if tag == cbasn1.Tag(6).ContextSpecific() {
			uri, uris = string(name), uris+1
			for _, c := range name {
				if c >= 0x80 {
					return "", errors.New("subjectAltName URI is not an IA5String")
				}
			}
		}
	}
	switch {
	case len(kinds) == 0:
		return "", errors.New("subjectAltName is empty; it must hold the device's SPIFFE URI")
	case uris == 0 || len(kinds) > 1:
		return "", fmt.Errorf("subjectAltName holds %s; it must hold only the device's SPIFFE URI", strings.Join(kinds, ", "))
	}
	return uri, nil
}

// checkKeyUsage allows the key usages of a client leaf: digitalSignature,
// keyEncipherment, keyAgreement.
func checkKeyUsage(value cryptobyte.String) error {
	var bits asn1.BitString
	if !value.ReadASN1BitString(&bits) || !value.Empty() {
		return errors.New("keyUsage is malformed")
	}
	for i := 0; i < bits.BitLength; i++ {
		if bits.At(i) == 1 && i != 0 && i != 2 && i != 4 {
			return errors.New("keyUsage allows more than digitalSignature, keyEncipherment and keyAgreement (a device is not a CA)")
		}
	}
	return nil
}

// checkExtKeyUsage allows clientAuth and nothing else.
func checkExtKeyUsage(value cryptobyte.String) error {
	var list cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !value.ReadASN1(&list, cbasn1.SEQUENCE) || !value.Empty() || !list.ReadASN1ObjectIdentifier(&oid) {
		return errors.New("extKeyUsage is malformed or empty")
	}
	if !oid.Equal(oidClientAuth) || !list.Empty() {
		return errors.New("extKeyUsage must be clientAuth only")
	}
	return nil
}

// checkBasicConstraints allows CA:FALSE only (an empty SEQUENCE in DER).
func checkBasicConstraints(value cryptobyte.String) error {
	var bc cryptobyte.String
	if !value.ReadASN1(&bc, cbasn1.SEQUENCE) || !value.Empty() {
		return errors.New("basicConstraints is malformed")
	}
	if !bc.Empty() {
		return errors.New("basicConstraints must be CA:FALSE without a path length (a device is not a CA)")
	}
	return nil
}
