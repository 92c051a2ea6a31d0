package integration

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/claim"
)

// TestPhotographedLabelInCustody is the wholesaler problem: a device sold
// to a custodian cannot be claimed with its code by anyone else, and the
// answer is the one a wrong code or an unknown serial gets. The history
// says who did what: the ERP recorded the sale, the custodian's user (as
// the API server authenticated her) took the device with it.
func TestPhotographedLabelInCustody(t *testing.T) {
	startManager(t)
	clerk := uniq("clerk") + "@wholesale.example"
	wholesale := newTenant(t, custodyv1alpha1.TenantMember{Kind: custodyv1alpha1.MemberKindUser, Name: clerk, Role: custodyv1alpha1.TenantRoleOperator})
	stranger := newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name

	photo := waitPhase(t, claimWithCode(t, admin, stranger.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseDenied)
	unknown := waitPhase(t, claimWithCode(t, admin, stranger.Status.Namespace, serial+"X", model, rec.Code.String()), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(photo) != custodyv1alpha1.ClaimReasonNotVerified || readyMessage(photo) != readyMessage(unknown) || readyReason(photo) != readyReason(unknown) {
		t.Fatalf("the photographed code got %q / %q; an unknown serial gets %q / %q", readyReason(photo), readyMessage(photo), readyReason(unknown), readyMessage(unknown))
	}
	d := getDevice(t, name)
	if d.Spec.ClaimRef != nil || len(d.Spec.ConsumedClaimCodes) != 0 {
		t.Fatal("a claim by code bound (or used up the code of) a device in custody")
	}
	waitFor(t, "the device to say it is in custody", func() bool {
		c := meta.FindStatusCondition(getDevice(t, name).Status.Conditions, custodyv1alpha1.DeviceConditionClaimable)
		return c != nil && c.Reason == custodyv1alpha1.DeviceReasonInCustody
	})

	// The custodian takes the device with the sale record, and still no
	// code works for anyone else.
	take := waitPhase(t, proofClaim(t, userClient(t, clerk), wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseBound)
	again := waitPhase(t, claimWithCode(t, admin, stranger.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(again) != custodyv1alpha1.ClaimReasonNotVerified || readyMessage(again) != readyMessage(unknown) {
		t.Fatalf("while the custodian holds the device the code got %q: %q", readyReason(again), readyMessage(again))
	}
	if !boundTo(t, name, take.UID) {
		t.Fatal("the custodian lost the device")
	}
	d = getDevice(t, name)
	sold, bound := entries(d, custodyv1alpha1.CustodyEventSold), entries(d, custodyv1alpha1.CustodyEventBound)
	if len(sold) != 1 || sold[0].Actor != "erp:"+erpOwner || sold[0].Tenant != wholesale.Name || sold[0].Reference != d.Spec.Sale.OrderReference {
		t.Fatalf("sale recorded as %+v", sold)
	}
	if len(bound) != 1 || bound[0].Proof != claim.ProofSaleRecord || bound[0].Actor != "user:"+clerk || bound[0].Tenant != wholesale.Name {
		t.Fatalf("custody recorded as %+v", bound)
	}
	// A sale record proves once.
	if len(d.Spec.ConsumedSaleRecords) != 1 || d.Spec.ConsumedSaleRecords[0] != d.Spec.Sale.OrderReference {
		t.Fatalf("sale record not used up: %v", d.Spec.ConsumedSaleRecords)
	}
	assertChain(t, name)
}

// TestCustodianTransfersToCustomer: the custodian offers the device to its
// customer, who accepts with a Claim; the binding moves in one step, and
// nobody else can take the offer.
func TestCustodianTransfersToCustomer(t *testing.T) {
	startManager(t)
	wholesale, acme, stranger := newTenant(t), newTenant(t), newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	name := rec.Device.Name
	take := waitPhase(t, proofClaim(t, admin, wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseBound)

	// A stranger accepting before any offer exists waits, holding nothing.
	early := proofClaim(t, admin, stranger.Status.Namespace, rec, acceptFrom(wholesale.Name))
	tr := offer(t, admin, take, acme.Name)
	if tr.Status.DeviceName != name || tr.Status.ExpiresAt == nil {
		t.Fatalf("offer status: %+v", tr.Status)
	}
	accept := waitPhase(t, proofClaim(t, admin, acme.Status.Namespace, rec, acceptFrom(wholesale.Name)), custodyv1alpha1.ClaimPhaseBound)
	if !boundTo(t, name, accept.UID) {
		t.Fatal("the device is not bound to the accepting Claim")
	}
	// The custodian's Claim says its device was transferred, and where.
	if lost := waitPhase(t, take, custodyv1alpha1.ClaimPhaseLost); readyReason(lost) != custodyv1alpha1.ClaimReasonDeviceTransferred ||
		!strings.Contains(readyMessage(lost), "to tenant "+acme.Name+" (Transfer "+tr.Namespace+"/"+tr.Name+")") {
		t.Fatalf("the transferred Claim reads %s: %s", readyReason(lost), readyMessage(lost))
	}
	waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
	moved := lastEntry(t, name, custodyv1alpha1.CustodyEventTransferred)
	if moved.FromTenant != wholesale.Name || moved.Tenant != acme.Name || moved.Proof != claim.ProofTransfer || moved.Reference != tr.Namespace+"/"+tr.Name {
		t.Fatalf("transfer recorded as %+v", moved)
	}
	got := &custodyv1alpha1.Claim{}
	waitFor(t, "the unnamed tenant's Claim to be told there is no offer for it", func() bool {
		return admin.Get(context.Background(), client.ObjectKeyFromObject(early), got) == nil && readyReason(got) == custodyv1alpha1.ClaimReasonNoTransferOffer
	})
	if got.Status.Phase == custodyv1alpha1.ClaimPhaseBound || !boundTo(t, name, accept.UID) {
		t.Fatalf("a tenant the offer did not name got %s", got.Status.Phase)
	}
	assertTamperingDetected(t, name)
	// The sale record is used: the former custodian cannot take it back.
	back := waitPhase(t, proofClaim(t, admin, wholesale.Status.Namespace, rec, saleRecordProof), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(back) != custodyv1alpha1.ClaimReasonSaleRecordNotValid {
		t.Fatalf("the used sale record got %s", readyReason(back))
	}
	assertChain(t, name)
}

// TestReleaseRotatesTheClaimCode: a holder releases its device for claiming
// with a fresh code; the old code never binds again, the new one does.
func TestReleaseRotatesTheClaimCode(t *testing.T) {
	startManager(t)
	owner, next := newTenant(t), newTenant(t)
	rec := newDevice(t)
	serial, model, name := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Device.Name
	held := waitPhase(t, claimWithCode(t, admin, owner.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)

	tr := release(t, held, true)
	if lost := waitPhase(t, held, custodyv1alpha1.ClaimPhaseLost); readyReason(lost) != custodyv1alpha1.ClaimReasonDeviceReleased ||
		!strings.Contains(readyMessage(lost), "released for claiming by Transfer "+tr.Namespace+"/"+tr.Name) {
		t.Fatalf("the released Claim reads %s: %s", readyReason(lost), readyMessage(lost))
	}
	if getDevice(t, name).Spec.ClaimRef != nil {
		t.Fatal("released device still bound")
	}
	if tr.Status.ClaimCodeSecretName == "" {
		t.Fatal("no Secret named for the fresh code")
	}
	secret := readSecret(t, owner.Status.Namespace, tr.Status.ClaimCodeSecretName)
	fresh := string(secret.Data["code"])
	if fresh == "" || fresh == rec.Code.String() {
		t.Fatal("the rotation did not produce a fresh code")
	}
	if rel := lastEntry(t, name, custodyv1alpha1.CustodyEventReleased); rel.Reference != tr.Namespace+"/"+tr.Name || rel.Tenant != owner.Name {
		t.Fatalf("release recorded as %+v", rel)
	}

	old := waitPhase(t, claimWithCode(t, admin, next.Status.Namespace, serial, model, rec.Code.String()), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(old) == custodyv1alpha1.ClaimReasonBound {
		t.Fatal("the old code bound after rotation")
	}
	waitPhase(t, claimWithCode(t, admin, next.Status.Namespace, serial, model, fresh), custodyv1alpha1.ClaimPhaseBound)
	assertChain(t, name)
	assertNoCodeAnywhere(t, fresh)
}

// TestDirectSale: an ERP sale naming a tenant as owner binds without a
// claim code, recorded with the sale record as proof; a tenant whose
// policy forbids sale-record proofs gets nothing bound behind its back.
func TestDirectSale(t *testing.T) {
	startManager(t)
	acme := newTenant(t)
	careful := newTenantWith(t, func(tn *custodyv1alpha1.Tenant) {
		tn.Spec.ClaimPolicy = &custodyv1alpha1.ClaimPolicy{SaleRecordProof: custodyv1alpha1.SaleRecordProofForbidden}
	})
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant = acme.Name })
	name := rec.Device.Name

	cl := &custodyv1alpha1.Claim{}
	cl.Namespace, cl.Name = acme.Status.Namespace, name
	got := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
	if got.Spec.SaleRecord == nil || !boundTo(t, name, got.UID) {
		t.Fatal("the direct sale did not bind through a sale-record Claim")
	}
	if b := lastEntry(t, name, custodyv1alpha1.CustodyEventBound); b.Proof != claim.ProofSaleRecord || b.Actor != "erp:"+erpOwner || b.Tenant != acme.Name {
		t.Fatalf("direct sale recorded as %+v", b)
	}

	forbidden := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant = careful.Name })
	lastEntry(t, forbidden.Device.Name, custodyv1alpha1.CustodyEventSold)
	if err := admin.Get(context.Background(), client.ObjectKey{Namespace: careful.Status.Namespace, Name: forbidden.Device.Name}, &custodyv1alpha1.Claim{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a Claim was opened for a tenant that forbids sale-record proofs: %v", err)
	}
	denied := waitPhase(t, proofClaim(t, admin, careful.Status.Namespace, forbidden, saleRecordProof), custodyv1alpha1.ClaimPhaseDenied)
	if readyReason(denied) != custodyv1alpha1.ClaimReasonSaleRecordNotValid || getDevice(t, forbidden.Device.Name).Spec.ClaimRef != nil {
		t.Fatal("a sale record bound against the tenant's policy")
	}
	assertChain(t, name)
}

// TestDoubleSaleSurfacesAConflict: the ERP re-selling a bound device is
// refused with a conflict; the binding never moves silently.
func TestDoubleSaleSurfacesAConflict(t *testing.T) {
	startManager(t)
	acme, globex := newTenant(t), newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant = acme.Name })
	name := rec.Device.Name
	cl := &custodyv1alpha1.Claim{}
	cl.Namespace, cl.Name = acme.Status.Namespace, name
	bound := waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)

	for label, resell := range map[string]func(*custodyv1alpha1.SaleRecord){
		"new owner":     func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant = globex.Name },
		"new order":     func(s *custodyv1alpha1.SaleRecord) { s.OrderReference = "SO-DOUBLE" },
		"new custodian": func(s *custodyv1alpha1.SaleRecord) { s.OwnerTenant, s.CustodianTenant = "", globex.Name },
	} {
		err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) { resell(d.Spec.Sale) }, client.FieldOwner(erpOwner))
		if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) || err == nil {
			t.Fatalf("%s: double sale accepted: %v", label, err)
		}
		if msg := err.Error(); !contains(msg, "conflict") || !contains(msg, "bound to tenant "+acme.Name) {
			t.Fatalf("%s: the refusal does not explain the conflict: %v", label, err)
		}
	}
	// Correcting the buyer's contact is not a sale.
	if err := updateDevice(admin, name, func(d *custodyv1alpha1.Device) { d.Spec.Sale.Buyer.Contact = "new@acme.example" }, client.FieldOwner(erpOwner)); err != nil {
		t.Fatalf("a contact correction was refused: %v", err)
	}
	if !boundTo(t, name, bound.UID) || getDevice(t, name).Spec.Sale.OwnerTenant != acme.Name {
		t.Fatal("the binding or the sale moved")
	}
	if _, err := claimInNamespace(globex.Status.Namespace, name); !apierrors.IsNotFound(err) {
		t.Fatal("a Claim was opened for the second buyer")
	}
}

// TestTransferAppliedBeforeItsClaimWaits: a Transfer applied together with
// (here: before) the Claim it hands on waits for the Claim to hold the
// device, then completes; GitOps may apply both in one go.
func TestTransferAppliedBeforeItsClaimWaits(t *testing.T) {
	startManager(t)
	wholesale := newTenant(t)
	rec := soldDevice(t, func(s *custodyv1alpha1.SaleRecord) { s.CustodianTenant = wholesale.Name })
	take := &custodyv1alpha1.Claim{}
	take.Namespace, take.Name = wholesale.Status.Namespace, uniq("claim")
	take.Spec = custodyv1alpha1.ClaimSpec{SerialNumber: rec.Device.Spec.SerialNumber, Model: rec.Device.Spec.Model, SaleRecord: &custodyv1alpha1.SaleRecordProof{}}
	tr := &custodyv1alpha1.Transfer{}
	tr.Namespace, tr.Name = take.Namespace, uniq("release")
	tr.Spec = custodyv1alpha1.TransferSpec{ClaimName: take.Name, Release: &custodyv1alpha1.TransferRelease{RotateClaimCode: true}}
	if err := admin.Create(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	waitTransfer(t, tr, custodyv1alpha1.TransferPhasePending)
	if err := admin.Create(context.Background(), take); err != nil {
		t.Fatal(err)
	}
	done := waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
	waitPhase(t, take, custodyv1alpha1.ClaimPhaseLost)
	if done.Status.ClaimCodeSecretName == "" || getDevice(t, rec.Device.Name).Spec.ClaimRef != nil {
		t.Fatal("the release did not happen once the Claim held the device")
	}
	assertChain(t, rec.Device.Name)
}

// staleTransfer is the manager's cache client, except that it answers a
// Get of one Transfer with an older copy: a cache one write behind the
// stored Transfer.
type staleTransfer struct {
	client.Client
	key   client.ObjectKey
	stale *custodyv1alpha1.Transfer
}

func (c staleTransfer) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if tr, ok := obj.(*custodyv1alpha1.Transfer); ok && key == c.key {
		c.stale.DeepCopyInto(tr)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// TestTransferDecidedFromAStaleCacheIsNotAFailure: a Transfer decided from
// a cached copy older than the stored one loses its optimistic-locked
// write to kube-apiserver's conflict. That is the normal lag of a cache,
// not a failure: the reconcile ends without an error (which
// controller-runtime would log as "Reconciler error" with a stack trace
// and retry with back-off), and the stored Transfer is untouched until
// the newer version is decided.
func TestTransferDecidedFromAStaleCacheIsNotAFailure(t *testing.T) {
	var opts controllers.Options
	m := startManager(t, func(o *controllers.Options) { opts = *o })
	tn := newTenant(t)
	tr := &custodyv1alpha1.Transfer{}
	tr.Namespace, tr.Name = tn.Status.Namespace, uniq("release")
	tr.Spec = custodyv1alpha1.TransferSpec{ClaimName: uniq("claim"), Release: &custodyv1alpha1.TransferRelease{}}
	if err := admin.Create(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	stale := waitTransfer(t, tr, custodyv1alpha1.TransferPhasePending)
	// The cached copy predates the manager's status write, and someone
	// has written the Transfer since.
	stale.Status = custodyv1alpha1.TransferStatus{}
	current := stale.DeepCopy()
	metav1.SetMetaDataLabel(&current.ObjectMeta, "example.com/touched", "yes")
	if err := admin.Update(context.Background(), current); err != nil {
		t.Fatal(err)
	}

	r := &controllers.TransferReconciler{Client: staleTransfer{Client: m.Manager.GetClient(), key: clientKey(tr), stale: stale}, APIReader: admin, Options: opts}
	res, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: clientKey(tr)})
	if err != nil {
		t.Fatalf("a stale cache's conflict was returned as a failure: %v", err)
	}
	if res.RequeueAfter != 0 {
		t.Fatalf("result %+v: the newer version's event brings the Transfer back", res)
	}
	got := &custodyv1alpha1.Transfer{}
	if err := admin.Get(context.Background(), clientKey(tr), got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != current.ResourceVersion || got.Status.Phase != custodyv1alpha1.TransferPhasePending {
		t.Fatalf("the stale decision was written: resourceVersion %s (was %s), phase %q", got.ResourceVersion, current.ResourceVersion, got.Status.Phase)
	}
}
