package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
)

// Streams nats-server keeps an account's MQTT state in (its MQTT
// implementation's names, stable since v2.2).
const (
	mqttSessionStream  = "$MQTT_sess"
	mqttRetainedStream = "$MQTT_rmsgs"
	mqttMessagesStream = "$MQTT_msgs"
	mqttRetainedPrefix = "$MQTT.rmsgs."
	mqttMessagesPrefix = "$MQTT.msgs."
)

// PurgeResult says what a purge removed from one account.
type PurgeResult struct {
	// Retained is the number of retained messages cleared.
	Retained int
	// Messages is the number of stored QoS 1/2 messages purged.
	Messages uint64
}

// String is how the purge is recorded in the device's history.
func (r PurgeResult) String() string {
	return fmt.Sprintf("session cleared, %d retained and %d stored messages purged", r.Retained, r.Messages)
}

// Purge removes what tn's account holds of device: its MQTT session (and
// the durable consumers of its subscriptions), its retained messages and
// its stored QoS 1/2 messages. It uses MQTT itself where MQTT defines the
// removal — a clean-session connect with the device's client ID ends the
// session, an empty retained publish clears a retained message — so that
// every server's view of the account agrees, and the JetStream API for the
// stored messages. It is idempotent: a second purge finds nothing. The
// device's own connections must be closed first (CloseDevice).
func (s *Service) Purge(ctx context.Context, tn *custodyv1alpha1.Tenant, device string) (PurgeResult, error) {
	var res PurgeResult
	if s.MQTTURL == "" {
		return res, errors.New("the data plane's MQTT address is not configured")
	}
	if err := s.PushAccount(ctx, tn); err != nil {
		return res, err
	}
	account, err := s.Keys.Tenant(tn.UID)
	if err != nil {
		return res, err
	}
	space, _ := DeviceSubjects(device)

	nc, err := s.accountConn(account, "custody-purge", func(uc *jwt.UserClaims) {
		uc.Pub.Allow.Add("$JS.API.STREAM.INFO."+mqttRetainedStream, "$JS.API.STREAM.PURGE."+mqttMessagesStream)
		uc.Sub.Allow.Add("_INBOX.>")
	})
	if err != nil {
		return res, err
	}
	defer nc.Close()
	subjects, err := streamSubjects(ctx, nc, mqttRetainedStream, mqttRetainedPrefix+space+".>")
	if err != nil {
		return res, err
	}

	// The clean-session connect and the empty retained publishes.
	mc, err := s.mqttAs(ctx, account, MQTTClientID(device), func(uc *jwt.UserClaims) {
		uc.Pub.Allow.Add(space + ".>")
		uc.Sub.Deny.Add(">")
	})
	if err != nil {
		return res, fmt.Errorf("ending the device's MQTT session in tenant %s's account: %w", tn.Name, err)
	}
	defer mc.Disconnect(250)
	for _, subj := range subjects {
		topic := natsSubjectToMQTTTopic(strings.TrimPrefix(subj, mqttRetainedPrefix))
		if err := waitToken(ctx, mc.Publish(topic, 1, true, []byte{})); err != nil {
			return res, fmt.Errorf("clearing the retained message on %s: %w", topic, err)
		}
		res.Retained++
	}

	purged, err := purgeStream(ctx, nc, mqttMessagesStream, mqttMessagesPrefix+space+".>")
	if err != nil {
		return res, err
	}
	res.Messages = purged
	return res, nil
}

// mqttAs connects to the data plane's MQTT listener with a clean session
// as clientID in account, as a one-minute bearer user only Custody can
// sign, with perms (nothing allowed when nil).
func (s *Service) mqttAs(ctx context.Context, account nkeys.KeyPair, clientID string, perms func(*jwt.UserClaims)) (mqtt.Client, error) {
	if s.MQTTURL == "" {
		return nil, errors.New("the data plane's MQTT address is not configured")
	}
	if perms == nil {
		perms = func(uc *jwt.UserClaims) { uc.Pub.Deny.Add(">"); uc.Sub.Deny.Add(">") }
	}
	token, _, err := s.shortUser(account, "custody-purge", true, perms)
	if err != nil {
		return nil, err
	}
	opts := mqtt.NewClientOptions().AddBroker(s.MQTTURL).SetClientID(clientID).SetCleanSession(true).
		SetUsername("custody-purge").SetPassword(token).SetTLSConfig(s.TLSConfig).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).SetProtocolVersion(4)
	mc := mqtt.NewClient(opts)
	if err := waitToken(ctx, mc.Connect()); err != nil {
		return nil, err
	}
	return mc, nil
}

// shortUser signs a one-minute user of account that only Custody can sign,
// with perms: a bearer token for MQTT (which cannot sign the server's
// nonce, and presents the JWT as its password), else with its seed.
func (s *Service) shortUser(account nkeys.KeyPair, name string, bearer bool, perms func(*jwt.UserClaims)) (token string, seed []byte, err error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, err
	}
	uc := jwt.NewUserClaims(PublicKey(user))
	uc.Name = name
	uc.BearerToken = bearer
	uc.Expires = s.now().Add(time.Minute).Unix()
	perms(uc)
	if token, err = uc.Encode(account); err != nil {
		return "", nil, err
	}
	seed, err = user.Seed()
	return token, seed, err
}

// accountConn connects to the data plane over NATS as a short-lived user of
// account.
func (s *Service) accountConn(account nkeys.KeyPair, name string, perms func(*jwt.UserClaims)) (*nats.Conn, error) {
	token, seed, err := s.shortUser(account, name, false, perms)
	if err != nil {
		return nil, err
	}
	return nats.Connect(s.URL, append(append([]nats.Option{}, s.Options...), nats.UserJWTAndSeed(token, string(seed)), nats.Name(name), nats.NoReconnect())...)
}

func waitToken(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jsError is the error of a JetStream API answer.
type jsError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

// errStreamNotFound is JetStream's code for a stream that does not exist:
// an account whose devices never used MQTT has none of its streams.
const errStreamNotFound = 10059

// streamSubjects lists the subjects of stream matching filter, nil if the
// stream does not exist.
func streamSubjects(ctx context.Context, nc *nats.Conn, stream, filter string) ([]string, error) {
	body, _ := json.Marshal(map[string]any{"subjects_filter": filter})
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+stream, body)
	if err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", stream, err)
	}
	var resp struct {
		Error *jsError `json:"error"`
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == errStreamNotFound {
			return nil, nil
		}
		return nil, fmt.Errorf("reading stream %s: %s", stream, resp.Error.Description)
	}
	out := make([]string, 0, len(resp.State.Subjects))
	for subj := range resp.State.Subjects {
		out = append(out, subj)
	}
	return out, nil
}

// purgeStream removes the messages of stream matching filter and returns
// how many there were.
func purgeStream(ctx context.Context, nc *nats.Conn, stream, filter string) (uint64, error) {
	body, _ := json.Marshal(map[string]any{"filter": filter})
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, body)
	if err != nil {
		return 0, fmt.Errorf("purging stream %s: %w", stream, err)
	}
	var resp struct {
		Error  *jsError `json:"error"`
		Purged uint64   `json:"purged"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("purging stream %s: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == errStreamNotFound {
			return 0, nil
		}
		return 0, fmt.Errorf("purging stream %s: %s", stream, resp.Error.Description)
	}
	return resp.Purged, nil
}

// natsSubjectToMQTTTopic is the inverse of nats-server's MQTT topic to
// subject conversion (a port of its natsSubjectToMQTTTopic, Apache-2.0):
// '.' separates levels ('/'), "//" stands for a '.' inside a level and
// "/." for a '/' in an empty level.
func natsSubjectToMQTTTopic(subject string) string {
	topic := make([]byte, 0, len(subject))
	for i := 0; i < len(subject); i++ {
		switch c := subject[i]; c {
		case '/':
			if i < len(subject)-1 {
				switch subject[i+1] {
				case '.':
					topic = append(topic, '/')
					i++
				case '/':
					topic = append(topic, '.')
					i++
				}
			}
		case '.':
			topic = append(topic, '/')
		default:
			topic = append(topic, c)
		}
	}
	return string(topic)
}
