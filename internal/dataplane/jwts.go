package dataplane

import (
	"fmt"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// OperatorName names Custody's operator in its JWT.
const OperatorName = "custody"

// TenantAccountLimits are the JetStream limits of a tenant's account: MQTT
// sessions, QoS 1 messages and retained messages live in per-account
// JetStream streams, so an account without JetStream cannot serve MQTT.
var TenantAccountLimits = jwt.JetStreamLimits{
	MemoryStorage: 64 << 20,
	DiskStorage:   1 << 30,
	Streams:       -1,
	Consumer:      -1,
}

// OperatorJWT is the operator's self-signed JWT, naming the system account.
func (k *Keys) OperatorJWT() (string, error) {
	op := k.Operator()
	oc := jwt.NewOperatorClaims(PublicKey(op))
	oc.Name = OperatorName
	oc.SystemAccount = PublicKey(k.System())
	return oc.Encode(op)
}

// SystemAccountJWT is the system account's JWT, signed by the operator.
func (k *Keys) SystemAccountJWT() (string, error) {
	ac := jwt.NewAccountClaims(PublicKey(k.System()))
	ac.Name = "SYS"
	return ac.Encode(k.Operator())
}

// AuthAccountJWT is the auth-callout account's JWT: the callout user
// answers for every client that lands in it (through the sentinel), and may
// place them in any account.
func (k *Keys) AuthAccountJWT() (string, error) {
	ac := jwt.NewAccountClaims(PublicKey(k.Auth()))
	ac.Name = "AUTH"
	ac.Authorization.AuthUsers.Add(PublicKey(k.CalloutUser()))
	ac.Authorization.AllowedAccounts.Add(jwt.AnyAccount)
	return ac.Encode(k.Operator())
}

// TenantAccountJWT is the account JWT of the Tenant named name with uid.
func (k *Keys) TenantAccountJWT(name string, uid string) (string, error) {
	kp, err := k.Tenant(typesUID(uid))
	if err != nil {
		return "", err
	}
	ac := jwt.NewAccountClaims(PublicKey(kp))
	ac.Name = TenantAccountName(name)
	ac.Limits.JetStreamLimits = TenantAccountLimits
	return ac.Encode(k.Operator())
}

// TenantAccountName is the name a tenant's account carries in its JWT (the
// account itself is known by its public key).
func TenantAccountName(tenant string) string { return "tenant-" + tenant }

// SentinelJWT is the bearer user JWT the server hands a client that brings
// no credentials: it is in the auth account and may do nothing.
func (k *Keys) SentinelJWT() (string, error) {
	uc := jwt.NewUserClaims(PublicKey(k.Sentinel()))
	uc.Name = "sentinel"
	uc.BearerToken = true
	uc.Pub.Deny.Add(">")
	uc.Sub.Deny.Add(">")
	return uc.Encode(k.Auth())
}

// CalloutUserCreds returns the JWT and seed the manager answers the callout
// with.
func (k *Keys) CalloutUserCreds() (string, []byte, error) {
	return userCreds(k.CalloutUser(), k.Auth(), "custody-callout")
}

// SystemUserCreds returns the JWT and seed of the manager's system user.
func (k *Keys) SystemUserCreds() (string, []byte, error) {
	return userCreds(k.SystemUser(), k.System(), "custody-system")
}

func userCreds(user, account nkeys.KeyPair, name string) (string, []byte, error) {
	uc := jwt.NewUserClaims(PublicKey(user))
	uc.Name = name
	token, err := uc.Encode(account)
	if err != nil {
		return "", nil, fmt.Errorf("signing the %s user: %w", name, err)
	}
	seed, err := user.Seed()
	return token, seed, err
}
