// Package memlimit gives Go's garbage collector the container's memory
// limit as its soft limit.
package memlimit

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Share is the share of the container's memory limit that
// Set gives Go's garbage collector as its soft limit: the rest
// is for what the runtime does not count (stacks in flight, cgo, the
// kernel's page cache of the process).
const Share = 0.9

// cgroupMemoryFiles are where the kernel states a container's memory
// limit: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// Set sets Go's soft memory limit (GOMEMLIMIT) to
// Share of the container's memory limit, unless GOMEMLIMIT is
// set or no limit is found. Without it the heap may grow to twice what is
// live before the collector runs (GOGC=100), and a manager caching every
// Device reaches its container's limit long before its live data does
// (docs/operations.md, "Memory"). It returns the limit set, 0 if none.
func Set() (int64, error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	limit, err := containerMemoryLimit("/", cgroupMemoryFiles)
	if err != nil || limit <= 0 {
		return 0, err
	}
	soft := int64(float64(limit) * Share)
	debug.SetMemoryLimit(soft)
	return soft, nil
}

// containerMemoryLimit reads the first of files (under root) that exists:
// the limit in bytes, 0 for none ("max", or cgroup v1's page-counter
// maximum).
func containerMemoryLimit(root string, files []string) (int64, error) {
	for _, f := range files {
		raw, err := os.ReadFile(filepath.Join(root, f)) //nolint:gosec // fixed kernel paths
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		s := strings.TrimSpace(string(raw))
		if s == "max" {
			return 0, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		// cgroup v1 says "no limit" with a number near 2^63 rounded
		// down to a page.
		if n >= 1<<62 {
			return 0, nil
		}
		return n, nil
	}
	return 0, nil
}
