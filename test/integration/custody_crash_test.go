package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/controllers"
	"github.com/custody-dev/custody/internal/custody"
)

// crashSwitch is a fail point of the custody core armed for one device: once
// hit, every step of that device fails until the manager stops, as if the
// process had been killed there.
type crashSwitch struct {
	step    string
	target  atomic.Pointer[string]
	hit     atomic.Bool
	crashed chan struct{}
	once    sync.Once
}

func (s *crashSwitch) options(o *controllers.Options) {
	o.FailPoint = func(step string, key client.ObjectKey) error {
		tk := s.target.Load()
		if tk == nil || key.Namespace != "" || key.Name != *tk {
			return nil
		}
		// A crash at a step stops every later step too, whichever
		// reconcile reaches it first.
		if s.hit.Load() || stepRank[step] >= stepRank[s.step] {
			s.hit.Store(true)
			s.once.Do(func() { close(s.crashed) })
			return errors.New("injected crash at " + step)
		}
		return nil
	}
}

// stepRank orders the steps of custody.Applier.
var stepRank = map[string]int{custody.StepChanged: 1, custody.StepAudited: 2}

// changeUnderTest sets up a device up to the moment before one ownership
// change, makes the change happen (trigger, with the manager's clock), and
// checks where it must end.
type changeUnderTest struct {
	name string
	// record is the type of the change's history entry.
	record custodyv1alpha1.CustodyEventType
	// policy, when set, configures every manager of the case.
	policy func(*controllers.Options)
	// setup prepares the device and returns its name and the trigger.
	setup func(t *testing.T, m *manager) (device string, trigger func(m *manager), converged func(t *testing.T, m *manager))
}

// TestCrashAtEachStepOfEachChange stops the manager at each step of each
// ownership change (after the change and its head are written; after the
// audit line) and starts a new one: every change converges to its one
// binding and exactly one history entry, and the device's chain and the
// audit log verify and agree (no audit line is lost, none is invented).
func TestCrashAtEachStepOfEachChange(t *testing.T) {
	changes := []changeUnderTest{
		{name: "bind", record: custodyv1alpha1.CustodyEventBound, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			tn := newTenant(t)
			rec := newDevice(t)
			var cl *custodyv1alpha1.Claim
			return rec.Device.Name, func(*manager) {
					cl = claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String())
				}, func(t *testing.T, m *manager) {
					waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
					if !boundTo(t, rec.Device.Name, cl.UID) {
						t.Fatal("not bound to the claim")
					}
				}
		}},
		{name: "cooling-off expiry", record: custodyv1alpha1.CustodyEventBound, policy: coolingOff, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			acme := newTenant(t)
			rec, code := releasedByCustodian(t)
			cl := waitPhase(t, claimWithCode(t, admin, acme.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, code), custodyv1alpha1.ClaimPhaseCoolingOff)
			expire := func(m *manager) {
				m.Clock.SetTime(epoch.Add(73 * time.Hour))
				touchClaim(t, cl)
			}
			return rec.Device.Name, expire, func(t *testing.T, m *manager) {
				expire(m) // the new manager's clock starts at the epoch again
				waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
				if !boundTo(t, rec.Device.Name, cl.UID) || getDevice(t, rec.Device.Name).Spec.PendingClaim != nil {
					t.Fatal("the uncontested claim did not bind")
				}
			}
		}},
		{name: "transfer", record: custodyv1alpha1.CustodyEventTransferred, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			from, to := newTenant(t), newTenant(t)
			rec := newDevice(t)
			held := waitPhase(t, claimWithCode(t, admin, from.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			tr := offer(t, admin, held, to.Name)
			var cl *custodyv1alpha1.Claim
			return rec.Device.Name, func(*manager) { cl = proofClaim(t, admin, to.Status.Namespace, rec, acceptFrom(from.Name)) }, func(t *testing.T, m *manager) {
				waitPhase(t, cl, custodyv1alpha1.ClaimPhaseBound)
				waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
				if e := lastEntry(t, rec.Device.Name, custodyv1alpha1.CustodyEventTransferred); e.FromTenant != from.Name || e.ClaimUID != cl.UID || e.Reference != tr.Namespace+"/"+tr.Name {
					t.Fatalf("transfer recorded as %+v", e)
				}
			}
		}},
		{name: "release", record: custodyv1alpha1.CustodyEventReleased, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			tn := newTenant(t)
			rec := newDevice(t)
			held := waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			tr := &custodyv1alpha1.Transfer{ObjectMeta: metav1.ObjectMeta{Name: uniq("release"), Namespace: held.Namespace},
				Spec: custodyv1alpha1.TransferSpec{ClaimName: held.Name, Release: &custodyv1alpha1.TransferRelease{RotateClaimCode: true}}}
			return rec.Device.Name, func(*manager) {
					if err := admin.Create(context.Background(), tr); err != nil {
						t.Fatal(err)
					}
				}, func(t *testing.T, m *manager) {
					waitTransfer(t, tr, custodyv1alpha1.TransferPhaseCompleted)
					d := getDevice(t, rec.Device.Name)
					if d.Spec.ClaimRef != nil || d.Spec.ClaimCode.Verifier == rec.Device.Spec.ClaimCode.Verifier {
						t.Fatalf("after the release: claimRef %v, claim code rotated %v", d.Spec.ClaimRef, d.Spec.ClaimCode.Verifier != rec.Device.Spec.ClaimCode.Verifier)
					}
				}
		}},
		{name: "award", record: custodyv1alpha1.CustodyEventResolved, policy: coolingOff, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			customer, stranger := newTenant(t), newTenant(t)
			rec, code := releasedByCustodian(t)
			serial, model := rec.Device.Spec.SerialNumber, rec.Device.Spec.Model
			mine := waitPhase(t, claimWithCode(t, admin, customer.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseCoolingOff)
			waitPhase(t, claimWithCode(t, admin, stranger.Status.Namespace, serial, model, code), custodyv1alpha1.ClaimPhaseDisputed)
			bindSupport(t, "sam@support.example")
			act := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("award")}, Spec: custodyv1alpha1.SupportActionSpec{
				DeviceName: rec.Device.Name, Action: custodyv1alpha1.SupportActionAward, Claim: &custodyv1alpha1.ClaimReference{Namespace: mine.Namespace, Name: mine.Name},
				Reason: "TICKET-1: invoice"}}
			return rec.Device.Name, func(*manager) {
					if err := userClient(t, "sam@support.example").Create(context.Background(), act); err != nil {
						t.Fatal(err)
					}
				}, func(t *testing.T, m *manager) {
					waitPhase(t, mine, custodyv1alpha1.ClaimPhaseBound)
					waitSupportAction(t, act, custodyv1alpha1.SupportActionSucceeded)
					if d := getDevice(t, rec.Device.Name); d.Spec.Dispute != nil || !boundTo(t, rec.Device.Name, mine.UID) {
						t.Fatal("the award did not settle the dispute")
					}
				}
		}},
		{name: "reset", record: custodyv1alpha1.CustodyEventResolved, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			tn := newTenant(t)
			rec := newDevice(t)
			held := waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			bindSupport(t, "sam@support.example")
			act := &custodyv1alpha1.SupportAction{ObjectMeta: metav1.ObjectMeta{Name: uniq("reset")}, Spec: custodyv1alpha1.SupportActionSpec{
				DeviceName: rec.Device.Name, Action: custodyv1alpha1.SupportActionReset, Reason: "TICKET-2: stolen"}}
			return rec.Device.Name, func(*manager) {
					if err := userClient(t, "sam@support.example").Create(context.Background(), act); err != nil {
						t.Fatal(err)
					}
				}, func(t *testing.T, m *manager) {
					waitSupportAction(t, act, custodyv1alpha1.SupportActionSucceeded)
					waitPhase(t, held, custodyv1alpha1.ClaimPhaseLost)
					if getDevice(t, rec.Device.Name).Spec.ClaimRef != nil {
						t.Fatal("the reset left a binding")
					}
				}
		}},
		{name: "decommission", record: custodyv1alpha1.CustodyEventDecommissioned, setup: func(t *testing.T, m *manager) (string, func(*manager), func(*testing.T, *manager)) {
			tn := newTenant(t)
			rec := newDevice(t)
			held := waitPhase(t, claimWithCode(t, admin, tn.Status.Namespace, rec.Device.Spec.SerialNumber, rec.Device.Spec.Model, rec.Code.String()), custodyv1alpha1.ClaimPhaseBound)
			return rec.Device.Name, func(*manager) {
					if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
						d := getDevice(t, rec.Device.Name)
						d.Spec.Decommissioned = true
						return admin.Update(context.Background(), d, client.FieldOwner(erpOwner))
					}); err != nil {
						t.Fatal(err)
					}
				}, func(t *testing.T, m *manager) {
					waitPhase(t, held, custodyv1alpha1.ClaimPhaseLost)
					if getDevice(t, rec.Device.Name).Spec.ClaimRef != nil {
						t.Fatal("the decommissioned device is still bound")
					}
				}
		}},
	}
	for _, ch := range changes {
		for _, step := range []string{custody.StepChanged, custody.StepAudited} {
			t.Run(fmt.Sprintf("%s/%s", ch.name, step), func(t *testing.T) {
				sw := &crashSwitch{step: step, crashed: make(chan struct{})}
				opts := []func(*controllers.Options){sw.options}
				if ch.policy != nil {
					opts = append(opts, ch.policy)
				}
				m := startManager(t, opts...)
				name, trigger, converged := ch.setup(t, m)
				before := len(entries(getDevice(t, name), ch.record))
				sw.target.Store(&name)
				trigger(m)
				select {
				case <-sw.crashed:
				case <-time.After(time.Minute):
					t.Fatalf("the change never reached %s", step)
				}
				m.stop()

				// The manager stopped between the steps: the change and its
				// head landed, status.history does not show it yet.
				d := getDevice(t, name)
				if d.Spec.Custody == nil || d.Spec.Custody.Head.Type != ch.record || custody.Completed(d) {
					t.Fatalf("after the crash: head %+v, status history complete %v", d.Spec.Custody, d.Spec.Custody != nil && custody.Completed(d))
				}

				if ch.policy != nil {
					m = startManager(t, ch.policy)
				} else {
					m = startManager(t)
				}
				converged(t, m)
				waitFor(t, "the history to hold the change", func() bool { return custody.Completed(getDevice(t, name)) })
				d = getDevice(t, name)
				if got := len(entries(d, ch.record)); got != before+1 {
					t.Fatalf("%d %s entries after the change, had %d: %+v", got, ch.record, before, d.Status.History)
				}
				assertChain(t, name)
			})
		}
	}
}

func waitSupportAction(t *testing.T, a *custodyv1alpha1.SupportAction, want custodyv1alpha1.SupportActionPhase) {
	t.Helper()
	got := &custodyv1alpha1.SupportAction{}
	waitFor(t, "support action "+a.Name+" to be "+string(want), func() bool {
		return admin.Get(context.Background(), client.ObjectKeyFromObject(a), got) == nil && got.Status.Phase == want
	})
}
