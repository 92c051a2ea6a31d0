package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// pairingToken creates a pairing-token Secret in the tenant's namespace,
// valid for an hour of the manager's clock, and returns its token.
func pairingToken(t *testing.T, m *manager, tn *custodyv1alpha1.Tenant, limit int, mutate func(*corev1.Secret)) (protocol.PairingToken, *corev1.Secret) {
	t.Helper()
	tok, err := protocol.GeneratePairingToken(tn.Name)
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tn.Status.Namespace, Name: claim.PairingTokenSecretPrefix + tok.ID}, Type: claim.PairingTokenSecretType,
		StringData: map[string]string{claim.TokenKeyID: tok.ID, claim.TokenKeySecret: tok.Secret,
			claim.TokenKeyExpiration: m.Clock.Now().Add(time.Hour).Format(time.RFC3339), claim.TokenKeyUsageLimit: fmt.Sprint(limit)}}
	if mutate != nil {
		mutate(s)
	}
	if err := admin.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return tok, s
}

// presentToken has the device prove possession with the token and returns
// the manager's verdict on that proof.
func presentToken(t *testing.T, g *gw, rec *factory.Record, tok protocol.PairingToken) *custodyv1alpha1.DeviceProof {
	t.Helper()
	a := newAgent(t, g, rec)
	ctx := context.Background()
	before := proofsOf(t, rec.Device.Name)
	if err := a.Client.ClaimWithToken(ctx, a.Key, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, tok); err != nil {
		t.Fatalf("the gateway did not record the token proof: %v", err)
	}
	var verdict *custodyv1alpha1.DeviceProof
	waitFor(t, "the manager's verdict on the token", func() bool {
		for _, p := range proofsOfList(t, rec.Device.Name) {
			if before[p.Name] || p.Spec.PairingToken == nil {
				continue
			}
			if p.Status.Phase == custodyv1alpha1.DeviceProofPhaseConfirmed || p.Status.Phase == custodyv1alpha1.DeviceProofPhaseRejected {
				verdict = p.DeepCopy()
				return true
			}
		}
		return false
	})
	return verdict
}

func proofsOf(t *testing.T, device string) map[string]bool {
	t.Helper()
	var list custodyv1alpha1.DeviceProofList
	if err := admin.List(context.Background(), &list, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: device}); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, p := range list.Items {
		out[p.Name] = true
	}
	return out
}

func proofsOfList(t *testing.T, device string) []custodyv1alpha1.DeviceProof {
	t.Helper()
	var list custodyv1alpha1.DeviceProofList
	if err := admin.List(context.Background(), &list, client.InNamespace(cp.OperatorNamespace), client.MatchingLabels{contract.LabelDevice: device}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// tokenState reads the manager's record of the token of Secret s, as c
// (a tenant user may read it).
func tokenState(t *testing.T, c client.Client, s *corev1.Secret) claim.TokenState {
	t.Helper()
	cm := &corev1.ConfigMap{}
	err := c.Get(context.Background(), client.ObjectKey{Namespace: s.Namespace, Name: claim.TokenStateConfigMap}, cm)
	if apierrors.IsNotFound(err) {
		return claim.TokenState{}
	}
	if err != nil {
		t.Fatal(err)
	}
	var st claim.TokenState
	if raw, ok := cm.Data[strings.TrimPrefix(s.Name, claim.PairingTokenSecretPrefix)]; ok {
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// usage is how many devices the manager counted for the token of Secret s.
func usage(t *testing.T, s *corev1.Secret) int {
	t.Helper()
	return tokenState(t, admin, s).Used
}

// TestPairingTokenClaimsDevices: field staff give a tenant's pairing token
// to devices at installation; each device claims itself, and a bound Claim
// appears in the tenant's namespace; the device then enrols.
func TestPairingTokenClaimsDevices(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	acme := newTenant(t)
	tok, secret := pairingToken(t, m, acme, 5, nil)

	rec := newDevice(t)
	a := newAgent(t, g, rec)
	writeToken(t, a.Dir, tok)
	if _, err := a.Step(context.Background()); !device.IsCode(err, protocol.ErrNotBound) {
		t.Fatalf("first step: %v, want NotBound while the Claim binds", err) // the token proof is recorded; the Claim binds next
	}
	cl := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: acme.Status.Namespace, Name: rec.Device.Name}}
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	enrollAgent(t, a)
	_, leaf := a.Certificate()
	if leaf.URIs[0].String() != identityOf(rec.Device.Spec.SerialNumber, acme.Name, rec.Device.Name).URI {
		t.Fatalf("the device enrolled as %s", leaf.URIs[0])
	}
	cl, err := claimInNamespace(acme.Status.Namespace, rec.Device.Name)
	if err != nil || cl.Status.Phase != custodyv1alpha1.ClaimPhaseBound || cl.Spec.PairingToken == nil || cl.Spec.PairingToken.SecretName != secret.Name {
		t.Fatalf("no bound pairing-token Claim: %v %+v", err, cl.Spec)
	}
	if b := lastBound(t, rec.Device.Name); b.Proof != claim.ProofPairingToken || b.Actor != "device:"+rec.Device.Name+" with the pairing token "+acme.Status.Namespace+"/"+secret.Name+" of tenant "+acme.Name || b.Tenant != acme.Name {
		t.Fatalf("token claim recorded as %+v", b)
	}
	if got := usage(t, secret); got != 1 {
		t.Fatalf("usage count %d, want 1", got)
	}
	if _, err := readFile(a.Dir, "pairing.token"); err == nil {
		t.Fatal("the device kept the token after enrolling")
	}
	assertChain(t, rec.Device.Name)

	// Users cannot forge a pairing-token Claim.
	forged := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: uniq("forged"), Namespace: acme.Status.Namespace},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-X", Model: "XR200", Possession: &custodyv1alpha1.PossessionProof{}, PairingToken: &custodyv1alpha1.PairingTokenProof{SecretName: secret.Name}}}
	if err := admin.Create(context.Background(), forged); err == nil || !strings.Contains(err.Error(), "only the Custody manager creates pairing-token Claims") {
		t.Fatalf("a user created a pairing-token Claim: %v", err)
	}
}

// TestPairingTokenAttacks: a token past its expiry, over its usage limit,
// revoked, deleted, or used on a serial outside its allow-list claims
// nothing; a leaked token cannot take a device that is bound or in another
// tenant's custody, and such attempts do not use the token up.
func TestPairingTokenAttacks(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	acme, globex, wholesale := newTenant(t), newTenant(t), newTenant(t)

	refused := func(label string, rec *factory.Record, tok protocol.PairingToken, why claim.TokenVerdict) {
		t.Helper()
		p := presentToken(t, g, rec, tok)
		if p.Status.Phase != custodyv1alpha1.DeviceProofPhaseRejected || p.Status.Reason != custodyv1alpha1.DeviceProofReasonTokenRefused || (why != "" && !strings.Contains(p.Status.Message, string(why))) {
			t.Fatalf("%s: proof %s/%s %q", label, p.Status.Phase, p.Status.Reason, p.Status.Message)
		}
		d := getDevice(t, rec.Device.Name)
		if d.Spec.ClaimRef != nil && d.Spec.ClaimRef.Tenant == acme.Name {
			t.Fatalf("%s: the device was bound to the token's tenant", label)
		}
		if _, err := claimInNamespace(acme.Status.Namespace, rec.Device.Name); !apierrors.IsNotFound(err) {
			t.Fatalf("%s: a Claim appeared in the token's namespace: %v", label, err)
		}
	}

	expired, _ := pairingToken(t, m, acme, 5, func(s *corev1.Secret) {
		s.StringData[claim.TokenKeyExpiration] = m.Clock.Now().Add(-time.Second).Format(time.RFC3339)
	})
	refused("expired", newDevice(t), expired, claim.TokenExpired)

	revoked, _ := pairingToken(t, m, acme, 5, func(s *corev1.Secret) { s.StringData[claim.TokenKeyRevoked] = "true" })
	refused("revoked", newDevice(t), revoked, claim.TokenRevoked)

	deleted, ds := pairingToken(t, m, acme, 5, nil)
	if err := admin.Delete(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
	refused("deleted", newDevice(t), deleted, "")

	listed := newDeviceRecord(t)
	allow, _ := pairingToken(t, m, acme, 5, func(s *corev1.Secret) {
		s.StringData[claim.TokenKeyAllowedSerials] = listed.Device.Spec.SerialNumber + ",SN-OTHER"
	})
	refused("serial outside the allow-list", newDevice(t), allow, claim.TokenSerialRefuse)

	// A made-up secret for a real token ID is a mismatch.
	limited, ls := pairingToken(t, m, acme, 1, nil)
	guess := limited
	guess.Secret = strings.Repeat("a", protocol.PairingTokenSecretLength)
	refused("guessed secret", newDevice(t), guess, claim.TokenMismatch)

	// A leaked token never takes a bound device or one in custody, and
	// such attempts do not count.
	bound := newDevice(t)
	held := waitPhase(t, claimWithCode(t, admin, globex.Status.Namespace, bound.Device.Spec.SerialNumber, bound.Device.Spec.Model, bound.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	refused("bound to another tenant", bound, limited, "")
	if !boundTo(t, bound.Device.Name, held.UID) {
		t.Fatal("the owner lost the device to a token")
	}
	inCustody := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	refused("in another tenant's custody", inCustody, limited, "")
	if got := usage(t, ls); got != 0 {
		t.Fatalf("refused attempts counted: usage %d", got)
	}

	// Within its limit the token works once; then it is used up.
	ok := newDevice(t)
	if p := presentToken(t, g, ok, limited); p.Status.Phase != custodyv1alpha1.DeviceProofPhaseConfirmed {
		t.Fatalf("a valid token was refused: %s", p.Status.Message)
	}
	if got := usage(t, ls); got != 1 {
		t.Fatalf("usage %d, want 1", got)
	}
	refused("over its usage limit", newDevice(t), limited, claim.TokenUsedUp)

	// A token that works for a listed serial.
	if err := admin.Create(context.Background(), listed.Device); err != nil {
		t.Fatal(err)
	}
	if p := presentToken(t, g, listed, allow); p.Status.Phase != custodyv1alpha1.DeviceProofPhaseConfirmed {
		t.Fatalf("a listed serial was refused: %s", p.Status.Message)
	}
}

// TestPairingTokenStateIsTheManagers: the usage count and the revocation of
// a pairing token live where only the manager writes. A tenant Admin who
// resets the Secret after each use (the old usage annotation, the revoked
// key) cannot make a usage-limit-1 token claim a second device; an Operator
// who un-revokes a token an Admin revoked, or creates a deleted token's
// Secret again, gets nothing; tenant users see the count but cannot write
// it.
func TestPairingTokenStateIsTheManagers(t *testing.T) {
	m := startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	member := func(name string, role custodyv1alpha1.TenantRole) custodyv1alpha1.TenantMember {
		return custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: name, Role: role}
	}
	adminUser, operatorUser, viewerUser := uniq("tok-admin"), uniq("tok-operator"), uniq("tok-viewer")
	acme := newTenant(t, member(adminUser, custodyv1alpha1.TenantRoleAdmin), member(operatorUser, custodyv1alpha1.TenantRoleOperator),
		member(viewerUser, custodyv1alpha1.TenantRoleViewer))
	tenantAdmin, operator, viewer := userClient(t, adminUser), userClient(t, operatorUser), userClient(t, viewerUser)
	patch := func(c client.Client, s *corev1.Secret, body string) {
		t.Helper()
		if err := c.Patch(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}, client.RawPatch(types.MergePatchType, []byte(body))); err != nil {
			t.Fatalf("patching the token Secret: %v", err)
		}
	}
	refusedWith := func(label string, p *custodyv1alpha1.DeviceProof, why claim.TokenVerdict) {
		t.Helper()
		if p.Status.Phase != custodyv1alpha1.DeviceProofPhaseRejected || !strings.Contains(p.Status.Message, string(why)) {
			t.Fatalf("%s: proof %s %q, want it refused: %s", label, p.Status.Phase, p.Status.Message, why)
		}
	}

	// A usage-limit-1 token claims one device, however often the Admin
	// resets what the Secret says after each use.
	tok, secret := pairingToken(t, m, acme, 1, nil)
	if p := presentToken(t, g, newDevice(t), tok); p.Status.Phase != custodyv1alpha1.DeviceProofPhaseConfirmed {
		t.Fatalf("a valid token was refused: %s", p.Status.Message)
	}
	for i := range 4 {
		patch(tenantAdmin, secret, `{"metadata":{"annotations":{"`+claim.AnnotationUsageCount+`":"0"}},"stringData":{"revoked":"false"}}`)
		refusedWith(fmt.Sprintf("use %d after a reset", i+2), presentToken(t, g, newDevice(t), tok), claim.TokenUsedUp)
	}
	var claims custodyv1alpha1.ClaimList
	if err := admin.List(ctx, &claims, client.InNamespace(acme.Status.Namespace)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range claims.Items {
		if c.Spec.PairingToken != nil && c.Spec.PairingToken.SecretName == secret.Name {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the usage-limit-1 token opened %d Claims", n)
	}
	// Every tenant user sees the count; none writes it.
	for name, c := range map[string]client.Client{"viewer": viewer, "operator": operator, "admin": tenantAdmin} {
		if st := tokenState(t, c, secret); st.Used != 1 || len(st.Recent) != 1 {
			t.Fatalf("the %s reads the token state %+v, want 1 use", name, st)
		}
	}
	for name, c := range map[string]client.Client{"operator": operator, "admin": tenantAdmin} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: acme.Status.Namespace, Name: claim.TokenStateConfigMap}}
		if err := c.Patch(ctx, cm, client.RawPatch(types.MergePatchType, []byte(`{"data":{"x":"y"}}`))); !apierrors.IsForbidden(err) {
			t.Fatalf("the tenant %s wrote the token state: %v", name, err)
		}
		if err := c.Delete(ctx, cm); !apierrors.IsForbidden(err) {
			t.Fatalf("the tenant %s deleted the token state: %v", name, err)
		}
	}

	// An Admin revokes a token; an Operator un-revokes it: it stays revoked.
	revoked, rs := pairingToken(t, m, acme, 5, nil)
	patch(tenantAdmin, rs, `{"stringData":{"revoked":"true"}}`)
	waitFor(t, "the manager to record the revocation", func() bool { return tokenState(t, viewer, rs).RevokedAt != nil })
	patch(operator, rs, `{"stringData":{"revoked":"false"}}`)
	refusedWith("un-revoked by an Operator", presentToken(t, g, newDevice(t), revoked), claim.TokenRevoked)

	// An Admin deletes a token; an Operator who knows it creates its Secret
	// again: it stays revoked.
	deleted, ds := pairingToken(t, m, acme, 5, nil)
	waitFor(t, "the manager to see the token", func() bool { return tokenState(t, viewer, ds).UID != "" })
	if err := tenantAdmin.Delete(ctx, ds); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the manager to record the deletion", func() bool { return tokenState(t, viewer, ds).RevokedAt != nil })
	again := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ds.Namespace, Name: ds.Name}, Type: claim.PairingTokenSecretType, Data: ds.Data, StringData: ds.StringData}
	if err := operator.Create(ctx, again); err != nil {
		t.Fatal(err)
	}
	refusedWith("created again by an Operator", presentToken(t, g, newDevice(t), deleted), claim.TokenRevoked)
	if st := tokenState(t, viewer, ds); st.Used != 0 || st.Revoked != claim.RevokedDeleted {
		t.Fatalf("deleted token state %+v", st)
	}
}
