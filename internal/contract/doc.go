// Package contract is the device contract: everything the internet-facing
// gateway (cmd/gateway, internal/gateway) and the manager (controllers) must
// agree on about a device, written once so that they cannot drift apart.
//
//   - Names and labels: the DeviceProof names a challenge or a renewal
//     makes, the label that names a proof's or a request's Device, the
//     tenant's Issuer, CA and trust-bundle names, the default trust domain.
//   - Device rules: what a serial number and a model look like (the CRDs'
//     rules), so that the gateway refuses garbage before the API server sees
//     it.
//   - Identity derivation: the identity (common name and SPIFFE ID) a bound
//     device's certificate carries, derived from the Device and its binding,
//     never from what the device asks for.
//   - Proof checks: a device's signature over a challenge, the CSR of an
//     enrollment or renewal, a tenant CA's CSR. The gateway, the enrollment
//     controller and the approver call the same functions; the manager
//     repeats every check the gateway made.
//   - Certificate acceptance (AcceptCertificate) and the tenant's trust
//     anchors and trust bundle.
//   - The data-access contract: the identity of a tenant's DataAccess
//     credential, whether a certificate is a valid one
//     (AcceptAccessCertificate) and which devices it may read
//     (AccessScope), for the data plane's auth callout.
//
// It is not pkg/protocol: pkg/protocol is the wire protocol a device speaks
// and is imported by the device SDK and by the API types, so it cannot
// depend on them; this package reads the API types (Device, DeviceProof) and
// the API server (a tenant's trust bundle) and is for Custody's own
// components only.
//
// What it must not do: import controllers, internal/operator,
// internal/webhooks or any other code of the manager (the gateway links this
// package; .golangci.yml's depguard rule and cmd/gateway's dependency test
// keep it so), write to the API server, or decide anything about ownership.
package contract
