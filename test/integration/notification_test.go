package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/pkg/notification"
)

// receiver is a notification endpoint that fails the first attempts of
// every event: the first before processing it, the second after processing
// it (the answer is lost), as a crash or timeout would. It processes each
// idempotency key once.
type receiver struct {
	t     *testing.T
	key   []byte
	now   func() time.Time
	srv   *httptest.Server
	mu    sync.Mutex
	tries map[string]int
	// processed counts how often each event was processed (must be 1).
	processed map[string]int
	events    []notification.Event
	badSig    int
	// only, when set, limits the failing to events about that device:
	// the cluster holds other tests' devices, whose events the ERP's
	// endpoint also receives.
	only string
}

func newReceiver(t *testing.T, key []byte, now func() time.Time) *receiver {
	r := &receiver{t: t, key: key, now: now, tries: map[string]int{}, processed: map[string]int{}}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := notification.Verify(r.key, req.Header.Get(notification.HeaderSignature), body, r.now(), 5*time.Minute); err != nil {
		r.badSig++
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var ev notification.Event
	if err := json.Unmarshal(body, &ev); err != nil || req.Header.Get("Content-Type") != notification.ContentType || req.Header.Get(notification.HeaderIdempotencyKey) != ev.ID {
		http.Error(w, "not a CloudEvent with its idempotency key", http.StatusBadRequest)
		return
	}
	key := ev.ID
	r.tries[key]++
	if r.only != "" && ev.Subject != r.only {
		r.tries[key] = 3
	}
	switch r.tries[key] {
	case 1:
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	case 2:
		r.process(key, ev)
		http.Error(w, "processed, but the answer is lost", http.StatusInternalServerError)
		return
	}
	if r.processed[key] == 0 {
		r.process(key, ev)
	}
	w.WriteHeader(http.StatusAccepted)
}

func (r *receiver) process(key string, ev notification.Event) {
	r.processed[key]++
	r.events = append(r.events, ev)
}

func (r *receiver) snapshot() (map[string]int, map[string]int, []notification.Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, tr := map[string]int{}, map[string]int{}
	for k, v := range r.processed {
		p[k] = v
	}
	for k, v := range r.tries {
		tr[k] = v
	}
	return p, tr, append([]notification.Event(nil), r.events...), r.badSig
}

// TestNotificationsAreDeliveredOncePerKey: every custody event reaches the
// ERP's endpoint, signed, exactly once per idempotency key although each
// event's first two deliveries fail; a tenant's endpoint gets the events
// that concern it, signed with its own key, and no others.
func TestNotificationsAreDeliveredOncePerKey(t *testing.T) {
	erpKey := []byte("erp-signing-key-0123456789abcdefghij")
	tenantKey := []byte("acme-signing-key-0123456789abcdefghi")
	var clock func() time.Time
	erp := newReceiver(t, erpKey, func() time.Time { return clock() })
	acmeRx := newReceiver(t, tenantKey, func() time.Time { return clock() })
	roots := x509.NewCertPool()
	roots.AddCert(erp.srv.Certificate())
	roots.AddCert(acmeRx.srv.Certificate())
	m := startManager(t, func(o *controllers.Options) {
		o.Notifications = []controllers.NotificationEndpoint{{Name: "erp", URL: erp.srv.URL + "/custody", SigningKey: erpKey}}
		o.NotificationRoots = roots
		o.NotificationBackoff = 20 * time.Millisecond
	})
	clock = m.Clock.Now

	wholesale := newTenant(t)
	acme := newTenantWith(t, func(tn *custodyv1alpha1.Tenant) {
		tn.Spec.Notifications = &custodyv1alpha1.NotificationEndpoint{URL: acmeRx.srv.URL + "/hook", SigningKeySecretRef: custodyv1alpha1.SigningKeyReference{Name: "custody-notifications"}}
	})
	if err := admin.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: acme.Status.Namespace, Name: "custody-notifications"}, Data: map[string][]byte{"key": tenantKey}}); err != nil {
		t.Fatal(err)
	}

	rec := newDeviceRecord(t)
	name := rec.Device.Name
	erp.mu.Lock()
	erp.only = name
	erp.mu.Unlock()
	rec.Device.Spec.Sale = &custodyv1alpha1.SaleRecord{OrderReference: uniq("SO"), Buyer: custodyv1alpha1.Buyer{Name: "Wholesale"}, CustodianTenant: wholesale.Name}
	if err := admin.Create(context.Background(), rec.Device, client.FieldOwner(erpOwner)); err != nil {
		t.Fatal(err)
	}
	take := waitPhase(t, proofClaim(t, admin, wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseBound)
	offer(t, admin, take, acme.Name)
	waitPhase(t, proofClaim(t, admin, acme.Status.Namespace, rec, acceptFrom(wholesale.Name)), custodyv1alpha1.ClaimPhaseBound)
	lastEntry(t, name, custodyv1alpha1.CustodyEventTransferred)
	hist := getDevice(t, name).Status.History

	waitFor(t, "the ERP to process every event", func() bool {
		p, _, _, _ := erp.snapshot()
		for _, h := range hist {
			if p[h.Hash] == 0 {
				return false
			}
		}
		return true
	})
	waitFor(t, "the device to record every delivery", func() bool {
		for _, st := range getDevice(t, name).Status.Notifications {
			if st.Endpoint == "operator/erp" {
				return st.DeliveredSequence == hist[len(hist)-1].Sequence && st.FailedAttempts == 0
			}
		}
		return false
	})
	processed, tries, all, bad := erp.snapshot()
	if bad != 0 {
		t.Fatalf("%d deliveries with a bad signature", bad)
	}
	// The ERP hears of every device; other tests' devices are in this
	// cluster too.
	var events []notification.Event
	for _, ev := range all {
		if ev.Subject == name {
			events = append(events, ev)
		}
	}
	if len(events) != len(hist) {
		t.Fatalf("the ERP processed %d events of %s, the history has %d entries", len(events), name, len(hist))
	}
	for k, n := range processed {
		if n != 1 {
			t.Fatalf("event %s processed %d times", k, n)
		}
	}
	for _, h := range hist {
		if processed[h.Hash] != 1 || tries[h.Hash] < 3 {
			t.Fatalf("entry %d (%s): processed %d times after %d attempts; want once after at least 3", h.Sequence, h.Type, processed[h.Hash], tries[h.Hash])
		}
	}
	for i, ev := range events {
		if ev.SpecVersion != "1.0" || ev.Subject != name || ev.Data.SerialNumber != rec.Device.Spec.SerialNumber || !strings.HasPrefix(ev.Type, notification.TypePrefix) {
			t.Fatalf("event %d is not a well-formed custody CloudEvent: %+v", i, ev)
		}
		if ev.ID != hist[i].Hash || ev.Type != notification.TypePrefix+strings.ToLower(string(hist[i].Type)) {
			t.Fatalf("event %d out of order or mislabelled: %s %s, want %s %s", i, ev.ID, ev.Type, hist[i].Hash, hist[i].Type)
		}
	}

	// The tenant's endpoint hears of what concerns acme, and only that.
	waitFor(t, "acme's endpoint to get the transfer", func() bool {
		_, _, ev, _ := acmeRx.snapshot()
		return len(ev) > 0
	})
	_, _, acmeEvents, acmeBad := acmeRx.snapshot()
	if acmeBad != 0 {
		t.Fatalf("%d deliveries to acme with a bad signature", acmeBad)
	}
	for _, ev := range acmeEvents {
		raw, _ := json.Marshal(ev.Data.Entry)
		var e custodyv1alpha1.CustodyRecord
		_ = json.Unmarshal(raw, &e)
		if e.Tenant != acme.Name && e.FromTenant != acme.Name {
			t.Fatalf("acme received an event about %s: %+v", e.Tenant, e)
		}
	}
	if ev := acmeEvents[0]; ev.Type != notification.TypePrefix+"transferred" {
		t.Fatalf("acme's first event is %s", ev.Type)
	}
}

// TestSlowReceiverNeverDelaysBinding: notifications are sent apart from the
// claim path. While the only endpoint holds every request open, a claim
// still binds: no delivery has finished (not even by the client's timeout)
// when the Claim is Bound.
func TestSlowReceiverNeverDelaysBinding(t *testing.T) {
	key := []byte("slow-signing-key-0123456789abcdefghij")
	release := make(chan struct{})
	var mu sync.Mutex
	started, finished := 0, 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		started++
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		finished++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	startManager(t, func(o *controllers.Options) {
		o.Notifications = []controllers.NotificationEndpoint{{Name: "slow", URL: srv.URL, SigningKey: key}}
		o.NotificationRoots = roots
	})
	acme := newTenant(t)
	rec := newDevice(t)
	cl := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
	waitFor(t, "a delivery to start", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return started > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if finished != 0 {
		t.Fatalf("%d deliveries finished before the claim %s bound: notifications are on the claim path", finished, cl.Name)
	}
}

// TestCoolingOffNotifiesTheCustodian: while a claim cools off, the
// custodian that sold the device on hears of it, with the buyer's contact.
func TestCoolingOffNotifiesTheCustodian(t *testing.T) {
	key := []byte("wholesale-signing-key-0123456789abcdef")
	var clock func() time.Time
	rx := newReceiver(t, key, func() time.Time { return clock() })
	roots := x509.NewCertPool()
	roots.AddCert(rx.srv.Certificate())
	m := startManager(t, coolingOff, func(o *controllers.Options) {
		o.NotificationRoots = roots
		o.NotificationBackoff = 20 * time.Millisecond
	})
	clock = m.Clock.Now
	wholesale := newTenantWith(t, func(tn *custodyv1alpha1.Tenant) {
		tn.Spec.Notifications = &custodyv1alpha1.NotificationEndpoint{URL: rx.srv.URL, SigningKeySecretRef: custodyv1alpha1.SigningKeyReference{Name: "hooks", Key: "hmac"}}
	})
	if err := admin.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: wholesale.Status.Namespace, Name: "hooks"}, Data: map[string][]byte{"hmac": key}}); err != nil {
		t.Fatal(err)
	}
	acme := newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	take := waitPhase(t, proofClaim(t, admin, wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseBound)
	tr := release(t, take, true)
	code := string(readSecret(t, wholesale.Status.Namespace, tr.Status.ClaimCodeSecretName).Data["code"])
	waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, code), custodyv1alpha1.ClaimPhaseCoolingOff)

	var got notification.Event
	waitFor(t, "the custodian to hear of the cooling-off claim", func() bool {
		_, _, events, _ := rx.snapshot()
		for _, ev := range events {
			if ev.Subject == rec.Device.Name && ev.Type == notification.TypePrefix+"claimed" {
				got = ev
				return true
			}
		}
		return false
	})
	if got.Data.BuyerContact != rec.Device.Spec.Sale.Buyer.Contact || got.Data.OrderReference != rec.Device.Spec.Sale.OrderReference {
		t.Fatalf("the cooling-off notice lacks the sale's contact: %+v", got.Data)
	}
	raw, _ := json.Marshal(got.Data.Entry)
	var e custodyv1alpha1.CustodyRecord
	if err := json.Unmarshal(raw, &e); err != nil || e.Tenant != acme.Name {
		t.Fatalf("the notice names %q, want the claimant %s", e.Tenant, acme.Name)
	}
}
