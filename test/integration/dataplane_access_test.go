package integration

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/dataplane"
)

// accessCredentials creates a DataAccess in tn's namespace and returns its
// issued certificate and key, as a tenant Admin reads them from its Secret.
func accessCredentials(t *testing.T, tn *custodyv1alpha1.Tenant, name string, selector *metav1.LabelSelector) (*custodyv1alpha1.DataAccess, *tls.Certificate) {
	t.Helper()
	da := &custodyv1alpha1.DataAccess{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tn.Status.Namespace}, Spec: custodyv1alpha1.DataAccessSpec{Selector: selector}}
	if err := admin.Create(context.Background(), da); err != nil {
		t.Fatal(err)
	}
	da = waitAccessIssued(t, da, "")
	s := &corev1.Secret{}
	if err := admin.Get(context.Background(), client.ObjectKey{Namespace: da.Namespace, Name: da.Status.SecretName}, s); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	return da, &pair
}

func setClaimLabels(t *testing.T, cl *custodyv1alpha1.Claim, labels map[string]string) {
	t.Helper()
	patch := client.MergeFrom(cl.DeepCopy())
	cl.Labels = labels
	if err := admin.Patch(context.Background(), cl, patch); err != nil {
		t.Fatal(err)
	}
}

// TestDataAccessOnTheDataPlane: a tenant's DataAccess credentials (the
// Secret a tenant Admin reads) admit their holder to the tenant's account:
// one without a selector receives every device of the tenant, one selecting
// Claims labelled site=north receives exactly those devices and is refused
// a subscription to the others, and neither may publish; another tenant's
// credentials receive nothing. Relabelling a Claim changes the scope (the
// holder's connection is closed and re-admitted with it), and deleting the
// DataAccess closes its connections and refuses its certificate at once.
func TestDataAccessOnTheDataPlane(t *testing.T) {
	dp := startDataPlane(t)
	startManager(t, withDataPlane(dp))
	g := startGateway(t)
	ctx := context.Background()
	acme, globex := newTenant(t), newTenant(t)
	north, _, northCert := boundDevice(t, g, acme, map[string]string{"site": "north"})
	south, southClaim, southCert := boundDevice(t, g, acme, map[string]string{"site": "south"})
	_, allCert := accessCredentials(t, acme, "all", nil)
	northDA, northAccess := accessCredentials(t, acme, "north", &metav1.LabelSelector{MatchLabels: map[string]string{"site": "north"}})
	_, globexCert := accessCredentials(t, globex, "all", nil)

	allConn, err := dp.natsAs(allCert)
	if err != nil {
		t.Fatalf("the tenant's unscoped DataAccess is refused: %v", err)
	}
	defer allConn.Close()
	allIn := subscribe(t, allConn, "devices.>")
	globexConn, err := dp.natsAs(globexCert)
	if err != nil {
		t.Fatalf("another tenant's DataAccess is refused: %v", err)
	}
	defer globexConn.Close()
	globexIn := subscribe(t, globexConn, "devices.>")

	violations := make(chan error, 16)
	closed := make(chan struct{})
	scoped, err := dp.natsAs(northAccess, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatalf("the scoped DataAccess is refused: %v", err)
	}
	defer scoped.Close()
	northIn := subscribe(t, scoped, "devices."+north.Device.Name+".>")
	expectViolation := func(what string) {
		t.Helper()
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: allowed", what)
		}
	}
	if _, err := scoped.SubscribeSync("devices." + south.Device.Name + ".>"); err != nil {
		t.Fatal(err)
	}
	_ = scoped.Flush()
	expectViolation("the scoped holder subscribing to a device outside its scope")
	if _, err := scoped.SubscribeSync("devices.>"); err != nil {
		t.Fatal(err)
	}
	_ = scoped.Flush()
	expectViolation("the scoped holder subscribing to every device")
	_ = scoped.Publish("devices."+north.Device.Name+".commands", []byte("x"))
	_ = scoped.Flush()
	expectViolation("a DataAccess holder publishing")

	publish := func(cert *tls.Certificate, device, body string) {
		t.Helper()
		nc, err := dp.natsAs(cert)
		if err != nil {
			t.Fatalf("device %s refused: %v", device, err)
		}
		defer nc.Close()
		if err := nc.Publish("devices."+device+".telemetry", []byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	publish(southCert, south.Device.Name, "south 1")
	publish(northCert, north.Device.Name, "north 1")
	seen := map[string]bool{string(allIn.next(t, "the unscoped holder").Data): true, string(allIn.next(t, "the unscoped holder").Data): true}
	if !seen["south 1"] || !seen["north 1"] {
		t.Fatalf("the unscoped holder received %v", seen)
	}
	if got := northIn.next(t, "the scoped holder"); string(got.Data) != "north 1" {
		t.Fatalf("the scoped holder received %q", got.Data)
	}
	if n := northIn.count(); n != 1 {
		t.Fatalf("the scoped holder received %d messages, want only its device's", n)
	}
	_ = globexConn.Flush()
	if n := globexIn.count(); n != 0 {
		t.Fatalf("another tenant's holder received %d of acme's messages", n)
	}

	// Relabel the south device's Claim: the scoped holder's connection is
	// closed, and once re-admitted it receives the device.
	setClaimLabels(t, southClaim, map[string]string{"site": "north"})
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the scoped holder's connection stayed open after its scope grew")
	}
	again, err := dp.natsAs(northAccess)
	if err != nil {
		t.Fatal(err)
	}
	againIn := subscribe(t, again, "devices."+south.Device.Name+".>")
	publish(southCert, south.Device.Name, "south 2")
	if got := againIn.next(t, "the re-admitted holder"); string(got.Data) != "south 2" {
		t.Fatalf("the re-admitted holder received %q", got.Data)
	}

	// Revoke: delete the DataAccess.
	revoked := make(chan struct{})
	again.SetClosedHandler(func(*nats.Conn) { close(revoked) })
	if err := admin.Delete(ctx, northDA); err != nil {
		t.Fatal(err)
	}
	select {
	case <-revoked:
	case <-time.After(30 * time.Second):
		t.Fatal("the revoked DataAccess's connection stayed open")
	}
	before := admissions("refused", "AccessRevoked")
	if nc, err := dp.natsAs(northAccess); err == nil {
		nc.Close()
		t.Fatal("the revoked DataAccess's certificate is still admitted")
	}
	if admissions("refused", "AccessRevoked") != before+1 {
		t.Fatal("the refusal of a revoked DataAccess was not counted as AccessRevoked")
	}
	_ = dataplane.AccessUser
}
