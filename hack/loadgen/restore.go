package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/loadtest"
	"github.com/custody-dev/custody/internal/webhooks"
)

// Bind paths of the rss phase (--scale-bind).
const (
	// bindSale: the ERP sells each unsold Device directly to the tenant;
	// the manager opens a Claim for it and binds it. The real path, one
	// binding at a time: about 20 bindings/s here, over an hour for 100,000.
	bindSale = "sale"
	// bindRestore: the unsold Devices are deleted and re-created bound, as
	// a restore of a status-less backup would re-create them (docs/
	// operations.md, "Backup and restore"): the Device with the spec a
	// direct sale leaves (sale, claimRef, consumed sale record, custody
	// head) and its Claim, created by the restore identity. The manager
	// records Restored, re-points the binding at the new Claim and marks
	// it Bound. The objects the manager then holds are those of a fleet
	// bound by sale; their history holds the backup's head and the
	// Restored entry instead of Sold and Bound.
	bindRestore = "restore"
)

// restoreFieldManager names the "restore tool" in the Restored entries.
const restoreFieldManager = "loadgen-restore"

// restoreClient is the restore identity: the admin impersonating a user in
// the restore group (and system:masters for RBAC, as a cluster admin
// acting as the restore identity is).
func (h *harness) restoreClient() (client.Client, error) {
	cfg := rest.CopyConfig(h.restCfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "custody-load-restore", Groups: []string{webhooks.DefaultRestoreGroup, "system:masters", "system:authenticated"}}
	return client.New(cfg, client.Options{Scheme: h.admin.Scheme()})
}

// fakeHash is a well-formed chain hash for the synthetic backup's head:
// the entries before it are in no audit log (the report says so).
func fakeHash() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "sha256:" + hex.EncodeToString(b)
}

// restoredBound returns the Device and Claim a status-less backup of d,
// bound by a direct sale to the load tenant, holds.
func (h *harness) restoredBound(d *custodyv1alpha1.Device, boundAt time.Time) (*custodyv1alpha1.Device, *custodyv1alpha1.Claim) {
	dev := d.DeepCopy()
	dev.ResourceVersion, dev.UID, dev.Generation = "", "", 0
	sale := h.directSale(dev.Spec.SerialNumber)
	claimUID := uuid.NewUUID()
	at := metav1.NewTime(boundAt.UTC().Truncate(time.Second))
	dev.Spec.Sale = sale
	dev.Spec.ConsumedSaleRecords = []string{sale.OrderReference}
	dev.Spec.ClaimRef = &custodyv1alpha1.DeviceClaimReference{Namespace: h.ns, Name: dev.Name, UID: claimUID, Tenant: h.cfg.tenant, BoundAt: &at}
	dev.Spec.Custody = &custodyv1alpha1.DeviceCustody{
		DeviceUID:    uuid.NewUUID(),
		RecordedSale: sale.OrderReference,
		Head: custodyv1alpha1.CustodyRecord{
			Sequence: 2, Time: at, Type: custodyv1alpha1.CustodyEventBound, Tenant: h.cfg.tenant,
			Claim: h.ns + "/" + dev.Name, ClaimUID: claimUID, Proof: "SaleRecord", Actor: "erp:" + erpUser,
			Hash: fakeHash(), PreviousHash: fakeHash(),
		},
	}
	c := &custodyv1alpha1.Claim{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: dev.Name, Labels: dev.Labels},
		Spec: custodyv1alpha1.ClaimSpec{
			SerialNumber: dev.Spec.SerialNumber, Model: dev.Spec.Model, SaleRecord: &custodyv1alpha1.SaleRecordProof{},
			ReleasePolicy: custodyv1alpha1.ReleasePolicyRetain, RequestedBy: "system:serviceaccount:custody-system:custody-manager",
		},
	}
	return dev, c
}

// growByRestore grows the cluster to size Devices: the new ones are
// restored bound (up to --scale-bound in all; the rest are created
// unsold by the ERP), the manager binds them, its queues drain, and the
// memory is sampled.
func (h *harness) growByRestore(ctx context.Context, size int, idle *memoryRow, boundNow func() int) (memoryRow, error) {
	have, err := h.countDevices(ctx)
	if err != nil {
		return memoryRow{}, err
	}
	need := max(0, size-have)
	bind := need
	if c := h.cfg.scaleBound; c > 0 {
		bind = min(need, max(0, c-boundNow()))
	}
	start := time.Now()
	if need > bind {
		devs, err := h.makeDevices(kindScale, need-bind)
		if err != nil {
			return memoryRow{}, err
		}
		elapsed, failed, err := h.createDevices(ctx, devs, h.cfg.writers)
		if err != nil {
			return memoryRow{}, err
		}
		h.printf("  created %d unsold Devices in %.1fs (%.0f/s, %d failed)\n", len(devs), elapsed.Seconds(), float64(len(devs)-failed)/elapsed.Seconds(), failed)
	}
	if bind > 0 {
		restorer, err := h.restoreClient()
		if err != nil {
			return memoryRow{}, err
		}
		reconciles := h.reconcileCounts(ctx)
		// Made and restored in batches, so that the harness never holds
		// 100,000 devices' keys at once.
		const batch = 2000
		serials := make([]string, 0, bind)
		var restored, failed int
		h.retried.Store(0)
		t0 := time.Now()
		for done := 0; done < bind; done += batch {
			devs, err := h.makeDevices(kindScale, min(batch, bind-done))
			if err != nil {
				return memoryRow{}, err
			}
			errs := parallel(len(devs), h.cfg.writers, func(i int) error {
				dev, c := h.restoredBound(devs[i].rec.Device, t0)
				if err := h.retry(ctx, func() error { return restorer.Create(ctx, dev.DeepCopy(), client.FieldOwner(restoreFieldManager)) }); err != nil {
					return fmt.Errorf("restoring Device %s: %w", dev.Name, err)
				}
				if err := h.retry(ctx, func() error { return restorer.Create(ctx, c.DeepCopy(), client.FieldOwner(restoreFieldManager)) }); err != nil {
					return fmt.Errorf("restoring Claim %s/%s: %w", c.Namespace, c.Name, err)
				}
				return nil
			})
			if len(errs) > 0 {
				h.printf("  %d restores failed: %v\n", len(errs), errs[0])
			}
			failed += len(errs)
			restored += len(devs) - len(errs)
			for _, d := range devs {
				serials = append(serials, d.serial)
				d.rec = nil
			}
		}
		h.printf("  restored %d bound Devices and their Claims in %.1fs (%.0f/s, 2 creates each, %d writers; %d creates retried, %d failed)\n",
			restored, time.Since(t0).Seconds(), float64(restored)/time.Since(t0).Seconds(), h.cfg.writers, h.retried.Load(), failed)
		n := h.watcher.waitBound(ctx, serials, h.cfg.timeout)
		h.printf("  %d of %d bound %.1fs after the first restore (%.0f bindings/s)\n", n, len(serials), time.Since(t0).Seconds(), float64(n)/time.Since(t0).Seconds())
		recorded, checked := 0, min(len(serials), 20)
		for _, serial := range serials[:checked] {
			if ok, err := h.restoredRecorded(ctx, custodyv1alpha1.DeviceName("LOAD", serial)); err == nil && ok {
				recorded++
			}
		}
		h.printf("  the manager recorded Restored on %d of the first %d restored Devices\n", recorded, checked)
		if _, err := h.settle(ctx); err != nil {
			return memoryRow{}, err
		}
		after := h.reconcileCounts(ctx)
		h.printf("  reconciles meanwhile, by controller (ok/failed): device %.0f/%.0f, claim %.0f/%.0f\n",
			after["device/ok"]-reconciles["device/ok"], after["device/error"]-reconciles["device/error"],
			after["claim/ok"]-reconciles["claim/ok"], after["claim/error"]-reconciles["claim/error"])
		if recorded < checked {
			return memoryRow{}, fmt.Errorf("the manager recorded Restored on %d of %d restored Devices", recorded, checked)
		}
	}
	if _, err := h.settle(ctx); err != nil {
		return memoryRow{}, err
	}
	row, err := h.sampleMemory(ctx, fmt.Sprintf("%d, %d bound", size, boundNow()), boundNow(), idle)
	row.SettleSecs = time.Since(start).Seconds()
	return row, err
}

// retry runs a create until it succeeds, finds the object already there
// (an earlier attempt that answered too late), or fails for a reason a
// retry would not change; as a restore tool would, it retries what an
// overloaded control plane answers (timeouts, webhooks that did not answer
// in time, 429 and 5xx), up to five times, and counts the retries.
func (h *harness) retry(ctx context.Context, create func() error) error {
	var err error
	for attempt := range 5 {
		err = create()
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if !transient(err) {
			return err
		}
		h.retried.Add(1)
		if serr := sleep(ctx, time.Duration(attempt+1)*time.Second); serr != nil {
			return serr
		}
	}
	return err
}

func transient(err error) bool {
	return apierrors.IsInternalError(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err)
}

// restoredRecorded reports whether the manager recorded the restore of the
// named Device (its chain carries on from the backup's head).
func (h *harness) restoredRecorded(ctx context.Context, name string) (bool, error) {
	d := &custodyv1alpha1.Device{}
	if err := h.admin.Get(ctx, types.NamespacedName{Name: name}, d); err != nil {
		return false, err
	}
	return d.Spec.Custody != nil && d.Spec.Custody.Head.Type == custodyv1alpha1.CustodyEventRestored && d.Spec.Custody.DeviceUID == d.UID, nil
}

// reconcileCounts reads the manager's reconciles of the device and claim
// controllers, by "<controller>/ok" and "<controller>/error".
func (h *harness) reconcileCounts(ctx context.Context) map[string]float64 {
	out := map[string]float64{}
	s, err := h.managerMetrics(ctx)
	if err != nil {
		return out
	}
	for _, c := range []string{"device", "claim"} {
		out[c+"/error"] = loadtest.Sum(s, "controller_runtime_reconcile_total", map[string]string{"controller": c, "result": "error"})
		out[c+"/ok"] = loadtest.Sum(s, "controller_runtime_reconcile_total", map[string]string{"controller": c}) - out[c+"/error"]
	}
	return out
}
