package integration

import (
	"context"
	"fmt"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
)

// TestRBACMatrix checks, with real authenticated users and the ClusterRoles
// shipped in config/rbac, every action each persona may and may not take.
// Writes are dry runs: they pass authentication, RBAC and admission exactly
// as a real write would, and change nothing.
func TestRBACMatrix(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	member := func(name string, role custodyv1alpha1.TenantRole) custodyv1alpha1.TenantMember {
		return custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: name, Role: role}
	}
	a := newTenant(t, member("a-admin", custodyv1alpha1.TenantRoleAdmin), member("a-operator", custodyv1alpha1.TenantRoleOperator), member("a-viewer", custodyv1alpha1.TenantRoleViewer))
	b := newTenant(t, member("b-admin", custodyv1alpha1.TenantRoleAdmin))
	nsA, nsB := a.Status.Namespace, b.Status.Namespace
	for user, role := range map[string]string{"erp": "custody-erp", "support": "custody-support"} {
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: uniq("test-" + user)},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: user}},
		}
		if err := admin.Create(ctx, crb); err != nil {
			t.Fatal(err)
		}
	}

	// A bound device and its claim in tenant A, to act upon.
	rec := newDevice(t)
	bound := claimWithCode(t, admin, nsA, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
	waitPhase(t, bound, custodyv1alpha1.ClaimPhaseBound)
	free := newDevice(t).Device

	clients := map[string]client.Client{}
	for _, u := range []string{"erp", "support", "a-admin", "a-operator", "a-viewer", "b-admin"} {
		cfg, err := cp.AddUser(u, "system:authenticated")
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
		if err != nil {
			t.Fatal(err)
		}
		clients[u] = c
	}
	dry := client.DryRunAll

	newClaim := func(ns string) *custodyv1alpha1.Claim {
		return &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns},
			Spec: custodyv1alpha1.ClaimSpec{SerialNumber: "SN-RBAC", Model: "XR200", ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: "s"}}}}
	}
	newSecret := func(ns string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns}, StringData: map[string]string{"code": "x"}}
	}
	newCR := func(ns string) *cmapi.CertificateRequest {
		return &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns},
			Spec: cmapi.CertificateRequestSpec{Request: []byte("x"), IssuerRef: cmmeta.IssuerReference{Name: controllers.TenantIssuerName(a.Name), Kind: "Issuer"}}}
	}
	newIssuer := func(ns string) *cmapi.Issuer {
		return &cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns},
			Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: controllers.TenantCAName(a.Name)}}}}
	}
	// Fresh copies of existing objects for each action.
	device := func(name string) *custodyv1alpha1.Device { return getDevice(t, name) }
	claimA := func() *custodyv1alpha1.Claim {
		c := &custodyv1alpha1.Claim{}
		if err := admin.Get(ctx, clientKey(bound), c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	rebind := func(c client.Client) error {
		return updateDevice(c, free.Name, func(d *custodyv1alpha1.Device) {
			d.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Tenant: b.Name, Namespace: nsB, Name: "x", UID: "x"}
		}, dry)
	}
	unbind := func(c client.Client) error {
		return updateDevice(c, rec.Device.Name, func(d *custodyv1alpha1.Device) { d.Spec.ClaimRef = nil }, dry)
	}
	editSale := func(c client.Client) error {
		return updateDevice(c, free.Name, func(d *custodyv1alpha1.Device) {
			d.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: "PO-1", Buyer: custodyv1alpha1.Buyer{Name: "Acme"}}
		}, dry)
	}
	getTrust := func(ns string) func(client.Client) error {
		return func(c client.Client) error {
			return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.TrustBundleName}, &corev1.ConfigMap{})
		}
	}
	listClaims := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.List(ctx, &custodyv1alpha1.ClaimList{}, client.InNamespace(ns)) }
	}
	createClaim := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.Create(ctx, newClaim(ns), dry) }
	}
	createSecret := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.Create(ctx, newSecret(ns), dry) }
	}
	readSecrets := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.List(ctx, &corev1.SecretList{}, client.InNamespace(ns)) }
	}
	deleteClaim := func(c client.Client) error { return c.Delete(ctx, claimA(), dry) }
	writeClaimStatus := func(c client.Client) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cl := claimA()
			cl.Status.Phase = custodyv1alpha1.ClaimPhaseBound
			return c.Status().Update(ctx, cl, client.DryRunAll)
		})
	}
	createCR := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.Create(ctx, newCR(ns), dry) }
	}
	approveCR := func(c client.Client) error {
		var list cmapi.CertificateRequestList
		if err := admin.List(ctx, &list, client.InNamespace(cp.OperatorNamespace)); err != nil || len(list.Items) == 0 {
			return fmt.Errorf("no request to approve: %v", err)
		}
		cr := list.Items[0].DeepCopy()
		cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue, Reason: "x"})
		return c.Status().Update(ctx, cr, client.DryRunAll)
	}
	createIssuer := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.Create(ctx, newIssuer(ns), dry) }
	}
	listDevices := func(c client.Client) error { return c.List(ctx, &custodyv1alpha1.DeviceList{}) }
	createTransfer := func(ns string) func(client.Client) error {
		return func(c client.Client) error {
			return c.Create(ctx, &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns},
				Spec: custodyv1alpha1.TransferSpec{ClaimName: bound.Name, Recipient: &custodyv1alpha1.TransferRecipient{Tenant: b.Name}}}, dry)
		}
	}
	createSupportAction := func(c client.Client) error {
		return c.Create(ctx, &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac")},
			Spec: custodyv1alpha1.SupportActionSpec{DeviceName: rec.Device.Name, Action: custodyv1alpha1.SupportActionReset, Reason: "RBAC matrix dry run"}}, dry)
	}
	setDisputeDirectly := func(c client.Client) error {
		return updateDevice(c, free.Name, func(d *custodyv1alpha1.Device) {
			d.Spec.Dispute = &custodyv1alpha1.Dispute{Since: metav1.Now(), Claims: []custodyv1alpha1.DisputedClaim{{DeviceClaimReference: custodyv1alpha1.DeviceClaimReference{Tenant: b.Name, Namespace: nsB, Name: "x", UID: "x"}, Proof: "x"}}}
		}, dry)
	}
	createDevice := func(c client.Client) error {
		d := newDeviceManifest(t)
		return c.Create(ctx, d, dry)
	}
	deleteDevice := func(c client.Client) error { return c.Delete(ctx, device(free.Name), dry) }
	writeDeviceStatus := func(c client.Client) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d := device(free.Name)
			d.Status.Phase = custodyv1alpha1.DevicePhaseBound
			return c.Status().Update(ctx, d, client.DryRunAll)
		})
	}
	editTenant := func(c client.Client) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			tn := &custodyv1alpha1.Tenant{}
			if err := admin.Get(ctx, clientKey(a), tn); err != nil {
				return err
			}
			tn.Spec.Members = append(tn.Spec.Members, member("mallory", custodyv1alpha1.TenantRoleAdmin))
			return c.Update(ctx, tn, dry)
		})
	}
	bindRole := func(ns string) func(client.Client) error {
		return func(c client.Client) error {
			return c.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-tenant-admin"},
				Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: "mallory"}}}, dry)
		}
	}

	newDataAccess := func(ns string) *custodyv1alpha1.DataAccess {
		return &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: uniq("rbac"), Namespace: ns}}
	}
	existingDA := newDataAccess(nsA)
	if err := admin.Create(ctx, existingDA); err != nil {
		t.Fatal(err)
	}
	createDataAccess := func(ns string) func(client.Client) error {
		return func(c client.Client) error { return c.Create(ctx, newDataAccess(ns), dry) }
	}
	listDataAccesses := func(ns string) func(client.Client) error {
		return func(c client.Client) error {
			return c.List(ctx, &custodyv1alpha1.DataAccessList{}, client.InNamespace(ns))
		}
	}
	deleteDataAccess := func(c client.Client) error {
		return c.Delete(ctx, &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: existingDA.Name, Namespace: nsA}}, dry)
	}
	writeDataAccessStatus := func(c client.Client) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			da := &custodyv1alpha1.DataAccess{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(existingDA), da); err != nil {
				return err
			}
			da.Status.SecretName = "forged"
			return c.Status().Update(ctx, da, client.DryRunAll)
		})
	}

	type row struct {
		user    string
		action  string
		do      func(client.Client) error
		allowed bool
	}
	rows := []row{
		// ERP: Devices only, never bindings.
		{"erp", "create a Device", createDevice, true},
		{"erp", "edit a Device's sale record", editSale, true},
		{"erp", "list Devices", listDevices, true},
		{"erp", "bind a Device", rebind, false},
		{"erp", "unbind a Device", unbind, false},
		{"erp", "delete a Device", deleteDevice, false},
		{"erp", "write Device status", writeDeviceStatus, false},
		{"erp", "list Claims", listClaims(nsA), false},
		{"erp", "create a Claim", createClaim(nsA), false},
		{"erp", "read Secrets", readSecrets(nsA), false},
		{"erp", "edit a Tenant", editTenant, false},
		{"erp", "create a SupportAction", createSupportAction, false},
		{"erp", "record a dispute directly", setDisputeDirectly, false},
		// Tenant A admin.
		{"a-admin", "list own Claims", listClaims(nsA), true},
		{"a-admin", "create a Claim", createClaim(nsA), true},
		{"a-admin", "delete a Claim", deleteClaim, true},
		{"a-admin", "create a code Secret", createSecret(nsA), true},
		{"a-admin", "read the trust bundle", getTrust(nsA), true},
		{"a-admin", "write Claim status", writeClaimStatus, false},
		{"a-admin", "list Devices", listDevices, false},
		{"a-admin", "bind a Device", rebind, false},
		{"a-admin", "unbind a Device", unbind, false},
		{"a-admin", "create a CertificateRequest", createCR(nsA), false},
		{"a-admin", "create a CertificateRequest in the operator namespace", createCR(cp.OperatorNamespace), false},
		{"a-admin", "approve a CertificateRequest", approveCR, false},
		{"a-admin", "create an Issuer", createIssuer(nsA), false},
		{"a-admin", "read CA Secrets", readSecrets(cp.OperatorNamespace), false},
		{"a-admin", "list tenant B's Claims", listClaims(nsB), false},
		{"a-admin", "create a Claim in tenant B", createClaim(nsB), false},
		{"a-admin", "read tenant B's trust bundle", getTrust(nsB), false},
		{"a-admin", "add a member to its Tenant", editTenant, false},
		{"a-admin", "bind a role in its namespace", bindRole(nsA), false},
		{"a-admin", "offer its device to another tenant", createTransfer(nsA), true},
		{"a-admin", "create a Transfer in tenant B", createTransfer(nsB), false},
		{"a-admin", "create a SupportAction", createSupportAction, false},
		{"a-admin", "create a DataAccess", createDataAccess(nsA), true},
		{"a-admin", "list DataAccesses", listDataAccesses(nsA), true},
		{"a-admin", "delete a DataAccess", deleteDataAccess, true},
		{"a-admin", "read credential Secrets", readSecrets(nsA), true},
		{"a-admin", "write DataAccess status", writeDataAccessStatus, false},
		{"a-admin", "create a DataAccess in tenant B", createDataAccess(nsB), false},
		// Tenant A operator.
		{"a-operator", "list own Claims", listClaims(nsA), true},
		{"a-operator", "create a Claim", createClaim(nsA), true},
		{"a-operator", "create a code Secret", createSecret(nsA), true},
		{"a-operator", "read Secrets back", readSecrets(nsA), false},
		{"a-operator", "delete a Claim", deleteClaim, false},
		{"a-operator", "create a CertificateRequest", createCR(nsA), false},
		{"a-operator", "create an Issuer", createIssuer(nsA), false},
		{"a-operator", "bind a Device", rebind, false},
		{"a-operator", "give a device away (Transfer)", createTransfer(nsA), false},
		{"a-operator", "list DataAccesses", listDataAccesses(nsA), true},
		{"a-operator", "create a DataAccess", createDataAccess(nsA), false},
		{"a-operator", "delete a DataAccess", deleteDataAccess, false},
		// Tenant A viewer.
		{"a-viewer", "list own Claims", listClaims(nsA), true},
		{"a-viewer", "read the trust bundle", getTrust(nsA), true},
		{"a-viewer", "create a Claim", createClaim(nsA), false},
		{"a-viewer", "create a code Secret", createSecret(nsA), false},
		{"a-viewer", "delete a Claim", deleteClaim, false},
		{"a-viewer", "create a CertificateRequest", createCR(nsA), false},
		{"a-viewer", "list DataAccesses", listDataAccesses(nsA), true},
		{"a-viewer", "create a DataAccess", createDataAccess(nsA), false},
		{"a-viewer", "delete a DataAccess", deleteDataAccess, false},
		{"a-viewer", "read credential Secrets", readSecrets(nsA), false},
		// Tenant B.
		{"b-admin", "list own Claims", listClaims(nsB), true},
		{"b-admin", "list tenant A's Claims", listClaims(nsA), false},
		{"b-admin", "create a Claim in tenant A", createClaim(nsA), false},
		{"b-admin", "delete tenant A's Claim", deleteClaim, false},
		{"b-admin", "read tenant A's trust bundle", getTrust(nsA), false},
		{"b-admin", "read tenant A's Secrets", readSecrets(nsA), false},
		{"b-admin", "bind a Device", rebind, false},
		{"b-admin", "list tenant A's DataAccesses", listDataAccesses(nsA), false},
		{"b-admin", "create a DataAccess in tenant A", createDataAccess(nsA), false},
		{"b-admin", "delete tenant A's DataAccess", deleteDataAccess, false},
		// Support staff.
		{"support", "list Devices", listDevices, true},
		{"support", "list any tenant's Claims", listClaims(nsA), true},
		{"support", "delete a Claim (release)", deleteClaim, true},
		{"support", "correct a Device record", editSale, true},
		{"support", "bind a Device", rebind, false},
		{"support", "resolve with a SupportAction", createSupportAction, true},
		{"support", "record a dispute directly", setDisputeDirectly, false},
		{"support", "create a Transfer for a tenant", createTransfer(nsA), false},
		{"support", "unbind a Device directly", unbind, false},
		{"support", "read claim-code Secrets", readSecrets(nsA), false},
		{"support", "create a CertificateRequest", createCR(cp.OperatorNamespace), false},
		{"support", "approve a CertificateRequest", approveCR, false},
		{"support", "create a Claim", createClaim(nsA), false},
		{"support", "create a DataAccess", createDataAccess(nsA), false},
	}
	for _, r := range rows {
		err := r.do(clients[r.user])
		switch {
		case r.allowed && err != nil:
			t.Errorf("%s should be able to %s: %v", r.user, r.action, err)
		case !r.allowed && err == nil:
			t.Errorf("%s must not be able to %s, but could", r.user, r.action)
		case !r.allowed && !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err):
			t.Errorf("%s tried to %s: want forbidden or rejected by admission, got %v", r.user, r.action, err)
		}
	}
}

// newDeviceManifest returns a valid Device that does not exist yet.
func newDeviceManifest(t *testing.T) *custodyv1alpha1.Device {
	t.Helper()
	rec := newDeviceRecord(t)
	return rec.Device
}
