// Command dashboard writes config/grafana/custody.json, the Grafana
// dashboard of a Custody fleet, with the Grafana Foundation SDK's builders
// (types generated from Grafana's dashboard schema). `make manifests` runs
// it; config/grafana_test.go checks the file against the schema and
// config/prometheus_test.go that every metric it queries exists.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard OUTPUT.json")
		os.Exit(2)
	}
	d, err := build().Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(os.Args[1], append(out, '\n'), 0o644); err != nil { //nolint:gosec // a dashboard, world-readable like the rest of config/
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
}

var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend)
}

// series is a time-series panel of one or more queries.
func series(title, desc, unit string, queries ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Min(0).Datasource(ds).Height(8).Span(12)
	for _, q := range queries {
		p = p.WithTarget(q)
	}
	return p
}

// single is a stat panel with thresholds: green below warn, red from it.
func single(title, desc, expr string, warn float64) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Description(desc).Datasource(ds).Height(4).Span(6).
		WithTarget(query(expr, title).Instant()).
		Thresholds(dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps([]dashboard.Threshold{
			{Color: "green"}, {Value: cog.ToPtr(warn), Color: "red"}, //nolint:misspell // Grafana's field
		}))
}

// build uses the classic dashboard model (schemaVersion 4x), which every
// Grafana imports and the dashboard sidecar loads; dashboardv2 needs
// Grafana 12's new API.
func build() *dashboard.DashboardBuilder { //nolint:staticcheck // see above
	b := dashboard.NewDashboardBuilder("Custody fleet") //nolint:staticcheck // see above
	return b.Uid("custody-fleet").
		Description("Devices, claims, certificates, the gateway and the data plane of a Custody install (docs/operations.md, \"Metrics, dashboard and alerts\").").
		Tags([]string{"custody"}).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Editable().
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus")).
		WithRow(dashboard.NewRowBuilder("Fleet")).
		WithPanel(single("Bound devices", "Devices bound to a tenant.", `sum(custody_devices{phase="Bound"})`, 1e12)).
		WithPanel(single("Disputed devices", "Devices two tenants proved a claim on: support staff decide (alert CustodyDisputesWaiting).", `sum(custody_devices{phase="Disputed"})`, 1)).
		WithPanel(single("Renewals overdue", "Online devices with under a quarter of their certificate's lifetime left: renewals failing (alert CustodyDeviceRenewalsOverdue).", `sum(custody_device_certificates_renewal_overdue)`, 1)).
		WithPanel(single("Cut-off p99", "99th percentile of the data-plane cut-off after an ownership change; objective 1 s (alert CustodyCutOffSlow).",
			`histogram_quantile(0.99, sum by (le) (rate(custody_dataplane_cutoff_seconds_bucket[$__rate_interval])))`, 1).Unit("s")).
		WithPanel(series("Devices by phase", "status.phase of every Device.", "short", query(`sum by (phase) (custody_devices)`, "{{phase}}"))).
		WithPanel(series("Enrollments and renewals", "DeviceProofs finished per second: Enroll/Issued is an enrollment, Renew/Issued a renewal.", "ops",
			query(`sum by (purpose, phase) (rate(custody_device_proofs_total[$__rate_interval]))`, "{{purpose}} {{phase}}"))).
		WithRow(dashboard.NewRowBuilder("Claims")).
		WithPanel(series("Claim outcomes", "Claim outcomes per second, by phase and reason.", "ops",
			query(`sum by (phase, reason) (rate(custody_claim_decisions_total[$__rate_interval]))`, "{{phase}} {{reason}}"))).
		WithPanel(series("Failed claim attempts and lockouts", "Per tenant: failed attempts (alert CustodyClaimBruteForce) and lockouts (alert CustodyClaimLockouts).", "ops",
			query(`sum by (tenant) (rate(custody_claim_failures_total[$__rate_interval]))`, "failures {{tenant}}"),
			query(`sum by (tenant) (rate(custody_claim_lockouts_total[$__rate_interval]))`, "lockouts {{tenant}}"))).
		WithPanel(series("Claim-code verification", "argon2id verifications per second, and the time a claim waits for the verifier pool (p99).", "short",
			query(`sum(rate(custody_claim_code_verifications_total[$__rate_interval]))`, "verifications/s"),
			query(`histogram_quantile(0.99, sum by (le) (rate(custody_claim_code_verify_wait_seconds_bucket[$__rate_interval])))`, "pool wait p99 (s)"))).
		WithPanel(series("Device request to outcome", "Time from the manager's first look at a device's DeviceProof to its outcome, p50 and p99, by purpose.", "s",
			query(`histogram_quantile(0.5, sum by (le, purpose) (rate(custody_device_proof_duration_seconds_bucket[$__rate_interval])))`, "p50 {{purpose}}"),
			query(`histogram_quantile(0.99, sum by (le, purpose) (rate(custody_device_proof_duration_seconds_bucket[$__rate_interval])))`, "p99 {{purpose}}"))).
		WithRow(dashboard.NewRowBuilder("Certificates and approvals")).
		WithPanel(series("Approver decisions", "CertificateRequests to custody issuers approved or denied per second (alert CustodyCertificateRequestsDenied).", "ops",
			query(`sum by (kind, decision) (rate(custody_certificate_request_decisions_total[$__rate_interval]))`, "{{kind}} {{decision}}"))).
		WithPanel(series("Notifications", "Custody events delivered and failed per second, per endpoint (alert CustodyNotificationsFailing).", "ops",
			query(`sum by (endpoint) (rate(custody_notifications_delivered_total[$__rate_interval]))`, "delivered {{endpoint}}"),
			query(`sum by (endpoint) (rate(custody_notification_failures_total[$__rate_interval]))`, "failed {{endpoint}}"))).
		WithRow(dashboard.NewRowBuilder("Gateway")).
		WithPanel(series("Gateway requests", "Requests per second by endpoint and HTTP status.", "reqps",
			query(`sum by (endpoint, code) (rate(custody_gateway_requests_total[$__rate_interval]))`, "{{endpoint}} {{code}}"))).
		WithPanel(series("Gateway latency p99", "99th percentile time to answer, by endpoint.", "s",
			query(`histogram_quantile(0.99, sum by (le, endpoint) (rate(custody_gateway_request_duration_seconds_bucket[$__rate_interval])))`, "{{endpoint}}"))).
		WithPanel(series("Gateway cache staleness", "Age of the oldest Device version the API server holds and a gateway's cache does not yet (alert CustodyGatewayCacheStale).", "s",
			query(`max(custody_gateway_cache_staleness_seconds)`, "staleness"))).
		WithRow(dashboard.NewRowBuilder("Data plane")).
		WithPanel(series("Data-plane admissions", "Connections admitted and refused per second, by result and reason.", "ops",
			query(`sum by (result, reason) (rate(custody_dataplane_admissions_total[$__rate_interval]))`, "{{result}} {{reason}}"))).
		WithPanel(series("Cut-off", "Time from an ownership change to the device's last connection outside its new tenant closed, p50 and p99; and connections closed per second.", "s",
			query(`histogram_quantile(0.5, sum by (le) (rate(custody_dataplane_cutoff_seconds_bucket[$__rate_interval])))`, "p50"),
			query(`histogram_quantile(0.99, sum by (le) (rate(custody_dataplane_cutoff_seconds_bucket[$__rate_interval])))`, "p99"),
			query(`sum(rate(custody_dataplane_connections_closed_total[$__rate_interval]))`, "closed/s")))
}
