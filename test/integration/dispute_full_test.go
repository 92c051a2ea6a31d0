package integration

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
)

// TestFullDisputeRefusesTheNinthClaim: a dispute holds MaxDisputeClaims
// claims. The next valid claim is not added: it is Denied with reason
// DisputeFull, and after support staff resolve the dispute it still says
// exactly that, never that it lost a dispute it was not in.
func TestFullDisputeRefusesTheNinthClaim(t *testing.T) {
	startManager(t, coolingOff)
	ctx := context.Background()
	rec, code := releasedByCustodian(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name

	var parties []*custodyv1alpha1.Claim
	for i := range claim.MaxDisputeClaims {
		tn := newTenant(t)
		want := custodyv1alpha1.ClaimPhaseDisputed
		if i == 0 {
			want = custodyv1alpha1.ClaimPhaseCoolingOff
		}
		parties = append(parties, waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, serial, model, code), want))
	}
	late := newTenant(t)
	ninth := waitPhase(t, claimWithCode(t, admin, late.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseDenied)
	assertDisputeFull := func(when string) {
		t.Helper()
		got := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, clientKey(ninth), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != custodyv1alpha1.ClaimPhaseDenied || readyReason(got) != custodyv1alpha1.ClaimReasonDisputeFull || readyMessage(got) != claim.MsgDisputeFull {
			t.Fatalf("%s: the ninth claim says %s/%s %q", when, got.Status.Phase, readyReason(got), readyMessage(got))
		}
	}
	assertDisputeFull("while the dispute is open")
	d := getDevice(t, name)
	if d.Spec.Dispute == nil || len(d.Spec.Dispute.Claims) != claim.MaxDisputeClaims || claim.InDispute(d, ninth.UID) {
		t.Fatalf("dispute %+v: want the %d first claims and not the ninth", d.Spec.Dispute, claim.MaxDisputeClaims)
	}

	// Support staff award the device to the first claim.
	bindSupport(t, "sam@support.example")
	act := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("award")}, Spec: custodyv1alpha1.SupportActionSpec{
		DeviceName: name, Action: custodyv1alpha1.SupportActionAward, Claim: &custodyv1alpha1.ClaimReference{Namespace: parties[0].Namespace, Name: parties[0].Name},
		Reason: "TICKET-4713: the first claimant showed the invoice"}}
	if err := userClient(t, "sam@support.example").Create(ctx, act); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, parties[0], custodyv1alpha1.ClaimPhaseBound)
	for _, c := range parties[1:] {
		if lost := waitPhase(t, c, custodyv1alpha1.ClaimPhaseDenied); readyReason(lost) != custodyv1alpha1.ClaimReasonDisputeLost {
			t.Fatalf("party %s says %s", c.Name, readyReason(lost))
		}
	}
	// The ninth claim is looked at again, after the resolution.
	touchClaim(t, ninth)
	time.Sleep(300 * time.Millisecond) // let a wrong answer be written, if it would
	assertDisputeFull("after the award")

	// It was told once, and only that.
	var events corev1.EventList
	if err := admin.List(ctx, &events, client.InNamespace(ninth.Namespace)); err != nil {
		t.Fatal(err)
	}
	full := 0
	for _, e := range events.Items {
		if e.InvolvedObject.UID != ninth.UID {
			continue
		}
		switch e.Reason {
		case custodyv1alpha1.ClaimReasonDisputeFull:
			full++
		case custodyv1alpha1.ClaimReasonDisputeLost, custodyv1alpha1.ClaimReasonDisputed:
			t.Fatalf("the ninth claim got a %s Event: %q", e.Reason, e.Message)
		}
	}
	if full != 1 {
		t.Fatalf("the ninth claim got %d DisputeFull Events, want 1", full)
	}
	assertChain(t, name)
}
