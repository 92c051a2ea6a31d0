package controlplane

import (
	"context"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// ManagerUsername is the identity the Custody manager runs as, here and in a
// cluster (its ServiceAccount).
const ManagerUsername = "system:serviceaccount:custody-system:custody-manager"

// installRBAC creates the ClusterRoles shipped in config/rbac and binds the
// manager's ClusterRole to ManagerUsername, so that the manager runs with
// exactly the permissions it would have in a cluster.
func (cp *ControlPlane) installRBAC(ctx context.Context) error {
	var objs []client.Object
	err := eachDocument("rbac", func(doc []byte) error {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return err
		}
		if tm.Kind != "ClusterRole" {
			// Bindings and the ServiceAccount are for in-cluster installs;
			// here the manager's user is bound below.
			return nil
		}
		role := &rbacv1.ClusterRole{}
		if err := yaml.UnmarshalStrict(doc, role); err != nil {
			return err
		}
		objs = append(objs, role)
		return nil
	})
	if err != nil {
		return err
	}
	objs = append(objs, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "custody-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-manager"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: ManagerUsername}},
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

// ManagerConfig returns a rest.Config that authenticates as the manager.
func (cp *ControlPlane) ManagerConfig() (*rest.Config, error) {
	return cp.AddUser(ManagerUsername, "system:serviceaccounts", "system:serviceaccounts:custody-system", "system:authenticated")
}
