package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TransferRecipient names the tenant a device is offered to.
type TransferRecipient struct {
	// tenant is the name of the receiving Tenant. It accepts with a Claim
	// whose spec.transfer.fromTenant names the offering tenant.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=50
	Tenant string `json:"tenant"`
}

// TransferRelease opens the device for claiming by anyone who proves
// ownership (typically with a claim code handed on with the device).
type TransferRelease struct {
	// rotateClaimCode makes the manager issue a fresh claim code: its
	// verifier replaces the device's, the old code is consumed so that it
	// never binds again, and the new code is written to the Secret named in
	// status.claimCodeSecretName, in this namespace, to hand on.
	// +optional
	RotateClaimCode bool `json:"rotateClaimCode,omitempty"`
}

// TransferSpec is a holder's offer to hand a device on.
// +kubebuilder:validation:XValidation:rule="has(self.recipient) != has(self.release)",message="set exactly one of recipient (hand the device to a named tenant) and release (open it for claiming)",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a Transfer cannot be changed: delete it and create a new one",reason=FieldValueForbidden
type TransferSpec struct {
	// claimName is the bound Claim, in this namespace, whose device is
	// handed on.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ClaimName string `json:"claimName"`

	// recipient hands the device to a named tenant, which accepts with a
	// Claim. The binding moves in one step when it does.
	// +optional
	Recipient *TransferRecipient `json:"recipient,omitempty"`

	// release ends this tenant's binding at once and opens the device for
	// claiming.
	// +optional
	Release *TransferRelease `json:"release,omitempty"`
}

// TransferPhase is where a Transfer stands.
// +kubebuilder:validation:Enum=Pending;Offered;Completed;Expired;Failed
type TransferPhase string

const (
	// TransferPhasePending: waiting for claimName to hold a device (for
	// example a Claim applied together with its Transfer).
	TransferPhasePending TransferPhase = "Pending"
	// TransferPhaseOffered: waiting for the recipient's Claim.
	TransferPhaseOffered TransferPhase = "Offered"
	// TransferPhaseCompleted: the device was handed on.
	TransferPhaseCompleted TransferPhase = "Completed"
	// TransferPhaseExpired: the recipient did not accept in time.
	TransferPhaseExpired TransferPhase = "Expired"
	// TransferPhaseFailed: the Claim stopped holding the device before the
	// transfer completed; nothing was handed on.
	TransferPhaseFailed TransferPhase = "Failed"
)

// TransferStatus is the observed state of a Transfer.
type TransferStatus struct {
	// phase: Pending, Offered, Completed, Expired or Failed.
	// +optional
	Phase TransferPhase `json:"phase,omitempty"`

	// deviceName is the Device being handed on.
	// +optional
	DeviceName string `json:"deviceName,omitempty"`

	// expiresAt is when an unaccepted offer lapses.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// completionTime is when the device was handed on.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// claimCodeSecretName is the Secret, in this namespace, holding the
	// fresh claim code of a release with rotateClaimCode.
	// +optional
	ClaimCodeSecretName string `json:"claimCodeSecretName,omitempty"`

	// conditions: Ready is True once the transfer completed; its reason says
	// what it waits for otherwise.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Transfer condition reasons.
const (
	// TransferReasonAwaitingRecipient: the recipient has not accepted yet.
	TransferReasonAwaitingRecipient = "AwaitingRecipient"
	// TransferReasonCompleted: the device was handed on.
	TransferReasonCompleted = "Completed"
	// TransferReasonExpired: the offer lapsed; create a new Transfer.
	TransferReasonExpired = "Expired"
	// TransferReasonClaimNotBound: the Claim does not hold a device.
	TransferReasonClaimNotBound = "ClaimNotBound"
	// TransferReasonTenantNotReady: this namespace is not a ready Tenant's.
	TransferReasonTenantNotReady = "TenantNotReady"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,categories=custody
// +kubebuilder:printcolumn:name="Claim",type=string,JSONPath=`.spec.claimName`
// +kubebuilder:printcolumn:name="Recipient",type=string,JSONPath=`.spec.recipient.tenant`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiresAt`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Transfer is a holder's offer to hand one of its devices on: to a named
// tenant, which accepts with a Claim, or to whoever next proves ownership.
// It lives in the offering tenant's namespace.
type Transfer struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the offer. Immutable.
	// +required
	Spec TransferSpec `json:"spec"`

	// status is the outcome, written by the manager.
	// +optional
	Status TransferStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// TransferList is a list of Transfers.
type TransferList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of Transfers.
	Items []Transfer `json:"items"`
}
