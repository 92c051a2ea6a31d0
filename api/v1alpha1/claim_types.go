package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SecretKeyReference names a key of a Secret in the Claim's namespace.
type SecretKeyReference struct {
	// name of the Secret, in the Claim's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key of the Secret's data that holds the claim code. Defaults to "code".
	// +optional
	// +kubebuilder:default=code
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// ClaimCodeProof offers the claim code printed in the device's documentation
// pack as proof of ownership.
type ClaimCodeProof struct {
	// secretRef names the Secret (in the Claim's namespace) and key that hold
	// the claim code, as printed ("XXXX-XXXX-XXXX-XXXX-XXXX"; case, spaces and
	// dashes do not matter). The manager deletes the Secret once the code has
	// bound the device: a code is good for one binding only. The code itself
	// must never appear in the Claim.
	// +required
	SecretRef SecretKeyReference `json:"secretRef"`
}

// PossessionProof asks for a live proof of possession of the device. It has
// no fields today; its presence is the request.
type PossessionProof struct{}

// SaleRecordProof offers the ERP's sale record as proof: the device's
// spec.sale names this Claim's tenant as custodian or owner. It has no
// fields; its presence is the offer.
type SaleRecordProof struct{}

// TransferAcceptance accepts a transfer offered by the device's current
// holder with a Transfer naming this Claim's tenant.
type TransferAcceptance struct {
	// fromTenant is the Tenant offering the device.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=50
	FromTenant string `json:"fromTenant"`
}

// PairingTokenProof records that the device itself presented one of the
// tenant's pairing tokens together with a possession proof. Only the
// manager creates Claims with it.
type PairingTokenProof struct {
	// secretName is the pairing-token Secret, in this namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
}

// ReleasePolicy says what happens to a bound Device when its Claim is deleted.
// +kubebuilder:validation:Enum=Retain;Release
type ReleasePolicy string

const (
	// ReleasePolicyRetain keeps the device bound to the tenant; a new Claim
	// for the same serial in the tenant's namespace reattaches it without a
	// new proof. This protects ownership from an accidental deletion.
	ReleasePolicyRetain ReleasePolicy = "Retain"
	// ReleasePolicyRelease ends the binding: the device stops being the
	// tenant's at once, and the next owner needs a fresh proof.
	ReleasePolicyRelease ReleasePolicy = "Release"
)

// ClaimSpec is a tenant's request for one device.
// +kubebuilder:validation:XValidation:rule="has(self.claimCode) || has(self.possession) || has(self.saleRecord) || has(self.transfer)",message="a Claim must offer a proof of ownership: claimCode.secretRef (the Secret holding the claim code) and/or possession: {} (pair with the device), or saleRecord: {} (the ERP's sale names this tenant), or transfer.fromTenant (accept a transfer)",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="!(has(self.saleRecord) || has(self.transfer)) || (!has(self.claimCode) && !has(self.possession) && !(has(self.saleRecord) && has(self.transfer)))",message="saleRecord and transfer are proofs on their own: do not combine them with each other or with claimCode or possession",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.pairingToken) || (has(self.possession) && !has(self.claimCode))",message="a pairing-token Claim is created by the manager with a possession proof",fieldPath=".pairingToken",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="has(self.saleRecord) == has(oldSelf.saleRecord) && has(self.transfer) == has(oldSelf.transfer) && (!has(self.transfer) || self.transfer == oldSelf.transfer) && has(self.pairingToken) == has(oldSelf.pairingToken) && (!has(self.pairingToken) || self.pairingToken == oldSelf.pairingToken)",message="the proof of a Claim cannot be changed once made: create a new Claim",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="has(self.requestedBy) == has(oldSelf.requestedBy) && (!has(self.requestedBy) || self.requestedBy == oldSelf.requestedBy)",message="requestedBy is set by the admission webhook when the Claim is created and cannot be changed",fieldPath=".requestedBy",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="self.serialNumber == oldSelf.serialNumber && self.model == oldSelf.model",message="serialNumber and model are immutable: create a new Claim for another device",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="has(self.claimCode) == has(oldSelf.claimCode) && (!has(self.claimCode) || self.claimCode == oldSelf.claimCode)",message="the proof of a Claim cannot be changed once made: create a new Claim",fieldPath=".claimCode",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="has(self.possession) == has(oldSelf.possession)",message="the proof of a Claim cannot be changed once made: create a new Claim",fieldPath=".possession",reason=FieldValueForbidden
type ClaimSpec struct {
	// serialNumber of the device, in upper case as printed on its label.
	// Immutable.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$')",message="serialNumber must be upper-case letters, digits and '-', as printed on the device label",reason=FieldValueInvalid
	SerialNumber string `json:"serialNumber"`

	// model of the device, in upper case as printed on its label. Immutable.
	// +required
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$')",message="model must be upper-case letters, digits and '-', as printed on the device label",reason=FieldValueInvalid
	Model string `json:"model"`

	// claimCode offers the device's claim code as proof of ownership.
	// +optional
	ClaimCode *ClaimCodeProof `json:"claimCode,omitempty"`

	// possession asks for live proof that the claimant has the device: the
	// manager shows a pairing code in status.pairing, someone enters it into
	// the device during set-up, and the device signs it together with a fresh
	// challenge from the gateway. Only the device whose factory key the
	// Device records can confirm it, and it confirms only this Claim.
	// +optional
	Possession *PossessionProof `json:"possession,omitempty"`

	// saleRecord offers the ERP's sale record as proof: it binds when the
	// device's sale names this tenant (custodianTenant or ownerTenant), the
	// record has not been used, and policy allows sale-record proofs.
	// +optional
	SaleRecord *SaleRecordProof `json:"saleRecord,omitempty"`

	// transfer accepts a transfer of the device that its current holder
	// offered to this tenant with a Transfer. The binding moves in one step.
	// +optional
	Transfer *TransferAcceptance `json:"transfer,omitempty"`

	// pairingToken is set by the manager on the Claim it creates when a
	// device presents one of this tenant's pairing tokens with a possession
	// proof. Users cannot set it.
	// +optional
	PairingToken *PairingTokenProof `json:"pairingToken,omitempty"`

	// requestedBy is the user who created the Claim, as the API server
	// authenticated them. The admission webhook sets it; it is recorded in
	// the device's custody history.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	RequestedBy string `json:"requestedBy,omitempty"`

	// releasePolicy says what happens to the device when this Claim is
	// deleted: Retain (the default) keeps it bound to the tenant so that a new
	// Claim can take it over; Release ends the binding at once.
	// +optional
	// +kubebuilder:default=Retain
	ReleasePolicy ReleasePolicy `json:"releasePolicy,omitempty"`
}

// ClaimPhase is where a Claim stands.
// +kubebuilder:validation:Enum=Pending;AwaitingDevice;CoolingOff;Bound;Denied;Disputed;Lost
type ClaimPhase string

const (
	// ClaimPhasePending: the claim has not been decided yet (for example its
	// Secret is missing, or the tenant must wait after failed attempts).
	ClaimPhasePending ClaimPhase = "Pending"
	// ClaimPhaseAwaitingDevice: waiting for the device to prove possession
	// with the pairing code in status.pairing.
	ClaimPhaseAwaitingDevice ClaimPhase = "AwaitingDevice"
	// ClaimPhaseCoolingOff: proven, waiting out the cooling-off period
	// (status.coolingOffUntil); a competing claim meanwhile is a dispute.
	ClaimPhaseCoolingOff ClaimPhase = "CoolingOff"
	// ClaimPhaseBound: the device is bound to this Claim.
	ClaimPhaseBound ClaimPhase = "Bound"
	// ClaimPhaseDenied: the proof was not accepted. Final: create a new Claim.
	ClaimPhaseDenied ClaimPhase = "Denied"
	// ClaimPhaseDisputed: the proof was valid but the device is held by
	// another tenant, or another valid claim competes for it; support staff
	// have been told and resolve it.
	ClaimPhaseDisputed ClaimPhase = "Disputed"
	// ClaimPhaseLost: the device was bound to this Claim and no longer is
	// (released by support, transferred or decommissioned).
	ClaimPhaseLost ClaimPhase = "Lost"
)

// Pairing is the pairing code of a Claim that asked for possession proof.
type Pairing struct {
	// code is the pairing code to enter into the device during set-up
	// (`custody-device pair --code ...`). It is good for this Claim only and
	// until expiresAt. Anyone who can read this Claim can read it.
	// +required
	// +kubebuilder:validation:MaxLength=32
	Code string `json:"code"`

	// expiresAt is when the pairing code stops being accepted; a Claim whose
	// device has not proved possession by then is Denied.
	// +required
	ExpiresAt metav1.Time `json:"expiresAt"`

	// confirmedAt is when the device proved possession with this code.
	// +optional
	ConfirmedAt *metav1.Time `json:"confirmedAt,omitempty"`
}

// ClaimCertificate is the public part of the bound device's current
// certificate.
type ClaimCertificate struct {
	// certificate is the PEM certificate chain (leaf first).
	// +required
	// +kubebuilder:validation:MaxLength=16384
	Certificate string `json:"certificate"`

	// fingerprint is "sha256:<hex>" of the leaf's DER.
	// +required
	// +kubebuilder:validation:MaxLength=71
	Fingerprint string `json:"fingerprint"`

	// notAfter is when the leaf expires; the device renews before then.
	// +required
	NotAfter metav1.Time `json:"notAfter"`
}

// ClaimStatus is the observed state of a Claim.
type ClaimStatus struct {
	// phase says where the claim stands: Pending, AwaitingDevice,
	// CoolingOff, Bound, Denied, Disputed or Lost.
	// +optional
	Phase ClaimPhase `json:"phase,omitempty"`

	// deviceName is the Device bound to this Claim, once it is bound.
	// +optional
	DeviceName string `json:"deviceName,omitempty"`

	// boundAt is when the device was bound to this Claim.
	// +optional
	BoundAt *metav1.Time `json:"boundAt,omitempty"`

	// pairing holds the pairing code when spec.possession is set.
	// +optional
	Pairing *Pairing `json:"pairing,omitempty"`

	// certificate is the bound device's current certificate (public part).
	// +optional
	Certificate *ClaimCertificate `json:"certificate,omitempty"`

	// coolingOffUntil is when the cooling-off period of this Claim ends.
	// +optional
	CoolingOffUntil *metav1.Time `json:"coolingOffUntil,omitempty"`

	// retryAfter is set while claims of this tenant for this serial number are
	// throttled after failed attempts; the claim is verified after it.
	// +optional
	RetryAfter *metav1.Time `json:"retryAfter,omitempty"`

	// codeVerified records that the claim code was verified and proved
	// ownership of the device, when the manager could not at once take back
	// the failed attempt it counted on the Tenant before verifying (a write
	// of the Tenant failed). The manager then takes the attempt back and
	// proceeds without verifying the code again. Written by the manager
	// only (the Claim webhook refuses it from anyone else); it holds while
	// the Device and its claim-code verifier are the ones the code was
	// verified against.
	// +optional
	CodeVerified *ClaimCodeVerification `json:"codeVerified,omitempty"`

	// observedGeneration is the generation the manager last reconciled.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready is True once the device is bound; its reason says
	// what to do otherwise.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClaimCodeVerification is the manager's record that a Claim's claim code
// proved ownership of a device.
type ClaimCodeVerification struct {
	// verifiedAt is when the code was verified.
	VerifiedAt metav1.Time `json:"verifiedAt"`

	// verifier identifies what the code was verified against: the SHA-256
	// digest (hex) of this Claim's UID, the Device's UID and its
	// spec.claimCode.verifier. Another Claim, a Device recreated under the
	// same name, or a new claim code does not match it.
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	Verifier string `json:"verifier"`
}

// Claim condition reasons. They are CamelCase and say what a user can do.
const (
	// ClaimReasonBound: the device is bound to this Claim.
	ClaimReasonBound = "Bound"
	// ClaimReasonVerifying: the claim is being verified.
	ClaimReasonVerifying = "Verifying"
	// ClaimReasonSecretNotFound: create the Secret named in
	// spec.claimCode.secretRef; the claim proceeds when it appears.
	ClaimReasonSecretNotFound = "ClaimCodeSecretNotFound"
	// ClaimReasonClaimCodeMalformed: the code in the Secret is not a
	// well-formed claim code (wrong length or check character): fix the
	// Secret; the claim is retried when it changes. Not counted as an attempt.
	ClaimReasonClaimCodeMalformed = "ClaimCodeMalformed"
	// ClaimReasonNotVerified: no claimable device matches the serial number,
	// model and claim code. Used alike for a wrong code and an unknown serial.
	ClaimReasonNotVerified = "ClaimNotVerified"
	// ClaimReasonThrottled: too many failed attempts; wait until retryAfter.
	ClaimReasonThrottled = "TooManyFailedAttempts"
	// ClaimReasonClaimCodeUsed: the code was right but has already bound the
	// device once; ask the seller for a new claim code.
	ClaimReasonClaimCodeUsed = "ClaimCodeAlreadyUsed"
	// ClaimReasonHeldByAnotherTenant: the code was right but another tenant
	// holds the device; support staff have been notified.
	ClaimReasonHeldByAnotherTenant = "DeviceHeldByAnotherTenant"
	// ClaimReasonAlreadyBoundToTenant: another Claim of this tenant holds the
	// device; this one is redundant and can be deleted.
	ClaimReasonAlreadyBoundToTenant = "DeviceAlreadyClaimedByTenant"
	// ClaimReasonTenantNotReady: the namespace is not a ready Tenant's.
	ClaimReasonTenantNotReady = "TenantNotReady"
	// ClaimReasonDeviceReleased: the device is no longer bound to this
	// Claim: it was released (by a Transfer that released it for claiming,
	// or when its Tenant was deleted), or the manager cannot tell how the
	// binding ended (the Device is gone, or its history no longer holds
	// the change). The Claim can be deleted.
	ClaimReasonDeviceReleased = "DeviceReleased"
	// ClaimReasonDeviceTransferred: a Transfer moved the device to another
	// tenant's Claim (the message names the Transfer and the recipient).
	// The Claim can be deleted.
	ClaimReasonDeviceTransferred = "DeviceTransferred"
	// ClaimReasonDeviceDecommissioned: the device was taken out of service
	// (spec.decommissioned), which ended its binding. The Claim can be
	// deleted.
	ClaimReasonDeviceDecommissioned = "DeviceDecommissioned"
	// ClaimReasonAwaitingDevice: enter the pairing code from status.pairing
	// into the device; the claim proceeds when the device proves possession.
	ClaimReasonAwaitingDevice = "AwaitingDevice"
	// ClaimReasonProofRequired: the proof offered is right but the device's
	// claim policy needs another one (see the message): create a new Claim
	// offering it.
	ClaimReasonProofRequired = "AdditionalProofRequired"
	// ClaimReasonCoolingOff: wait until status.coolingOffUntil; the claim
	// binds then unless another claim competes.
	ClaimReasonCoolingOff = "CoolingOff"
	// ClaimReasonDisputed: another valid claim competes for the device;
	// support staff resolve the dispute.
	ClaimReasonDisputed = "DeviceDisputed"
	// ClaimReasonDisputeLost: support staff awarded the device to another
	// claim, or reset it.
	ClaimReasonDisputeLost = "DisputeResolvedForAnother"
	// ClaimReasonDisputeFull: ownership was proven while the device's
	// dispute already held MaxDisputeClaims claims; this Claim was not added
	// to it and is final.
	ClaimReasonDisputeFull = "DisputeFull"
	// ClaimReasonNoTransferOffer: no Transfer of this device to this tenant
	// is on offer from fromTenant; ask the holder to create one.
	ClaimReasonNoTransferOffer = "NoTransferOffer"
	// ClaimReasonSaleRecordNotValid: the device's sale record does not name
	// this tenant, has been used, or policy forbids sale-record proofs.
	ClaimReasonSaleRecordNotValid = "SaleRecordNotValid"
	// ClaimReasonDeleting: the Claim is being deleted.
	ClaimReasonDeleting = "Deleting"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=clm,categories=custody
// +kubebuilder:printcolumn:name="Serial",type=string,JSONPath=`.spec.serialNumber`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.model`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Cert Expiry",type=string,JSONPath=`.status.certificate.notAfter`
// +kubebuilder:printcolumn:name="Device",type=string,JSONPath=`.status.deviceName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Claim is a tenant's claim that one device is theirs. Once bound, the Claim
// is the tenant's handle on the device.
type Claim struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the device asked for and the proof offered.
	// +required
	Spec ClaimSpec `json:"spec"`

	// status is the outcome, written by the manager.
	// +optional
	Status ClaimStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// ClaimList is a list of Claims.
type ClaimList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of Claims.
	Items []Claim `json:"items"`
}

// DeviceName is the name of the Device this Claim asks for.
func (c *Claim) DeviceName() string {
	return DeviceName(c.Spec.Model, c.Spec.SerialNumber)
}
