package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
)

// refuseByPolicy makes the API server refuse, with a
// ValidatingAdmissionPolicy, every UPDATE of resource (with its
// subresource, "tenants/status") that matches the CEL condition match and
// fails the CEL validation must; it returns a function that lifts the
// refusal (also run at cleanup). The API server applies a policy only once
// its informers have it: the caller waits for a probe to be refused.
func refuseByPolicy(t *testing.T, resource, match, must, message string) (lift func()) {
	t.Helper()
	ctx := context.Background()
	name := uniq("refuse")
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{custodyv1alpha1.GroupVersion.Group}, APIVersions: []string{"*"}, Resources: []string{resource}},
				},
			}}},
			MatchConditions: []admissionv1.MatchCondition{{Name: "this-test", Expression: match}},
			Validations:     []admissionv1.Validation{{Expression: must, Message: message}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	lift = func() {
		_ = admin.Delete(ctx, binding)
		_ = admin.Delete(ctx, policy)
	}
	t.Cleanup(lift)
	return lift
}

// refuseTenantReleases makes the API server refuse every write of
// tenant's status that lowers its failed-attempt count: the manager can
// count a claim attempt but not take one back. It returns a function that
// lifts the refusal.
func refuseTenantReleases(t *testing.T, tenant string) (lift func()) {
	t.Helper()
	ctx := context.Background()
	lift = refuseByPolicy(t, "tenants/status", fmt.Sprintf("object.metadata.name == %q", tenant),
		"!has(oldObject.status.failedClaimAttempts) || (has(object.status.failedClaimAttempts) && object.status.failedClaimAttempts >= oldObject.status.failedClaimAttempts)",
		"test: releases of claim attempts refused")

	// The API server applies a policy once its informers have it: wait
	// until a dry run that lowers the count is refused.
	tn := &custodyv1alpha1.Tenant{}
	if err := admin.Get(ctx, client.ObjectKey{Name: tenant}, tn); err != nil {
		t.Fatal(err)
	}
	if tn.Status.FailedClaimAttempts == 0 {
		t.Fatal("the tenant needs a failed attempt to probe the policy with")
	}
	waitFor(t, "the admission policy to refuse releases", func() bool {
		probe := tn.DeepCopy()
		probe.Status.FailedClaimAttempts--
		err := admin.Status().Update(ctx, probe, client.DryRunAll)
		return apierrors.IsInvalid(err) || apierrors.IsForbidden(err)
	})
	return lift
}

// TestRightCodeSurvivesAFailedRelease: the manager counts a claim attempt
// on the Tenant before it verifies the code, and takes the attempt back
// when the code is right. When the Tenant cannot be written at that moment
// (here the API server refuses it), the rightful owner's Claim must not
// end "attempt spent": the manager records on the Claim that the code was
// right, and once the Tenant can be written again takes the attempt back
// and binds, without counting or verifying the code again.
func TestRightCodeSurvivesAFailedRelease(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDevice(t)

	// Two failed attempts of the past, on another device: the count the
	// policy is probed with, and that must be what remains at the end.
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tn); err != nil {
		t.Fatal(err)
	}
	tn.Status.FailedClaimAttempts = 2
	if err := admin.Status().Update(ctx, tn); err != nil {
		t.Fatal(err)
	}
	lift := refuseTenantReleases(t, tn.Name)

	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	got := &custodyv1alpha1.Claim{}
	waitFor(t, "the manager to record that the code is right", func() bool {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied || got.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
			t.Fatalf("claim decided while its attempt could not be taken back: %s: %s", got.Status.Phase, readyMessage(got))
		}
		return got.Status.CodeVerified != nil
	})
	dev := getDevice(t, rec.Device.Name)
	if got.Status.CodeVerified.Verifier != claim.CodeVerifiedDigest(cl.UID, dev) {
		t.Fatalf("recorded verifier %s, want the digest of device %s", got.Status.CodeVerified.Verifier, dev.UID)
	}
	// The attempt is still counted: the write that takes it back is refused.
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tn); err != nil {
		t.Fatal(err)
	}
	if !claim.Counted(&tn.Status, rec.Device.Name, cl.UID) || tn.Status.FailedClaimAttempts != 3 {
		t.Fatalf("tenant status %+v: want the claim's attempt counted (3 failed attempts)", tn.Status)
	}

	// The Secret goes away meanwhile: the proof does not need the code again.
	if err := admin.Delete(ctx, readSecret(t, tn.Status.Namespace, cl.Spec.ClaimCode.SecretRef.Name)); err != nil {
		t.Fatal(err)
	}
	lift()
	got = waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if !boundTo(t, rec.Device.Name, cl.UID) {
		t.Fatal("the device is not bound to the claim")
	}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tn); err != nil {
		t.Fatal(err)
	}
	if claim.Counted(&tn.Status, rec.Device.Name, cl.UID) || tn.Status.FailedClaimAttempts != 2 {
		t.Fatalf("tenant status %+v: want the attempt taken back (2 failed attempts)", tn.Status)
	}
	if dev := getDevice(t, rec.Device.Name); dev.Status.FailedClaimAttempts != 0 {
		t.Fatalf("device counts %d failed attempts, want 0", dev.Status.FailedClaimAttempts)
	}
}

// TestCodeVerifiedCannotBeForged: status.codeVerified lets a Claim skip
// verification, so no tenant user can set it: the API server drops the
// status of a Claim on create, and the user may not write the status
// subresource. A wrong code with a forged record is denied like any other.
func TestCodeVerifiedCannotBeForged(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	user := uniq("forger")
	tn := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: user, Role: custodyv1alpha1.TenantRoleAdmin})
	rec := newDevice(t)
	// The forger even knows the device's UID and verifier (it does not,
	// but the record must not rely on that).
	dev := getDevice(t, rec.Device.Name)
	forged := &custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.Now(), Verifier: claim.CodeVerifiedDigest("", dev)}
	c := userClient(t, user)
	waitFor(t, "the tenant's roles to apply", func() bool {
		var l custodyv1alpha1.ClaimList
		return c.List(ctx, &l, client.InNamespace(tn.Status.Namespace)) == nil
	})
	wrong := otherCode(t, rec.Code)
	secret := uniq("forged-code")
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: tn.Status.Namespace}, StringData: map[string]string{"code": wrong.String()}}); err != nil {
		t.Fatal(err)
	}
	cl := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("forged"), Namespace: tn.Status.Namespace},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model,
			ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: secret}}},
		Status: custodyv1alpha1.ClaimStatus{CodeVerified: forged},
	}
	if err := c.Create(ctx, cl); err != nil {
		t.Fatal(err)
	}
	if cl.Status.CodeVerified != nil {
		t.Fatal("the API server kept a status.codeVerified set on create")
	}
	forged.Verifier = claim.CodeVerifiedDigest(cl.UID, dev)
	raw, err := json.Marshal(map[string]any{"status": map[string]any{"codeVerified": forged}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Status().Patch(ctx, cl, client.RawPatch(types.MergePatchType, raw)); !apierrors.IsForbidden(err) {
		t.Fatalf("a tenant user patched status.codeVerified: %v", err)
	}
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseDenied)
	if got.Status.CodeVerified != nil || boundTo(t, rec.Device.Name, cl.UID) {
		t.Fatalf("forged record took effect: %+v", got.Status)
	}
}
