package dataplane

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/nats-io/nkeys"
	"k8s.io/apimachinery/pkg/types"
)

// MasterSecretLength is the length, in bytes, of the master secret every
// data-plane key is derived from.
const MasterSecretLength = 32

// Keys derives Custody's NATS keys from one master secret: the operator, the
// system account and its user, the auth-callout account, its callout user
// and its sentinel, and one account per Tenant (by UID, so that a tenant
// deleted and created again under the same name never inherits the old
// account's sessions and retained messages).
type Keys struct {
	master []byte
}

// NewKeys returns the keys derived from master, which must be
// MasterSecretLength random bytes.
func NewKeys(master []byte) (*Keys, error) {
	if len(master) != MasterSecretLength {
		return nil, fmt.Errorf("the data-plane master secret must be %d bytes, not %d", MasterSecretLength, len(master))
	}
	return &Keys{master: append([]byte(nil), master...)}, nil
}

func (k *Keys) derive(prefix nkeys.PrefixByte, label string) nkeys.KeyPair {
	raw, err := hkdf.Key(sha256.New, k.master, nil, "custody.dev/dataplane/v1/"+label, 32)
	if err != nil {
		panic(err) // only for lengths beyond 255*32 bytes
	}
	kp, err := nkeys.FromRawSeed(prefix, raw)
	if err != nil {
		panic(err) // prefix is one of ours
	}
	return kp
}

// Operator is the operator key every account JWT is signed with.
func (k *Keys) Operator() nkeys.KeyPair { return k.derive(nkeys.PrefixByteOperator, "operator") }

// System is the system account.
func (k *Keys) System() nkeys.KeyPair { return k.derive(nkeys.PrefixByteAccount, "account/system") }

// SystemUser is the manager's user in the system account: it pushes account
// JWTs and finds and closes connections.
func (k *Keys) SystemUser() nkeys.KeyPair { return k.derive(nkeys.PrefixByteUser, "user/system") }

// Auth is the account the auth callout runs in; unauthenticated clients land
// in it, through the sentinel, until the callout answers.
func (k *Keys) Auth() nkeys.KeyPair { return k.derive(nkeys.PrefixByteAccount, "account/auth") }

// CalloutUser is the manager's user in the auth account, the one that
// answers $SYS.REQ.USER.AUTH.
func (k *Keys) CalloutUser() nkeys.KeyPair { return k.derive(nkeys.PrefixByteUser, "user/callout") }

// Sentinel is the bearer user the server assigns a client that brings no
// credentials of its own (devices bring only a certificate): it may do
// nothing but be handed to the callout.
func (k *Keys) Sentinel() nkeys.KeyPair { return k.derive(nkeys.PrefixByteUser, "user/sentinel") }

// Tenant is the account of the Tenant with the given UID.
func (k *Keys) Tenant(uid types.UID) (nkeys.KeyPair, error) {
	if uid == "" {
		return nil, errors.New("a tenant account needs the Tenant's UID")
	}
	return k.derive(nkeys.PrefixByteAccount, "account/tenant/"+string(uid)), nil
}

// PublicKey returns kp's public key; derived keys always have one.
func PublicKey(kp nkeys.KeyPair) string {
	pub, err := kp.PublicKey()
	if err != nil {
		panic(err)
	}
	return pub
}

func typesUID(s string) types.UID { return types.UID(s) }
