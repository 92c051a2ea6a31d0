package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TenantRole is the role a member holds in a tenant's namespace. Each role
// maps to a ClusterRole shipped in config/rbac and bound in the tenant's
// namespace by the manager.
// +kubebuilder:validation:Enum=Admin;Operator;Viewer
type TenantRole string

const (
	// TenantRoleAdmin can do everything an Operator can, and release devices
	// by deleting Claims. ClusterRole custody-tenant-admin.
	TenantRoleAdmin TenantRole = "Admin"
	// TenantRoleOperator can create Claims and claim-code Secrets and read the
	// tenant's devices. ClusterRole custody-tenant-operator.
	TenantRoleOperator TenantRole = "Operator"
	// TenantRoleViewer can read Claims, Events and the trust bundle.
	// ClusterRole custody-tenant-viewer.
	TenantRoleViewer TenantRole = "Viewer"
)

// MemberKind is the kind of subject a TenantMember names, as in an RBAC
// subject.
// +kubebuilder:validation:Enum=User;Group;ServiceAccount
type MemberKind string

const (
	// MemberKindUser is a user as authenticated by the API server.
	MemberKindUser MemberKind = "User"
	// MemberKindGroup is a group as authenticated by the API server.
	MemberKindGroup MemberKind = "Group"
	// MemberKindServiceAccount is a Kubernetes ServiceAccount.
	MemberKindServiceAccount MemberKind = "ServiceAccount"
)

// TenantMember grants one subject a role in the tenant's namespace.
// +kubebuilder:validation:XValidation:rule="self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)",message="namespace is required for a ServiceAccount member and must not be set for a User or Group",fieldPath=".namespace",reason=FieldValueInvalid
type TenantMember struct {
	// kind of the subject: User, Group or ServiceAccount.
	// +required
	Kind MemberKind `json:"kind"`

	// name of the user, group or service account, exactly as the API server
	// authenticates it (for example "alice@acme.example" or "acme:field-staff").
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// namespace of a ServiceAccount member. Required for ServiceAccounts and
	// forbidden for the other kinds.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`

	// role the subject holds in the tenant's namespace: Admin, Operator or
	// Viewer.
	// +required
	Role TenantRole `json:"role"`
}

// CertificatePolicy sets how device certificates of a tenant are issued.
type CertificatePolicy struct {
	// duration is the lifetime of device certificates issued to this tenant's
	// devices. Certificates are short-lived because cert-manager cannot revoke:
	// cut-off works by refusing renewal. Must be between 1h and 720h (30 days).
	// When unset the manager's default applies (24h unless configured).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h') && duration(self) <= duration('720h')",message="duration must be between 1h and 720h",reason=FieldValueInvalid
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// Bounds of ClaimPolicy, the same numbers as its validation markers below
// (TestCRDBoundsMatchGo checks the generated CRDs). The manager holds its
// own policy (flags, --config) to the same bounds.
const (
	// MaxFailedAttemptsLowest is the lowest maxFailedAttempts.
	MaxFailedAttemptsLowest = 1
	// MaxFailedAttemptsHighest is the highest maxFailedAttempts.
	MaxFailedAttemptsHighest = 20
	// CoolingOffPeriodShortest is the shortest coolingOff.period.
	CoolingOffPeriodShortest = time.Minute
	// CoolingOffPeriodLongest is the longest coolingOff.period.
	CoolingOffPeriodLongest = 720 * time.Hour
)

// ClaimPolicy tightens how claims are verified. Policies combine by taking the
// strictest value of the manager's default, the Device's and the Tenant's:
// a policy can make claiming harder, never easier.
type ClaimPolicy struct {
	// maxFailedAttempts is how many failed claim attempts a tenant may make on
	// one serial number before it is locked out of it. Each further failure
	// after a lockout doubles the lockout. When unset the manager's default
	// applies (5 unless configured).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=20
	MaxFailedAttempts *int32 `json:"maxFailedAttempts,omitempty"`

	// requiredProof is which proofs a claim must offer: CodeOrPossession
	// (either the claim code or a live possession proof), Code, Possession,
	// or CodeAndPossession. When unset the manager's default applies
	// (CodeOrPossession unless configured). Policies combine to the
	// strictest: Code with Possession is CodeAndPossession.
	// +optional
	RequiredProof RequiredProof `json:"requiredProof,omitempty"`

	// coolingOff makes a claim proven with fewer proofs than it names wait
	// before it binds, while the custodian or the ERP's contact is told. A
	// competing valid claim meanwhile turns the device Disputed.
	// +optional
	CoolingOff *CoolingOffPolicy `json:"coolingOff,omitempty"`

	// saleRecordProof says whether the ERP's sale record may prove ownership:
	// for the custodian it names, and for a direct sale to a tenant. Allowed
	// unless a policy says Forbidden.
	// +optional
	SaleRecordProof SaleRecordProofPolicy `json:"saleRecordProof,omitempty"`
}

// CoolingOffPolicy sets when a claim waits before it binds. Policies combine
// to the strictest: the longest period and the strongest immediate proof.
type CoolingOffPolicy struct {
	// period a weaker claim waits before it binds. Between 1m and 720h.
	// +required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('720h')",message="period must be between 1m and 720h",reason=FieldValueInvalid
	Period metav1.Duration `json:"period"`

	// immediateProof is the proof with which a claim binds at once
	// (CodeAndPossession unless set). A transfer accepted from the current
	// holder and a sale record never cool off.
	// +optional
	ImmediateProof RequiredProof `json:"immediateProof,omitempty"`
}

// SaleRecordProofPolicy says whether sale records prove ownership.
// +kubebuilder:validation:Enum=Allowed;Forbidden
type SaleRecordProofPolicy string

const (
	// SaleRecordProofAllowed: the tenant a sale names may claim with it.
	SaleRecordProofAllowed SaleRecordProofPolicy = "Allowed"
	// SaleRecordProofForbidden: sale records prove nothing; the tenant a
	// sale names claims by code or possession like anyone else.
	SaleRecordProofForbidden SaleRecordProofPolicy = "Forbidden"
)

// RequiredProof is which proofs of ownership a claim must offer.
// +kubebuilder:validation:Enum=CodeOrPossession;Code;Possession;CodeAndPossession
type RequiredProof string

const (
	// RequiredProofCodeOrPossession: the claim code or a possession proof.
	RequiredProofCodeOrPossession RequiredProof = "CodeOrPossession"
	// RequiredProofCode: the claim code.
	RequiredProofCode RequiredProof = "Code"
	// RequiredProofPossession: a possession proof.
	RequiredProofPossession RequiredProof = "Possession"
	// RequiredProofCodeAndPossession: both.
	RequiredProofCodeAndPossession RequiredProof = "CodeAndPossession"
)

// TenantSpec is the desired state of a Tenant.
// +kubebuilder:validation:XValidation:rule="has(self.__namespace__) == has(oldSelf.__namespace__) && (!has(self.__namespace__) || self.__namespace__ == oldSelf.__namespace__)",message="namespace cannot be changed after creation: create a new Tenant instead",fieldPath=".namespace",reason=FieldValueForbidden
type TenantSpec struct {
	// displayName is the organisation's name as people know it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName"`

	// namespace is the namespace the manager creates for this tenant and
	// in which its users create Claims. It defaults to the Tenant's name and
	// cannot be changed after creation. System namespaces (default, kube-*)
	// are refused.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="!(self in ['default']) && !self.startsWith('kube-')",message="namespace must not be 'default' or start with 'kube-'",reason=FieldValueForbidden
	Namespace string `json:"namespace,omitempty"`

	// members are the users, groups and service accounts of the tenant, each
	// with a role in the tenant's namespace. The manager keeps one RoleBinding
	// per role in sync with this list.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Members []TenantMember `json:"members,omitempty"`

	// certificates sets how the tenant's device certificates are issued.
	// +optional
	Certificates *CertificatePolicy `json:"certificates,omitempty"`

	// claimPolicy tightens claim verification for this tenant's claims.
	// +optional
	ClaimPolicy *ClaimPolicy `json:"claimPolicy,omitempty"`

	// notifications sends the custody events of this tenant's devices
	// (claims, bindings, transfers, disputes, releases) to the tenant's own
	// endpoint, as CloudEvents signed with a key the tenant holds.
	// +optional
	Notifications *NotificationEndpoint `json:"notifications,omitempty"`
}

// NotificationEndpoint is where CloudEvents are delivered.
type NotificationEndpoint struct {
	// url is the HTTPS endpoint the events are POSTed to.
	// +required
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') && isURL(self)",message="url must be an https:// URL",reason=FieldValueInvalid
	URL string `json:"url"`

	// signingKeySecretRef names a Secret in the tenant's namespace whose key
	// holds the HMAC-SHA256 key (at least 32 bytes) that signs each event
	// (header Custody-Signature).
	// +required
	SigningKeySecretRef SigningKeyReference `json:"signingKeySecretRef"`
}

// SigningKeyReference names a key of a Secret holding an HMAC key.
type SigningKeyReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key of the Secret's data that holds the signing key. Defaults to "key".
	// +optional
	// +kubebuilder:default=key
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// Bounds of the claim-throttle lists in TenantStatus, the same numbers as
// their MaxItems markers (TestCRDBoundsMatchGo checks the generated CRD).
const (
	// MaxClaimThrottles bounds status.claimThrottles.
	MaxClaimThrottles = 256
	// MaxThrottleAttempts bounds status.claimThrottles[].attempts.
	MaxThrottleAttempts = 16
)

// ClaimThrottle is the failed-attempt bookkeeping of this tenant for one
// device name. It is kept per tenant and per requested device name, whether
// or not such a device exists, so that throttling never tells a tenant which
// serial numbers are real.
type ClaimThrottle struct {
	// deviceName is the Device name the failed claims asked for
	// ("<model>.<serial>" in lower case).
	// +required
	// +kubebuilder:validation:MaxLength=253
	DeviceName string `json:"deviceName"`

	// failures is the number of failed attempts since the last success.
	// +required
	Failures int32 `json:"failures"`

	// lastFailureTime is when the last attempt failed.
	// +required
	LastFailureTime metav1.Time `json:"lastFailureTime"`

	// lockedUntil is set while the tenant is locked out of this device name;
	// claims made before it wait and are verified after it.
	// +optional
	LockedUntil *metav1.Time `json:"lockedUntil,omitempty"`

	// attempts are the UIDs of the Claims whose attempts are counted in
	// failures, newest last (at most 16). An attempt is counted (reserved)
	// before its code is verified, so that concurrent claims can never
	// verify more codes than the policy allows; a retried or restarted
	// reconcile finds its Claim here and never counts it twice.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=64
	Attempts []string `json:"attempts,omitempty"`
}

// TenantStatus is the observed state of a Tenant.
type TenantStatus struct {
	// namespace is the namespace the manager created for this tenant.
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// issuer names the cert-manager Issuer, in the manager's namespace, that
	// signs this tenant's device certificates with the tenant's own root CA.
	// +optional
	Issuer string `json:"issuer,omitempty"`

	// boundDevices is the number of Devices currently bound to this tenant.
	// It defaults to 0, so that a tenant without devices shows 0 (kubectl's
	// DEVICES column) rather than nothing: the count is written only when
	// it changes, and a write of 0 over nothing is no change.
	// +optional
	// +kubebuilder:default=0
	BoundDevices int32 `json:"boundDevices"`

	// failedClaimAttempts counts every failed claim attempt made by this
	// tenant, on any serial number.
	// +optional
	FailedClaimAttempts int64 `json:"failedClaimAttempts,omitempty"`

	// claimThrottles holds failed-attempt bookkeeping per requested device
	// name. Entries expire once their lockout is over and no attempt failed
	// for a day.
	// +optional
	// +listType=map
	// +listMapKey=deviceName
	// +kubebuilder:validation:MaxItems=256
	ClaimThrottles []ClaimThrottle `json:"claimThrottles,omitempty"`

	// observedGeneration is the generation the manager last reconciled
	// successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready summarises NamespaceReady, MembersBound,
	// CertificateAuthorityReady and TrustBundleReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Tenant condition types.
const (
	// TenantConditionNamespaceReady is True when the tenant's namespace exists
	// and belongs to this Tenant.
	TenantConditionNamespaceReady = "NamespaceReady"
	// TenantConditionMembersBound is True when the RoleBindings match members.
	TenantConditionMembersBound = "MembersBound"
	// TenantConditionCertificateAuthorityReady is True when the tenant's
	// root CA has been issued and its Issuer is ready.
	TenantConditionCertificateAuthorityReady = "CertificateAuthorityReady"
	// TenantConditionTrustBundleReady is True when the trust-bundle ConfigMap
	// in the tenant namespace holds the current CA certificate (and, for a
	// device certificate's lifetime, the CA it replaced).
	TenantConditionTrustBundleReady = "TrustBundleReady"
)

// Tenant condition reasons.
const (
	// TenantReasonReady: everything the Tenant needs is in place.
	TenantReasonReady = "Ready"
	// TenantReasonNamespaceConflict: the namespace exists and belongs to
	// someone else; choose another spec.namespace.
	TenantReasonNamespaceConflict = "NamespaceConflict"
	// TenantReasonNamespaceReserved: the namespace is the manager's own.
	TenantReasonNamespaceReserved = "NamespaceReserved"
	// TenantReasonCertificateAuthorityPending: cert-manager has not issued
	// the tenant's root CA yet; it is retried automatically.
	TenantReasonCertificateAuthorityPending = "CertificateAuthorityPending"
	// TenantReasonWaitingForNamespace: a dependency waits for the namespace.
	TenantReasonWaitingForNamespace = "WaitingForNamespace"
	// TenantReasonDeleting: the Tenant is being deleted; devices are released.
	TenantReasonDeleting = "Deleting"
	// TenantReasonReconcileError: a transient error; it is retried.
	TenantReasonReconcileError = "ReconcileError"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tn,categories=custody
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.status.namespace`
// +kubebuilder:printcolumn:name="Devices",type=integer,JSONPath=`.status.boundDevices`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Tenant is a customer organisation: its namespace, members, certificate
// authority and trust bundle. Devices bound to a tenant deliver their data to
// it and to no one else.
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="Tenant names must be DNS labels (lower case letters, digits and '-') of at most 50 characters, so that the names derived from them are valid",reason=FieldValueInvalid
type Tenant struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state of the Tenant.
	// +required
	Spec TenantSpec `json:"spec"`

	// status is the observed state of the Tenant, written by the manager.
	// +optional
	Status TenantStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// TenantList is a list of Tenants.
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of Tenants.
	Items []Tenant `json:"items"`
}

// TargetNamespace is the namespace the Tenant owns: spec.namespace, or the
// Tenant's name when that is unset.
func (t *Tenant) TargetNamespace() string {
	if t.Spec.Namespace != "" {
		return t.Spec.Namespace
	}
	return t.Name
}
