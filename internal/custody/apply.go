package custody

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/history"
)

// Steps of Apply at which a test may inject a crash (Applier.FailPoint).
const (
	// StepChanged: the change and its head are written; nothing else is.
	StepChanged = "custody-changed"
	// StepAudited: the audit line is written; status.history is not.
	StepAudited = "custody-audited"
)

// ErrRestorePending is returned by Apply for a Device re-created from a
// backup whose restore is not yet recorded: the device controller records
// it first (Restore), so that no change is written over a chain that does
// not yet say where it came from.
var ErrRestorePending = fmt.Errorf("%w: the device was restored from a backup and the restore is not recorded yet", ErrNotApplicable)

// Applier writes Changes: the one writer of a Device's ownership fields,
// spec.custody and status.history.
type Applier struct {
	// Client writes the Device.
	Client client.Client
	// Reader reads a Device afresh when its status changed under us; the
	// API server, not a cache that may lag.
	Reader client.Reader
	// Recorder records each change's Event on the Device.
	Recorder events.EventRecorder
	// FieldOwner is the field manager of every write.
	FieldOwner string
	// Audit receives one line per history entry (history.AuditMessage).
	Audit logr.Logger
	// FailPoint, when set, is called after each step with the device name;
	// an error stops Apply there, as a crash would.
	FailPoint func(step, device string) error
	// DeriveStatus, when set, computes the status fields that follow from
	// a Device's spec and history (its phase, conditions and observed
	// generation) on the Device as it will be once its head is appended,
	// so that the append writes them too: one status write per change
	// instead of an append and then the device controller's own write.
	// It must change nothing but status.phase, status.conditions and
	// status.observedGeneration.
	DeriveStatus func(ctx context.Context, d *custodyv1alpha1.Device) error

	// Clock tells how long ago this process completed a change
	// (ErrCompleting); the real clock when nil.
	Clock clock.PassiveClock

	// applying holds the names of the Devices an Apply of this process is
	// writing now (Applying).
	applying sync.Map
	// appended holds, by Device UID, the head this process last appended
	// to status.history (an appendedHead), until a Complete sees it
	// there: a Device read from a cache that has not seen the append yet
	// shows the head unfinished (ErrCompleting).
	appended sync.Map
}

// appendedHead is a head this process appended, and when.
type appendedHead struct {
	hash string
	at   time.Time
}

// ErrCompleting is returned by Complete (and Apply) for a Device that
// shows a change unfinished which this process finished moments ago: a
// view older than that write, as a cache shows it until the write's own
// event arrives (and brings the caller back). Appended again, the head
// would be refused by the API server and cost a read; the caller looks
// again shortly instead. Past AppendedWindow the head is appended as any
// unfinished one, so a status someone else rewrote is repaired.
var ErrCompleting = errors.New("the device's last ownership change was just completed by this manager; its view of the device is older than that write")

// AppendedWindow is how long after appending a head this process takes a
// Device showing that head unfinished for a stale view (ErrCompleting).
const AppendedWindow = 5 * time.Second

// Applying reports whether an Apply of this process is writing the Device
// name now: it completes its own change, so another controller of the
// same manager that sees the change land need not race it to the same
// status append (and lose with a refused write). A crash empties it, and
// then the Device controller completes the change.
func (a *Applier) Applying(name string) bool {
	_, ok := a.applying.Load(name)
	return ok
}

// Apply writes ch to the Device d was observed as: first it completes a
// change d shows unfinished (Complete), then writes the new spec with its
// linked history entry in one optimistic write (a conflict is returned for
// the caller to look again), then completes it. On success d is the Device
// as written.
func (a *Applier) Apply(ctx context.Context, d *custodyv1alpha1.Device, ch Change) error {
	if RestorePending(d) && ch.Record.Type != custodyv1alpha1.CustodyEventRestored {
		return ErrRestorePending
	}
	a.applying.Store(d.Name, struct{}{})
	defer a.applying.Delete(d.Name)
	observed := d.Spec.DeepCopy()
	if err := a.Complete(ctx, d); err != nil {
		return err
	}
	if !equality.Semantic.DeepEqual(*observed, d.Spec) {
		// Completing an earlier change re-read the Device and its spec
		// moved on: ch was computed from an older observation, and written
		// over the newer one (with its resourceVersion) it would undo what
		// landed meanwhile. Look again. (Completing writes status only, so
		// an unchanged spec is the observation ch was computed from.)
		return apierrors.NewConflict(custodyv1alpha1.GroupVersion.WithResource("devices").GroupResource(), d.Name,
			errors.New("an earlier ownership change was completed first; decide again from the Device as it is now"))
	}
	before := d.DeepCopy()
	entry := history.Link(Head(d), ch.Record)
	recordedDecommission := before.Spec.Custody != nil && before.Spec.Custody.Decommissioned
	d.Spec = *ch.Spec.DeepCopy()
	if d.Spec.Custody == nil {
		d.Spec.Custody = &custodyv1alpha1.DeviceCustody{}
	}
	d.Spec.Custody.Head, d.Spec.Custody.DeviceUID = entry, d.UID
	// A decommissioning is recorded once, until the device returns to
	// service (Recommission).
	d.Spec.Custody.Decommissioned = ch.Record.Type == custodyv1alpha1.CustodyEventDecommissioned ||
		(recordedDecommission && ch.Record.Type != custodyv1alpha1.CustodyEventRecommissioned)
	if err := a.Client.Patch(ctx, d, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(a.FieldOwner)); err != nil {
		*d = *before
		return err
	}
	if ch.Event != nil && a.Recorder != nil {
		a.Recorder.Eventf(d, ch.Event.Related, ch.Event.Type, ch.Event.Reason, ch.Event.Action, "%s", ch.Event.Note)
	}
	if err := a.failPoint(StepChanged, d.Name); err != nil {
		return err
	}
	return a.Complete(ctx, d)
}

// Complete is the one crash-repair rule: if d's chain head is not yet the
// newest entry of status.history, it writes the head's audit line and then
// appends the head to status.history. It is idempotent, and a no-op for a
// complete device. On success d.Status.History ends with the head.
func (a *Applier) Complete(ctx context.Context, d *custodyv1alpha1.Device) error {
	if d.Spec.Custody == nil {
		return nil
	}
	head := d.Spec.Custody.Head
	if complete(d) {
		if v, ok := a.appended.Load(d.UID); ok && v.(appendedHead).hash == head.Hash {
			a.appended.Delete(d.UID)
		}
		return nil
	}
	if v, ok := a.appended.Load(d.UID); ok {
		if h := v.(appendedHead); h.hash == head.Hash && a.now().Sub(h.at) < AppendedWindow {
			return fmt.Errorf("device %s: %w", d.Name, ErrCompleting)
		}
	}
	// The change landed with its head; the audit line follows it, and
	// precedes the status entry, so that a crash loses neither.
	a.Audit.Info(history.AuditMessage, "device", d.Name, "entry", head)
	if err := a.failPoint(StepAudited, d.Name); err != nil {
		return err
	}
	return retry.OnError(completeBackoff, IsStale, func() error {
		if complete(d) {
			return nil
		}
		err := a.appendHead(ctx, d)
		if err == nil {
			a.appended.Store(d.UID, appendedHead{hash: head.Hash, at: a.now()})
		}
		if IsStale(err) {
			logr.FromContextOrDiscard(ctx).V(1).Info("status.history append refused as stale; reading the Device again",
				"device", d.Name, "resourceVersion", d.ResourceVersion, "cause", staleCause(err))
			fresh := &custodyv1alpha1.Device{}
			if gerr := a.Reader.Get(ctx, client.ObjectKeyFromObject(d), fresh); gerr != nil {
				return client.IgnoreNotFound(gerr)
			}
			if fresh.Spec.Custody == nil || fresh.Spec.Custody.Head.Hash != head.Hash {
				// Another change landed meanwhile; whoever wrote it
				// completes its own head, which follows ours.
				*d = *fresh
				return a.Complete(ctx, d)
			}
			*d = *fresh
		}
		return err
	})
}

// completeBackoff retries a status append that lost to another append (or
// to a status write of a device without history).
var completeBackoff = wait.Backoff{Steps: 8, Duration: 5 * time.Millisecond, Factor: 2, Jitter: 0.2, Cap: 500 * time.Millisecond}

func complete(d *custodyv1alpha1.Device) bool {
	n := len(d.Status.History)
	return n > 0 && d.Status.History[n-1].Hash == d.Spec.Custody.Head.Hash
}

// appendHead writes d's head as the newest entry of status.history. When
// the head follows the newest entry, a JSON patch appends it on the
// condition that the newest entry is still that one (other status fields
// may change meanwhile, and only another history append conflicts). Otherwise (a device's first entry, or a chain
// whose earlier entries are only in the audit log after a restore) the
// history becomes a window starting at the head, written with the Device's
// resourceVersion.
//
// With DeriveStatus, the same write sets the phase, conditions and
// observed generation of the Device as appended, on the condition that
// its generation is still the one they were derived from.
func (a *Applier) appendHead(ctx context.Context, d *custodyv1alpha1.Device) error {
	head := d.Spec.Custody.Head
	hist := d.Status.History
	n := len(hist)
	appends := n > 0 && hist[n-1].Sequence == head.Sequence-1 && hist[n-1].Hash == head.PreviousHash
	next := []custodyv1alpha1.CustodyRecord{head}
	if appends {
		next = append(slices.Clone(hist), head)
		if len(next) > MaxHistory {
			next = next[len(next)-MaxHistory:]
		}
	}
	derived, err := a.derive(ctx, d, next)
	if err != nil {
		return err
	}
	var patch client.Patch
	if appends {
		// The test is of the whole list: an entry's index alone would
		// also match after another append.
		ops := []map[string]any{
			{"op": "test", "path": "/status/history", "value": hist},
			{"op": "add", "path": "/status/history/-", "value": head},
		}
		if n+1 > MaxHistory {
			ops = append(ops, map[string]any{"op": "remove", "path": "/status/history/0"})
		}
		if derived != nil {
			ops = append(ops,
				map[string]any{"op": "test", "path": "/metadata/generation", "value": d.Generation},
				map[string]any{"op": "add", "path": "/status/phase", "value": derived.Phase},
				map[string]any{"op": "add", "path": "/status/conditions", "value": derived.Conditions},
				map[string]any{"op": "add", "path": "/status/observedGeneration", "value": derived.ObservedGeneration})
		}
		raw, err := json.Marshal(ops)
		if err != nil {
			return err
		}
		patch = client.RawPatch(types.JSONPatchType, raw)
	} else {
		status := map[string]any{"history": []custodyv1alpha1.CustodyRecord{head}}
		if derived != nil {
			// The resourceVersion already pins the generation.
			status["phase"], status["conditions"], status["observedGeneration"] = derived.Phase, derived.Conditions, derived.ObservedGeneration
		}
		raw, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": d.ResourceVersion},
			"status":   status,
		})
		if err != nil {
			return err
		}
		patch = client.RawPatch(types.MergePatchType, raw)
	}
	return client.IgnoreNotFound(a.Client.Status().Patch(ctx, d, patch, client.FieldOwner(a.FieldOwner)))
}

// derive returns the status DeriveStatus computes for d with the history
// hist, nil without DeriveStatus.
func (a *Applier) derive(ctx context.Context, d *custodyv1alpha1.Device, hist []custodyv1alpha1.CustodyRecord) (*custodyv1alpha1.DeviceStatus, error) {
	if a.DeriveStatus == nil {
		return nil, nil
	}
	next := d.DeepCopy()
	next.Status.History = hist
	if err := a.DeriveStatus(ctx, next); err != nil {
		return nil, err
	}
	return &next.Status, nil
}

// IsStale reports whether a write was refused because the object changed
// since it was read: a conflict, or a JSON patch the API server could not
// apply. The API server answers a failed JSON-patch test with a bare 422
// ("the server rejected our request due to an error in our request") that
// does not say which operation failed; the JSON patches here are well formed
// against the object they were computed from, so such an answer means the
// object moved on: read it again.
func IsStale(err error) bool {
	if err == nil {
		return false
	}
	if apierrors.IsConflict(err) {
		return true
	}
	var status apierrors.APIStatus
	return errors.As(err, &status) && status.Status().Code == http.StatusUnprocessableEntity &&
		strings.Contains(status.Status().Message, "rejected our request due to an error in our request")
}

func (a *Applier) now() time.Time {
	if a.Clock == nil {
		return time.Now()
	}
	return a.Clock.Now()
}

// staleCause is what the API server said about a refused write: a
// failed JSON-patch test is named only in the status's causes.
func staleCause(err error) string {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return err.Error()
	}
	s := status.Status()
	msg := s.Message
	if s.Details != nil {
		for _, c := range s.Details.Causes {
			msg += "; " + c.Message
		}
	}
	return msg
}

func (a *Applier) failPoint(step, device string) error {
	if a.FailPoint == nil {
		return nil
	}
	return a.FailPoint(step, device)
}
