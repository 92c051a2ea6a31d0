package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The scratch custom resource of the custom-resource ceiling: no webhook,
// no controller, no CEL rule; a status subresource, and objects of a
// bound Device's size.
var (
	probeGroup = "load.custody.dev"
	probeGVK   = schema.GroupVersionKind{Group: probeGroup, Version: "v1", Kind: "LoadProbe"}
	probeCRD   = "loadprobes." + probeGroup
	crdGVK     = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}
)

// probeSpec is about as large as a bound Device's spec and status (2.7 KB
// of JSON): 24 fields of 100 characters.
func probeSpec(i int) map[string]any {
	spec := map[string]any{}
	for f := range 24 {
		spec[fmt.Sprintf("field%02d", f)] = fmt.Sprintf("%d-%d-%s", i, f, strings.Repeat("x", 96))
	}
	return spec
}

// measureCustomResources creates the scratch CRD, then measures, with
// --writers, custom-resource creates and then status merge-patches of
// those objects (the kind of write most of an enrollment's are), and
// deletes the CRD with its objects.
func (h *harness) measureCustomResources(ctx context.Context, ns string) (creates, patches *rate, err error) {
	crd := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": probeCRD},
		"spec": map[string]any{
			"group": probeGroup, "scope": "Namespaced",
			"names": map[string]any{"plural": "loadprobes", "singular": "loadprobe", "kind": "LoadProbe", "listKind": "LoadProbeList"},
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"subresources": map[string]any{"status": map[string]any{}},
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object",
					"properties": map[string]any{
						"spec":   map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
						"status": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
					},
				}},
			}},
		},
	}}
	crd.SetGroupVersionKind(crdGVK)
	if err := h.admin.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, nil, fmt.Errorf("creating the scratch CRD: %w", err)
	}
	defer func() {
		start := time.Now()
		if err := h.deleteCRD(context.Background()); err != nil {
			h.printf("  scratch CRD %s: %v\n", probeCRD, err)
			return
		}
		h.printf("  scratch CRD deleted in %.1fs\n", time.Since(start).Seconds())
	}()
	probe := func(i int) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(probeGVK)
		u.SetNamespace(ns)
		u.SetName(fmt.Sprintf("probe-%d", i))
		return u
	}
	// The API server serves the new resource once the CRD is established.
	deadline := time.Now().Add(time.Minute)
	for {
		u := probe(-1)
		u.Object["spec"] = probeSpec(-1)
		err := h.admin.Create(ctx, u)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("the scratch CRD was not served within a minute: %w", err)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
	n, writers := h.cfg.ceilingWrites, h.cfg.writers
	start := time.Now()
	errs := parallel(n, writers, func(i int) error {
		u := probe(i)
		u.Object["spec"] = probeSpec(i)
		return h.admin.Create(ctx, u)
	})
	creates = newRate(n-len(errs), len(errs), time.Since(start).Seconds())
	h.printf("  custom-resource creates (2.7 KB), %2d writers: %6.0f/s (%d in %.2fs, %d failed)\n", writers, creates.PerSecond, creates.Count, creates.Seconds, creates.Failed)
	start = time.Now()
	errs = parallel(n, writers, func(i int) error {
		patch := fmt.Appendf(nil, `{"status":{"observedGeneration":1,"lastSeen":%q,"phase":"Bound"}}`, time.Now().UTC().Format(time.RFC3339Nano))
		return h.admin.Status().Patch(ctx, probe(i), client.RawPatch(types.MergePatchType, patch))
	})
	patches = newRate(n-len(errs), len(errs), time.Since(start).Seconds())
	h.printf("  custom-resource status patches, %2d writers: %6.0f/s (%d in %.2fs, %d failed)\n", writers, patches.PerSecond, patches.Count, patches.Seconds, patches.Failed)
	if len(errs) > 0 {
		h.printf("    first failure: %v\n", errs[0])
	}
	return creates, patches, nil
}

// deleteCRD deletes the scratch CRD (the API server deletes its objects)
// and waits until it is gone.
func (h *harness) deleteCRD(ctx context.Context) error {
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(crdGVK)
	crd.SetName(probeCRD)
	if err := h.admin.Delete(ctx, crd); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		err := h.admin.Get(ctx, client.ObjectKey{Name: probeCRD}, crd)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	return errors.New("still there after 5 minutes")
}
