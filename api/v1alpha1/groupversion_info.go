// Package v1alpha1 contains the custody.dev/v1alpha1 API: Tenant, Device and
// Claim.
//
// The binding between a Device and a Claim follows the PersistentVolume /
// PersistentVolumeClaim model: a cluster-scoped Device is supplied by the
// manufacturer's ERP, a namespaced Claim is made by a tenant, and the binding
// is recorded on both, durably in Device.spec.claimRef.
//
// +kubebuilder:object:generate=true
// +groupName=custody.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "custody.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this API with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this API to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&Tenant{}, &TenantList{},
		&Device{}, &DeviceList{},
		&Claim{}, &ClaimList{},
		&DeviceProof{}, &DeviceProofList{},
		&Transfer{}, &TransferList{},
		&SupportAction{}, &SupportActionList{},
		&DataAccess{}, &DataAccessList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
