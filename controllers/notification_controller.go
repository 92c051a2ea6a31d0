package controllers

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/pkg/notification"
)

// NotificationEndpoint is an operator-wide notification endpoint (the ERP,
// a support desk): it receives every custody event.
type NotificationEndpoint struct {
	// Name identifies the endpoint in Device.status.notifications.
	Name string
	// URL is the https:// endpoint.
	URL string
	// SigningKey signs each delivery (HMAC-SHA256, at least 32 bytes).
	SigningKey []byte
}

// MinSigningKey is the shortest HMAC key accepted.
const MinSigningKey = 32

// NotificationReconciler delivers each Device's custody history, entry by
// entry, to the endpoints it concerns: the operator's, and those of the
// tenants involved. It runs apart from the claim path, so a slow or failing
// receiver never delays a binding. Delivery is at least once: the delivered
// sequence number is recorded on the Device after the receiver's 2xx, and
// an entry is sent again, with the same ID, until then.
type NotificationReconciler struct {
	Client client.Client
	// APIReader reads tenants' signing-key Secrets, never cached.
	APIReader client.Reader
	Options   Options
	HTTP      *http.Client
}

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// Reconcile delivers what is due for one Device.
func (r *NotificationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	d := &custodyv1alpha1.Device{}
	if err := r.Client.Get(ctx, req.NamespacedName, d); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if len(d.Status.History) == 0 {
		return reconcile.Result{}, nil
	}
	targets, err := r.targets(ctx, d)
	if err != nil {
		return reconcile.Result{}, err
	}
	before := d.DeepCopy()
	var retryIn time.Duration
	for _, tg := range targets {
		st := delivery(d, tg.id)
		if wait := r.deliver(ctx, d, tg, st); wait > 0 && (retryIn == 0 || wait < retryIn) {
			retryIn = wait
		}
	}
	if !equality.Semantic.DeepEqual(before.Status.Notifications, d.Status.Notifications) {
		// The delivery state is this controller's alone: the write is
		// conditional on the state it read (a JSON-patch test), so other
		// status writers never make it fail. If it does fail (delivered but
		// not recorded), the next look sends again, with the same IDs;
		// receivers deduplicate.
		test := map[string]any{"op": "test", "path": "/status/notifications", "value": before.Status.Notifications}
		if len(before.Status.Notifications) == 0 {
			test = map[string]any{"op": "test", "path": "/metadata/resourceVersion", "value": before.ResourceVersion}
		}
		raw, err := json.Marshal([]map[string]any{test, {"op": "add", "path": "/status/notifications", "value": d.Status.Notifications}})
		if err != nil {
			return reconcile.Result{}, err
		}
		if err := r.Client.Status().Patch(ctx, d, client.RawPatch(types.JSONPatchType, raw), client.FieldOwner(FieldOwner)); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	return reconcile.Result{RequeueAfter: retryIn}, nil
}

// target is one endpoint and the entries it wants.
type target struct {
	id  string
	url string
	// key returns the signing key; a tenant's is read from its Secret the
	// first time an entry is actually sent.
	key func() ([]byte, error)
	// wants reports whether an entry concerns this endpoint.
	wants func(custodyv1alpha1.CustodyRecord) bool
}

// targets lists the endpoints that concern d: every operator endpoint, and
// the endpoint of each tenant in its history window or named by its sale.
func (r *NotificationReconciler) targets(ctx context.Context, d *custodyv1alpha1.Device) ([]target, error) {
	var out []target
	for _, e := range r.Options.Notifications {
		key := e.SigningKey
		out = append(out, target{id: "operator/" + e.Name, url: e.URL, key: func() ([]byte, error) { return key, nil },
			wants: func(custodyv1alpha1.CustodyRecord) bool { return true }})
	}
	holder := claim.SaleHolder(d)
	var names []string
	for _, h := range d.Status.History {
		names = append(names, h.Tenant, h.FromTenant)
	}
	names = append(names, holder)
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if name == "" {
			continue
		}
		tn := &custodyv1alpha1.Tenant{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, tn); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, err
		}
		ep := tn.Spec.Notifications
		if ep == nil {
			continue
		}
		tg := target{id: "tenant/" + name, url: ep.URL, wants: func(h custodyv1alpha1.CustodyRecord) bool {
			if h.Tenant == name || h.FromTenant == name {
				return true
			}
			// The custodian hears of claims on what it sold on.
			return name == holder && (h.Type == custodyv1alpha1.CustodyEventClaimed || h.Type == custodyv1alpha1.CustodyEventDisputed || h.Type == custodyv1alpha1.CustodyEventResolved)
		}}
		tg.key = sync.OnceValues(func() ([]byte, error) { return r.tenantKey(ctx, tn) })
		out = append(out, tg)
	}
	return out, nil
}

func (r *NotificationReconciler) tenantKey(ctx context.Context, tn *custodyv1alpha1.Tenant) ([]byte, error) {
	ref := tn.Spec.Notifications.SigningKeySecretRef
	s := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: tn.TargetNamespace(), Name: ref.Name}, s); err != nil {
		return nil, fmt.Errorf("signing key Secret %s not readable: %s", ref.Name, apierrors.ReasonForError(err))
	}
	key := ref.Key
	if key == "" {
		key = "key"
	}
	if len(s.Data[key]) < MinSigningKey {
		return nil, fmt.Errorf("signing key %s/%s is missing or shorter than %d bytes", ref.Name, key, MinSigningKey)
	}
	return s.Data[key], nil
}

// delivery returns the device's delivery state for endpoint id, adding it.
func delivery(d *custodyv1alpha1.Device, id string) *custodyv1alpha1.NotificationDelivery {
	for i := range d.Status.Notifications {
		if d.Status.Notifications[i].Endpoint == id {
			return &d.Status.Notifications[i]
		}
	}
	if len(d.Status.Notifications) >= custodyv1alpha1.MaxNotificationDeliveries {
		d.Status.Notifications = d.Status.Notifications[1:]
	}
	d.Status.Notifications = append(d.Status.Notifications, custodyv1alpha1.NotificationDelivery{Endpoint: id})
	return &d.Status.Notifications[len(d.Status.Notifications)-1]
}

// deliver sends the entries after st.DeliveredSequence, in order, stopping
// at the first failure. It returns when to try again (0: nothing pending).
func (r *NotificationReconciler) deliver(ctx context.Context, d *custodyv1alpha1.Device, tg target, st *custodyv1alpha1.NotificationDelivery) time.Duration {
	for _, h := range d.Status.History {
		if h.Sequence <= st.DeliveredSequence {
			continue
		}
		if !tg.wants(h) {
			st.DeliveredSequence = h.Sequence
			continue
		}
		err := r.send(ctx, d, tg, h)
		if err == nil {
			st.DeliveredSequence, st.FailedAttempts, st.LastError = h.Sequence, 0, ""
			notificationsDelivered.WithLabelValues(tg.id).Inc()
			continue
		}
		st.FailedAttempts++
		st.LastError = truncate(err.Error(), 256)
		notificationsFailed.WithLabelValues(tg.id).Inc()
		log.FromContext(ctx).V(1).Info("notification not delivered; retrying", "endpoint", tg.id, "sequence", h.Sequence, "attempt", st.FailedAttempts, "error", err.Error())
		return r.backoff(st.FailedAttempts)
	}
	return 0
}

func (r *NotificationReconciler) backoff(attempts int32) time.Duration {
	d := r.Options.NotificationBackoff
	for i := int32(1); i < attempts && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// send POSTs one entry as a signed CloudEvent. The event ID is the entry's
// hash: the same entry always has the same ID, on every retry.
func (r *NotificationReconciler) send(ctx context.Context, d *custodyv1alpha1.Device, tg target, h custodyv1alpha1.CustodyRecord) error {
	key, err := tg.key()
	if err != nil {
		return err
	}
	ev := notification.Event{
		SpecVersion: notification.SpecVersion, ID: h.Hash, Source: "custody.dev/devices/" + d.Name,
		Type: notification.TypePrefix + eventSuffix(h.Type), Subject: d.Name, Time: h.Time.UTC().Format(time.RFC3339),
		DataContentType: "application/json",
		Data:            notification.Data{Device: d.Name, SerialNumber: d.Spec.SerialNumber, Model: d.Spec.Model, Entry: h},
	}
	if s := d.Spec.Sale; s != nil {
		ev.Data.OrderReference, ev.Data.BuyerContact = s.OrderReference, s.Buyer.Contact
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", notification.ContentType)
	req.Header.Set(notification.HeaderIdempotencyKey, ev.ID)
	req.Header.Set(notification.HeaderSignature, notification.Sign(key, body, r.Options.Clock.Now()))
	resp, err := r.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("endpoint answered %s", resp.Status)
	}
	return nil
}

func eventSuffix(t custodyv1alpha1.CustodyEventType) string {
	b := []byte(t)
	if len(b) > 0 && b[0] >= 'A' && b[0] <= 'Z' {
		b[0] += 'a' - 'A'
	}
	return string(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// NotificationHTTPClient is the client notifications are sent with: HTTPS
// only (TLS 1.2+), trusting roots (the system's when nil), no redirects.
func NotificationHTTPClient(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// SetupWithManager registers the controller; it looks at a Device when its
// history or delivery state changes.
func (r *NotificationReconciler) SetupWithManager(mgr manager.Manager) error {
	historyChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*custodyv1alpha1.Device), e.ObjectNew.(*custodyv1alpha1.Device)
			return len(o.Status.History) != len(n.Status.History) || (len(n.Status.History) > 0 && o.Status.History[len(o.Status.History)-1].Hash != n.Status.History[len(n.Status.History)-1].Hash)
		},
	}
	return builder.ControllerManagedBy(mgr).
		For(&custodyv1alpha1.Device{}, builder.WithPredicates(historyChanged)).
		WithOptions(controllerOptions(r.Options.workers("notification"))).
		Named("notification").
		Complete(r)
}
