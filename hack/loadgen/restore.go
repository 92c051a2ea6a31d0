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

// bindByRestore deletes the unsold Devices and re-creates them bound, as a
// restore would; it returns when the restore identity's writes are done.
func (h *harness) bindByRestore(ctx context.Context, unsold []*fleetDevice) error {
	restorer, err := h.restoreClient()
	if err != nil {
		return err
	}
	start := time.Now()
	errs := parallel(len(unsold), h.cfg.writers, func(i int) error {
		d := &custodyv1alpha1.Device{}
		d.Name = custodyv1alpha1.DeviceName(unsold[i].model, unsold[i].serial)
		return client.IgnoreNotFound(h.admin.Delete(ctx, d))
	})
	if err := firstError(errs); err != nil {
		return fmt.Errorf("deleting the unsold Devices: %w", err)
	}
	for {
		left := 0
		for _, d := range unsold[:min(len(unsold), 50)] {
			if err := h.admin.Get(ctx, client.ObjectKey{Name: custodyv1alpha1.DeviceName(d.model, d.serial)}, &custodyv1alpha1.Device{}); err == nil {
				left++
			}
		}
		if left == 0 {
			break
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	h.printf("  deleted the %d unsold Devices in %.1fs\n", len(unsold), time.Since(start).Seconds())
	if _, err := h.settle(ctx); err != nil {
		return err
	}
	start = time.Now()
	errs = parallel(len(unsold), h.cfg.writers, func(i int) error {
		dev, c := h.restoredBound(unsold[i].dev, start)
		if err := restorer.Create(ctx, dev, client.FieldOwner(restoreFieldManager)); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("restoring Device %s: %w", dev.Name, err)
		}
		if err := restorer.Create(ctx, c, client.FieldOwner(restoreFieldManager)); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("restoring Claim %s/%s: %w", c.Namespace, c.Name, err)
		}
		return nil
	})
	if len(errs) > 0 {
		h.printf("  %d restores failed: %v\n", len(errs), errs[0])
	}
	h.printf("  restored %d bound Devices and their Claims in %.1fs (%.0f/s, 2 creates each, %d writers)\n",
		len(unsold)-len(errs), time.Since(start).Seconds(), float64(len(unsold)-len(errs))/time.Since(start).Seconds(), h.cfg.writers)
	return firstError(errs)
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
