package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/custody-dev/custody/internal/dataplane"
)

var (
	// claimDecisions counts claim outcomes by phase and reason, recorded
	// when a Claim's outcome changes.
	claimDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_claim_decisions_total",
		Help: "Claim outcomes by phase and reason, counted when a Claim's outcome changes.",
	}, []string{"phase", "reason"})

	// claimFailures counts failed claim attempts per tenant (the same count
	// as Tenant.status.failedClaimAttempts).
	claimFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_claim_failures_total",
		Help: "Failed claim attempts per tenant.",
	}, []string{"tenant"})

	// claimLockouts counts verified failures that left the tenant locked
	// out of the device (a lockout started or grew): a brute force in
	// progress, or a customer who lost the label.
	claimLockouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_claim_lockouts_total",
		Help: "Failed claim attempts that locked the tenant out of the device (a lockout started or grew), per tenant.",
	}, []string{"tenant"})

	// requestDecisions counts the approver's decisions on CertificateRequests
	// to custody issuers, once each, after the decision is written.
	requestDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_certificate_request_decisions_total",
		Help: "CertificateRequests to custody issuers approved or denied, by kind of request (device, tenant-ca, data-access, other: any other request to a custody issuer, always denied).",
	}, []string{"kind", "decision"})

	// proofOutcomes counts DeviceProofs finished, by purpose and outcome:
	// an Enroll proof Issued is an enrollment, a Renew proof Issued a
	// renewal.
	proofOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_device_proofs_total",
		Help: "DeviceProofs finished, by purpose (Enroll, Renew, Possession) and phase (Issued, Confirmed, Rejected), counted once the phase is written.",
	}, []string{"purpose", "phase"})

	// proofDuration is the time from the manager's first look at a
	// DeviceProof (moments after the gateway created it for the device's
	// request) to its outcome written, with the clock's precision: the
	// proof's creationTimestamp has whole seconds only.
	proofDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custody_device_proof_duration_seconds",
		Help:    "Time from the manager's first look at a DeviceProof (moments after the device's request reached the gateway) to its outcome written, by purpose; a proof begun before a manager restart is not observed.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"purpose"})

	// claimVerifications counts argon2id verifications of claim codes
	// (wrong, right, or against a dummy verifier for an unknown serial).
	claimVerifications = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custody_claim_code_verifications_total",
		Help: "Claim codes verified (argon2id computations), whatever the outcome.",
	})

	// notificationsDelivered and notificationsFailed count deliveries of
	// custody events per endpoint.
	notificationsDelivered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_notifications_delivered_total",
		Help: "Custody events delivered, per endpoint.",
	}, []string{"endpoint"})
	notificationsFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custody_notification_failures_total",
		Help: "Failed deliveries of custody events (each is retried), per endpoint.",
	}, []string{"endpoint"})
)

func init() {
	// The approver's series exist from the start, at 0: a first denial
	// is then an increase (the alert rules also catch a series born at 1).
	for _, k := range []requestKind{requestForDevice, requestForAccess, requestForTenantCA, requestRefused} {
		for _, d := range []string{"approved", "denied"} {
			requestDecisions.WithLabelValues(k.String(), d)
		}
	}
	metrics.Registry.MustRegister(claimDecisions, claimFailures, claimLockouts, requestDecisions, proofOutcomes, proofDuration,
		claimVerifications, notificationsDelivered, notificationsFailed,
		verifierWait, verifierDuration, verifierInFlight, verifierPoolSize)
	metrics.Registry.MustRegister(dataplane.Collectors()...)
}
