package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	custodyv1alpha1 "github.com/custody-dev/custody/api/v1alpha1"
	"github.com/custody-dev/custody/internal/claim"
	"github.com/custody-dev/custody/internal/claimcode"
	"github.com/custody-dev/custody/internal/loadtest"
	"github.com/custody-dev/custody/pkg/device"
	"github.com/custody-dev/custody/pkg/protocol"
)

// phaseCeiling measures plain ConfigMap creates in a scratch namespace,
// with one writer and with --writers, then creates and status patches of
// a scratch custom resource, and deletes them.
func (h *harness) phaseCeiling(ctx context.Context) error {
	ns := "custody-load-scratch-" + h.run
	if err := h.admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	defer func() {
		start := time.Now()
		if err := h.deleteNamespace(context.Background(), ns); err != nil {
			h.printf("  scratch namespace %s: %v\n", ns, err)
			return
		}
		h.printf("  scratch namespace deleted in %.1fs\n", time.Since(start).Seconds())
	}()
	measure := func(prefix string, writers int) *rate {
		n := h.cfg.ceilingWrites
		start := time.Now()
		errs := parallel(n, writers, func(i int) error {
			return h.admin.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i), Namespace: ns}, Data: map[string]string{"i": strconv.Itoa(i)}})
		})
		r := newRate(n-len(errs), len(errs), time.Since(start).Seconds())
		h.printf("  ConfigMap creates, %2d writer(s): %6.0f/s (%d in %.2fs, %d failed)\n", writers, r.PerSecond, r.Count, r.Seconds, r.Failed)
		return r
	}
	h.report.Ceiling = &ceilingReport{Writers: h.cfg.writers}
	h.report.Ceiling.OneWriter = measure("one", 1)
	h.report.Ceiling.ManyWriter = measure("many", h.cfg.writers)
	h.printf("  write ceiling (%d writers): %.0f writes/s\n", h.cfg.writers, h.report.writeCeiling())
	creates, patches, err := h.measureCustomResources(ctx, ns)
	if err != nil {
		return err
	}
	h.report.Ceiling.CustomResourceCreates, h.report.Ceiling.CustomResourceStatusPatches = creates, patches
	return nil
}

// deleteNamespace deletes the scratch namespace's ConfigMaps, then the
// namespace, finalising it as kube-controller-manager's namespace
// controller would (custody-dev runs none).
func (h *harness) deleteNamespace(ctx context.Context, ns string) error {
	if err := h.admin.DeleteAllOf(ctx, &corev1.ConfigMap{}, client.InNamespace(ns)); err != nil {
		return err
	}
	if err := h.admin.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if n, err := h.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil && len(n.Spec.Finalizers) > 0 {
		n.Spec.Finalizers = nil
		if _, err := h.kube.CoreV1().Namespaces().Finalize(ctx, n, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) { //nolint:misspell // client-go's name
			return err
		}
	}
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		err := h.admin.Get(ctx, client.ObjectKey{Name: ns}, &corev1.Namespace{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	return errors.New("still terminating after 5 minutes")
}

// phaseIngest creates --devices Devices as the ERP: --claims of each claim
// kind (the sale-record ones with their sale) and the rest unsold.
func (h *harness) phaseIngest(ctx context.Context) error {
	h.printf("  making %d devices (factory code, claim codes from a pool of 16 verifiers) ...\n", h.cfg.devices)
	devs, err := h.makeFleet()
	if err != nil {
		return err
	}
	elapsed, failed, err := h.createDevices(ctx, devs, h.cfg.writers)
	if err != nil {
		return err
	}
	size := 0
	for _, d := range devs[:min(len(devs), 50)] {
		b, _ := yaml.Marshal(d.rec.Device)
		size += len(b)
	}
	r := &rateReport{rate: newRate(len(devs)-failed, failed, elapsed.Seconds()), Writers: h.cfg.writers, DevicesCreated: len(devs), DeviceBytesMean: size / min(len(devs), 50)}
	if c := h.report.writeCeiling(); c > 0 {
		r.OfWriteCeiling = r.PerSecond / c
	}
	h.report.Ingest = r
	h.printf("  ERP Device creates through the webhooks, %d writers (as %s): %.0f/s (%d in %.2fs); %s of the write ceiling (%.0f/s); Device manifest ~%d bytes\n",
		h.cfg.writers, h.report.ERPIdentity, r.PerSecond, r.Count, r.Seconds, pct(r.OfWriteCeiling), h.report.writeCeiling(), r.DeviceBytesMean)
	return nil
}

// makeFleet makes the claims phase's devices and the unsold rest, once.
func (h *harness) makeFleet() ([]*fleetDevice, error) {
	if len(h.fleet[kindCode]) > 0 {
		return nil, nil
	}
	var all []*fleetDevice
	for _, k := range []struct {
		kind string
		n    int
	}{{kindCode, h.cfg.claims}, {kindSale, h.cfg.claims}, {kindToken, h.cfg.claims}, {kindPlain, h.cfg.devices - 3*h.cfg.claims}} {
		devs, err := h.makeDevices(k.kind, k.n)
		if err != nil {
			return nil, err
		}
		all = append(all, devs...)
	}
	return all, nil
}

func pct(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }

// phaseClaims claims --claims devices of each kind, one kind after the
// other, and measures claims/s and claim-to-bound; then the argon2id
// ceiling.
func (h *harness) phaseClaims(ctx context.Context) error {
	if err := h.ensureTenant(ctx); err != nil {
		return err
	}
	if len(h.fleet[kindCode]) == 0 {
		devs, err := h.makeFleet()
		if err != nil {
			return err
		}
		if _, _, err := h.createDevices(ctx, devs, h.cfg.writers); err != nil {
			return err
		}
		h.printf("  (ingest not selected: created %d Devices first, untimed)\n", len(devs))
	}
	h.report.Claims = map[string]*rate{}
	kinds := []struct {
		kind, what string
		claim      func(context.Context, *fleetDevice) error
		workers    int
		setup      func(context.Context) error
	}{
		{kindCode, "claim code (argon2id)", h.claimByCode, h.cfg.writers, nil},
		{kindSale, "sale record (custodian)", h.claimBySale, h.cfg.writers, nil},
		{kindToken, "pairing token (device through the gateway)", h.claimByToken, h.cfg.concurrency, h.makeToken},
	}
	for _, k := range kinds {
		devs := h.fleet[k.kind]
		if k.setup != nil {
			if err := k.setup(ctx); err != nil {
				return err
			}
		}
		started := make([]time.Time, len(devs))
		first := time.Now()
		errs := parallel(len(devs), k.workers, func(i int) error {
			started[i] = time.Now()
			return k.claim(ctx, devs[i])
		})
		serials := make([]string, len(devs))
		for i, d := range devs {
			serials[i] = d.serial
		}
		n := h.watcher.waitBound(ctx, serials, h.cfg.timeout)
		var lat []time.Duration
		var last time.Time
		for i, d := range devs {
			if t, ok := h.watcher.boundAt(d.serial); ok {
				lat = append(lat, t.Sub(started[i]))
				if t.After(last) {
					last = t
				}
				if err := writeDeviceDir(h.boundDir, d); err != nil {
					return err
				}
				h.nBound++
			}
		}
		r := newRate(n, len(devs)-n, last.Sub(first).Seconds())
		l := loadtest.Summarise(lat)
		r.Latency = &l
		if len(errs) > 0 {
			r.Note = firstError(errs).Error()
		}
		h.report.Claims[k.kind] = r
		h.printf("  %-44s %6.1f claims/s (%d bound of %d in %.2fs); claim-to-bound %s (watch, ms)\n", k.what+":", r.PerSecond, n, len(devs), r.Seconds, l)
		if len(errs) > 0 {
			h.printf("    %d requests failed: %v\n", len(errs), errs[0])
		}
	}
	return h.hashCeiling()
}

func (h *harness) claimByCode(ctx context.Context, d *fleetDevice) error {
	name := "load-" + lower(d.serial)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns}, StringData: map[string]string{"code": d.code.String()}}
	if err := h.admin.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return h.admin.Create(ctx, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: d.serial, Model: d.model, ClaimCode: &custodyv1alpha1.ClaimCodeProof{SecretRef: custodyv1alpha1.SecretKeyReference{Name: name}}}})
}

func (h *harness) claimBySale(ctx context.Context, d *fleetDevice) error {
	return h.admin.Create(ctx, &custodyv1alpha1.Claim{ObjectMeta: metav1.ObjectMeta{Name: "load-" + lower(d.serial), Namespace: h.ns},
		Spec: custodyv1alpha1.ClaimSpec{SerialNumber: d.serial, Model: d.model, SaleRecord: &custodyv1alpha1.SaleRecordProof{}}})
}

// makeToken applies a pairing-token Secret good for every token-kind
// device, as custodyctl pairing-token makes it.
func (h *harness) makeToken(ctx context.Context) error {
	tok, err := protocol.GeneratePairingToken(h.cfg.tenant)
	if err != nil {
		return err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: claim.PairingTokenSecretPrefix + tok.ID, Namespace: h.ns},
		Type:       claim.PairingTokenSecretType,
		StringData: map[string]string{
			claim.TokenKeyID: tok.ID, claim.TokenKeySecret: tok.Secret,
			claim.TokenKeyExpiration: time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339),
			claim.TokenKeyUsageLimit: strconv.Itoa(max(len(h.fleet[kindToken]), 1)),
		},
	}
	if err := h.admin.Create(ctx, s); err != nil {
		return err
	}
	h.token = tok
	pool, err := device.LoadRootCAs(h.cfg.gatewayCA)
	if err != nil {
		return err
	}
	h.devClient = &device.Client{BaseURL: h.cfg.gatewayURL, RootCAs: pool}
	return nil
}

// claimByToken does what a device given the token does: it proves
// possession through the gateway, presenting the token.
func (h *harness) claimByToken(ctx context.Context, d *fleetDevice) error {
	key, err := parseKey(d.rec.PrivateKeyPEM)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err = h.devClient.ClaimWithToken(ctx, key, d.serial, d.model, h.token)
		var ae *device.APIError
		if err == nil || attempt == 5 || !errors.As(err, &ae) || ae.RetryAfter == 0 {
			return err
		}
		if err := sleep(ctx, ae.RetryAfter); err != nil {
			return err
		}
	}
}

// hashCeiling verifies --hashes claim codes in-process, on one goroutine
// and on GOMAXPROCS goroutines: what the cores can hash.
func (h *harness) hashCeiling() error {
	if err := h.codePool(1); err != nil {
		return err
	}
	p := h.pool[0]
	measure := func(workers int) *rate {
		n := h.cfg.hashes
		if workers == 1 {
			n = max(n/runtime.GOMAXPROCS(0), 4)
		}
		start := time.Now()
		errs := parallel(n, workers, func(int) error {
			ok, err := claimcode.Verify(p.code, p.verifier)
			if err == nil && !ok {
				err = errors.New("the pool's code does not verify")
			}
			return err
		})
		return newRate(n-len(errs), len(errs), time.Since(start).Seconds())
	}
	hr := &hashReport{Cores: runtime.GOMAXPROCS(0)}
	hr.OneCore = measure(1)
	hr.AllCores = measure(hr.Cores)
	h.report.HashCeil = hr
	h.printf("  argon2id ceiling (in-process claimcode.Verify, default parameters): %.1f/s on one goroutine, %.1f/s on %d\n", hr.OneCore.PerSecond, hr.AllCores.PerSecond, hr.Cores)
	if c := h.report.Claims[kindCode]; c != nil && hr.AllCores.PerSecond > 0 {
		h.printf("  code claims/s ÷ hash ceiling: %s (%.1f ÷ %.1f); argon2id cost per claim %.1f ms of one core\n",
			pct(c.PerSecond/hr.AllCores.PerSecond), c.PerSecond, hr.AllCores.PerSecond, 1000/hr.OneCore.PerSecond)
	}
	return nil
}

// ensureBound makes sure some devices are bound (with device directories
// for the simulator): when the claims phase did not run, --claims devices
// are sold directly to the tenant and the manager binds them.
func (h *harness) ensureBound(ctx context.Context) error {
	if h.nBound > 0 {
		return nil
	}
	if err := h.ensureTenant(ctx); err != nil {
		return err
	}
	devs, err := h.makeDevices("direct", h.cfg.claims)
	if err != nil {
		return err
	}
	for _, d := range devs {
		d.rec.Device.Spec.Sale = h.directSale(d.serial)
	}
	if _, _, err := h.createDevices(ctx, devs, h.cfg.writers); err != nil {
		return err
	}
	serials := make([]string, len(devs))
	for i, d := range devs {
		serials[i] = d.serial
	}
	n := h.watcher.waitBound(ctx, serials, h.cfg.timeout)
	for _, d := range devs {
		if _, ok := h.watcher.boundAt(d.serial); ok {
			if err := writeDeviceDir(h.boundDir, d); err != nil {
				return err
			}
			h.nBound++
		}
	}
	h.printf("  (claims not selected: %d devices sold directly to %s and bound by the manager first, untimed)\n", n, h.cfg.tenant)
	return nil
}

func (h *harness) directSale(serial string) *custodyv1alpha1.SaleRecord {
	return &custodyv1alpha1.SaleRecord{OrderReference: "LOAD-" + serial, Buyer: custodyv1alpha1.Buyer{Name: "Load customer"}, OwnerTenant: h.cfg.tenant}
}

// deviceOp runs the simulator in mode over every bound device and counts
// the API server's writes meanwhile.
func (h *harness) deviceOp(ctx context.Context, mode, what string) (*deviceOpReport, error) {
	if err := h.ensureBound(ctx); err != nil {
		return nil, err
	}
	before, err := h.apiWrites(ctx)
	if err != nil {
		return nil, err
	}
	sim, err := h.simulate(ctx, h.cfg.gatewayURL, h.cfg.gatewayCA, "--mode", mode, "--count", strconv.Itoa(h.nBound), "--concurrency", strconv.Itoa(h.cfg.concurrency))
	if err != nil {
		return nil, err
	}
	// The last writes of an operation (the Device's certificate summary,
	// the Claim's status) may follow its answer: let them land.
	if _, err := h.settle(ctx); err != nil {
		return nil, err
	}
	after, err := h.apiWrites(ctx)
	if err != nil {
		return nil, err
	}
	r := &deviceOpReport{Sim: sim, Writes: loadtest.Diff(before, after)}
	ops := max(sim.OK, 1)
	r.WritesPerOp = sumWrites(r.Writes, false) / float64(ops)
	r.WritesPerOpNoLs = sumWrites(r.Writes, true) / float64(ops)
	h.printf("  %s/s: %.1f (%d of %d devices, concurrency %d, %.2fs); latency %s\n", what, sim.PerSecond, sim.OK, sim.Devices, sim.Concurrency, sim.ElapsedSeconds, sim.Latency)
	h.printf("  API server writes during the phase: %.0f = %.1f per %s (%.1f without leader-election leases), by resource:\n%s",
		sumWrites(r.Writes, false), r.WritesPerOp, mode, r.WritesPerOpNoLs, writesTable(r.Writes, ops))
	if c := h.report.writeCeiling(); c > 0 && r.WritesPerOpNoLs > 0 {
		possible := c / r.WritesPerOpNoLs
		r.Ratio = sim.PerSecond / possible
		h.printf("  %s/s ÷ (write ceiling %.0f/s ÷ %.1f writes per %s = %.0f/s) = %s\n", what, c, r.WritesPerOpNoLs, mode, possible, pct(r.Ratio))
	}
	if c := h.report.Ceiling; c != nil && c.CustomResourceStatusPatches != nil && c.CustomResourceStatusPatches.PerSecond > 0 && r.WritesPerOpNoLs > 0 {
		possible := c.CustomResourceStatusPatches.PerSecond / r.WritesPerOpNoLs
		r.RatioCustomResource = sim.PerSecond / possible
		h.printf("  %s/s ÷ (custom-resource status patches %.0f/s ÷ %.1f writes per %s = %.0f/s) = %s\n", what, c.CustomResourceStatusPatches.PerSecond, r.WritesPerOpNoLs, mode, possible, pct(r.RatioCustomResource))
	}
	for msg, n := range sim.Errors {
		h.printf("    %d× %s\n", n, msg)
	}
	return r, nil
}

func (h *harness) phaseEnroll(ctx context.Context) error {
	r, err := h.deviceOp(ctx, "enroll", "enrollments")
	h.report.Enroll = r
	return err
}

func (h *harness) phaseRenew(ctx context.Context) error {
	if h.report.Enroll == nil {
		if _, err := h.simulate(ctx, h.cfg.gatewayURL, h.cfg.gatewayCA, "--mode", "enroll", "--count", strconv.Itoa(h.nBound), "--concurrency", strconv.Itoa(h.cfg.concurrency)); err != nil {
			return err
		}
		h.printf("  (enroll not selected: the bound devices enrolled first, untimed)\n")
	}
	r, err := h.deviceOp(ctx, "renew", "renewals")
	h.report.Renew = r
	return err
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
