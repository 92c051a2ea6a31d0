package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestClaimByCode: the right code binds both sides exactly once, consumes
// the code, and records the change; the code appears nowhere.
func TestClaimByCode(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDevice(t)
	d := rec.Device

	cl := claimWithCode(t, admin, tn.Status.Namespace, d.Spec.SerialNumber, d.Spec.Model, strings.ToLower(rec.Code.String()))
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if got.Status.DeviceName != d.Name || got.Status.BoundAt == nil {
		t.Fatalf("claim status does not name the device: %+v", got.Status)
	}
	dev := getDevice(t, d.Name)
	ref := dev.Spec.ClaimRef
	if ref == nil || ref.Tenant != tn.Name || ref.Namespace != tn.Status.Namespace || ref.Name != cl.Name || ref.UID != got.UID {
		t.Fatalf("device binding is %+v", ref)
	}
	if len(dev.Spec.ConsumedClaimCodes) != 1 {
		t.Fatalf("the code was not recorded as consumed: %v", dev.Spec.ConsumedClaimCodes)
	}
	waitFor(t, "the history entry", func() bool {
		dev = getDevice(t, d.Name)
		return len(dev.Status.History) == 1 && dev.Status.Phase == custodyv1alpha1.DevicePhaseBound
	})
	if h := dev.Status.History[0]; h.Type != custodyv1alpha1.CustodyEventBound || h.Tenant != tn.Name || h.ClaimUID != got.UID || h.Proof != "ClaimCode" {
		t.Fatalf("history entry %+v", h)
	}
	// The Secret holding the code is gone: a code binds once.
	waitFor(t, "the code Secret to be deleted", func() bool {
		err := admin.Get(ctx, client.ObjectKey{Namespace: cl.Namespace, Name: cl.Spec.ClaimCode.SecretRef.Name}, &corev1.Secret{})
		return apierrors.IsNotFound(err)
	})

	// Releasing and claiming again with the same code does not work.
	rel := &custodyv1alpha1.Claim{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), rel); err != nil {
		t.Fatal(err)
	}
	rel.Spec.ReleasePolicy = custodyv1alpha1.ReleasePolicyRelease
	if err := admin.Update(ctx, rel); err != nil {
		t.Fatal(err)
	}
	if err := admin.Delete(ctx, rel); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device to be released", func() bool {
		dev = getDevice(t, d.Name)
		return dev.Spec.ClaimRef == nil && dev.Status.Phase == custodyv1alpha1.DevicePhaseReleased
	})
	again := claimWithCode(t, admin, tn.Status.Namespace, d.Spec.SerialNumber, d.Spec.Model, rec.Code.String())
	denied := waitPhase(t, again, custodyv1alpha1.ClaimPhaseDenied)
	if r := readyReason(denied); r != custodyv1alpha1.ClaimReasonClaimCodeUsed {
		t.Fatalf("reusing a consumed code: reason %s", r)
	}
	assertNoCodeAnywhere(t, string(rec.Code), rec.Code.String())
}

// TestWrongCodeAndUnknownSerialLookAlike: the Claim status and Events of a
// wrong code and of an unknown serial are byte-identical.
func TestWrongCodeAndUnknownSerialLookAlike(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDevice(t)
	wrong := otherCode(t, rec.Code)

	a := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, wrong.String())
	b := claimWithCode(t, admin, tn.Status.Namespace, "SN-DOES-NOT-EXIST", rec.Device.Spec.Model, wrong.String())
	ga := waitPhase(t, a, custodyv1alpha1.ClaimPhaseDenied)
	gb := waitPhase(t, b, custodyv1alpha1.ClaimPhaseDenied)
	sa, _ := json.Marshal(ga.Status)
	sb, _ := json.Marshal(gb.Status)
	if string(sa) != string(sb) {
		t.Fatalf("statuses differ:\nwrong code:     %s\nunknown serial: %s", sa, sb)
	}
	ea := waitEvents(t, ga, 1)
	eb := waitEvents(t, gb, 1)
	if ea != eb {
		t.Fatalf("events differ:\nwrong code:     %s\nunknown serial: %s", ea, eb)
	}
	// Both count against the tenant alike.
	tenant := &custodyv1alpha1.Tenant{}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tenant); err != nil {
		t.Fatal(err)
	}
	if tenant.Status.FailedClaimAttempts != 2 || len(tenant.Status.ClaimThrottles) != 2 {
		t.Fatalf("tenant bookkeeping: %d failures, %d entries", tenant.Status.FailedClaimAttempts, len(tenant.Status.ClaimThrottles))
	}
	for _, e := range tenant.Status.ClaimThrottles {
		if e.Failures != 1 {
			t.Fatalf("entry %s counted %d failures", e.DeviceName, e.Failures)
		}
	}
	assertNoCodeAnywhere(t, string(wrong), wrong.String(), string(rec.Code), rec.Code.String())
}

func readyReason(c *custodyv1alpha1.Claim) string {
	for _, cond := range c.Status.Conditions {
		if cond.Type == custodyv1alpha1.ConditionReady {
			return cond.Reason
		}
	}
	return ""
}

// waitEvents waits for n Events about obj and returns their type, reason
// and message, one per line, in order.
func waitEvents(t *testing.T, obj client.Object, n int) string {
	t.Helper()
	var out string
	waitFor(t, "events for "+obj.GetName(), func() bool {
		var list corev1.EventList
		if err := admin.List(context.Background(), &list, client.InNamespace(obj.GetNamespace())); err != nil {
			return false
		}
		var lines []string
		for _, e := range list.Items {
			if e.InvolvedObject.UID == obj.GetUID() {
				lines = append(lines, e.Type+" "+e.Reason+" "+e.Message)
			}
		}
		out = strings.Join(lines, "\n")
		return len(lines) >= n
	})
	return out
}

// assertNoCodeAnywhere fails if any of the codes appears in any Claim,
// Device or Tenant (spec or status), any Event, or any manager log line.
func assertNoCodeAnywhere(t *testing.T, codes ...string) {
	t.Helper()
	ctx := context.Background()
	var haystacks []string
	var claims custodyv1alpha1.ClaimList
	var devices custodyv1alpha1.DeviceList
	var tenants custodyv1alpha1.TenantList
	var events corev1.EventList
	for _, l := range []client.ObjectList{&claims, &devices, &tenants, &events} {
		if err := admin.List(ctx, l); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(l)
		haystacks = append(haystacks, string(b))
	}
	haystacks = append(haystacks, logs.String())
	for _, h := range haystacks {
		upper := strings.ToUpper(h)
		for _, c := range codes {
			if strings.Contains(upper, strings.ToUpper(c)) {
				t.Fatalf("a claim code appears in plain text in a status, Event or log line")
			}
		}
	}
}
