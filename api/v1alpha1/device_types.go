package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/custody-dev/custody/pkg/protocol"
)

// DeviceIdentity is the identity the device was given at manufacture.
type DeviceIdentity struct {
	// publicKey is the device's identity public key as a PEM "PUBLIC KEY"
	// block (PKIX SubjectPublicKeyInfo), ECDSA P-256 or Ed25519. The private
	// key never leaves the device. Immutable.
	// +required
	// +kubebuilder:validation:MinLength=100
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.startsWith('-----BEGIN PUBLIC KEY-----')",message="publicKey must be a PEM block starting with '-----BEGIN PUBLIC KEY-----' (PKIX SubjectPublicKeyInfo)",reason=FieldValueInvalid
	PublicKey string `json:"publicKey"`
}

// DeviceClaimCode holds the verifier of the device's secret claim code.
type DeviceClaimCode struct {
	// verifier is the salted, memory-hard hash of the claim code printed in the
	// device's documentation pack, in PHC string format:
	// "$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>" with
	// unpadded standard base64 salt (at least 16 bytes) and hash (32 bytes).
	// `custody-device factory` produces it. It is never the code itself.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.matches('^[$]argon2id[$]v=19[$]m=[0-9]{1,7},t=[0-9]{1,2},p=[0-9]{1,2}[$][A-Za-z0-9+/]{22,64}[$][A-Za-z0-9+/]{43}$')",message="verifier must be an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash) as written by 'custody-device factory'; never put the claim code itself here",reason=FieldValueInvalid
	Verifier string `json:"verifier"`
}

// Buyer is who bought the device according to the ERP.
type Buyer struct {
	// name of the buying organisation.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Name string `json:"name"`

	// contact is how the buyer is reached about this device (an e-mail address
	// or phone number), used to notify it of claims and disputes.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Contact string `json:"contact,omitempty"`
}

// SaleRecord is the ERP's record of the sale of a device.
// +kubebuilder:validation:XValidation:rule="!has(self.custodianTenant) || !has(self.ownerTenant)",message="a sale names either a custodianTenant (a wholesaler that sells the device on) or an ownerTenant (a direct sale), not both",reason=FieldValueInvalid
type SaleRecord struct {
	// orderReference is the ERP's order reference. It is printed on bills of
	// sale and shipping forms, so it is never accepted as a proof of ownership.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	OrderReference string `json:"orderReference"`

	// buyer is who bought the device: an end customer or a wholesaler.
	// +required
	Buyer Buyer `json:"buyer"`

	// custodianTenant names the registered Tenant that bought the device to
	// sell it on (a wholesaler or distributor). Until the custodian releases
	// or transfers the device, claims from other tenants are refused, so a
	// claim code photographed in its warehouse is worthless. The custodian
	// takes the device with a Claim offering spec.saleRecord.
	// +optional
	// +kubebuilder:validation:MaxLength=50
	CustodianTenant string `json:"custodianTenant,omitempty"`

	// ownerTenant names the registered Tenant that bought the device for its
	// own use (a direct sale). When the claim policies allow sale-record
	// proofs, the manager creates a Claim in that tenant's namespace and binds
	// it without a claim code: this sale record is the proof.
	// +optional
	// +kubebuilder:validation:MaxLength=50
	OwnerTenant string `json:"ownerTenant,omitempty"`

	// soldAt is when the sale happened.
	// +optional
	SoldAt *metav1.Time `json:"soldAt,omitempty"`
}

// DeviceClaimReference is the binding of a Device to a Claim. It is written
// only by the manager.
type DeviceClaimReference struct {
	// tenant is the name of the Tenant the device is bound to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=50
	Tenant string `json:"tenant"`

	// namespace of the bound Claim (the tenant's namespace).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`

	// name of the bound Claim.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// uid of the bound Claim, so that a new Claim with the same name is never
	// mistaken for the bound one.
	// +required
	UID types.UID `json:"uid"`

	// boundAt is when this binding began, on the manager's clock: set by
	// the manager whenever it writes claimRef for a new binding (bind,
	// transfer, award, reattach), unset in pendingClaim and dispute. A
	// client certificate is accepted for renewal and at the gateway only if
	// it was issued (notBefore, to the second) at or after boundAt, so a
	// certificate of an earlier binding is never revived by a later one.
	// A binding written before this field existed has none: then only the
	// certificates listed in status.certificates are accepted.
	// +optional
	BoundAt *metav1.Time `json:"boundAt,omitempty"`
}

// DeviceSpec is the manufacturer's record of one physical device.
// +kubebuilder:validation:XValidation:rule="self.serialNumber == oldSelf.serialNumber && self.model == oldSelf.model",message="serialNumber and model are immutable: they name the physical device",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="self.identity == oldSelf.identity",message="identity is immutable: a device's factory key never changes; decommission the device and register its replacement instead",fieldPath=".identity",reason=FieldValueForbidden
type DeviceSpec struct {
	// serialNumber is the serial number printed on the device, in upper case.
	// Immutable.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$`
	SerialNumber string `json:"serialNumber"`

	// model is the product model, in upper case. Immutable.
	// +required
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^[A-Z0-9][A-Z0-9-]*[A-Z0-9]$`
	Model string `json:"model"`

	// identity is the device's factory-made identity. Immutable.
	// +required
	Identity DeviceIdentity `json:"identity"`

	// claimCode holds the verifier of the device's claim code. Without it the
	// device cannot be claimed by code.
	// +optional
	ClaimCode *DeviceClaimCode `json:"claimCode,omitempty"`

	// sale is the ERP's sale record. Informational for claims by code; used
	// by the custodian journey.
	// +optional
	Sale *SaleRecord `json:"sale,omitempty"`

	// claimPolicy tightens claim verification for this device.
	// +optional
	ClaimPolicy *ClaimPolicy `json:"claimPolicy,omitempty"`

	// decommissioned takes the device out of service (RMA, scrap): the
	// manager ends its binding at once (its certificates stop renewing and
	// are refused at the gateway), and it cannot be claimed or enrolled.
	// Setting it back to false returns the device to service unbound; a
	// claim code that already bound it never binds again, so the ERP issues
	// a new one for its next owner.
	// +optional
	Decommissioned bool `json:"decommissioned,omitempty"`

	// claimRef is the binding of this device to a tenant's Claim. Written only
	// by the Custody manager; an admission webhook rejects every other writer.
	// It lives in spec, as PersistentVolume.spec.claimRef does, because
	// ownership is durable data that must survive a backup and restore that
	// drops status.
	// +optional
	ClaimRef *DeviceClaimReference `json:"claimRef,omitempty"`

	// consumedClaimCodes lists digests ("sha256:<hex>" of the verifier
	// string) of claim codes that have already bound this device once. A
	// consumed code never binds again: after a release the next owner needs a
	// fresh proof. Written only by the manager.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=71
	ConsumedClaimCodes []string `json:"consumedClaimCodes,omitempty"`

	// consumedSaleRecords lists the order references of sale records that
	// have already been used as proof (by the custodian or the direct-sale
	// owner). A used sale record proves nothing again and no longer holds
	// the device in custody. Written only by the manager.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=128
	ConsumedSaleRecords []string `json:"consumedSaleRecords,omitempty"`

	// pendingClaim is the Claim waiting out its cooling-off period. A second
	// valid claim meanwhile turns the device Disputed. Written only by the
	// manager.
	// +optional
	PendingClaim *PendingClaim `json:"pendingClaim,omitempty"`

	// dispute lists competing valid claims that support staff must resolve
	// with a SupportAction. While it is set no claim binds and no
	// certificate is issued. Written only by the manager.
	// +optional
	Dispute *Dispute `json:"dispute,omitempty"`

	// custody is the manager's own record of the device's custody chain,
	// written in the same write as every ownership change, so that a crash
	// or a restore without status never separates a change from its history
	// entry. Written only by the manager (and by a restore identity).
	// +optional
	Custody *DeviceCustody `json:"custody,omitempty"`
}

// DeviceCustody is the manager's record of a device's custody chain, kept in
// spec next to the binding it explains.
type DeviceCustody struct {
	// head is the newest entry of the device's custody history, written
	// together with the change it records. status.history and the audit log
	// are completed from it: a change is never applied without its entry,
	// and an entry is never logged for a change that did not happen.
	// +required
	Head CustodyRecord `json:"head"`

	// deviceUID is the metadata.uid of the Device the head was written to.
	// A Device re-created from a backup has a new UID: the manager then
	// records that a restore happened and carries the chain on from head.
	// +required
	DeviceUID types.UID `json:"deviceUID"`

	// recordedSale is the order reference of the newest sale recorded in the
	// history (a Sold entry), so that a sale is recorded once even after a
	// restore or after its entry left status.history.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	RecordedSale string `json:"recordedSale,omitempty"`

	// decommissioned is true while the device's decommissioning
	// (spec.decommissioned) is recorded in the history, so that it is
	// recorded once, whatever changes follow (a reset, a restore).
	// +optional
	Decommissioned bool `json:"decommissioned,omitempty"`
}

// PendingClaim is a Claim that proved ownership with fewer proofs than the
// claim policy wants for an immediate binding.
type PendingClaim struct {
	DeviceClaimReference `json:",inline"`

	// proof is what the Claim proved ownership with.
	// +required
	// +kubebuilder:validation:MaxLength=64
	Proof string `json:"proof"`

	// until is when the cooling-off period ends; the Claim binds then unless
	// a competing claim has turned the device Disputed.
	// +required
	Until metav1.Time `json:"until"`
}

// Bounds of the manager's lists in DeviceSpec, the same numbers as their
// MaxItems markers (TestCRDBoundsMatchGo checks the generated CRD). The
// manager keeps the newest entries of each list within its bound.
const (
	// MaxConsumedClaimCodes bounds spec.consumedClaimCodes.
	MaxConsumedClaimCodes = 16
	// MaxConsumedSaleRecords bounds spec.consumedSaleRecords.
	MaxConsumedSaleRecords = 16
	// MaxDisputeClaims bounds spec.dispute.claims: a valid claim that finds
	// the dispute full is denied, never added.
	MaxDisputeClaims = 8
)

// Dispute is a set of competing valid claims on one device.
type Dispute struct {
	// since is when the second valid claim arrived.
	// +required
	Since metav1.Time `json:"since"`

	// claims are the competing Claims, first come first.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	Claims []DisputedClaim `json:"claims"`
}

// DisputedClaim is one of the competing Claims of a dispute.
type DisputedClaim struct {
	DeviceClaimReference `json:",inline"`

	// proof is what the Claim proved ownership with.
	// +required
	// +kubebuilder:validation:MaxLength=64
	Proof string `json:"proof"`
}

// DevicePhase is a Device's place in its life cycle.
// +kubebuilder:validation:Enum=Available;Pending;Bound;Disputed;Released;Decommissioned
type DevicePhase string

const (
	// DevicePhaseAvailable: not bound; claimable if it has an unused claim code.
	DevicePhaseAvailable DevicePhase = "Available"
	// DevicePhasePending: a claim waits out its cooling-off period.
	DevicePhasePending DevicePhase = "Pending"
	// DevicePhaseBound: bound to exactly one tenant's Claim.
	DevicePhaseBound DevicePhase = "Bound"
	// DevicePhaseDisputed: competing valid claims wait for support staff.
	DevicePhaseDisputed DevicePhase = "Disputed"
	// DevicePhaseReleased: was bound, has been released, and its claim code
	// is used up; it needs a fresh proof (a new claim code) to be claimed.
	DevicePhaseReleased DevicePhase = "Released"
	// DevicePhaseDecommissioned: out of service for good.
	DevicePhaseDecommissioned DevicePhase = "Decommissioned"
)

// CustodyEventType names an ownership change recorded in a Device's history.
type CustodyEventType string

const (
	// CustodyEventSold: the ERP recorded a sale (reference: the order).
	CustodyEventSold CustodyEventType = "Sold"
	// CustodyEventClaimed: a Claim proved ownership and waits out its
	// cooling-off period.
	CustodyEventClaimed CustodyEventType = "Claimed"
	// CustodyEventBound: the device was bound to a tenant.
	CustodyEventBound CustodyEventType = "Bound"
	// CustodyEventReleased: the binding ended.
	CustodyEventReleased CustodyEventType = "Released"
	// CustodyEventTransferred: the binding moved from fromTenant to tenant.
	CustodyEventTransferred CustodyEventType = "Transferred"
	// CustodyEventDisputed: a competing valid claim made the device Disputed.
	CustodyEventDisputed CustodyEventType = "Disputed"
	// CustodyEventResolved: support staff resolved a dispute or reset the
	// device (reference: the SupportAction; reason: why).
	CustodyEventResolved CustodyEventType = "Resolved"
	// CustodyEventDecommissioned: the ERP took the device out of service.
	CustodyEventDecommissioned CustodyEventType = "Decommissioned"
	// CustodyEventReattached: the tenant's binding moved to a new Claim of the
	// same tenant after the previous Claim was deleted with policy Retain.
	CustodyEventReattached CustodyEventType = "Reattached"
	// CustodyEventRecommissioned: the ERP returned a decommissioned device
	// to service (unbound).
	CustodyEventRecommissioned CustodyEventType = "Recommissioned"
	// CustodyEventWithdrawn: a Claim that was cooling off or disputed was
	// deleted and no longer competes for the device.
	CustodyEventWithdrawn CustodyEventType = "Withdrawn"
	// CustodyEventRestored: the Device was re-created from a backup without
	// status; its binding and proofs are those of the backup, and the
	// entries before this one are in the audit log (reference: the restore
	// tool's field manager).
	CustodyEventRestored CustodyEventType = "Restored"
	// CustodyEventDataPurged: after tenant's ownership ended, the data plane
	// closed the device's connections in tenant's account and purged what
	// the account held of it (reference: the history entry that ended the
	// ownership; reason: what was closed and removed).
	CustodyEventDataPurged CustodyEventType = "DataPurged"
)

// CustodyRecord is one entry of a Device's custody history. Entries form a
// hash chain: each hash covers the entry and the previous entry's hash, so
// editing or removing an entry is detected by `custodyctl history verify`.
// The complete chain is also written to the manager's audit log.
type CustodyRecord struct {
	// sequence numbers the entries of the device's history from 1, without
	// gaps.
	// +required
	// +kubebuilder:validation:Minimum=1
	Sequence int64 `json:"sequence"`

	// time the change happened.
	// +required
	Time metav1.Time `json:"time"`

	// type of change: Sold, Claimed, Bound, Released, Transferred, Disputed,
	// Resolved, Decommissioned, Recommissioned, Reattached, Withdrawn,
	// Restored or DataPurged.
	// +required
	// +kubebuilder:validation:MaxLength=32
	Type CustodyEventType `json:"type"`

	// tenant the change concerns (the new holder for a transfer).
	// +optional
	// +kubebuilder:validation:MaxLength=50
	Tenant string `json:"tenant,omitempty"`

	// fromTenant is the previous holder, for a transfer.
	// +optional
	// +kubebuilder:validation:MaxLength=50
	FromTenant string `json:"fromTenant,omitempty"`

	// claim is "<namespace>/<name>" of the Claim involved.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	Claim string `json:"claim,omitempty"`

	// claimUID is the UID of the Claim involved; with type, tenant and
	// reference it makes the entry unique, so a retried reconcile never
	// records the same change twice.
	// +optional
	ClaimUID types.UID `json:"claimUID,omitempty"`

	// proof is what proved ownership (ClaimCode, Possession, SaleRecord,
	// Transfer, PairingToken+Possession, ...), or why the binding ended
	// (ClaimDeleted, TenantDeleted, Decommissioned, ...).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Proof string `json:"proof,omitempty"`

	// actor is who caused the change: "user:<name>" for a person or service
	// account (as the API server authenticated it), "erp:<field manager>"
	// for the ERP's writes, "device" for a device's own proof, "manager" for
	// the manager acting on policy.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	Actor string `json:"actor,omitempty"`

	// reference names what the change came from: the sale's order
	// reference, a Transfer ("<namespace>/<name>") or a SupportAction.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	Reference string `json:"reference,omitempty"`

	// reason is the explanation support staff gave for a resolution.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Reason string `json:"reason,omitempty"`

	// previousHash is the hash of the entry before this one ("" for the
	// first entry of a device).
	// +optional
	// +kubebuilder:validation:MaxLength=71
	PreviousHash string `json:"previousHash,omitempty"`

	// hash is "sha256:<hex>" over this entry's fields and previousHash.
	// +required
	// +kubebuilder:validation:MaxLength=71
	Hash string `json:"hash"`
}

// DeviceCertificate summarises one certificate issued to the device.
type DeviceCertificate struct {
	// fingerprint is "sha256:<hex>" of the certificate's DER. A certificate
	// listed here for the device's current binding is accepted at the
	// gateway; so is any other of this binding (see claimRef.boundAt).
	// +required
	// +kubebuilder:validation:MaxLength=71
	Fingerprint string `json:"fingerprint"`

	// serialNumber is the certificate's serial number as `openssl x509 -serial`
	// prints it: upper-case hex, an even number of digits.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	SerialNumber string `json:"serialNumber,omitempty"`

	// notAfter is when the certificate expires.
	// +required
	NotAfter metav1.Time `json:"notAfter"`

	// tenant the certificate was issued under.
	// +required
	// +kubebuilder:validation:MaxLength=50
	Tenant string `json:"tenant"`

	// claimUID is the UID of the Claim the device was bound to when the
	// certificate was issued. A certificate of an earlier binding is refused
	// at the gateway even before it expires.
	// +required
	ClaimUID types.UID `json:"claimUID"`
}

// NotificationDelivery is how far the device's history has been delivered
// to one endpoint.
type NotificationDelivery struct {
	// endpoint is "operator/<name>" or "tenant/<tenant>".
	// +required
	// +kubebuilder:validation:MaxLength=128
	Endpoint string `json:"endpoint"`

	// deliveredSequence is the last history entry delivered (or not meant
	// for this endpoint); later entries are delivered in order.
	// +optional
	DeliveredSequence int64 `json:"deliveredSequence,omitempty"`

	// failedAttempts counts failed deliveries of the next entry; retries
	// back off exponentially.
	// +optional
	FailedAttempts int32 `json:"failedAttempts,omitempty"`

	// lastError says why the last delivery failed.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	LastError string `json:"lastError,omitempty"`
}

// DeviceReport is what the device last reported in its heartbeat.
type DeviceReport struct {
	// firmwareVersion the device runs.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	FirmwareVersion string `json:"firmwareVersion,omitempty"`

	// state is a short free-form health summary from the device.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	State string `json:"state,omitempty"`
}

// Bounds of the lists in DeviceStatus, the same numbers as their MaxItems
// markers (TestCRDBoundsMatchGo checks the generated CRD).
const (
	// MaxHistoryEntries bounds status.history: the newest entries are kept.
	MaxHistoryEntries = 32
	// MaxDeviceCertificates bounds status.certificates.
	MaxDeviceCertificates = 4
	// MaxNotificationDeliveries bounds status.notifications.
	MaxNotificationDeliveries = 16
)

// DeviceStatus is the observed state of a Device.
type DeviceStatus struct {
	// phase summarises the device's life cycle: Available, Pending, Bound,
	// Disputed, Released or Decommissioned.
	// +optional
	Phase DevicePhase `json:"phase,omitempty"`

	// failedClaimAttempts counts failed claim attempts on this device, from
	// every tenant. Per-tenant lockouts are kept on each Tenant.
	// +optional
	FailedClaimAttempts int64 `json:"failedClaimAttempts,omitempty"`

	// lastFailedClaimTime is when a claim attempt on this device last failed.
	// +optional
	LastFailedClaimTime *metav1.Time `json:"lastFailedClaimTime,omitempty"`

	// history is the custody history of the device, newest last, bounded to
	// the last 32 changes, hash-chained. Events and the manager's audit log
	// record the same changes; the audit log keeps all of them.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	History []CustodyRecord `json:"history,omitempty"`

	// certificates are the device's certificates that may still be valid,
	// newest last (at most 4). Written by the manager.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=4
	Certificates []DeviceCertificate `json:"certificates,omitempty"`

	// lastSeen is when the device last sent a heartbeat through the gateway
	// (coalesced: at most one write per device per heartbeat interval).
	// +optional
	LastSeen *metav1.Time `json:"lastSeen,omitempty"`

	// reported is what the device said in its last heartbeat. Written by the
	// gateway, which may write nothing else.
	// +optional
	Reported *DeviceReport `json:"reported,omitempty"`

	// notifications is the delivery state of the custody history to each
	// notification endpoint that concerns this device. Written by the
	// manager.
	// +optional
	// +listType=map
	// +listMapKey=endpoint
	// +kubebuilder:validation:MaxItems=16
	Notifications []NotificationDelivery `json:"notifications,omitempty"`

	// observedGeneration is the generation the manager last reconciled.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (the device is in a consistent state), Claimable
	// (a claim by code can succeed).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Device condition types.
const (
	// DeviceConditionClaimable is True when a claim by code can bind the device.
	DeviceConditionClaimable = "Claimable"
)

// Device condition reasons.
const (
	// DeviceReasonClaimable: unbound with an unused claim code.
	DeviceReasonClaimable = "ClaimCodeAvailable"
	// DeviceReasonNoClaimCode: the ERP has not set spec.claimCode.
	DeviceReasonNoClaimCode = "NoClaimCode"
	// DeviceReasonClaimCodeConsumed: the claim code already bound the device
	// once; set a new spec.claimCode.verifier to make it claimable again.
	DeviceReasonClaimCodeConsumed = "ClaimCodeConsumed"
	// DeviceReasonBound: the device is bound.
	DeviceReasonBound = "Bound"
	// DeviceReasonDecommissioned: the device is decommissioned.
	DeviceReasonDecommissioned = "Decommissioned"
	// DeviceReasonTenantMissing: the device is bound to a Tenant that does not
	// exist; it is released.
	DeviceReasonTenantMissing = "TenantMissing"
	// DeviceReasonDisputed: valid claims compete; support staff resolve it.
	DeviceReasonDisputed = "Disputed"
	// DeviceReasonCoolingOff: a claim waits out its cooling-off period.
	DeviceReasonCoolingOff = "CoolingOff"
	// DeviceReasonInCustody: the sale record holds the device for the
	// custodian or owner it names.
	DeviceReasonInCustody = "InCustody"
	// DeviceReasonConsistent: the device's state is consistent.
	DeviceReasonConsistent = "Consistent"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=dev,categories=custody
// +kubebuilder:printcolumn:name="Serial",type=string,JSONPath=`.spec.serialNumber`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.model`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.claimRef.tenant`
// +kubebuilder:printcolumn:name="Last Seen",type=date,JSONPath=`.status.lastSeen`
// +kubebuilder:printcolumn:name="Cert Expiry",type=string,JSONPath=`.status.certificates[-1:].notAfter`,priority=1
// +kubebuilder:printcolumn:name="Buyer",type=string,JSONPath=`.spec.sale.buyer.name`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Device is the manufacturer's record of one physical device: its identity,
// the verifier of its claim code, its sale, and its binding to a tenant.
// Its name is "<model>.<serial>" in lower case, so that serial and model are
// unique together.
// +kubebuilder:validation:XValidation:rule="self.metadata.name == self.spec.model.lowerAscii() + '.' + self.spec.serialNumber.lowerAscii()",message="metadata.name must be '<model>.<serialNumber>' in lower case (for example 'xr200.sn-0001')",reason=FieldValueInvalid
type Device struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the manufacturer's record of the device; claimRef and
	// consumedClaimCodes are written by the manager only.
	// +required
	Spec DeviceSpec `json:"spec"`

	// status is the observed state of the device, written by the manager.
	// +optional
	Status DeviceStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// DeviceList is a list of Devices.
type DeviceList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of Devices.
	Items []Device `json:"items"`
}

// DeviceName is the name of the Device for a model and serial number.
func DeviceName(model, serialNumber string) string {
	return protocol.DeviceName(model, serialNumber)
}
