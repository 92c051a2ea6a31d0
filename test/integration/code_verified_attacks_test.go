package integration

// An outside review's attacks on status.codeVerified and on the webhooks'
// matchConditions, with raw inputs (JSON patches, server-side apply,
// forged objects).

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/controlplane"
	"github.com/custody-dev/custody/internal/webhooks"
)

// claimReconcileErrors is controller-runtime's count of the claim
// controller's failed reconciles.
func claimReconcileErrors(t *testing.T) float64 {
	t.Helper()
	return counterSum(t, "controller_runtime_reconcile_errors_total", "controller", "claim")
}

// refuseCodeVerifiedRecords makes the API server refuse every write of a
// Claim's status in ns that adds status.codeVerified (as it refuses any
// write while it is unreachable or overloaded), and waits until it does.
func refuseCodeVerifiedRecords(t *testing.T, ns string) (lift func()) {
	t.Helper()
	ctx := context.Background()
	lift = refuseByPolicy(t, "claims/status", fmt.Sprintf("object.metadata.namespace == %q", ns),
		"!has(object.status) || !has(object.status.codeVerified) || (has(oldObject.status) && has(oldObject.status.codeVerified))",
		"test: records of verified codes refused")

	// A Claim to probe the policy with (no Secret: it waits, unverified).
	probe := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("probe"), Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-NO-SUCH", Model: "XR200",
			ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "no-such-secret"}}},
	}
	if err := admin.Create(ctx, probe); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(map[string]any{"status": map[string]any{"codeVerified": custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.Now(), Verifier: fmt.Sprintf("%064x", 0)}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the admission policy to refuse codeVerified records", func() bool {
		err := admin.Status().Patch(ctx, probe, client.RawPatch(types.MergePatchType, raw), client.DryRunAll)
		return apierrors.IsInvalid(err) || apierrors.IsForbidden(err)
	})
	return lift
}

// TestRightCodeSurvivesWhenTheRecordIsRefusedToo: the take-back of
// a right code's attempt fails, and so does the write of
// status.codeVerified (an API server that refuses or cannot be reached
// refuses both: docs/security.md claims "the API server refuses or is
// unreachable" is handled). The rightful owner's Claim must not end Denied
// ("attempt spent"); once the API server accepts writes again, it binds.
//
// Found by review: the record was written once, and when that failed too
// the next reconcile denied the Claim for good. The manager now keeps the
// proof in memory until either write succeeds.
func TestRightCodeSurvivesWhenTheRecordIsRefusedToo(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDevice(t)
	if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), tn); err != nil {
		t.Fatal(err)
	}
	tn.Status.FailedClaimAttempts = 2
	if err := admin.Status().Update(ctx, tn); err != nil {
		t.Fatal(err)
	}
	liftTenant := refuseTenantReleases(t, tn.Name)
	liftClaim := refuseCodeVerifiedRecords(t, tn.Status.Namespace)

	base := claimReconcileErrors(t)
	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	got := &custodyv1alpha1.Claim{}
	// Wait until the manager has failed several times on the Claim (the
	// writes it needs are refused), or until it decided it.
	waitFor(t, "the claim to be decided or the manager to fail on it repeatedly", func() bool {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied || got.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
			return true
		}
		fresh := &custodyv1alpha1.Tenant{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(tn), fresh); err != nil {
			t.Fatal(err)
		}
		return claim.Counted(&fresh.Status, rec.Device.Name, cl.UID) && claimReconcileErrors(t)-base >= 5
	})
	if got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied || got.Status.Phase == custodyv1alpha1.ClaimPhaseBound {
		t.Fatalf("the rightful owner's claim was decided while neither the take-back nor the record could be written: %s: %s",
			got.Status.Phase, readyMessage(got))
	}
	liftClaim()
	liftTenant()
	got = waitPhaseOrDenied(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if got.Status.Phase != custodyv1alpha1.ClaimPhaseBound {
		t.Fatalf("the rightful owner's claim ended %s: %s", got.Status.Phase, readyMessage(got))
	}
}

// waitPhaseOrDenied waits until the Claim is want or Denied, and returns it.
func waitPhaseOrDenied(t *testing.T, cl *custodyv1alpha1.Claim, want custodyv1alpha1.ClaimPhase) *custodyv1alpha1.Claim {
	t.Helper()
	got := &custodyv1alpha1.Claim{}
	waitFor(t, fmt.Sprintf("claim %s to be %s or Denied", cl.Name, want), func() bool {
		if err := admin.Get(context.Background(), client.ObjectKeyFromObject(cl), got); err != nil {
			return false
		}
		return got.Status.Phase == want || got.Status.Phase == custodyv1alpha1.ClaimPhaseDenied
	})
	return got
}

// TestNoOneButTheManagerWritesCodeVerified: every way a tenant
// admin, the ERP or support staff can write a Claim (update, JSON patch,
// merge patch, server-side apply, of the object and of /status, create,
// re-create under the same name, impersonating the manager) leaves
// status.codeVerified unset. The Claim has no Secret at all, so a record
// that took effect would bind it without any code; it waits instead, and a
// wrong code is then denied.
func TestNoOneButTheManagerWritesCodeVerified(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tenantAdmin := uniq("forger")
	tn := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: tenantAdmin, Role: custodyv1alpha1.TenantRoleAdmin})
	ns := tn.Status.Namespace
	rec := newDevice(t)
	dev := getDevice(t, rec.Device.Name)
	// The record as the manager would write it (computed below, once the
	// Claim has its UID).
	record := map[string]any{"verifiedAt": "2026-01-01T00:00:00Z", "verifier": claim.CodeVerifiedDigest("", dev)}

	clients := map[string]client.Client{"tenant admin": userClient(t, tenantAdmin)}
	for role, user := range map[string]string{"custody-erp": uniq("erp"), "custody-support": uniq("support")} {
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("review3-" + role)},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: user}},
		}
		if err := admin.Create(ctx, crb); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Delete(ctx, crb) })
		clients[role] = userClient(t, user)
	}
	// The tenant admin may not act as the manager (impersonation): what
	// the webhook's matchConditions and isManager trust is the username.
	for _, attr := range []authorizationv1.ResourceAttributes{
		{Verb: "impersonate", Resource: "users", Name: controlplane.ManagerUsername},
		{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Name: "scopes"},
		{Verb: "impersonate", Resource: "serviceaccounts", Namespace: "custody-system", Name: "custody-manager"},
		{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: "custody-system", Name: "custody-manager"},
		{Verb: "patch", Group: custodyv1alpha1.GroupVersion.Group, Resource: "claims", Subresource: "status", Namespace: ns},
	} {
		r := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attr}}
		if err := clients["tenant admin"].Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed {
			t.Errorf("the tenant admin may %s %s/%s %s/%s", attr.Verb, attr.Resource, attr.Subresource, attr.Namespace, attr.Name)
		}
	}
	waitFor(t, "the tenant's roles to apply", func() bool {
		var l custodyv1alpha1.ClaimList
		return clients["tenant admin"].List(ctx, &l, client.InNamespace(ns)) == nil
	})
	secret := uniq("code")
	name := uniq("forged")
	newClaim := func() map[string]any {
		return map[string]any{
			"apiVersion": custodyv1alpha1.GroupVersion.String(), "kind": "Claim",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec": map[string]any{"serialNumber": rec.Device.Spec.SerialNumber, "model": rec.Device.Spec.Model,
				"claimCode": map[string]any{"secretRef": map[string]any{"name": secret}}},
			"status": map[string]any{"codeVerified": record},
		}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cl := &custodyv1alpha1.Claim{}
	cl.Name, cl.Namespace = name, ns
	// createForged creates the Claim, status and all, as the tenant admin.
	createForged := func() {
		t.Helper()
		raw := mustJSON(newClaim())
		obj := &custodyv1alpha1.Claim{}
		if err := json.Unmarshal(raw, obj); err != nil {
			t.Fatal(err)
		}
		if err := clients["tenant admin"].Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
		if obj.Status.CodeVerified != nil {
			t.Errorf("create kept status.codeVerified")
		}
		*cl = *obj
	}
	createForged()
	firstUID := cl.UID
	record["verifier"] = claim.CodeVerifiedDigest(cl.UID, dev)

	type write struct {
		what  string
		patch client.Patch
		sub   bool // the status subresource
	}
	apply := newClaim()
	writes := []write{
		{"merge patch", client.RawPatch(types.MergePatchType, mustJSON(map[string]any{"status": map[string]any{"codeVerified": record}})), false},
		{"JSON patch add /status", client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{{"op": "add", "path": "/status", "value": map[string]any{"codeVerified": record}}})), false},
		{"server-side apply", client.RawPatch(types.ApplyPatchType, mustJSON(apply)), false},
		{"merge patch", client.RawPatch(types.MergePatchType, mustJSON(map[string]any{"status": map[string]any{"codeVerified": record}})), true},
		{"JSON patch add /status/codeVerified", client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{{"op": "add", "path": "/status/codeVerified", "value": record}})), true},
		{"JSON patch add /status", client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{{"op": "add", "path": "/status", "value": map[string]any{"codeVerified": record}}})), true},
		{"server-side apply", client.RawPatch(types.ApplyPatchType, mustJSON(apply)), true},
	}
	check := func(who, what string) {
		t.Helper()
		got := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.CodeVerified != nil {
			t.Errorf("%s, %s: status.codeVerified is set: %+v", who, what, got.Status.CodeVerified)
		}
	}
	for who, c := range clients {
		for _, w := range writes {
			target := &custodyv1alpha1.Claim{}
			target.Name, target.Namespace = name, ns
			var err error
			opts := []client.SubResourcePatchOption{client.FieldOwner("forger")}
			if w.sub {
				if w.patch.Type() == types.ApplyPatchType {
					opts = append(opts, client.ForceOwnership)
				}
				err = c.Status().Patch(ctx, target, w.patch, opts...)
			} else {
				popts := []client.PatchOption{client.FieldOwner("forger")}
				if w.patch.Type() == types.ApplyPatchType {
					popts = append(popts, client.ForceOwnership)
				}
				err = c.Patch(ctx, target, w.patch, popts...)
			}
			where := "the object"
			if w.sub {
				where = "/status"
				if err == nil {
					t.Errorf("%s: %s of %s accepted", who, w.what, where)
				}
			}
			t.Logf("%s: %s of %s: %v", who, w.what, where, err)
			check(who, w.what+" of "+where)
		}
		// A full update carrying the record.
		obj := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), obj); err != nil {
			t.Fatal(err)
		}
		obj.Status.CodeVerified = &custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.Now(), Verifier: claim.CodeVerifiedDigest(obj.UID, dev)}
		err := c.Update(ctx, obj)
		t.Logf("%s: update: %v", who, err)
		check(who, "update")
		obj.ResourceVersion = ""
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), obj); err != nil {
			t.Fatal(err)
		}
		obj.Status.CodeVerified = &custodyv1alpha1.ClaimCodeVerification{VerifiedAt: metav1.Now(), Verifier: claim.CodeVerifiedDigest(obj.UID, dev)}
		if err := c.Status().Update(ctx, obj); err == nil {
			t.Errorf("%s: update of /status accepted", who)
		}
		check(who, "update of /status")
	}

	// Re-created under the same name, status and all.
	if err := clients["tenant admin"].Delete(ctx, cl); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the forged claim to go", func() bool {
		err := admin.Get(ctx, client.ObjectKeyFromObject(cl), &custodyv1alpha1.Claim{})
		return apierrors.IsNotFound(err)
	})
	createForged()
	if cl.UID == firstUID {
		t.Fatal("setup: not re-created")
	}
	check("tenant admin", "re-create")

	// Without any Secret, a record that took effect would bind the Claim.
	waitFor(t, "the claim to wait for its Secret", func() bool {
		got := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cl), got); err != nil {
			t.Fatal(err)
		}
		return readyReason(got) == custodyv1alpha1.ClaimReasonSecretNotFound
	})
	if boundTo(t, rec.Device.Name, cl.UID) {
		t.Fatal("bound without a code")
	}
	wrong := otherCode(t, rec.Code)
	if err := clients["tenant admin"].Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns}, StringData: map[string]string{"code": wrong.String()}}); err != nil {
		t.Fatal(err)
	}
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseDenied)
	if got.Status.CodeVerified != nil || boundTo(t, rec.Device.Name, cl.UID) {
		t.Fatalf("forged record took effect: %+v", got.Status)
	}
}

// TestDeviceStatusWritesCarryNothingButStatus: the Device webhook
// no longer sees status writes by anyone but the gateway. That is safe only
// if the API server keeps spec and metadata on every status write: a
// cluster admin's JSON patch, merge patch and server-side apply of
// /status that set spec.claimRef, labels, annotations and finalizers leave
// them as they were. The gateway, whose status writes still reach the
// webhook, may not write the object itself, nor carry spec on /status.
func TestDeviceStatusWritesCarryNothingButStatus(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	rec := newDevice(t)
	name := rec.Device.Name
	before := getDevice(t, name)
	ref := map[string]any{"tenant": "mallory", "namespace": "mallory", "name": "c", "uid": "u"}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	applied := map[string]any{
		"apiVersion": custodyv1alpha1.GroupVersion.String(), "kind": "Device",
		"metadata": map[string]any{"name": name, "labels": map[string]any{"forged": "yes"}, "annotations": map[string]any{"forged": "yes"}, "finalizers": []any{"forged.example/x"}},
		"spec":     map[string]any{"claimRef": ref, "decommissioned": true},
		"status":   map[string]any{"failedClaimAttempts": 7},
	}
	patches := map[string]client.Patch{
		"JSON patch of spec.claimRef": client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{
			{"op": "add", "path": "/spec/claimRef", "value": ref}, {"op": "replace", "path": "/status", "value": map[string]any{"failedClaimAttempts": 7}},
		})),
		"JSON patch of spec.decommissioned": client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{
			{"op": "add", "path": "/spec/decommissioned", "value": true}, {"op": "replace", "path": "/status", "value": map[string]any{"failedClaimAttempts": 7}},
		})),
		"JSON patch of labels, annotations, finalizers": client.RawPatch(types.JSONPatchType, mustJSON([]map[string]any{
			{"op": "add", "path": "/metadata/labels", "value": map[string]any{"forged": "yes"}},
			{"op": "add", "path": "/metadata/annotations", "value": map[string]any{"forged": "yes"}},
			{"op": "add", "path": "/metadata/finalizers", "value": []any{"forged.example/x"}},
			{"op": "replace", "path": "/status", "value": map[string]any{"failedClaimAttempts": 7}},
		})),
		"merge patch": client.RawPatch(types.MergePatchType, mustJSON(map[string]any{
			"metadata": applied["metadata"], "spec": applied["spec"], "status": applied["status"],
		})),
		"server-side apply": client.RawPatch(types.ApplyPatchType, mustJSON(applied)),
	}
	for what, p := range patches {
		target := &custodyv1alpha1.Device{}
		target.Name = name
		opts := []client.SubResourcePatchOption{client.FieldOwner("review3")}
		if p.Type() == types.ApplyPatchType {
			opts = append(opts, client.ForceOwnership)
		}
		err := admin.Status().Patch(ctx, target, p, opts...)
		if st, ok := err.(apierrors.APIStatus); ok {
			t.Logf("admin %s of /status: %v %+v", what, err, st.Status().Details)
		} else {
			t.Logf("admin %s of /status: %v", what, err)
		}
		d := getDevice(t, name)
		if d.Spec.ClaimRef != nil || d.Spec.Decommissioned || d.Labels["forged"] != "" || d.Annotations["forged"] != "" || len(d.Finalizers) != len(before.Finalizers) {
			t.Errorf("admin %s of /status changed spec or metadata: claimRef %+v, decommissioned %v, labels %v, annotations %v, finalizers %v",
				what, d.Spec.ClaimRef, d.Spec.Decommissioned, d.Labels, d.Annotations, d.Finalizers)
		}
	}

	// Back to no failed attempts, so that the gateway's writes below would
	// change status.
	if err := admin.Status().Patch(ctx, getDevice(t, name), client.RawPatch(types.MergePatchType, []byte(`{"status":{"failedClaimAttempts":0}}`))); err != nil {
		t.Fatal(err)
	}
	gcfg, err := cp.AddUser(controlplane.GatewayUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := client.New(gcfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	for what, p := range patches {
		target := &custodyv1alpha1.Device{}
		target.Name = name
		popts := []client.PatchOption{client.FieldOwner("review3-gw")}
		sopts := []client.SubResourcePatchOption{client.FieldOwner("review3-gw")}
		if p.Type() == types.ApplyPatchType {
			popts = append(popts, client.ForceOwnership)
			sopts = append(sopts, client.ForceOwnership)
		}
		if err := gw.Patch(ctx, target, p, popts...); err == nil {
			t.Errorf("the gateway's %s of the Device itself was accepted", what)
		}
		if err := gw.Status().Patch(ctx, target, p, sopts...); err == nil {
			t.Errorf("the gateway's %s of /status (more than a heartbeat) was accepted", what)
		}
		d := getDevice(t, name)
		if d.Spec.ClaimRef != nil || d.Spec.Decommissioned || d.Labels["forged"] != "" || d.Status.FailedClaimAttempts == 7 {
			t.Errorf("the gateway's %s changed the Device", what)
		}
	}
	// DELETE of a bound Device still reaches the webhook: covered by the
	// ValidateDelete tests; the conditions do not name DELETE.
}

// TestEveryConfiguredGatewayIsHeldToHeartbeats: --gateway-usernames
// takes a list (a second gateway Deployment, or an installation under
// other names). The webhook holds every gateway it names to heartbeats;
// the matchConditions name only custody-system/custody-gateway, so the
// status writes of any other gateway no longer reach the webhook.
// docs/operations.md says an installation under other names is "slower,
// never weaker".
//
// Found by review: a first version spared the webhook every status write
// but the default gateway's, so a second gateway rewrote the Device's
// phase and failed-attempt count through /status. Only the manager's
// updates skip the webhook now.
func TestEveryConfiguredGatewayIsHeldToHeartbeats(t *testing.T) {
	const otherGateway = "system:serviceaccount:edge:custody-gateway-eu"
	startManagerWebhooks(t, cp, webhooks.Options{
		ManagerUsernames: []string{controlplane.ManagerUsername},
		GatewayUsernames: []string{controlplane.GatewayUsername, otherGateway},
	})
	ctx := context.Background()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("review3-gateway-eu")},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-gateway"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: otherGateway}},
	}
	if err := admin.Create(ctx, crb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Delete(ctx, crb) })
	rec := newDevice(t)
	name := rec.Device.Name
	for _, user := range []string{controlplane.GatewayUsername, otherGateway} {
		cfg, err := cp.AddUser(user, "system:serviceaccounts", "system:authenticated")
		if err != nil {
			t.Fatal(err)
		}
		gw, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
		if err != nil {
			t.Fatal(err)
		}
		var err2 error
		waitFor(t, user+"'s roles to apply", func() bool {
			d := getDevice(t, name)
			before := d.DeepCopy()
			d.Status.FailedClaimAttempts = 9
			d.Status.Phase = custodyv1alpha1.DevicePhaseDecommissioned
			err2 = gw.Status().Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
			return !apierrors.IsForbidden(err2) && !apierrors.IsConflict(err2)
		})
		if !apierrors.IsInvalid(err2) || !strings.Contains(err2.Error(), "the gateway may only record heartbeats") {
			d := getDevice(t, name)
			t.Errorf("gateway %s changed more than a heartbeat (%v): phase %s, failed attempts %d", user, err2, d.Status.Phase, d.Status.FailedClaimAttempts)
		}
	}
}

// TestARecordIsNotABearerToken: status.codeVerified is the SHA-256
// of the Device's UID and claim-code verifier, both readable by anyone who
// may read Devices (the ERP, support staff); it names neither the Claim
// nor its tenant. Anyone granted the status subresource of Claims (a
// status-reporting tool, a backup tool that restores status) but not the
// manager's identity should still not be able to bind a device without
// its code. Here a user who may only read Devices and patch claims/status
// in one tenant's namespace writes the digest onto a Claim with a wrong
// code.
//
// Found by review: the record was a digest of public data, honoured
// whoever wrote it. It now names the Claim's UID too, and the Claim
// webhook refuses it from anyone but the manager.
func TestARecordIsNotABearerToken(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	ns := tn.Status.Namespace
	rec := newDevice(t)
	user := uniq("status-writer")
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("review3-claim-status")},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{custodyv1alpha1.GroupVersion.Group}, Resources: []string{"devices"}, Verbs: []string{"get"}},
			{APIGroups: []string{custodyv1alpha1.GroupVersion.Group}, Resources: []string{"claims/status"}, Verbs: []string{"patch"}},
		},
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: user}},
	}
	for _, o := range []client.Object{role, crb} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Delete(ctx, o) })
	}
	c := userClient(t, user)
	// The tenant's Claim with a wrong code; no reconcile has verified it
	// yet when the record lands (its Secret comes after).
	wrong := otherCode(t, rec.Code)
	secret := uniq("wrong")
	cl := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("bearer"), Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model,
			ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: secret}}},
	}
	if err := admin.Create(ctx, cl); err != nil {
		t.Fatal(err)
	}
	var dev custodyv1alpha1.Device
	waitFor(t, "the status writer's roles to apply", func() bool {
		return c.Get(ctx, client.ObjectKey{Name: rec.Device.Name}, &dev) == nil
	})
	raw, err := json.Marshal(map[string]any{"status": map[string]any{"codeVerified": custodyv1alpha1.ClaimCodeVerification{
		VerifiedAt: metav1.Now(), Verifier: claim.CodeVerifiedDigest(cl.UID, &dev)}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Status().Patch(ctx, cl, client.RawPatch(types.MergePatchType, raw)); err != nil {
		t.Logf("the status writer's record was refused: %v", err)
	}
	if err := admin.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns}, StringData: map[string]string{"code": wrong.String()}}); err != nil {
		t.Fatal(err)
	}
	got := waitPhaseOrDenied(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if got.Status.Phase == custodyv1alpha1.ClaimPhaseBound || boundTo(t, rec.Device.Name, cl.UID) {
		t.Fatalf("a record written by %s (not the manager) bound the device with a wrong code: %s", user, readyMessage(got))
	}
}
