// Package controllers holds Custody's reconcilers: Tenant, Device, Claim, and
// the CertificateRequest approver. Each Reconcile reads top to bottom: get,
// finalizer, deferred status patch, delete branch, then the work. Decisions
// that need no I/O live in internal/ packages with their own table tests.
package controllers

import (
	"context"
	"crypto/x509"
	"fmt"
	"runtime"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/contract"
	"github.com/custody-dev/custody/internal/custody"
	"github.com/custody-dev/custody/internal/dataplane"
)

// FieldOwner is the field manager of every write the manager makes.
const FieldOwner = "custody-manager"

// Options configure the controllers.
type Options struct {
	// OperatorNamespace holds CA material and CertificateRequests.
	OperatorNamespace string
	// RootIssuer is the shared root ClusterIssuer that signed tenant
	// intermediate CAs in earlier versions. Tenant CAs are now self-signed
	// roots (TenantRootIssuerName); the approver denies every request to it.
	RootIssuer string
	// CertManagerUsernames are the users cert-manager's controllers run as:
	// a tenant CA's CertificateRequest is approved only if one of them
	// created it (spec.username, stamped by cert-manager's admission).
	CertManagerUsernames []string
	// Clock is injected so that lockouts are tested without sleeping.
	Clock clock.PassiveClock
	// ClaimPolicy is the manager's claim policy, before the model's, the
	// Tenant's and the Device's tighten it; its unset fields are
	// claim.DefaultPolicy's.
	ClaimPolicy claim.Policy
	// Verifier checks claim codes; argon2id unless a test injects another.
	// Setup runs it in a VerifierPool of ClaimCodeVerifiers slots.
	Verifier claim.Verifier
	// ClaimCodeVerifiers is the number of claim codes verified at once,
	// whatever the claim workers (runtime.GOMAXPROCS when 0).
	ClaimCodeVerifiers int
	// ManagerUsernames are the users the manager runs as, to tell the
	// Claims it creates (a direct sale's) from tenant users' Claims in the
	// history's actor; the operator fills them from the webhooks' list.
	ManagerUsernames []string
	// FailPoint, when set, is called at named points of the claim path
	// ("verified", "bound") with the Claim being decided; a non-nil error
	// aborts the reconcile there. Tests use it to stop the manager between
	// verification and binding. The enrollment controller calls it with
	// the DeviceProof at FailPointCertificateRequested.
	FailPoint func(point string, claim client.ObjectKey) error
	// MaxConcurrentClaims is the number of claims verified in parallel.
	MaxConcurrentClaims int
	// Workers overrides the number of reconciles a controller runs at
	// once, by controller name (ControllerNames; "claim" overrides
	// MaxConcurrentClaims). Unset controllers keep their defaults
	// (docs/operations.md, "Rate limits and workers").
	Workers map[string]int
	// DataPlane, when set, is the data plane the manager answers the auth
	// callout of and cuts devices off (nil: no data plane).
	DataPlane *dataplane.Service
	// TrustDomain is the SPIFFE trust domain of device identities.
	TrustDomain string
	// CertificateDuration is the default lifetime of device certificates.
	CertificateDuration time.Duration
	// PairingTTL is how long a Claim's pairing code is accepted.
	PairingTTL time.Duration
	// ProofRetention is how long finished DeviceProofs are kept.
	ProofRetention time.Duration
	// ModelPolicies tighten the claim policy for devices of a model (by
	// spec.model), on top of ClaimPolicy.
	ModelPolicies map[string]*custodyv1alpha1.ClaimPolicy
	// TransferTTL is how long a Transfer offer waits for its recipient.
	TransferTTL time.Duration
	// Notifications are the operator-wide notification endpoints.
	Notifications []NotificationEndpoint
	// NotificationRoots are the CAs notification endpoints are verified
	// with; the system's when nil.
	NotificationRoots *x509.CertPool
	// AuditLog receives one line per custody history entry; it must not be
	// sampled (operator.AuditLogger). ctrl.Log's "audit" logger when unset.
	AuditLog logr.Logger
	// NotificationBackoff is the first retry delay of a failed delivery;
	// each further failure doubles it, up to 5 minutes.
	NotificationBackoff time.Duration
}

// claimPolicy is the policy a claim on a device of model is decided under:
// the manager's, tightened by the model's, the Tenant's and the Device's
// (t and d may be nil). See claim.Effective.
func (o *Options) claimPolicy(model string, t *custodyv1alpha1.Tenant, d *custodyv1alpha1.Device) claim.Policy {
	return claim.Effective(o.ClaimPolicy, o.ModelPolicies[model], t, d)
}

// Defaults of Options.
const (
	DefaultTrustDomain         = contract.DefaultTrustDomain
	DefaultCertificateDuration = 24 * time.Hour
	DefaultPairingTTL          = 24 * time.Hour
	DefaultProofRetention      = time.Hour
	DefaultTransferTTL         = 7 * 24 * time.Hour
	// DefaultCertManagerUsername is the ServiceAccount cert-manager's Helm
	// chart runs its controller as.
	DefaultCertManagerUsername = "system:serviceaccount:cert-manager:cert-manager"
)

func (o *Options) defaults() {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	o.ClaimPolicy = o.ClaimPolicy.Defaulted()
	if o.Verifier == nil {
		o.Verifier = Argon2Verifier{}
	}
	if _, pooled := o.Verifier.(*VerifierPool); !pooled {
		o.Verifier = NewVerifierPool(o.Verifier, o.ClaimCodeVerifiers)
	}
	if len(o.CertManagerUsernames) == 0 {
		o.CertManagerUsernames = []string{DefaultCertManagerUsername}
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.CertificateDuration == 0 {
		o.CertificateDuration = DefaultCertificateDuration
	}
	if o.PairingTTL == 0 {
		o.PairingTTL = DefaultPairingTTL
	}
	if o.ProofRetention == 0 {
		o.ProofRetention = DefaultProofRetention
	}
	if o.TransferTTL == 0 {
		o.TransferTTL = DefaultTransferTTL
	}
	if o.NotificationBackoff == 0 {
		o.NotificationBackoff = time.Second
	}
}

// Argon2Verifier is the production claim.Verifier: one argon2id
// computation per call, counted in custody_claim_code_verifications_total.
type Argon2Verifier struct{}

// Verify checks code against an argon2id verifier.
func (Argon2Verifier) Verify(code claimcode.Code, verifier string) bool {
	claimVerifications.Inc()
	ok, err := claimcode.Verify(code, verifier)
	return err == nil && ok
}

// VerifyNothing spends the same work against a dummy verifier.
func (Argon2Verifier) VerifyNothing(code claimcode.Code) {
	claimVerifications.Inc()
	claimcode.VerifyNothing(code)
}

// Field indexes the controllers share.
const (
	indexDeviceTenant    = "spec.claimRef.tenant"
	indexTenantNamespace = "custody.targetNamespace"
	indexClaimSecret     = "spec.claimCode.secretRef.name" //nolint:gosec // a field path, not a credential
	indexClaimDevice     = "custody.deviceName"
	// indexTransferRecipient indexes Transfers by recipient tenant.
	indexTransferRecipient = "spec.recipient.tenant"
	// indexTransferDevice indexes Transfers by status.deviceName.
	indexTransferDevice = "status.deviceName"
	// indexTransferClaim indexes Transfers by spec.claimName.
	indexTransferClaim = "spec.claimName"
)

// Setup registers the indexes and every controller with mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	opts.defaults()
	if err := opts.validateWorkers(); err != nil {
		return err
	}
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &custodyv1alpha1.Device{}, indexDeviceTenant, func(o client.Object) []string {
		if ref := o.(*custodyv1alpha1.Device).Spec.ClaimRef; ref != nil {
			return []string{ref.Tenant}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &custodyv1alpha1.Tenant{}, indexTenantNamespace, func(o client.Object) []string {
		return []string{o.(*custodyv1alpha1.Tenant).TargetNamespace()}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &custodyv1alpha1.Claim{}, indexClaimSecret, func(o client.Object) []string {
		if cc := o.(*custodyv1alpha1.Claim).Spec.ClaimCode; cc != nil {
			return []string{cc.SecretRef.Name}
		}
		return nil
	}); err != nil {
		return err
	}

	if err := idx.IndexField(ctx, &custodyv1alpha1.Claim{}, indexClaimDevice, func(o client.Object) []string {
		return []string{o.(*custodyv1alpha1.Claim).DeviceName()}
	}); err != nil {
		return err
	}

	if err := idx.IndexField(ctx, &custodyv1alpha1.Transfer{}, indexTransferRecipient, func(o client.Object) []string {
		if r := o.(*custodyv1alpha1.Transfer).Spec.Recipient; r != nil {
			return []string{r.Tenant}
		}
		return nil
	}); err != nil {
		return err
	}

	if err := idx.IndexField(ctx, &custodyv1alpha1.Transfer{}, indexTransferDevice, func(o client.Object) []string {
		if n := o.(*custodyv1alpha1.Transfer).Status.DeviceName; n != "" {
			return []string{n}
		}
		return nil
	}); err != nil {
		return err
	}

	if err := idx.IndexField(ctx, &custodyv1alpha1.Transfer{}, indexTransferClaim, func(o client.Object) []string {
		return []string{o.(*custodyv1alpha1.Transfer).Spec.ClaimName}
	}); err != nil {
		return err
	}

	recorder := mgr.GetEventRecorder(FieldOwner)
	audit := opts.AuditLog
	if audit.GetSink() == nil {
		audit = auditLog
	}
	applier := &custody.Applier{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: recorder, FieldOwner: FieldOwner, Audit: audit,
		DeriveStatus: DeriveDeviceStatus(mgr.GetClient()), Clock: opts.Clock}
	if fp := opts.FailPoint; fp != nil {
		applier.FailPoint = func(step, device string) error { return fp(step, client.ObjectKey{Name: device}) }
	}
	reconcilers := []struct {
		name  string
		setup func(ctrl.Manager) error
	}{
		{"tenant", (&TenantReconciler{Client: mgr.GetClient(), Custody: applier, Recorder: recorder, Options: opts}).SetupWithManager},
		{"tenant-devices", (&TenantDevicesReconciler{Client: mgr.GetClient(), Cache: mgr.GetCache(), Options: opts}).SetupWithManager},
		{"device", (&DeviceReconciler{Client: mgr.GetClient(), Custody: applier, APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
		{"claim", (&ClaimReconciler{Client: mgr.GetClient(), Custody: applier, APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
		{"transfer", (&TransferReconciler{Client: mgr.GetClient(), Custody: applier, APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
		{"supportaction", (&SupportActionReconciler{Client: mgr.GetClient(), Custody: applier, Recorder: recorder, Options: opts}).SetupWithManager},
		{"notification", (&NotificationReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Options: opts, HTTP: NotificationHTTPClient(opts.NotificationRoots)}).SetupWithManager},
		{"pairingtoken", (&PairingTokenReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Options: opts}).SetupWithManager},
		{"enrollment", (&EnrollmentReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
		{"dataaccess", (&DataAccessReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
		{"certificaterequest-approver", (&ApproverReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder, Options: opts}).SetupWithManager},
	}
	if dp := opts.DataPlane; dp != nil {
		if dp.Reader == nil {
			dp.Reader = mgr.GetClient()
		}
		if dp.TrustDomain == "" {
			dp.TrustDomain = opts.TrustDomain
		}
		if dp.Log.GetSink() == nil {
			dp.Log = mgr.GetLogger().WithName("dataplane")
		}
		reconcilers = append(reconcilers, struct {
			name  string
			setup func(ctrl.Manager) error
		}{"dataplane", (&DataPlaneReconciler{Client: mgr.GetClient(), Custody: applier, Recorder: recorder, Service: opts.DataPlane, Options: opts}).SetupWithManager},
			struct {
				name  string
				setup func(ctrl.Manager) error
			}{"dataplane-access", (&DataAccessCutOffReconciler{Client: mgr.GetClient(), Service: opts.DataPlane}).SetupWithManager},
			struct {
				name  string
				setup func(ctrl.Manager) error
			}{"dataplane-client-cas", (&DataPlaneClientCAsReconciler{Client: mgr.GetClient(), Options: opts}).SetupWithManager})
	}
	watchFleet(mgr.GetCache(), opts.Clock, mgr.Elected(), opts.CertificateDuration)
	for _, r := range reconcilers {
		if err := r.setup(mgr); err != nil {
			return fmt.Errorf("setting up the %s controller: %w", r.name, err)
		}
	}
	return nil
}

// ControllerNames are the names of the manager's controllers, as
// Options.Workers and the manager's --workers flag take them, with their
// default worker counts ("claim": Options.MaxConcurrentClaims, or at least
// four times the cores).
var ControllerNames = map[string]int{
	"tenant": 1, "tenant-devices": 1, "device": 4, "claim": 4, "transfer": 1, "supportaction": 1, "notification": 2, "pairingtoken": 1,
	"enrollment": 4, "dataaccess": 2, "certificaterequest-approver": 4, "dataplane": 4,
}

// workers is the number of reconciles controller name runs at once:
// Options.Workers' or its default in ControllerNames.
func (o *Options) workers(name string) int {
	if n := o.Workers[name]; n > 0 {
		return n
	}
	if name == "claim" {
		if o.MaxConcurrentClaims > 0 {
			return o.MaxConcurrentClaims
		}
		// Four times the verifier pool: a claim by code waits on about
		// ten API round-trips in sequence (its Secret, the Tenant's
		// reservation and release, the binding and its history entry, the
		// Claim's status) for one hash, so that many overlap them while
		// the pool, not the workers, bounds the hashing.
		return max(ControllerNames[name], 4*runtime.GOMAXPROCS(0))
	}
	return ControllerNames[name]
}

// validateWorkers refuses a worker count for a controller that does not
// exist, or below one.
func (o *Options) validateWorkers() error {
	for name, n := range o.Workers {
		if _, ok := ControllerNames[name]; !ok {
			return fmt.Errorf("workers: no controller named %q", name)
		}
		if n < 1 {
			return fmt.Errorf("workers: %s=%d, want at least 1", name, n)
		}
	}
	return nil
}

// controllerOptions are the options of every controller: workers
// reconciles at once, and a failed reconcile (an error, a conflict with
// another writer included) is retried with the workqueue's per-item
// exponential back-off, from 5 ms up to a minute, without the default's
// overall 10 per second bucket, which would stall a burst of claims that
// race for the same devices.
func controllerOptions(workers int) controller.Options {
	return controller.Options{
		MaxConcurrentReconciles: workers,
		RateLimiter:             workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, time.Minute),
	}
}
