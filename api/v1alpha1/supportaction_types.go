package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SupportActionType is what support staff do to a device.
// +kubebuilder:validation:Enum=Award;Reset
type SupportActionType string

const (
	// SupportActionAward binds the device to the named Claim, ending any
	// dispute, cooling-off or other binding.
	SupportActionAward SupportActionType = "Award"
	// SupportActionReset ends any binding, dispute and cooling-off and
	// consumes the current claim code: the ERP must issue a new one.
	SupportActionReset SupportActionType = "Reset"
)

// ClaimReference names a Claim.
type ClaimReference struct {
	// namespace of the Claim.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`

	// name of the Claim.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// SupportActionSpec is what support staff decided, and why.
// +kubebuilder:validation:XValidation:rule="self.action == 'Award' ? has(self.claim) : !has(self.claim)",message="claim is required for Award and must not be set for Reset",fieldPath=".claim",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="self.deviceName == oldSelf.deviceName && self.action == oldSelf.action && self.reason == oldSelf.reason && has(self.claim) == has(oldSelf.claim) && (!has(self.claim) || self.claim == oldSelf.claim) && has(self.requestedBy) == has(oldSelf.requestedBy) && (!has(self.requestedBy) || self.requestedBy == oldSelf.requestedBy)",message="a SupportAction cannot be changed: create a new one",reason=FieldValueForbidden
type SupportActionSpec struct {
	// deviceName is the Device acted on ("<model>.<serial>" in lower case).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	DeviceName string `json:"deviceName"`

	// action is Award or Reset.
	// +required
	Action SupportActionType `json:"action"`

	// claim is the Claim awarded the device (Award only).
	// +optional
	Claim *ClaimReference `json:"claim,omitempty"`

	// reason explains the decision (a ticket reference and what was
	// checked). It is recorded in the device's custody history.
	// +required
	// +kubebuilder:validation:MinLength=10
	// +kubebuilder:validation:MaxLength=512
	Reason string `json:"reason"`

	// requestedBy is the user who created the action, as the API server
	// authenticated them. Set by the admission webhook.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	RequestedBy string `json:"requestedBy,omitempty"`
}

// SupportActionPhase is where a SupportAction stands.
// +kubebuilder:validation:Enum=Pending;Succeeded;Failed
type SupportActionPhase string

const (
	// SupportActionPending: not applied yet.
	SupportActionPending SupportActionPhase = "Pending"
	// SupportActionSucceeded: applied and recorded in the device's history.
	SupportActionSucceeded SupportActionPhase = "Succeeded"
	// SupportActionFailed: could not be applied; the message says why.
	SupportActionFailed SupportActionPhase = "Failed"
)

// SupportActionStatus is the outcome of a SupportAction.
type SupportActionStatus struct {
	// phase: Pending, Succeeded or Failed.
	// +optional
	Phase SupportActionPhase `json:"phase,omitempty"`

	// message says what was done, or why nothing was.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// completionTime is when the action was applied.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=custody
// +kubebuilder:printcolumn:name="Device",type=string,JSONPath=`.spec.deviceName`
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="By",type=string,JSONPath=`.spec.requestedBy`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// SupportAction is a decision by manufacturer support staff about one
// device: award it to a Claim (resolving a dispute) or reset it. Only the
// custody-support ClusterRole may create one; who did it and why is
// recorded in the device's custody history.
type SupportAction struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the decision. Immutable.
	// +required
	Spec SupportActionSpec `json:"spec"`

	// status is the outcome, written by the manager.
	// +optional
	Status SupportActionStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// SupportActionList is a list of SupportActions.
type SupportActionList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of SupportActions.
	Items []SupportAction `json:"items"`
}
