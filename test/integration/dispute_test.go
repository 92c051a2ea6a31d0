package integration

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/custody"
	"github.com/custody-dev/custody/internal/factory"
)

// coolingOff is the operator policy of these tests: a claim by code alone
// waits three days; code and possession bind at once.
func coolingOff(o *controllers.Options) {
	o.ClaimPolicy = claim.DefaultPolicy
	o.ClaimPolicy.CoolingOff = 72 * time.Hour
	o.ClaimPolicy.ImmediateProof = custodyv1alpha1.RequiredProofCodeAndPossession
}

// releasedByCustodian sells a device to a custodian, which takes it and
// releases it for claiming with a fresh code: the code its customer gets,
// and the one a photograph of the new label would give a stranger.
func releasedByCustodian(t *testing.T) (*factory.Record, string) {
	t.Helper()
	wholesale := newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	take := waitPhase(t, proofClaim(t, admin, wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseBound)
	tr := release(t, take, true)
	return rec, string(readSecret(t, wholesale.Status.Namespace, tr.Status.ClaimCodeSecretName).Data["code"])
}

// touchClaim makes the manager look at a Claim again after its clock moved.
func touchClaim(t *testing.T, cl *custodyv1alpha1.Claim) {
	t.Helper()
	touch(t, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Namespace: cl.Namespace, Name: cl.Name}})
}

// TestCoolingOffBindsWhenUncontested: a claim weaker than policy wants
// waits out the cooling-off period, then binds.
func TestCoolingOffBindsWhenUncontested(t *testing.T) {
	m := startManager(t, coolingOff)
	acme := newTenant(t)
	rec, code := releasedByCustodian(t)
	name := rec.Device.Name

	cl := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, code), custodyv1alpha1.ClaimPhaseCoolingOff)
	want := metav1.NewTime(m.Clock.Now().Add(72 * time.Hour))
	if cl.Status.CoolingOffUntil == nil || !cl.Status.CoolingOffUntil.Equal(&want) {
		t.Fatalf("coolingOffUntil %v, want %v", cl.Status.CoolingOffUntil, want)
	}
	d := getDevice(t, name)
	if d.Spec.ClaimRef != nil || d.Spec.PendingClaim == nil || d.Spec.PendingClaim.UID != cl.UID {
		t.Fatalf("device while cooling off: claimRef %v, pending %v", d.Spec.ClaimRef, d.Spec.PendingClaim)
	}
	waitFor(t, "the device to say Pending", func() bool { return getDevice(t, name).Status.Phase == custodyv1alpha1.DevicePhasePending })
	if e := lastEntry(t, name, custodyv1alpha1.CustodyEventClaimed); e.Tenant != acme.Name || e.Proof != claim.ProofCode {
		t.Fatalf("cooling-off recorded as %+v", e)
	}

	// Not a moment early.
	m.Clock.Step(72*time.Hour - time.Minute)
	touchClaim(t, cl)
	time.Sleep(300 * time.Millisecond) // let a wrong binding happen, if it would
	if getDevice(t, name).Spec.ClaimRef != nil {
		t.Fatal("bound before the cooling-off period ended")
	}
	m.Clock.Step(time.Minute)
	touchClaim(t, cl)
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if !boundTo(t, name, cl.UID) || getDevice(t, name).Spec.PendingClaim != nil {
		t.Fatal("the uncontested claim did not bind")
	}
	assertChain(t, name)
}

// TestStrangerRacingTheCustomerIsADispute: after the custodian's release, a
// stranger holding the photographed code races the real customer. Under a
// cooling-off policy this is a dispute, never a binding for the stranger;
// support staff award the device to the customer, recorded with who and why.
func TestStrangerRacingTheCustomerIsADispute(t *testing.T) {
	m := startManager(t, coolingOff)
	customer, stranger := newTenant(t), newTenant(t)
	rec, code := releasedByCustodian(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name

	mine := waitPhase(t, claimWithCode(t, admin, customer.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseCoolingOff)
	theirs := waitPhase(t, claimWithCode(t, admin, stranger.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseDisputed)
	mine = waitPhase(t, mine, custodyv1alpha1.ClaimPhaseDisputed)
	for _, c := range []*custodyv1alpha1.Claim{mine, theirs} {
		if readyReason(c) != custodyv1alpha1.ClaimReasonDisputed {
			t.Fatalf("claim %s: reason %s, want %s", c.Name, readyReason(c), custodyv1alpha1.ClaimReasonDisputed)
		}
	}
	d := getDevice(t, name)
	if d.Spec.ClaimRef != nil || d.Spec.PendingClaim != nil || d.Spec.Dispute == nil || len(d.Spec.Dispute.Claims) != 2 {
		t.Fatalf("device in dispute: claimRef %v pending %v dispute %+v", d.Spec.ClaimRef, d.Spec.PendingClaim, d.Spec.Dispute)
	}
	waitFor(t, "the device to say Disputed", func() bool { return getDevice(t, name).Status.Phase == custodyv1alpha1.DevicePhaseDisputed })
	if e := lastEntry(t, name, custodyv1alpha1.CustodyEventDisputed); e.Tenant != stranger.Name {
		t.Fatalf("dispute recorded as %+v", e)
	}

	// The cooling-off period passing settles nothing.
	m.Clock.Step(100 * time.Hour)
	touchClaim(t, mine)
	touchClaim(t, theirs)
	time.Sleep(300 * time.Millisecond)
	if getDevice(t, name).Spec.ClaimRef != nil {
		t.Fatal("a disputed device was bound without support staff")
	}
	// No certificate is requested for a disputed device.
	if n := countRequests(t, name); n != 0 {
		t.Fatalf("%d CertificateRequests for a disputed device", n)
	}

	// Tenants cannot resolve their own dispute; support staff can.
	act := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("award")}, Spec: custodyv1alpha1.SupportActionSpec{
		DeviceName: name, Action: custodyv1alpha1.SupportActionAward, Claim: &custodyv1alpha1.ClaimReference{Namespace: mine.Namespace, Name: mine.Name},
		Reason: "TICKET-4711: the customer showed the invoice and the device's installation photo", RequestedBy: "someone-else",
	}}
	if err := userClient(t, "alice@"+customer.Name).Create(context.Background(), act.DeepCopy()); err == nil {
		t.Fatal("a tenant user created a SupportAction")
	}
	support := userClient(t, "sam@support.example")
	bindSupport(t, "sam@support.example")
	if err := support.Create(context.Background(), act); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, mine, custodyv1alpha1.ClaimPhaseBound)
	lost := waitPhase(t, theirs, custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(lost) != custodyv1alpha1.ClaimReasonDisputeLost {
		t.Fatalf("the losing claim says %s", readyReason(lost))
	}
	got := &custodyv1alpha1.SupportAction{}
	waitFor(t, "the award to succeed", func() bool {
		return admin.Get(context.Background(), client.ObjectKeyFromObject(act), got) == nil && got.Status.Phase == custodyv1alpha1.SupportActionSucceeded
	})
	if got.Spec.RequestedBy != "sam@support.example" {
		t.Fatalf("requestedBy %q: the webhook must record the real requester", got.Spec.RequestedBy)
	}
	d = getDevice(t, name)
	if d.Spec.Dispute != nil || !boundTo(t, name, mine.UID) {
		t.Fatal("the award did not settle the dispute")
	}
	// One change, one entry: the award binds the customer's Claim, by
	// support staff, for the reason given.
	res := entries(d, custodyv1alpha1.CustodyEventResolved)
	if len(res) != 1 || res[0].Actor != "user:sam@support.example" || res[0].Reason != act.Spec.Reason || res[0].Tenant != customer.Name || res[0].Reference != "supportaction/"+act.Name ||
		res[0].Proof != custody.ProofAward || res[0].ClaimUID != mine.UID || res[0].Claim != mine.Namespace+"/"+mine.Name {
		t.Fatalf("resolution recorded as %+v", res)
	}
	for _, h := range d.Status.History[len(d.Status.History)-1:] {
		if h.Type != custodyv1alpha1.CustodyEventResolved {
			t.Fatalf("the award was followed by another entry: %+v", d.Status.History)
		}
	}
	assertChain(t, name)
}

// TestSupportResetEndsEverything: a reset ends cooling-off and uses up the
// code; the claim that waited is told, and the code never binds again.
func TestSupportResetEndsEverything(t *testing.T) {
	startManager(t, coolingOff)
	acme := newTenant(t)
	rec, code := releasedByCustodian(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	cl := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseCoolingOff)

	bindSupport(t, "sam@support.example")
	act := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("reset")}, Spec: custodyv1alpha1.SupportActionSpec{
		DeviceName: name, Action: custodyv1alpha1.SupportActionReset, Reason: "TICKET-4712: label reported stolen in transit"}}
	if err := userClient(t, "sam@support.example").Create(context.Background(), act); err != nil {
		t.Fatal(err)
	}
	denied := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(denied) != custodyv1alpha1.ClaimReasonDisputeLost {
		t.Fatalf("the waiting claim says %s", readyReason(denied))
	}
	d := getDevice(t, name)
	if d.Spec.PendingClaim != nil || d.Spec.ClaimRef != nil || !claim.Consumed(d, d.Spec.ClaimCode.Verifier) {
		t.Fatal("the reset left a claim or a usable code")
	}
	again := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(again) != custodyv1alpha1.ClaimReasonClaimCodeUsed {
		t.Fatalf("the code after a reset got %s", readyReason(again))
	}
	assertChain(t, name)
}
