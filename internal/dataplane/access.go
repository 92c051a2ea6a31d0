package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/protocol"
)

// AccessUser is the user name a DataAccess holder's connections carry.
func AccessUser(namespace, name string) string { return "access/" + namespace + "/" + name }

// AccessMQTTClientID is the MQTT client identifier of a DataAccess holder:
// "access:<name>", or "access:<name>:<anything>" for several at once. The
// ':' appears in no device's client ID, so a holder can never take over a
// device's MQTT session (an MQTT connect with a session's client ID takes
// the session over).
func AccessMQTTClientID(name string) string { return "access:" + name }

// DeviceIndex is the field index of Devices by their binding's tenant (the
// manager's cache registers it).
const DeviceIndex = "spec.claimRef.tenant"

// AccessSubjects returns what a holder of da may subscribe to: every device
// subject of the tenant's account when da selects all its devices (only the
// tenant's bound devices publish there), else the subject spaces of the
// devices contract.AccessScope puts in scope; nil when none. Each space is
// "<space>" and "<space>.>", what an MQTT subscription to "<space>/#" asks
// for. Nothing publishes on "<space>" itself: devices publish below it.
func (s *Service) AccessSubjects(ctx context.Context, tn *custodyv1alpha1.Tenant, da *custodyv1alpha1.DataAccess) ([]string, error) {
	if sel := da.Spec.Selector; sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		if contract.AccessTenantOwns(da, tn) && da.DeletionTimestamp.IsZero() && tn.DeletionTimestamp.IsZero() {
			// "devices" too: an MQTT subscription to "devices/#" is also
			// one to its parent level, and is refused whole without it.
			return []string{"devices", "devices.>"}, nil
		}
		return nil, nil
	}
	devices := &custodyv1alpha1.DeviceList{}
	if err := s.Reader.List(ctx, devices, client.MatchingFields{DeviceIndex: tn.Name}); err != nil {
		return nil, err
	}
	claims := &custodyv1alpha1.ClaimList{}
	if err := s.Reader.List(ctx, claims, client.InNamespace(da.Namespace)); err != nil {
		return nil, err
	}
	var subs []string
	for _, d := range contract.AccessScope(da, tn, devices.Items, claims.Items) {
		space, _ := DeviceSubjects(d)
		subs = append(subs, space, space+".>")
	}
	return subs, nil
}

// ScopeHash identifies a set of subjects.
func ScopeHash(subjects []string) string {
	sum := sha256.Sum256([]byte(strings.Join(subjects, "\n")))
	return hex.EncodeToString(sum[:8])
}

// accessGrants records, per DataAccess, the scopes the callout granted
// since the cut-off last looked, and an epoch the cut-off advances each
// time it looks. A grant computed before a look and recorded after it is
// computed again (record refuses it): the look was triggered by a change
// the cache already holds, so the second computation sees it. So every
// grant is either among what the cut-off took, or decided on the state it
// checked against.
type accessGrants struct {
	mu sync.Mutex
	m  map[string]*accessGrant
}

type accessGrant struct {
	epoch  uint64
	hashes map[string]bool
}

func (g *accessGrants) get(key string) *accessGrant {
	if g.m == nil {
		g.m = map[string]*accessGrant{}
	}
	a := g.m[key]
	if a == nil {
		a = &accessGrant{}
		g.m[key] = a
	}
	return a
}

// epoch returns key's epoch.
func (g *accessGrants) epoch(key string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.get(key).epoch
}

// record adds a grant computed at epoch; false if the cut-off looked since.
func (g *accessGrants) record(key string, epoch uint64, hash string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := g.get(key)
	if a.epoch != epoch {
		return false
	}
	if a.hashes == nil {
		a.hashes = map[string]bool{}
	}
	a.hashes[hash] = true
	return true
}

// take advances key's epoch and returns the scopes granted since the last
// take; known is false when nothing was taken before (this process has not
// looked since it started, so open connections may hold any grant).
func (g *accessGrants) take(key string) (hashes map[string]bool, known bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := g.get(key)
	known = a.epoch > 0
	a.epoch++
	hashes, a.hashes = a.hashes, nil
	return hashes, known
}

// StaleAccessGrants reports whether a holder of the DataAccess
// namespace/name may hold a connection granted other subjects than
// current: a grant since the last look differs, or this process never
// looked. It starts a new look: grants computed before it are computed
// again.
func (s *Service) StaleAccessGrants(namespace, name string, current []string) bool {
	hashes, known := s.grants.take(namespace + "/" + name)
	if !known {
		return true
	}
	want := ScopeHash(current)
	for h := range hashes {
		if h != want {
			return true
		}
	}
	return false
}

// decideAccess decides on a DataAccess holder's connection: its certificate
// must be a current one of an existing DataAccess of the tenant
// (contract.AcceptAccessCertificate) and, over MQTT, its client ID
// AccessMQTTClientID's; it may then subscribe to the devices in scope and
// publish nothing, until its certificate expires.
func (s *Service) decideAccess(ctx context.Context, req *Request, tenantName, name string) (Grant, Reason) {
	tn := &custodyv1alpha1.Tenant{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: tenantName}, tn); err != nil {
		return Grant{}, ReasonUnknownIdentity
	}
	if tn.Status.Namespace == "" {
		return Grant{}, ReasonTenantNotReady
	}
	anchors, err := contract.TenantTrustAnchors(ctx, s.Reader, tn.Status.Namespace)
	if err != nil {
		return Grant{}, ReasonTenantNotReady
	}
	da := &custodyv1alpha1.DataAccess{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Namespace: tn.TargetNamespace(), Name: name}, da); err != nil {
		da = nil
	}
	if v := contract.AcceptAccessCertificate(da, tn, s.TrustDomain, req.Leaf, anchors, s.now()); v != contract.AccessAccepted {
		return Grant{}, Reason("Access" + string(v))
	}
	if req.Type == "mqtt" || req.MQTTClientID != "" {
		id := AccessMQTTClientID(name)
		if req.MQTTClientID != id && !strings.HasPrefix(req.MQTTClientID, id+":") {
			return Grant{}, ReasonClientID
		}
	}
	key := da.Namespace + "/" + da.Name
	var subs []string
	for attempt := 0; ; attempt++ {
		epoch := s.grants.epoch(key)
		if subs, err = s.AccessSubjects(ctx, tn, da); err != nil {
			return Grant{}, ReasonTenantNotReady
		}
		if s.grants.record(key, epoch, ScopeHash(subs)) {
			break
		}
		if attempt == 2 {
			return Grant{}, ReasonTenantNotReady // the scope keeps changing; the client retries
		}
		// The cut-off looked meanwhile: decide again on what it saw.
		if err := s.Reader.Get(ctx, client.ObjectKeyFromObject(da), da); err != nil || !da.DeletionTimestamp.IsZero() {
			return Grant{}, Reason("Access" + string(contract.AccessRevoked))
		}
	}
	return Grant{Tenant: tn.Name, User: AccessUser(da.Namespace, da.Name), Subscribe: subs, Expires: req.Leaf.NotAfter}, Admitted
}

// parseAccess returns the tenant and DataAccess a certificate's SPIFFE ID
// names, if it names one.
func (s *Service) parseAccess(req *Request) (tenant, name string, ok bool) {
	if req.Leaf == nil || len(req.Leaf.URIs) != 1 {
		return "", "", false
	}
	return protocol.ParseAccessSPIFFEID(s.TrustDomain, req.Leaf.URIs[0].String())
}
