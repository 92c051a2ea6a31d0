package controlplane

import (
	"context"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/custody-dev/custody/controllers"
)

// ManagerUsername is the identity the Custody manager runs as, here and in a
// cluster (its ServiceAccount).
const ManagerUsername = "system:serviceaccount:custody-system:custody-manager"

// CertManagerUsername is the identity cert-manager's controllers run as,
// here and in a cluster installed with its Helm chart (its ServiceAccount).
// The Custody manager approves a tenant CA's CertificateRequest only if this
// user created it.
const CertManagerUsername = controllers.DefaultCertManagerUsername

// certManagerRole grants cert-manager's in-process controllers what the
// ClusterRoles of cert-manager's Helm chart grant its controller for the
// controllers run here (issuers, clusterissuers, certificates, and the
// create/delete of the ingress-shim role the certificates controllers use).
// It does not grant `approve` on signers: cert-manager's built-in approver
// does not run here.
var certManagerRole = &rbacv1.ClusterRole{
	ObjectMeta: metav1.ObjectMeta{Name: "cert-manager-controller"},
	Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"issuers", "issuers/status", "clusterissuers", "clusterissuers/status", "certificates", "certificates/status", "certificaterequests", "certificaterequests/status"}, Verbs: []string{"update", "patch"}},
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"issuers", "clusterissuers", "certificates", "certificaterequests"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificates", "certificaterequests"}, Verbs: []string{"create", "delete"}},
		{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificates/finalizers", "certificaterequests/finalizers"}, Verbs: []string{"update"}},
		{APIGroups: []string{"acme.cert-manager.io"}, Resources: []string{"orders"}, Verbs: []string{"create", "delete", "get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	},
}

// GatewayUsername is the identity the Custody gateway runs as.
const GatewayUsername = "system:serviceaccount:custody-system:custody-gateway"

// installRBAC creates the ClusterRoles shipped in config/rbac and binds the
// manager's ClusterRole to ManagerUsername, so that the manager runs with
// exactly the permissions it would have in a cluster; likewise for the
// gateway, and for cert-manager (certManagerRole).
func (cp *ControlPlane) installRBAC(ctx context.Context) error {
	var objs []client.Object
	err := eachDocument("rbac", func(doc []byte) error {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return err
		}
		switch tm.Kind {
		case "ClusterRole":
			role := &rbacv1.ClusterRole{}
			if err := yaml.UnmarshalStrict(doc, role); err != nil {
				return err
			}
			objs = append(objs, role)
		case "Role":
			role := &rbacv1.Role{}
			if err := yaml.UnmarshalStrict(doc, role); err != nil {
				return err
			}
			if role.Namespace == "custody-system" {
				role.Namespace = cp.OperatorNamespace
			}
			objs = append(objs, role)
		}
		// Bindings and ServiceAccounts are for in-cluster installs; here
		// the manager's and the gateway's users are bound below.
		return nil
	})
	if err != nil {
		return err
	}
	for user, role := range map[string]string{ManagerUsername: "custody-manager", GatewayUsername: "custody-gateway"} {
		subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
		objs = append(objs, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   subjects,
		})
		if role == "custody-gateway" {
			objs = append(objs, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: role, Namespace: cp.OperatorNamespace},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role},
				Subjects:   subjects,
			})
		}
	}
	objs = append(objs, certManagerRole.DeepCopy(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: certManagerRole.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: certManagerRole.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: CertManagerUsername}},
	})
	for _, o := range objs {
		if err := cp.Client.Create(ctx, o); apierrors.IsAlreadyExists(err) {
			existing := o.DeepCopyObject().(client.Object)
			if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(o), existing); err != nil {
				return err
			}
			o.SetResourceVersion(existing.GetResourceVersion())
			err = cp.Client.Update(ctx, o)
			if err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	return nil
}

// GatewayConfig returns a rest.Config that authenticates as the gateway.
func (cp *ControlPlane) GatewayConfig() (*rest.Config, error) {
	return cp.AddUser(GatewayUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
}

// ManagerConfig returns a rest.Config that authenticates as the manager.
func (cp *ControlPlane) ManagerConfig() (*rest.Config, error) {
	return cp.AddUser(ManagerUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
}
