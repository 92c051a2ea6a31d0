// Package dataplane connects Custody's ownership decisions to the data plane,
// a NATS system (nats-server, MQTT 3.1.1 through its MQTT listener): one
// account per Tenant, pushed as account JWTs; an auth callout that admits a
// client only on a certificate of a device currently bound to that tenant (or
// of a tenant's DataAccess), into that tenant's account, with publish and
// subscribe limited to its own subjects; and the cut-off that closes a
// device's connections on every server when its ownership changes.
//
// Every NATS key Custody uses is derived from one master secret (Keys), so
// that a restarted or restored manager signs with the same keys and no
// per-tenant secret has to be stored or backed up.
package dataplane
