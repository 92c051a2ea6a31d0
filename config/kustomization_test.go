package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKustomizationListsEveryCRD guards the kustomize install: a CRD that
// `make manifests` generates but config/crd/kustomization.yaml leaves out
// would be missing from every cluster installed with config/default.
func TestKustomizationListsEveryCRD(t *testing.T) {
	k, err := os.ReadFile(filepath.Join("crd", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bases, err := filepath.Glob(filepath.Join("crd", "bases", "*.yaml"))
	if err != nil || len(bases) == 0 {
		t.Fatalf("no CRDs in crd/bases: %v", err)
	}
	for _, b := range bases {
		entry := "- bases/" + filepath.Base(b)
		if !strings.Contains(string(k), entry+"\n") {
			t.Errorf("crd/kustomization.yaml does not list %s", entry)
		}
	}
}
