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
	metrics.Registry.MustRegister(claimDecisions, claimFailures, claimVerifications, notificationsDelivered, notificationsFailed,
		verifierWait, verifierDuration, verifierInFlight, verifierPoolSize)
	metrics.Registry.MustRegister(dataplane.Collectors()...)
}
