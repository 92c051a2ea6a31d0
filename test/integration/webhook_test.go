package integration

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/factory"
)

// TestDeviceWebhook: identity is immutable, the binding is the manager's
// alone (even for a cluster admin), and only real P-256/Ed25519 keys are
// accepted.
func TestDeviceWebhook(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	rec := newDevice(t)
	other, err := factory.Manufacture("XR200", "SN-OTHER")
	if err != nil {
		t.Fatal(err)
	}

	for name, tc := range map[string]struct {
		mutate func(*custodyv1alpha1.Device)
		want   string
	}{
		"identity key": {func(d *custodyv1alpha1.Device) { d.Spec.Identity.PublicKey = other.Device.Spec.Identity.PublicKey }, "identity is immutable"},
		"serial":       {func(d *custodyv1alpha1.Device) { d.Spec.SerialNumber = "SN-NEW" }, "serialNumber and model are immutable"},
		"binding": {func(d *custodyv1alpha1.Device) {
			d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "t", Namespace: "t", Name: "c", UID: "u"}
		}, "only the Custody manager changes a device's binding"},
		"consumed codes": {func(d *custodyv1alpha1.Device) { d.Spec.ConsumedClaimCodes = []string{"sha256:00"} }, "only the Custody manager records consumed claim codes"},
	} {
		err := updateDevice(admin, rec.Device.Name, tc.mutate)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: admin update error = %v, want it to say %q", name, err, tc.want)
		}
	}

	// Creating a pre-bound device, or one with a bad key, is refused.
	bad := newDeviceRecord(t).Device
	bad.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: "t", Namespace: "t", Name: "c", UID: "u"}
	if err := admin.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "only the Custody manager binds devices") {
		t.Errorf("pre-bound device: %v", err)
	}
	rsa := newDeviceRecord(t).Device
	rsa.Spec.Identity.PublicKey = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
	if err := admin.Create(ctx, rsa); err == nil || !apierrors.IsInvalid(err) {
		t.Errorf("garbled key accepted: %v", err)
	}

	// A bound device cannot be deleted.
	tn := newTenant(t)
	cl := claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if err := admin.Delete(ctx, getDevice(t, rec.Device.Name)); err == nil || !strings.Contains(err.Error(), "release it before deleting it") {
		t.Errorf("deleting a bound device: %v", err)
	}
}

// TestClaimWebhookRejectsPlaintextCodes: a claim code anywhere in a Claim is
// rejected, and the rejection does not echo it.
func TestClaimWebhookRejectsPlaintextCodes(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t)
	rec := newDeviceRecord(t)
	code := rec.Code
	base := func() *custodyv1alpha1.Claim {
		return &custodyv1alpha1.Claim{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("plain"), Namespace: tn.Status.Namespace},
			Spec: custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: "XR200",
				ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "code"}}},
		}
	}
	for name, mutate := range map[string]func(*custodyv1alpha1.Claim){
		"annotation value":      func(c *custodyv1alpha1.Claim) { c.Annotations = map[string]string{"note": "code is " + code.String()} },
		"annotation key":        func(c *custodyv1alpha1.Claim) { c.Annotations = map[string]string{"example.com/" + string(code): "x"} },
		"label value":           func(c *custodyv1alpha1.Claim) { c.Labels = map[string]string{"code": string(code)} },
		"secret name":           func(c *custodyv1alpha1.Claim) { c.Spec.ClaimCode.SecretRef.Name = strings.ToLower(string(code)) },
		"secret key lowercased": func(c *custodyv1alpha1.Claim) { c.Spec.ClaimCode.SecretRef.Key = strings.ToLower(code.String()) },
	} {
		c := base()
		mutate(c)
		err := admin.Create(ctx, c)
		if err == nil {
			t.Errorf("%s: a Claim holding a claim code was accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), "appears to contain a claim code in plain text") {
			t.Errorf("%s: unexpected error %v", name, err)
		}
		for _, form := range []string{string(code), code.String(), strings.ToLower(string(code)), strings.ToLower(code.String())} {
			if strings.Contains(err.Error(), form) {
				t.Errorf("%s: the rejection echoes the code", name)
			}
		}
	}
	// Updates are checked too.
	c := base()
	if err := admin.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Annotations = map[string]string{"note": code.String()}
	if err := admin.Update(ctx, c); err == nil {
		t.Error("an update adding a claim code was accepted")
	}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil || c.Annotations["note"] != "" {
		t.Errorf("the rejected update changed the Claim: %v", err)
	}
}

// TestClaimRequesterIsRecorded: whoever creates a Claim is recorded from the
// authenticated request, whatever the request says, cannot be changed
// afterwards, and is the actor of the binding in the custody history; the
// Claim is admitted with the manager's finalizer.
func TestClaimRequesterIsRecorded(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tn := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: "bob@acme.example", Role: custodyv1alpha1.TenantRoleOperator})
	rec := newDevice(t)
	bob := userClient(t, "bob@acme.example")
	cl := &custodyv1alpha1.Claim{}
	cl.Namespace, cl.Name = tn.Status.Namespace, uniq("claim")
	secret := claimCodeSecret(t, bob, cl.Namespace, rec.Code.String())
	cl.Spec = custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model, RequestedBy: "alice@acme.example",
		ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: secret}}}
	if err := bob.Create(ctx, cl); err != nil {
		t.Fatal(err)
	}
	// The create's answer is the Claim as admitted: the webhook added the
	// manager's finalizer (the claim controller writes it no more).
	if !slices.Contains(cl.Finalizers, custodyv1alpha1.FinalizerName) {
		t.Fatalf("the Claim was admitted without the manager's finalizer: %v", cl.Finalizers)
	}
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if got.Spec.RequestedBy != "bob@acme.example" {
		t.Fatalf("requestedBy %q: the webhook must record the authenticated user", got.Spec.RequestedBy)
	}
	if b := lastEntry(t, rec.Device.Name, custodyv1alpha1.CustodyEventBound); b.Actor != "user:bob@acme.example" {
		t.Fatalf("binding recorded with actor %q", b.Actor)
	}
	got.Spec.RequestedBy = "alice@acme.example"
	if err := admin.Update(ctx, got); err == nil || !strings.Contains(err.Error(), "requestedBy is set by the admission webhook") {
		t.Fatalf("requestedBy was changed: %v", err)
	}
}

func claimCodeSecret(t testing.TB, c client.Client, ns, code string) string {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: uniq("code")}, StringData: map[string]string{"code": code}}
	if err := c.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s.Name
}

// TestDeviceManagerOnlyFields: every manager-only Device field (the binding
// and the custody bookkeeping) is refused, with a message naming it, when
// the ERP or a cluster admin creates a Device with it, or sets or clears it
// by an update; the manager itself may write it. The unit test
// TestManagerOnlyFieldsCoverDeviceSpec keeps the list complete.
func TestDeviceManagerOnlyFields(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("test-erp")},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-erp"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: "erp-manager-only"}},
	}
	if err := admin.Create(ctx, crb); err != nil {
		t.Fatal(err)
	}
	users := map[string]client.Client{"the ERP": userClient(t, "erp-manager-only"), "a cluster admin": admin}
	mgr := managerClient(t)
	ref := custodyv1alpha1.DeviceClaimReference{Tenant: "victim", Namespace: "victim", Name: "c", UID: "u"}
	now := metav1.Now()
	fields := map[string]struct {
		set, clear func(*custodyv1alpha1.DeviceSpec)
	}{
		"claimRef": {func(s *custodyv1alpha1.DeviceSpec) { s.ClaimRef = &ref }, func(s *custodyv1alpha1.DeviceSpec) { s.ClaimRef = nil }},
		"consumedClaimCodes": {func(s *custodyv1alpha1.DeviceSpec) { s.ConsumedClaimCodes = []string{"sha256:00"} },
			func(s *custodyv1alpha1.DeviceSpec) { s.ConsumedClaimCodes = nil }},
		"consumedSaleRecords": {func(s *custodyv1alpha1.DeviceSpec) { s.ConsumedSaleRecords = []string{"SO-1"} },
			func(s *custodyv1alpha1.DeviceSpec) { s.ConsumedSaleRecords = nil }},
		"pendingClaim": {func(s *custodyv1alpha1.DeviceSpec) {
			s.PendingClaim = &custodyv1alpha1.PendingClaim{DeviceClaimReference: ref, Proof: "ClaimCode", Until: now}
		}, func(s *custodyv1alpha1.DeviceSpec) { s.PendingClaim = nil }},
		"dispute": {func(s *custodyv1alpha1.DeviceSpec) {
			s.Dispute = &custodyv1alpha1.Dispute{Since: now, Claims: []custodyv1alpha1.DisputedClaim{{DeviceClaimReference: ref, Proof: "ClaimCode"}}}
		}, func(s *custodyv1alpha1.DeviceSpec) { s.Dispute = nil }},
	}
	refused := func(what string, err error, field string) {
		t.Helper()
		if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec."+field) || !strings.Contains(err.Error(), "only the Custody manager") {
			t.Errorf("%s: %v, want a refusal naming spec.%s", what, err, field)
		}
	}
	for field, f := range fields {
		for user, c := range users {
			d := newDeviceRecord(t).Device
			f.set(&d.Spec)
			refused(user+" creates a Device with spec."+field, c.Create(ctx, d), field)
			if err := admin.Get(ctx, client.ObjectKeyFromObject(d), &custodyv1alpha1.Device{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s created a Device with spec.%s: %v", user, field, err)
			}
			plain := newDevice(t).Device
			refused(user+" sets spec."+field, updateDevice(c, plain.Name, func(d *custodyv1alpha1.Device) { f.set(&d.Spec) }), field)
		}

		// The manager may set the field (it never creates Devices: RBAC
		// does not let it; TestManagerOnlyFieldsOnCreateAndUpdate shows the
		// webhook would admit it), and no user then clears it.
		d := newDevice(t).Device
		if err := updateDevice(mgr, d.Name, func(d *custodyv1alpha1.Device) { f.set(&d.Spec) }); err != nil {
			t.Errorf("the manager could not set spec.%s: %v", field, err)
			continue
		}
		for user, c := range users {
			gone := false
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cur := getDevice(t, d.Name)
				cleared := cur.DeepCopy()
				f.clear(&cleared.Spec)
				gone = reflect.DeepEqual(cur.Spec, cleared.Spec)
				if gone {
					return nil
				}
				return c.Update(ctx, cleared)
			})
			if gone {
				t.Logf("the manager's controllers already cleared spec.%s of their own test Device", field)
				break
			}
			refused(user+" clears spec."+field, err, field)
		}
	}
}

// managerClient is a client authenticated as the manager's identity.
func managerClient(t testing.TB) client.Client {
	t.Helper()
	cfg, err := cp.ManagerConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
