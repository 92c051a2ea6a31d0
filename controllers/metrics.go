package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
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
)

func init() {
	metrics.Registry.MustRegister(claimDecisions, claimFailures)
}
