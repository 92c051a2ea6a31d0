package contract

import (
	"crypto/x509"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/pkg/protocol"
)

func accessSummary(c *x509.Certificate) *custodyv1alpha1.DataAccessCertificate {
	return &custodyv1alpha1.DataAccessCertificate{Fingerprint: protocol.CertFingerprint(c.Raw), NotBefore: metav1.NewTime(c.NotBefore), NotAfter: metav1.NewTime(c.NotAfter)}
}

// TestAcceptAccessCertificate is the rule the data plane admits a tenant's
// DataAccess credential by: the current or the previous certificate of an
// existing DataAccess of that tenant, valid now, signed by the tenant's CA,
// with exactly the derived identity.
func TestAcceptAccessCertificate(t *testing.T) {
	const td = "custody.dev"
	issued := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	now := issued.Add(6 * time.Hour)
	ca := newTestCA(t, "Custody tenant acme CA", issued.Add(-24*time.Hour), issued.Add(365*24*time.Hour))
	other := newTestCA(t, "Custody tenant globex CA", issued.Add(-24*time.Hour), issued.Add(365*24*time.Hour))
	tenant := func(mutate func(*custodyv1alpha1.Tenant)) *custodyv1alpha1.Tenant {
		tn := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}, Spec: custodyv1alpha1.TenantSpec{Namespace: "acme-ns"}}
		if mutate != nil {
			mutate(tn)
		}
		return tn
	}
	id := protocol.DeriveAccessIdentity(td, "acme", "dash")
	current := ca.issue(t, id, issued, nil)
	previous := ca.issue(t, id, issued.Add(-12*time.Hour), nil)
	older := ca.issue(t, id, issued.Add(-14*time.Hour), nil)
	future := ca.issue(t, id, now.Add(time.Hour), nil)
	da := func(mutate func(*custodyv1alpha1.DataAccess)) *custodyv1alpha1.DataAccess {
		d := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: "acme-ns", UID: "da-1"}}
		d.Status.Certificate, d.Status.PreviousCertificate = accessSummary(current), accessSummary(previous)
		if mutate != nil {
			mutate(d)
		}
		return d
	}
	deleting := metav1.NewTime(now)
	anchors := []*x509.Certificate{ca.cert}

	cases := []struct {
		name   string
		da     *custodyv1alpha1.DataAccess
		tenant *custodyv1alpha1.Tenant
		leaf   *x509.Certificate
		anch   []*x509.Certificate
		now    time.Time
		want   AccessVerdict
	}{
		{"the current certificate", da(nil), tenant(nil), current, anchors, now, AccessAccepted},
		{"the previous certificate", da(nil), tenant(nil), previous, anchors, now, AccessAccepted},
		{"an older certificate of the same DataAccess", da(nil), tenant(nil), older, anchors, now, AccessNotIssued},
		{"a certificate of a DataAccess deleted and re-created", da(func(d *custodyv1alpha1.DataAccess) {
			d.UID, d.Status.Certificate, d.Status.PreviousCertificate = "da-2", nil, nil
		}), tenant(nil), current, anchors, now, AccessNotIssued},
		{"the DataAccess is gone", nil, tenant(nil), current, anchors, now, AccessRevoked},
		{"the DataAccess is being deleted", da(func(d *custodyv1alpha1.DataAccess) { d.DeletionTimestamp = &deleting }), tenant(nil), current, anchors, now, AccessRevoked},
		{"the tenant is gone", da(nil), nil, current, anchors, now, AccessRevoked},
		{"the tenant is being deleted", da(nil), tenant(func(tn *custodyv1alpha1.Tenant) { tn.DeletionTimestamp = &deleting }), current, anchors, now, AccessRevoked},
		{"the DataAccess is in another tenant's namespace", da(nil), tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.Namespace = "elsewhere" }), current, anchors, now, AccessRevoked},
		{"another tenant's identity", da(nil), tenant(nil), ca.issue(t, protocol.DeriveAccessIdentity(td, "globex", "dash"), issued, nil), anchors, now, AccessWrongIdentity},
		{"another DataAccess's identity", da(nil), tenant(nil), ca.issue(t, protocol.DeriveAccessIdentity(td, "acme", "other"), issued, nil), anchors, now, AccessWrongIdentity},
		{"another trust domain", da(nil), tenant(nil), ca.issue(t, protocol.DeriveAccessIdentity("evil.example", "acme", "dash"), issued, nil), anchors, now, AccessWrongIdentity},
		{"a device identity", da(nil), tenant(nil), ca.issue(t, protocol.DeriveIdentity(td, "acme", "dash", "dash"), issued, nil), anchors, now, AccessWrongIdentity},
		{"an extra DNS name", da(nil), tenant(nil), ca.issue(t, id, issued, func(c *x509.Certificate) { c.DNSNames = []string{"admin"} }), anchors, now, AccessWrongIdentity},
		{"server authentication only", da(nil), tenant(nil), ca.issue(t, id, issued, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), anchors, now, AccessWrongIdentity},
		{"no certificate", da(nil), tenant(nil), nil, anchors, now, AccessWrongIdentity},
		{"another tenant's CA (listed fingerprint)", da(func(d *custodyv1alpha1.DataAccess) { d.Status.Certificate = nil }), tenant(nil), other.issue(t, id, issued, nil), anchors, now, AccessUntrusted},
		{"a self-signed certificate with the right identity", da(nil), tenant(nil), selfSigned(t, id, issued), anchors, now, AccessUntrusted},
		{"no anchors", da(nil), tenant(nil), current, nil, now, AccessUntrusted},
		{"expired", da(nil), tenant(nil), current, anchors, current.NotAfter, AccessExpired},
		{"not yet valid", da(func(d *custodyv1alpha1.DataAccess) { d.Status.Certificate = accessSummary(future) }), tenant(nil), future, anchors, now, AccessNotYetValid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := AcceptAccessCertificate(tc.da, tc.tenant, td, tc.leaf, tc.anch, tc.now); got != tc.want {
				t.Fatalf("AcceptAccessCertificate = %s, want %s", got, tc.want)
			}
		})
	}
	// A certificate signed by another CA and listed is still untrusted.
	foreign := other.issue(t, id, issued, nil)
	if got := AcceptAccessCertificate(da(func(d *custodyv1alpha1.DataAccess) { d.Status.Certificate = accessSummary(foreign) }), tenant(nil), td, foreign, anchors, now); got != AccessUntrusted {
		t.Fatalf("a listed certificate of another CA: %s", got)
	}
}

// selfSigned makes a self-signed client certificate carrying id.
func selfSigned(t *testing.T, id protocol.Identity, notBefore time.Time) *x509.Certificate {
	t.Helper()
	self := newTestCA(t, id.CommonName, notBefore, notBefore.Add(24*time.Hour))
	return self.issue(t, id, notBefore, nil)
}

// TestAccessScope: the devices a DataAccess reads are those bound to its
// tenant now whose binding Claim matches its selector; nothing bound
// elsewhere, released or decommissioned, whatever its labels.
func TestAccessScope(t *testing.T) {
	tenant := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"}}
	claim := func(ns, name, uid string, lbl map[string]string) custodyv1alpha1.Claim {
		return custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), Labels: lbl}}
	}
	device := func(name, tenant, ns, claimName, uid string, decommissioned bool) custodyv1alpha1.Device {
		d := custodyv1alpha1.Device{ObjectMeta: metav1.ObjectMeta{Name: name}}
		d.Spec.Decommissioned = decommissioned
		if tenant != "" {
			d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: tenant, Namespace: ns, Name: claimName, UID: types.UID(uid)}
		}
		return d
	}
	berlin := map[string]string{"site": "berlin"}
	paris := map[string]string{"site": "paris"}
	devices := []custodyv1alpha1.Device{
		device("m.b1", "acme", "acme", "b1", "u-b1", false),
		device("m.b2", "acme", "acme", "b2", "u-b2", false),
		device("m.p1", "acme", "acme", "p1", "u-p1", false),
		// Bound to globex, whose Claim carries the matching label.
		device("m.g1", "globex", "globex", "g1", "u-g1", false),
		// Released: acme's old Claim with the label is still there.
		device("m.released", "", "", "", "", false),
		// Decommissioned while bound to acme.
		device("m.decom", "acme", "acme", "decom", "u-decom", true),
		// Bound to acme by a Claim that was replaced: the labelled Claim of
		// that name has another UID.
		device("m.stale", "acme", "acme", "stale", "u-stale-2", false),
		// Bound to acme, its Claim not (yet) seen.
		device("m.unseen", "acme", "acme", "unseen", "u-unseen", false),
	}
	claims := []custodyv1alpha1.Claim{
		claim("acme", "b1", "u-b1", berlin),
		claim("acme", "b2", "u-b2", berlin),
		claim("acme", "p1", "u-p1", paris),
		claim("globex", "g1", "u-g1", berlin),
		claim("acme", "released", "u-released", berlin),
		claim("acme", "decom", "u-decom", berlin),
		claim("acme", "stale", "u-stale-1", berlin),
		// A Claim in globex's namespace with acme's UID for b2: never b2's.
		claim("globex", "b2", "u-p1", berlin),
	}
	da := func(sel *metav1.LabelSelector, mutate func(*custodyv1alpha1.DataAccess)) *custodyv1alpha1.DataAccess {
		d := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: "dash", Namespace: "acme"}, Spec: custodyv1alpha1.DataAccessSpec{Selector: sel}}
		if mutate != nil {
			mutate(d)
		}
		return d
	}
	deleting := metav1.Now()
	cases := []struct {
		name   string
		da     *custodyv1alpha1.DataAccess
		tenant *custodyv1alpha1.Tenant
		want   []string
	}{
		{"no selector: every bound device", da(nil, nil), tenant, []string{"m.b1", "m.b2", "m.p1", "m.stale", "m.unseen"}},
		{"empty selector: every bound device", da(&metav1.LabelSelector{}, nil), tenant, []string{"m.b1", "m.b2", "m.p1", "m.stale", "m.unseen"}},
		{"site=berlin", da(&metav1.LabelSelector{MatchLabels: berlin}, nil), tenant, []string{"m.b1", "m.b2"}},
		{"site in (paris)", da(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "site", Operator: metav1.LabelSelectorOpIn, Values: []string{"paris"}}}}, nil), tenant, []string{"m.p1"}},
		{"site=rome matches nothing", da(&metav1.LabelSelector{MatchLabels: map[string]string{"site": "rome"}}, nil), tenant, nil},
		{"an invalid selector reads nothing", da(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "site", Operator: "Near"}}}, nil), tenant, nil},
		{"a deleting DataAccess reads nothing", da(nil, func(d *custodyv1alpha1.DataAccess) { d.DeletionTimestamp = &deleting }), tenant, nil},
		{"a DataAccess outside the tenant's namespace reads nothing", da(nil, func(d *custodyv1alpha1.DataAccess) { d.Namespace = "globex" }), tenant, nil},
		{"no tenant", da(nil, nil), nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := AccessScope(tc.da, tc.tenant, devices, claims); !slices.Equal(got, tc.want) {
				t.Fatalf("AccessScope = %v, want %v", got, tc.want)
			}
		})
	}
}
