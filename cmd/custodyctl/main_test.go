package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/history"
	"github.com/custody-dev/custody/pkg/protocol"
)

func sampleDevice(t *testing.T) *custodyv1alpha1.Device {
	t.Helper()
	d := &custodyv1alpha1.Device{TypeMeta: metav1.TypeMeta{Kind: "Device", APIVersion: "custody.dev/v1alpha1"}, ObjectMeta: metav1.ObjectMeta{Name: "xr200.sn-1"}}
	at := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	for i, typ := range []custodyv1alpha1.CustodyEventType{custodyv1alpha1.CustodyEventSold, custodyv1alpha1.CustodyEventBound, custodyv1alpha1.CustodyEventTransferred} {
		d.Status.History, _ = history.Append(d.Status.History, custodyv1alpha1.CustodyRecord{Time: metav1.NewTime(at.Add(time.Duration(i) * time.Hour)), Type: typ, Tenant: "acme", Reference: fmt.Sprint(i)}, 32)
	}
	return d
}

func verify(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(append([]string{"history", "verify"}, args...), strings.NewReader(stdin), &out)
	return out.String(), err
}

func TestVerifyDeviceJSON(t *testing.T) {
	d := sampleDevice(t)
	raw, _ := json.Marshal(d)
	out, err := verify(t, string(raw))
	if err != nil || !strings.Contains(out, "history intact: entries 1..3") {
		t.Fatalf("intact history refused: %v %s", err, out)
	}

	d.Status.History[1].Proof = "Forged"
	raw, _ = json.Marshal(d)
	if _, err := verify(t, string(raw)); err == nil || !strings.Contains(err.Error(), "NOT intact") {
		t.Fatalf("edited entry passed: %v", err)
	}

	d = sampleDevice(t)
	head := d.Status.History[2]
	d.Status.History = d.Status.History[:2]
	raw, _ = json.Marshal(d)
	if _, err := verify(t, string(raw)); err != nil {
		t.Fatalf("a shorter window is a valid window without an anchor: %v", err)
	}
	if _, err := verify(t, string(raw), "--anchor", fmt.Sprintf("%d:%s", head.Sequence, head.Hash)); err == nil {
		t.Fatal("an entry removed from the end passed against its anchor")
	}
}

func TestVerifyAuditLog(t *testing.T) {
	d := sampleDevice(t)
	var log strings.Builder
	log.WriteString(`{"level":"info","msg":"unrelated"}` + "\n")
	for i, e := range d.Status.History {
		line, _ := json.Marshal(map[string]any{"level": "info", "logger": "audit", "msg": history.AuditMessage, "device": d.Name, "entry": e})
		log.Write(line)
		log.WriteString("\n")
		if i == 1 { // a restarted manager logs an entry again
			log.Write(line)
			log.WriteString("\n")
		}
		other, _ := json.Marshal(map[string]any{"msg": history.AuditMessage, "device": "other", "entry": e})
		log.Write(other)
		log.WriteString("\n")
	}
	file := t.TempDir() + "/manager.log"
	if err := writeFile(file, log.String()); err != nil {
		t.Fatal(err)
	}
	if out, err := verify(t, "", "--audit-log", file, "--device", d.Name); err != nil {
		t.Fatalf("complete audit log refused: %v %s", err, out)
	}

	// A line removed from the log is a gap in the chain.
	lines := strings.Split(log.String(), "\n")
	var cut []string
	for _, l := range lines {
		if !strings.Contains(l, `"sequence":2`) || !strings.Contains(l, `"device":"`+d.Name) {
			cut = append(cut, l)
		}
	}
	if err := writeFile(file, strings.Join(cut, "\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, "", "--audit-log", file, "--device", d.Name); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("a removed audit line passed: %v", err)
	}
}

func writeFile(name, data string) error { return os.WriteFile(name, []byte(data), 0o600) }

func TestPairingTokenManifest(t *testing.T) {
	var out, errOut bytes.Buffer
	now := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	if err := pairingToken([]string{"--tenant", "acme", "--usage-limit", "3", "--serials", "SN-1,SN-2"}, &out, &errOut, now); err != nil {
		t.Fatal(err)
	}
	var s corev1.Secret
	if err := yaml.UnmarshalStrict(out.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	tok, err := protocol.ParsePairingToken(strings.TrimSpace(errOut.String()[strings.LastIndex(strings.TrimSpace(errOut.String()), "\n")+1:]))
	if err != nil {
		t.Fatalf("no token for field staff in %q: %v", errOut.String(), err)
	}
	s.Data = map[string][]byte{}
	for k, v := range s.StringData {
		s.Data[k] = []byte(v)
	}
	if s.Namespace != "acme" || s.Type != claim.PairingTokenSecretType || s.StringData[claim.TokenKeyUsageLimit] != "3" {
		t.Fatalf("manifest %+v", s)
	}
	// The manifest and the token belong together: the manager accepts it.
	digest := protocol.PairingTokenDigest("xr200.sn-1", tok)
	if v := claim.CheckToken(&s, &claim.TokenState{}, "acme", "xr200.sn-1", "SN-1", digest, "proof", now.Add(71*time.Hour)); v != claim.TokenAccepted {
		t.Fatalf("the manager would refuse the token: %s", v)
	}
	if v := claim.CheckToken(&s, &claim.TokenState{}, "acme", "xr200.sn-1", "SN-1", digest, "proof", now.Add(73*time.Hour)); v != claim.TokenExpired {
		t.Fatalf("after 72h: %s", v)
	}
}
