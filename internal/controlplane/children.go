package controlplane

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// The control plane's child processes (etcd, kube-apiserver) are started
// through this process's own executable: envtest starts the symlink
// <temp>/custody-child/<name>, which points at os.Executable(); this
// package's init sees that it was started under that name, reads
// <name>.json next to the symlink, makes the process die with its parent
// (on Linux), writes its pid file and executes the real binary in place.
// So the children of a custody-dev or a test that is killed hard (kill -9,
// the OOM killer) do not outlive it, and the pid files let the next start
// find any that did.

// childDirName is the directory name that marks a wrapped child.
const childDirName = "custody-child"

// childSpec tells a wrapped child what to execute.
type childSpec struct {
	// Binary is the real executable.
	Binary string `json:"binary"`
	// ParentPID is the pid of the process that starts the child: if the
	// child's parent is another one by the time it runs, the parent has
	// died already and the child exits.
	ParentPID int `json:"parentPID"`
	// PIDFile, when set, receives the child's pidRecord.
	PIDFile string `json:"pidFile,omitempty"`
}

// pidRecord identifies a running child beyond its pid, which the kernel
// reuses: the start time (in clock ticks since boot, from /proc/<pid>/stat)
// and the command line.
type pidRecord struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Cmdline   []string `json:"cmdline"`
}

func init() {
	if len(os.Args) == 0 || filepath.Base(filepath.Dir(os.Args[0])) != childDirName {
		return
	}
	// os.Args[0] is our own re-exec link, in the directory we created.
	data, err := os.ReadFile(os.Args[0] + ".json") //nolint:gosec // not user input
	if err != nil {
		return // not one of ours
	}
	var spec childSpec
	if err := json.Unmarshal(data, &spec); err != nil || spec.Binary == "" {
		return
	}
	runChild(spec) // does not return
}

// childNames are the wrapped children that leave a pid file in the data
// directory.
var childNames = []string{"etcd", "kube-apiserver"}

func pidFilePath(dataDir, name string) string { return filepath.Join(dataDir, name+".pid") }
