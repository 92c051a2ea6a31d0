package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// DeviceProofPurpose says what a device proved, and so what the manager does
// with the proof.
// +kubebuilder:validation:Enum=Enroll;Renew;Possession
type DeviceProofPurpose string

const (
	// DeviceProofEnroll: the device signed a fresh challenge and a CSR with
	// its identity key; a bound device gets a certificate for the CSR.
	DeviceProofEnroll DeviceProofPurpose = "Enroll"
	// DeviceProofRenew: the device presented its current certificate over
	// mutual TLS and a CSR for the same key.
	DeviceProofRenew DeviceProofPurpose = "Renew"
	// DeviceProofPossession: the device signed a fresh challenge and the
	// digest of the pairing code a claimant gave it; it confirms that
	// claimant's Claim, and no other.
	DeviceProofPossession DeviceProofPurpose = "Possession"
)

// DeviceProofSpec is what the gateway received from a device. The manager
// verifies all of it again against the Device before acting on it. Immutable.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a device proof is immutable: it records what the device sent",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="self.purpose == 'Possession' ? has(self.pairingDigest) && has(self.signature) && has(self.challenge) : has(self.csr)",message="an Enroll or Renew proof needs csr; a Possession proof needs challenge, signature and pairingDigest",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.purpose != 'Enroll' || (has(self.challenge) && has(self.signature))",message="an Enroll proof needs challenge and signature",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.purpose != 'Renew' || has(self.clientCertificate)",message="a Renew proof needs clientCertificate",reason=FieldValueRequired
type DeviceProofSpec struct {
	// purpose of the proof: Enroll, Renew or Possession.
	// +required
	Purpose DeviceProofPurpose `json:"purpose"`

	// deviceName is the Device the proof is for ("<model>.<serial>").
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=100
	DeviceName string `json:"deviceName"`

	// challenge is the gateway's challenge token that the device signed.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Challenge string `json:"challenge,omitempty"`

	// signature is the device identity key's signature (standard base64)
	// over the purpose, the challenge and the digest of what the device sent.
	// +optional
	// +kubebuilder:validation:MaxLength=700
	Signature string `json:"signature,omitempty"`

	// csr is the PEM certificate signing request the device sent.
	// +optional
	// +kubebuilder:validation:MaxLength=8192
	CSR string `json:"csr,omitempty"`

	// clientCertificate is the PEM certificate the device presented over
	// mutual TLS (Renew).
	// +optional
	// +kubebuilder:validation:MaxLength=8192
	ClientCertificate string `json:"clientCertificate,omitempty"`

	// pairingDigest is the hex SHA-256 digest of the pairing code the device
	// was given (Possession). The pairing code itself is never recorded here.
	// +optional
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	PairingDigest string `json:"pairingDigest,omitempty"`

	// pairingToken names the pairing token whose digest pairingDigest is,
	// when the device claims itself with a tenant's token (Possession).
	// +optional
	PairingToken *DeviceProofToken `json:"pairingToken,omitempty"`
}

// DeviceProofToken names a tenant's pairing token (never its secret).
type DeviceProofToken struct {
	// tenant whose token it is.
	// +required
	// +kubebuilder:validation:MaxLength=50
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Tenant string `json:"tenant"`

	// tokenID is the token's ID: its Secret is pairing-token-<tokenID> in
	// the tenant's namespace.
	// +required
	// +kubebuilder:validation:Pattern=`^[a-z0-9]{6}$`
	TokenID string `json:"tokenID"`
}

// DeviceProofPhase is where a proof stands.
// +kubebuilder:validation:Enum=Pending;Issued;Confirmed;Rejected
type DeviceProofPhase string

const (
	// DeviceProofPhasePending: being verified, or its certificate is being issued.
	DeviceProofPhasePending DeviceProofPhase = "Pending"
	// DeviceProofPhaseIssued: the certificate was issued (Enroll, Renew).
	DeviceProofPhaseIssued DeviceProofPhase = "Issued"
	// DeviceProofPhaseConfirmed: a possession proof confirmed a Claim.
	DeviceProofPhaseConfirmed DeviceProofPhase = "Confirmed"
	// DeviceProofPhaseRejected: the proof was not accepted; reason says why.
	DeviceProofPhaseRejected DeviceProofPhase = "Rejected"
)

// Reasons on a DeviceProof. They are for support staff; the gateway tells
// the device only what it may know.
const (
	// DeviceProofReasonInvalid: the signature, challenge or CSR did not verify.
	DeviceProofReasonInvalid = "ProofInvalid"
	// DeviceProofReasonNotBound: the device is not bound to a tenant.
	DeviceProofReasonNotBound = "NotBound"
	// DeviceProofReasonIdentityMismatch: the CSR asks for another identity
	// than the one derived from the Device.
	DeviceProofReasonIdentityMismatch = "IdentityMismatch"
	// DeviceProofReasonCertificateNotCurrent: the certificate presented for
	// renewal is not a current certificate of the device's binding.
	DeviceProofReasonCertificateNotCurrent = "CertificateNotCurrent"
	// DeviceProofReasonNoMatchingClaim: no Claim of the device waits for
	// this pairing code.
	DeviceProofReasonNoMatchingClaim = "NoMatchingClaim"
	// DeviceProofReasonTokenRefused: the pairing token is unknown, expired,
	// used up, revoked, not for this serial, or the device is not free.
	DeviceProofReasonTokenRefused = "PairingTokenRefused" //nolint:gosec // a reason, not a credential
	// DeviceProofReasonIssuanceFailed: cert-manager denied or failed the request.
	DeviceProofReasonIssuanceFailed = "IssuanceFailed"
	// DeviceProofReasonIssued: the certificate was issued.
	DeviceProofReasonIssued = "Issued"
	// DeviceProofReasonConfirmed: a Claim was confirmed.
	DeviceProofReasonConfirmed = "Confirmed"
)

// ObjectReference names an object by name and UID.
type ObjectReference struct {
	// name of the object.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// uid of the object, so that a namesake is never mistaken for it.
	// +required
	UID types.UID `json:"uid"`
}

// DeviceProofStatus is the manager's verdict on a proof.
type DeviceProofStatus struct {
	// phase: Pending, Issued, Confirmed or Rejected.
	// +optional
	Phase DeviceProofPhase `json:"phase,omitempty"`

	// reason is a CamelCase reason for the phase.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`

	// message explains the phase to support staff.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`

	// tenant the device was bound to when the proof was verified.
	// +optional
	// +kubebuilder:validation:MaxLength=50
	Tenant string `json:"tenant,omitempty"`

	// claimUID is the UID of the Claim the device was bound to (Enroll,
	// Renew) or that the proof confirmed (Possession).
	// +optional
	ClaimUID types.UID `json:"claimUID,omitempty"`

	// certificateRequest is the cert-manager CertificateRequest the manager
	// created for this proof. The approver approves only that request.
	// +optional
	CertificateRequest *ObjectReference `json:"certificateRequest,omitempty"`

	// certificate is the issued certificate chain (PEM, public).
	// +optional
	// +kubebuilder:validation:MaxLength=16384
	Certificate string `json:"certificate,omitempty"`

	// ca is the issuing tenant CA certificate (PEM, public).
	// +optional
	// +kubebuilder:validation:MaxLength=8192
	CA string `json:"ca,omitempty"`

	// completionTime is when the proof reached a final phase; finished
	// proofs are deleted an hour later.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=dproof,categories=custody
// +kubebuilder:printcolumn:name="Purpose",type=string,JSONPath=`.spec.purpose`
// +kubebuilder:printcolumn:name="Device",type=string,JSONPath=`.spec.deviceName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// DeviceProof records one proof a device made through the gateway: a signed
// challenge with a CSR (Enroll), a renewal over mutual TLS (Renew), or a
// signed pairing code (Possession). The gateway creates it in the operator
// namespace, named after the challenge's nonce, so that a challenge is used
// at most once across all gateway replicas; the manager verifies it again and
// acts on it. Neither tenants nor the ERP can read or write DeviceProofs.
type DeviceProof struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the device sent.
	// +required
	Spec DeviceProofSpec `json:"spec"`

	// status is the manager's verdict.
	// +optional
	Status DeviceProofStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// DeviceProofList is a list of DeviceProofs.
type DeviceProofList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of DeviceProofs.
	Items []DeviceProof `json:"items"`
}
