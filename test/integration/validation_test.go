package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// TestCRDValidation runs each CEL and schema rule against the API server:
// the object, and the error a user gets for it.
func TestCRDValidation(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	tenant := func(mutate func(*custodyv1alpha1.Tenant)) client.Object {
		tn := &custodyv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: uniq("valid")}, Spec: custodyv1alpha1.TenantSpec{DisplayName: "Acme"}}
		mutate(tn)
		return tn
	}
	device := func(mutate func(*custodyv1alpha1.Device)) client.Object {
		d := newDeviceRecord(t).Device
		mutate(d)
		return d
	}
	claim := func(mutate func(*custodyv1alpha1.Claim)) client.Object {
		c := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: uniq("valid"), Namespace: "default"},
			Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-1", Model: "XR200", ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "code"}}}}
		mutate(c)
		return c
	}
	sa := func(ns string) custodyv1alpha1.TenantMember {
		return custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindServiceAccount, Name: "sa", Namespace: ns, Role: custodyv1alpha1.TenantRoleViewer}
	}

	creates := []struct {
		name string
		obj  client.Object
		want string // "" means valid
	}{
		{"valid tenant", tenant(func(*custodyv1alpha1.Tenant) {}), ""},
		{"tenant name too long", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Name = strings.Repeat("a", 51) }), "Tenant names must be DNS labels"},
		{"tenant name not a DNS label", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Name = "acme.example" }), "Tenant names must be DNS labels"},
		{"tenant in kube-system", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.Namespace = "kube-system" }), "must not be 'default' or start with 'kube-'"},
		{"tenant in default", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.Namespace = "default" }), "must not be 'default' or start with 'kube-'"},
		{"tenant without display name", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.DisplayName = "" }), "spec.displayName"},
		{"service account without namespace", tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.Members = []custodyv1alpha1.TenantMember{sa("")} }), "namespace is required for a ServiceAccount member"},
		{"user with namespace", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.Members = []custodyv1alpha1.TenantMember{{Kind: custodyv1alpha1.MemberKindUser, Name: "u", Namespace: "x", Role: custodyv1alpha1.TenantRoleViewer}}
		}), "must not be set for a User or Group"},
		{"unknown role", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.Members = []custodyv1alpha1.TenantMember{{Kind: custodyv1alpha1.MemberKindUser, Name: "u", Role: "Owner"}}
		}), "Unsupported value: \"Owner\""},
		{"certificate duration too short", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.Certificates = &custodyv1alpha1.CertificatePolicy{Duration: &metav1.Duration{Duration: 10 * time.Minute}}
		}), "duration must be between 1h and 720h"},
		{"max failed attempts zero", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.ClaimPolicy = &custodyv1alpha1.ClaimPolicy{MaxFailedAttempts: ptr.To[int32](0)}
		}), "should be greater than or equal to 1"},

		{"valid device", device(func(*custodyv1alpha1.Device) {}), ""},
		{"device name not derived", device(func(d *custodyv1alpha1.Device) { d.Name = "my-device" }), "metadata.name must be '<model>.<serialNumber>' in lower case"},
		{"lower-case serial", device(func(d *custodyv1alpha1.Device) {
			d.Spec.SerialNumber = strings.ToLower(d.Spec.SerialNumber)
			d.Name = "xr200." + d.Spec.SerialNumber
		}), "spec.serialNumber"},
		{"public key not PEM", device(func(d *custodyv1alpha1.Device) { d.Spec.Identity.PublicKey = strings.Repeat("A", 120) }), "publicKey must be a PEM block"},
		{"claim code instead of verifier", device(func(d *custodyv1alpha1.Device) { d.Spec.ClaimCode.Verifier = "9G01-8BC1-MY21-P614-FY40" }), "verifier must be an argon2id PHC string"},
		{"sale to a custodian and an owner", device(func(d *custodyv1alpha1.Device) {
			d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "SO-1", Buyer: custodyv1alpha1.Buyer{Name: "B"}, CustodianTenant: "wholesale", OwnerTenant: "acme"}
		}), "either a custodianTenant"},
		{"sale record combined with a code", claim(func(c *custodyv1alpha1.Claim) { c.Spec.SaleRecord = &custodyv1alpha1.SaleRecordProof{} }), "saleRecord and transfer are proofs on their own"},
		{"transfer combined with a sale record", claim(func(c *custodyv1alpha1.Claim) {
			c.Spec.ClaimCode = nil
			c.Spec.SaleRecord = &custodyv1alpha1.SaleRecordProof{}
			c.Spec.Transfer = &custodyv1alpha1.TransferAcceptance{FromTenant: "x"}
		}), "saleRecord and transfer are proofs on their own"},
		{"pairing token without possession", claim(func(c *custodyv1alpha1.Claim) {
			c.Spec.PairingToken = &custodyv1alpha1.PairingTokenProof{SecretName: "t"}
		}), "pairing-token Claim is created by the manager"},
		{"transfer without a recipient or release", &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "default"},
			Spec: custodyv1alpha1.TransferSpec{ClaimName: "c"}}, "set exactly one of recipient"},
		{"award without a claim", &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: "a"},
			Spec: custodyv1alpha1.SupportActionSpec{DeviceName: "xr200.sn-1", Action: custodyv1alpha1.SupportActionAward, Reason: "ticket 1234: checked invoice"}}, "claim is required for Award"},
		{"support action without a reason", &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: "a"},
			Spec: custodyv1alpha1.SupportActionSpec{DeviceName: "xr200.sn-1", Action: custodyv1alpha1.SupportActionReset, Reason: "x"}}, "spec.reason"},
		{"cooling-off period out of range", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.ClaimPolicy = &custodyv1alpha1.ClaimPolicy{CoolingOff: &custodyv1alpha1.CoolingOffPolicy{Period: metav1.Duration{Duration: time.Second}}}
		}), "period must be between 1m and 720h"},
		{"notifications over plain http", tenant(func(tn *custodyv1alpha1.Tenant) {
			tn.Spec.Notifications = &custodyv1alpha1.NotificationEndpoint{URL: "http://erp.example/hook", SigningKeySecretRef: custodyv1alpha1.SigningKeyReference{Name: "k"}}
		}), "url must be an https:// URL"},

		{"valid claim", claim(func(*custodyv1alpha1.Claim) {}), ""},
		{"claim without proof", claim(func(c *custodyv1alpha1.Claim) { c.Spec.ClaimCode = nil }), "a Claim must offer a proof of ownership"},
		{"claim with lower-case serial", claim(func(c *custodyv1alpha1.Claim) { c.Spec.SerialNumber = "sn-1" }), "serialNumber must be upper-case letters"},
		{"claim with unknown release policy", claim(func(c *custodyv1alpha1.Claim) { c.Spec.ReleasePolicy = "Delete" }), "Unsupported value: \"Delete\""},
		{"claim secret key with a slash", claim(func(c *custodyv1alpha1.Claim) { c.Spec.ClaimCode.SecretRef.Key = "a/b" }), "spec.claimCode.secretRef.key"},
	}
	for _, tc := range creates {
		err := admin.Create(ctx, tc.obj, client.DryRunAll)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: rejected: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
	}

	// Transition rules need an existing object.
	tn := tenant(func(tn *custodyv1alpha1.Tenant) { tn.Spec.Namespace = uniq("ns") }).(*custodyv1alpha1.Tenant)
	if err := admin.Create(ctx, tn); err != nil {
		t.Fatal(err)
	}
	cl := claim(func(*custodyv1alpha1.Claim) {}).(*custodyv1alpha1.Claim)
	if err := admin.Create(ctx, cl); err != nil {
		t.Fatal(err)
	}
	updates := []struct {
		name   string
		obj    client.Object
		mutate func(client.Object)
		want   string
	}{
		{"tenant namespace change", tn, func(o client.Object) { o.(*custodyv1alpha1.Tenant).Spec.Namespace = "other" }, "namespace cannot be changed after creation"},
		{"claim serial change", cl, func(o client.Object) { o.(*custodyv1alpha1.Claim).Spec.SerialNumber = "SN-2" }, "serialNumber and model are immutable"},
		{"claim proof change", cl, func(o client.Object) { o.(*custodyv1alpha1.Claim).Spec.ClaimCode.SecretRef.Name = "other" }, "the proof of a Claim cannot be changed"},
	}
	for _, tc := range updates {
		// The manager writes these objects too; retry on its conflicts.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			obj := tc.obj.DeepCopyObject().(client.Object)
			if err := admin.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
				return err
			}
			tc.mutate(obj)
			return admin.Update(ctx, obj, client.DryRunAll)
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v does not say %q", tc.name, err, tc.want)
		}
	}
}
