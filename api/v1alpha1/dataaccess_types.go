package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Bounds of a DataAccess credential's lifetime.
const (
	// DataAccessMinDuration is the shortest lifetime a DataAccess may ask for.
	DataAccessMinDuration = "1h"
	// DataAccessMaxDuration is the longest lifetime a DataAccess may ask for.
	DataAccessMaxDuration = "720h"
	// DataAccessDefaultDuration is the lifetime of a DataAccess that asks for
	// none.
	DataAccessDefaultDuration = "24h"
)

// LabelDataAccess names, by UID, the DataAccess a CertificateRequest or a
// manager-held key Secret is for.
const LabelDataAccess = "custody.dev/data-access"

// AnnotationDataAccess, on a DataAccess's CertificateRequest, is
// "<namespace>/<name>" of the DataAccess. It only says where to look: the
// approver checks the UID of what it finds against LabelDataAccess.
const AnnotationDataAccess = "custody.dev/data-access"

// DataAccessSpec is what a tenant Admin asks for: a client credential for
// the tenant's data-plane account, scoped to some of its devices.
// +kubebuilder:validation:XValidation:rule="!has(self.duration) || (duration(self.duration) >= duration('1h') && duration(self.duration) <= duration('720h'))",message="duration must be between 1h and 720h (30 days)",reason=FieldValueInvalid,fieldPath=".duration"
type DataAccessSpec struct {
	// selector chooses the devices the credential may read, by the labels
	// of the tenant's Claims that bind them. Omitted: every device bound to
	// the tenant, now and later. An empty selector ({}) also matches every
	// device.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// duration is the lifetime of each certificate issued for this
	// DataAccess, between 1h and 720h; 24h when omitted. The manager renews
	// the certificate when two thirds of it have passed. A change applies
	// from the next renewal.
	// +optional
	// +kubebuilder:default="24h"
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// DataAccessCertificate summarises a certificate issued for a DataAccess.
type DataAccessCertificate struct {
	// fingerprint is "sha256:" and the hex SHA-256 of the certificate's DER.
	// +required
	// +kubebuilder:validation:MaxLength=80
	Fingerprint string `json:"fingerprint"`

	// notBefore is when the certificate starts to be valid.
	// +required
	NotBefore metav1.Time `json:"notBefore"`

	// notAfter is when the certificate expires.
	// +required
	NotAfter metav1.Time `json:"notAfter"`
}

// DataAccessStatus is the observed state of a DataAccess, written by the
// manager.
type DataAccessStatus struct {
	// secretName is the Secret, in this namespace, holding the credential:
	// tls.crt (the certificate and its chain), tls.key (its private key) and
	// ca.crt (the tenant's trust bundle). Only tenant Admins may read it.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName,omitempty"`

	// certificate is the certificate the Secret holds now.
	// +optional
	Certificate *DataAccessCertificate `json:"certificate,omitempty"`

	// previousCertificate is the certificate the current one replaced; the
	// data plane keeps accepting it until it expires, so that clients that
	// have not reloaded the Secret yet stay connected.
	// +optional
	PreviousCertificate *DataAccessCertificate `json:"previousCertificate,omitempty"`

	// renewAt is when the manager requests the next certificate: two
	// thirds into the current one's lifetime.
	// +optional
	RenewAt *metav1.Time `json:"renewAt,omitempty"`

	// observedGeneration is the generation the manager last reconciled
	// successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready is True while the Secret holds a valid
	// certificate; its reason says what happened or what is missing.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// DataAccess condition reasons (of the Ready condition).
const (
	// DataAccessReasonIssued: the Secret holds a valid certificate.
	DataAccessReasonIssued = "Issued"
	// DataAccessReasonIssuing: a certificate has been requested from the
	// tenant's CA; it is usually signed within seconds.
	DataAccessReasonIssuing = "Issuing"
	// DataAccessReasonTenantNotReady: this namespace is not a ready Tenant's
	// (or its CA is not issued yet); the manager retries when the Tenant
	// becomes Ready.
	DataAccessReasonTenantNotReady = "TenantNotReady"
	// DataAccessReasonNotATenantNamespace: no Tenant owns this namespace;
	// create the DataAccess in a tenant namespace.
	DataAccessReasonNotATenantNamespace = "NotATenantNamespace"
	// DataAccessReasonInvalidSelector: spec.selector cannot be read; fix it.
	DataAccessReasonInvalidSelector = "InvalidSelector"
	// DataAccessReasonRequestFailed: the tenant's CA refused or failed the
	// request; the manager requests again with a fresh key.
	DataAccessReasonRequestFailed = "RequestFailed"
	// DataAccessReasonExpired: the certificate has expired and no new one
	// has been issued yet.
	DataAccessReasonExpired = "Expired"
	// DataAccessReasonSecretConflict: a Secret of the credential's name
	// exists that the manager did not make; delete or rename it.
	DataAccessReasonSecretConflict = "SecretConflict"
	// DataAccessReasonDeleting: the DataAccess is being deleted; its
	// credential is revoked.
	DataAccessReasonDeleting = "Deleting"
	// DataAccessReasonReconcileError: a transient error; it is retried.
	DataAccessReasonReconcileError = "ReconcileError"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=da,categories=custody
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.secretName`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.certificate.notAfter`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// DataAccess gives the holders of its Secret read access to the data of the
// tenant's devices on the data plane: a client certificate for the tenant's
// account, with the identity
// spiffe://<trust-domain>/tenants/<tenant>/access/<name>, scoped to the
// devices whose binding Claims match spec.selector. It lives in a tenant
// namespace; deleting it revokes the credential at once.
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="DataAccess names must be DNS labels (lower case letters, digits and inner '-') of at most 63 characters: the name is part of the credential's SPIFFE URI",reason=FieldValueInvalid
type DataAccess struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the credential may read and how long each certificate
	// lives.
	// +optional
	Spec DataAccessSpec `json:"spec,omitempty"`

	// status is the issued credential, written by the manager.
	// +optional
	Status DataAccessStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// DataAccessList is a list of DataAccesses.
type DataAccessList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items is the list of DataAccesses.
	Items []DataAccess `json:"items"`
}

// DataAccessSecretName is the name of a DataAccess's credential Secret.
func DataAccessSecretName(name string) string { return name + "-credentials" }
