package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/factory"
	"github.com/custody-dev/custody/internal/history"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// erpOwner is the field manager the tests' ERP writes Devices with.
const erpOwner = "erp-sap"

// soldDevice manufactures a device and creates it as the ERP would, with a
// sale record shaped by mutate.
func soldDevice(t testing.TB, mutate func(*custodyv1alpha1.SaleRecord)) *factory.Record {
	t.Helper()
	rec := newDeviceRecord(t)
	rec.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: strings.ToUpper(uniq("SO")), Buyer: custodyv1alpha1.Buyer{Name: "Buyer", Contact: "ops@buyer.example"}}
	mutate(rec.Device.Spec.Sale)
	if err := admin.Create(context.Background(), rec.Device, client.FieldOwner(erpOwner)); err != nil {
		t.Fatal(err)
	}
	return rec
}

// proofClaim creates a Claim in ns for the device offering the proof that
// shape sets.
func proofClaim(t testing.TB, c client.Client, ns string, rec *factory.Record, shape func(*custodyv1alpha1.ClaimSpec)) *custodyv1alpha1.Claim {
	t.Helper()
	cl := &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: uniq("claim"), Namespace: ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model}}
	shape(&cl.Spec)
	if err := c.Create(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
	return cl
}

func saleRecordProof(s *custodyv1alpha1.ClaimSpec) { s.SaleRecord = &custodyv1alpha1.SaleRecordProof{} }

func acceptFrom(tenant string) func(*custodyv1alpha1.ClaimSpec) {
	return func(s *custodyv1alpha1.ClaimSpec) {
		s.Transfer = &custodyv1alpha1.TransferAcceptance{FromTenant: tenant}
	}
}

// offer creates a Transfer of the device held by claim cl to recipient and
// waits until it is Offered.
func offer(t testing.TB, c client.Client, cl *custodyv1alpha1.Claim, recipient string) *custodyv1alpha1.Transfer {
	t.Helper()
	tr := &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Name: uniq("transfer"), Namespace: cl.Namespace},
		Spec: custodyv1alpha1.TransferSpec{ClaimName: cl.Name, Recipient: &custodyv1alpha1.TransferRecipient{Tenant: recipient}}}
	if err := c.Create(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	return waitTransfer(t, tr, custodyv1alpha1.TransferPhaseOffered)
}

// release creates a Transfer that releases the device held by cl for
// claiming, and waits until it completed.
func release(t testing.TB, cl *custodyv1alpha1.Claim, rotate bool) *custodyv1alpha1.Transfer {
	t.Helper()
	tr := &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Name: uniq("release"), Namespace: cl.Namespace},
		Spec: custodyv1alpha1.TransferSpec{ClaimName: cl.Name, Release: &custodyv1alpha1.TransferRelease{RotateClaimCode: rotate}}}
	if err := admin.Create(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	return waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
}

func waitTransfer(t testing.TB, tr *custodyv1alpha1.Transfer, want custodyv1alpha1.TransferPhase) *custodyv1alpha1.Transfer {
	t.Helper()
	got := &custodyv1alpha1.Transfer{}
	waitFor(t, "transfer "+tr.Name+" to be "+string(want), func() bool {
		return admin.Get(context.Background(), client.ObjectKeyFromObject(tr), got) == nil && got.Status.Phase == want
	})
	return got
}

// entries returns the device's history entries of type typ.
func entries(d *custodyv1alpha1.Device, typ custodyv1alpha1.CustodyEventType) []custodyv1alpha1.CustodyRecord {
	var out []custodyv1alpha1.CustodyRecord
	for _, h := range d.Status.History {
		if h.Type == typ {
			out = append(out, h)
		}
	}
	return out
}

// lastEntry waits until the device's newest history entry has type typ and
// returns it.
func lastEntry(t testing.TB, name string, typ custodyv1alpha1.CustodyEventType) custodyv1alpha1.CustodyRecord {
	t.Helper()
	var last custodyv1alpha1.CustodyRecord
	waitFor(t, "a "+string(typ)+" history entry on "+name, func() bool {
		h := getDevice(t, name).Status.History
		if len(h) == 0 {
			return false
		}
		last = h[len(h)-1]
		return last.Type == typ
	})
	return last
}

// assertChain checks the device's history chain and that the audit log
// holds the same entries, complete from the first.
func assertChain(t testing.TB, name string) {
	t.Helper()
	d := getDevice(t, name)
	if err := history.Verify(d.Status.History, history.Options{FromGenesis: true}); err != nil {
		t.Fatalf("device %s history: %v", name, err)
	}
	var audited []custodyv1alpha1.CustodyRecord
	waitFor(t, "the audit log to hold the history of "+name, func() bool {
		var err error
		audited, err = history.ReadAuditLog(strings.NewReader(logs.String()), name)
		return err == nil && len(audited) == len(d.Status.History)
	})
	if err := history.Verify(audited, history.Options{FromGenesis: true, Anchors: []history.Anchor{{Sequence: d.Status.History[len(d.Status.History)-1].Sequence, Hash: d.Status.History[len(d.Status.History)-1].Hash}}}); err != nil {
		t.Fatalf("audit log of %s: %v", name, err)
	}
}

func boundTo(t testing.TB, name string, uid types.UID) bool {
	ref := getDevice(t, name).Spec.ClaimRef
	return ref != nil && ref.UID == uid
}

func readSecret(t testing.TB, ns, name string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func claimInNamespace(ns, name string) (*custodyv1alpha1.Claim, error) {
	c := &custodyv1alpha1.Claim{}
	return c, admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, c)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// bindSupport grants user the custody-support ClusterRole.
func bindSupport(t testing.TB, user string) {
	t.Helper()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: uniq("test-support")},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "custody-support"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: user}},
	}
	if err := admin.Create(context.Background(), crb); err != nil {
		t.Fatal(err)
	}
}

// lastBound waits for the device's newest Bound history entry.
func lastBound(t testing.TB, name string) custodyv1alpha1.CustodyRecord {
	t.Helper()
	return lastEntry(t, name, custodyv1alpha1.CustodyEventBound)
}

func writeToken(t testing.TB, dir string, tok protocol.PairingToken) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, device.FilePairingToken), []byte(tok.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(dir, name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) } //nolint:gosec // test files

// assertTamperingDetected edits, then removes, an entry of the device's
// stored history as a cluster admin could, and checks that the verifier
// catches both, against the head hash as anchor (as the ERP holds it from
// notifications, and the audit log from its lines).
func assertTamperingDetected(t testing.TB, name string) {
	t.Helper()
	h := getDevice(t, name).Status.History
	if len(h) < 3 {
		t.Fatalf("want at least 3 history entries, have %d", len(h))
	}
	head := history.Anchor{Sequence: h[len(h)-1].Sequence, Hash: h[len(h)-1].Hash}
	setHistory(t, name, func([]custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
		edited := append([]custodyv1alpha1.CustodyRecord(nil), h...)
		edited[1].Tenant = "mallory"
		return edited
	})
	if err := history.Verify(getDevice(t, name).Status.History, history.Options{FromGenesis: true, Anchors: []history.Anchor{head}}); err == nil {
		t.Fatal("an edited history entry passed verification")
	}
	setHistory(t, name, func([]custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord {
		return append(append([]custodyv1alpha1.CustodyRecord(nil), h[:1]...), h[2:]...)
	})
	if err := history.Verify(getDevice(t, name).Status.History, history.Options{Anchors: []history.Anchor{head}}); err == nil {
		t.Fatal("a removed history entry passed verification")
	}
	// Put the true history back for the rest of the test.
	setHistory(t, name, func([]custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord { return h })
}

func setHistory(t testing.TB, name string, mutate func([]custodyv1alpha1.CustodyRecord) []custodyv1alpha1.CustodyRecord) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &custodyv1alpha1.Device{}
		if err := admin.Get(context.Background(), client.ObjectKey{Name: name}, d); err != nil {
			return err
		}
		d.Status.History = mutate(d.Status.History)
		return admin.Status().Update(context.Background(), d)
	})
	if err != nil {
		t.Fatal(err)
	}
}
