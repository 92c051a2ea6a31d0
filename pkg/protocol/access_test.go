package protocol

import (
	"net/url"
	"strings"
	"testing"
)

func TestDeriveAccessIdentity(t *testing.T) {
	id := DeriveAccessIdentity("custody.dev", "acme", "dashboard")
	if id.URI != "spiffe://custody.dev/tenants/acme/access/dashboard" || id.CommonName != "dashboard" {
		t.Fatalf("identity %+v", id)
	}
	// A data-access identity is never a device identity.
	u, _ := url.Parse(id.URI)
	if _, _, ok := ParseSPIFFEID("custody.dev", u); ok {
		t.Fatal("a data-access SPIFFE ID parses as a device's")
	}
	dev := DeriveIdentity("custody.dev", "acme", "xr200.sn-1", "SN-1")
	if _, _, ok := ParseAccessSPIFFEID("custody.dev", dev.URI); ok {
		t.Fatal("a device SPIFFE ID parses as a data access's")
	}
}

// TestParseAccessSPIFFEID: exactly the URIs DeriveAccessIdentity makes, for
// DNS-label tenants and names in the trust domain, and nothing else.
func TestParseAccessSPIFFEID(t *testing.T) {
	const td = "custody.dev"
	tenant, name, ok := ParseAccessSPIFFEID(td, "spiffe://custody.dev/tenants/acme/access/dash-1")
	if !ok || tenant != "acme" || name != "dash-1" {
		t.Fatalf("parsed %q %q %v", tenant, name, ok)
	}
	long := strings.Repeat("a", 63)
	if _, _, ok := ParseAccessSPIFFEID(td, "spiffe://custody.dev/tenants/acme/access/"+long); !ok {
		t.Fatal("a 63-character name is refused")
	}
	for _, bad := range []string{
		"",
		"SPIFFE://custody.dev/tenants/acme/access/dash",
		"Spiffe://custody.dev/tenants/acme/access/dash",
		"https://custody.dev/tenants/acme/access/dash",
		"spiffe://evil.example/tenants/acme/access/dash",
		"spiffe://custody.dev.evil.example/tenants/acme/access/dash",
		"spiffe://CUSTODY.DEV/tenants/acme/access/dash",
		"spiffe://custody.dev:443/tenants/acme/access/dash",
		"spiffe://user@custody.dev/tenants/acme/access/dash",
		"spiffe://custody.dev/tenants/acme/access/dash?x=1",
		"spiffe://custody.dev/tenants/acme/access/dash#frag",
		"spiffe://custody.dev/tenants/acme/access/dash/",
		"spiffe://custody.dev/tenants/acme/access/dash/more",
		"spiffe://custody.dev/tenants/acme/access/",
		"spiffe://custody.dev/tenants//access/dash",
		"spiffe://custody.dev/tenants/./access/dash",
		"spiffe://custody.dev/tenants/acme/access/..",
		"spiffe://custody.dev/tenants/acme/access/%64ash",
		"spiffe://custody.dev/tenants/acme/devices/dash",
		"spiffe://custody.dev/tenants/acme/Access/dash",
		"spiffe://custody.dev/tenants/Acme/access/dash",
		"spiffe://custody.dev/tenants/acme/access/-dash",
		"spiffe://custody.dev/tenants/acme/access/dash-",
		"spiffe://custody.dev/tenants/acme/access/da_sh",
		"spiffe://custody.dev/tenants/acme/access/" + long + "a",
		"spiffe://custody.dev//tenants/acme/access/dash",
		"spiffe://custody.dev/tenants/acme//access/dash",
	} {
		if tenant, name, ok := ParseAccessSPIFFEID(td, bad); ok {
			t.Errorf("%q parsed as tenant %q name %q", bad, tenant, name)
		}
	}
	if _, _, ok := ParseAccessSPIFFEID("", "spiffe:///tenants/acme/access/dash"); ok {
		t.Error("an empty trust domain parsed")
	}
}

// FuzzParseAccessSPIFFEID: ParseAccessSPIFFEID never panics, and whatever
// it accepts is exactly the URI DeriveAccessIdentity makes from what it
// returned, with DNS-label parts, and parses back the same with net/url.
func FuzzParseAccessSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://custody.dev/tenants/acme/access/dash", "spiffe://custody.dev/tenants/acme/devices/x",
		"spiffe://custody.dev:1/tenants/a/access/b", "spiffe://custody.dev/tenants/a/access/b?c", "spiffe://custody.dev/tenants/a/access/%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tenant, name, ok := ParseAccessSPIFFEID("custody.dev", s)
		if !ok {
			if tenant != "" || name != "" {
				t.Fatalf("refused %q but returned %q %q", s, tenant, name)
			}
			return
		}
		if !ValidDNSLabel(tenant) || !ValidDNSLabel(name) {
			t.Fatalf("accepted %q with parts %q %q", s, tenant, name)
		}
		if got := DeriveAccessIdentity("custody.dev", tenant, name).URI; got != s {
			t.Fatalf("accepted %q but it derives %q", s, got)
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "spiffe" || u.Host != "custody.dev" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" ||
			u.Path != "/tenants/"+tenant+"/access/"+name {
			t.Fatalf("accepted %q but net/url reads %#v (%v)", s, u, err)
		}
	})
}
