package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

func possessionClaim(t testing.TB, ns, serial, model string) *custodyv1alpha1.Claim {
	t.Helper()
	cl := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("pair"), Namespace: ns},
		Spec:       custodyv1alpha1.ClaimSpec{SerialNumber: serial, Model: model, Possession: &custodyv1alpha1.PossessionProof{}},
	}
	if err := admin.Create(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
	return waitPhase(t, cl, custodyv1alpha1.ClaimPhaseAwaitingDevice)
}

func pair(t testing.TB, a *device.Agent, code string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(a.Dir, device.FilePairing), []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
}

func confirmed(t testing.TB, cl *custodyv1alpha1.Claim) bool {
	t.Helper()
	got := &custodyv1alpha1.Claim{}
	if err := admin.Get(context.Background(), client.ObjectKeyFromObject(cl), got); err != nil {
		t.Fatal(err)
	}
	return got.Status.Phase != custodyv1alpha1.ClaimPhaseAwaitingDevice || (got.Status.Pairing != nil && got.Status.Pairing.ConfirmedAt != nil)
}

// TestClaimByPossession: the owner and a stranger both ask for possession
// proof of one device. The device coming online confirms nothing; a code it
// was not given confirms nothing; the owner's code binds the owner's Claim
// only, and the stranger's Claim keeps waiting, unconfirmed.
func TestClaimByPossession(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	owner, stranger := newTenant(t), newTenant(t)
	rec := newDevice(t)
	serial, model := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model

	mine := possessionClaim(t, owner.Status.Namespace, serial, model)
	theirs := possessionClaim(t, stranger.Status.Namespace, serial, model)
	if mine.Status.Pairing == nil || theirs.Status.Pairing == nil || mine.Status.Pairing.Code == theirs.Status.Pairing.Code {
		t.Fatal("each Claim needs its own pairing code")
	}
	// The code is readable only in the claimant's namespace: a plain Claim
	// status, guarded by the tenant RBAC tested in TestRBACMatrix.

	agent := newAgent(t, g, rec)
	// Online with no code: nothing confirmed.
	if _, err := agent.Step(ctx); !device.IsCode(err, protocol.ErrNotBound) {
		t.Fatalf("unpaired device: %v, want NotBound", err)
	}
	// With a code nobody was given: recorded, rejected, nothing confirmed.
	unmatched, _ := claimcode.GeneratePairingCode()
	pair(t, agent, unmatched)
	if _, err := agent.Step(ctx); !device.IsCode(err, protocol.ErrNotBound) {
		t.Fatalf("wrongly paired device: %v, want NotBound", err)
	}
	waitFor(t, "the unmatched proof to be rejected", func() bool {
		var proofs custodyv1alpha1.DeviceProofList
		if err := admin.List(ctx, &proofs, client.InNamespace(cp.OperatorNamespace)); err != nil {
			return false
		}
		for _, p := range proofs.Items {
			if p.Spec.DeviceName == rec.Device.Name && p.Spec.Purpose == custodyv1alpha1.DeviceProofPossession {
				return p.Status.Reason == custodyv1alpha1.DeviceProofReasonNoMatchingClaim
			}
		}
		return false
	})
	if confirmed(t, mine) || confirmed(t, theirs) {
		t.Fatal("a device confirmed a Claim it was not paired with")
	}

	// The owner's field staff enter the owner's code.
	pair(t, agent, mine.Status.Pairing.Code)
	_, _ = agent.Step(ctx) // proves possession; NotBound until the claim binds
	got := waitPhase(t, mine, custodyv1alpha1.ClaimPhaseBound)
	if got.Status.Pairing != nil {
		t.Fatal("the used pairing code is still shown")
	}
	if d := getDevice(t, rec.Device.Name); d.Spec.ClaimRef == nil || d.Spec.ClaimRef.UID != mine.UID || d.Status.History[len(d.Status.History)-1].Proof != "Possession" {
		t.Fatalf("device binding %+v, history %+v", d.Spec.ClaimRef, d.Status.History)
	}
	if confirmed(t, theirs) {
		t.Fatal("the stranger's Claim was confirmed")
	}
	enrollAgent(t, agent)
	if _, err := os.Stat(filepath.Join(agent.Dir, device.FilePairing)); !os.IsNotExist(err) {
		t.Fatal("the agent kept the pairing code after enrolling")
	}
	// Neither the manager nor the gateway logged a pairing code.
	for _, code := range []string{mine.Status.Pairing.Code, theirs.Status.Pairing.Code, unmatched} {
		if strings.Contains(logs.String(), code) || strings.Contains(logs.String(), protocol.NormalizePairingCode(code)) {
			t.Fatal("a pairing code appears in the logs")
		}
	}
}

// TestPossessionPolicy: a device whose policy requires the claim code is
// not claimed by possession alone.
func TestPossessionPolicy(t *testing.T) {
	startManager(t)
	g := startGateway(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDeviceRecord(t)
	rec.Device.Spec.ClaimPolicy = &custodyv1alpha1.ClaimPolicy{RequiredProof: custodyv1alpha1.RequiredProofCode}
	if err := admin.Create(ctx, rec.Device); err != nil {
		t.Fatal(err)
	}
	cl := possessionClaim(t, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model)
	agent := newAgent(t, g, rec)
	pair(t, agent, cl.Status.Pairing.Code)
	_, _ = agent.Step(ctx)
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseDenied)
	if r := readyReason(got); r != custodyv1alpha1.ClaimReasonProofRequired {
		t.Fatalf("denied with %s, want %s", r, custodyv1alpha1.ClaimReasonProofRequired)
	}
	if getDevice(t, rec.Device.Name).Spec.ClaimRef != nil {
		t.Fatal("possession alone bound a Code-only device")
	}
}

// TestGatewayPowersAreLimited: with the RBAC shipped for it, the gateway's
// identity can record proofs and heartbeats and nothing else that matters.
func TestGatewayPowersAreLimited(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	cfg, err := cp.GatewayConfig()
	if err != nil {
		t.Fatal(err)
	}
	gwc, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	tn := newTenant(t)
	rec := newDevice(t)
	dev := getDevice(t, rec.Device.Name)

	heartbeat := client.RawPatch(types.MergePatchType, []byte(`{"status":{"lastSeen":"2026-11-22T00:00:00Z","reported":{"firmwareVersion":"2"}}}`))
	if err := gwc.Status().Patch(ctx, dev, heartbeat); err != nil {
		t.Fatalf("the gateway cannot record a heartbeat: %v", err)
	}
	refused := map[string]error{
		"change the phase": gwc.Status().Patch(ctx, dev, client.RawPatch(types.MergePatchType, []byte(`{"status":{"phase":"Decommissioned"}}`))),
		"list certificates": gwc.Status().Patch(ctx, dev, client.RawPatch(types.MergePatchType,
			[]byte(`{"status":{"certificates":[{"fingerprint":"sha256:00","notAfter":"2030-01-01T00:00:00Z","tenant":"x","claimUID":"u"}]}}`))),
		"bind the device": gwc.Patch(ctx, dev, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"claimRef":{"tenant":"x","namespace":"x","name":"x","uid":"u"}}}`))),
		"read Secrets":    gwc.List(ctx, &corev1.SecretList{}, client.InNamespace(cp.OperatorNamespace)),
		// Its cache lists trust bundles by name; no other ConfigMap.
		"list ConfigMaps":                gwc.List(ctx, &corev1.ConfigMapList{}),
		"list ConfigMaps of a namespace": gwc.List(ctx, &corev1.ConfigMapList{}, client.InNamespace(tn.Status.Namespace)),
		"list another ConfigMap by name": gwc.List(ctx, &corev1.ConfigMapList{}, client.MatchingFields{"metadata.name": "kube-root-ca.crt"}),
		"list DeviceProofs beside":       gwc.List(ctx, &custodyv1alpha1.DeviceProofList{}, client.InNamespace(tn.Status.Namespace)),
		"read Claims":                    gwc.List(ctx, &custodyv1alpha1.ClaimList{}, client.InNamespace(tn.Status.Namespace)),
		"record proofs beside":           gwc.Create(ctx, &custodyv1alpha1.DeviceProof{ObjectMeta: metav1.ObjectMeta{Name: "proof-x", Namespace: tn.Status.Namespace}, Spec: custodyv1alpha1.DeviceProofSpec{Purpose: "Renew", DeviceName: "x", CSR: "x", ClientCertificate: "x"}}),
		"create a CertificateRequest": gwc.Create(ctx, &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: cp.OperatorNamespace},
			Spec: cmapi.CertificateRequestSpec{Request: []byte("x"), IssuerRef: cmmeta.IssuerReference{Name: "tenant-" + tn.Name}}}),
	}
	// What its watch-fed cache needs: Devices, Tenants, trust bundles by
	// name, and the proofs of the operator namespace.
	for what, err := range map[string]error{
		"list Devices":       gwc.List(ctx, &custodyv1alpha1.DeviceList{}),
		"list Tenants":       gwc.List(ctx, &custodyv1alpha1.TenantList{}),
		"list trust bundles": gwc.List(ctx, &corev1.ConfigMapList{}, client.MatchingFields{"metadata.name": contract.TrustBundleName}),
		"list DeviceProofs":  gwc.List(ctx, &custodyv1alpha1.DeviceProofList{}, client.InNamespace(cp.OperatorNamespace)),
	} {
		if err != nil {
			t.Errorf("the gateway cannot %s: %v", what, err)
		}
	}
	for what, err := range refused {
		if err == nil {
			t.Errorf("the gateway could %s", what)
		} else if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Errorf("%s: %v, want Forbidden or Invalid", what, err)
		}
	}
	if got := getDevice(t, rec.Device.Name); got.Status.Reported == nil || got.Status.Reported.FirmwareVersion != "2" || got.Status.Phase == custodyv1alpha1.DevicePhaseDecommissioned {
		b, _ := json.Marshal(got.Status)
		t.Fatalf("device status after the gateway's writes: %s", b)
	}

	// Tenant users can neither read nor record proofs.
	newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: "proof-peeker", Role: custodyv1alpha1.TenantRoleAdmin})
	peeker := userClient(t, "proof-peeker")
	if err := peeker.List(ctx, &custodyv1alpha1.DeviceProofList{}, client.InNamespace(cp.OperatorNamespace)); !apierrors.IsForbidden(err) {
		t.Fatalf("a tenant admin listing proofs: %v, want Forbidden", err)
	}
}
