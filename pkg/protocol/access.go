package protocol

import "strings"

// The identity of a tenant's data-plane credential (a DataAccess): its
// certificate's common name is the DataAccess's name and its only SAN is
// the SPIFFE ID spiffe://<trust-domain>/tenants/<tenant>/access/<name>. It
// is derived from the DataAccess and the Tenant whose namespace holds it,
// never from what anyone asks for, and no device identity has that shape
// (a device's has the segment "devices").

// accessSegment is the path segment of a data-access SPIFFE ID that a
// device SPIFFE ID has as "devices".
const accessSegment = "access"

// maxLabelLength is a DNS label's length limit (RFC 1123).
const maxLabelLength = 63

// DeriveAccessIdentity returns the identity of DataAccess name in the
// namespace of tenant, in trust domain trustDomain.
func DeriveAccessIdentity(trustDomain, tenant, name string) Identity {
	return Identity{
		CommonName: name,
		URI:        "spiffe://" + trustDomain + "/tenants/" + tenant + "/" + accessSegment + "/" + name,
	}
}

// ParseAccessSPIFFEID returns the tenant and DataAccess name a data-access
// SPIFFE ID in trustDomain names. It is strict: the URI must be, byte for
// byte, what DeriveAccessIdentity makes for a tenant and a name that are
// both DNS labels (lower-case letters, digits and inner '-', at most 63
// characters). So the scheme is exactly "spiffe" in lower case, the
// authority exactly the trust domain (no user information, no port), and
// there is no query, no fragment, no percent-encoding, no empty or dot
// segment and no segment beyond the name.
func ParseAccessSPIFFEID(trustDomain, uri string) (tenant, name string, ok bool) {
	if trustDomain == "" {
		return "", "", false
	}
	rest, found := strings.CutPrefix(uri, "spiffe://"+trustDomain+"/tenants/")
	if !found {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[1] != accessSegment || !ValidDNSLabel(parts[0]) || !ValidDNSLabel(parts[2]) {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// ValidDNSLabel reports whether s is an RFC 1123 DNS label as Kubernetes
// names use them: 1 to 63 lower-case letters, digits and inner '-'.
func ValidDNSLabel(s string) bool {
	if s == "" || len(s) > maxLabelLength || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
