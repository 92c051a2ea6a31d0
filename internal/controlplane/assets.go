package controlplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Versions of the control-plane binaries. They must match the versions pinned
// in hack/tools/kube-apiserver/go.mod and hack/tools/etcd/go.mod; the Makefile
// reads them from there and `make verify` checks that they agree.
const (
	KubeAPIServerVersion = "v1.36.3"
	EtcdVersion          = "v3.5.21"
)

// AssetsDir returns the directory holding the kube-apiserver and etcd
// binaries: $KUBEBUILDER_ASSETS when set, otherwise the per-version cache
// that `make envtest-assets` fills
// (${XDG_CACHE_HOME:-$HOME/.cache}/custody/envtest/<kube>-<etcd>).
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, checkAssets(dir)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache directory for control-plane binaries: %w", err)
	}
	dir := filepath.Join(cache, "custody", "envtest", KubeAPIServerVersion+"-etcd"+EtcdVersion)
	return dir, checkAssets(dir)
}

func checkAssets(dir string) error {
	var missing []error
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil { //nolint:gosec // the directory is the developer's own setting
			missing = append(missing, fmt.Errorf("%s not found in %s", bin, dir))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: run 'make envtest-assets' to build them from the Go module proxy, or point KUBEBUILDER_ASSETS at a directory holding them", errors.Join(missing...))
	}
	return nil
}
