package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// wrapChild prepares the wrapped start of binary (see childSpec) under
// tempDir and returns the path to start instead. pidFile may be empty.
func wrapChild(tempDir, name, binary, pidFile string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding this executable to start %s through: %w", name, err)
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return "", err
	}
	dir := filepath.Join(tempDir, childDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	link := filepath.Join(dir, name)
	_ = os.Remove(link)
	if err := os.Symlink(exe, link); err != nil {
		return "", err
	}
	spec, err := json.Marshal(childSpec{Binary: binary, ParentPID: os.Getpid(), PIDFile: pidFile})
	if err != nil {
		return "", err
	}
	return link, os.WriteFile(link+".json", spec, 0o600)
}

// runChild becomes the child spec describes: it asks the kernel to kill it
// when its parent dies, records its pid and executes the real binary.
func runChild(spec childSpec) {
	// The parent-death signal belongs to a thread: set it on the thread
	// that executes the binary.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "custody control plane: setting the parent-death signal for %s: %v\n", spec.Binary, err)
		os.Exit(127)
	}
	if os.Getppid() != spec.ParentPID {
		os.Exit(1) // the parent died before the signal was armed
	}
	argv := append([]string{spec.Binary}, os.Args[1:]...)
	if spec.PIDFile != "" && !slices.Contains(argv[1:], "--help") {
		if err := writePIDRecord(spec.PIDFile, argv); err != nil {
			fmt.Fprintf(os.Stderr, "custody control plane: writing %s: %v\n", spec.PIDFile, err)
			os.Exit(127)
		}
	}
	err := unix.Exec(spec.Binary, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "custody control plane: executing %s: %v\n", spec.Binary, err)
	os.Exit(127)
}

func writePIDRecord(path string, cmdline []string) error {
	start, err := startTime(os.Getpid())
	if err != nil {
		return err
	}
	data, err := json.Marshal(pidRecord{PID: os.Getpid(), StartTime: start, Cmdline: cmdline})
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// startTime reads a process's start time in clock ticks after boot
// (field 22 of /proc/<pid>/stat).
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	const startTimeField = 22 - 3 // fields after ")" begin with field 3
	if len(fields) <= startTimeField {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[startTimeField], 10, 64)
}

func cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00"), nil
}

// EndLeftovers ends the etcd and kube-apiserver that an earlier run with
// dataDir started and that outlived it (because it was killed before it
// could stop them, and the parent-death signal did not reach them). It
// signals a process only if its pid, start time and command line are
// those recorded in the pid file when it started, or, for an etcd with no
// pid file (started by an older custody-dev), if its command line names
// dataDir's etcd directory: a reused pid is never signalled. It returns
// one description per process it ended.
func EndLeftovers(dataDir string) ([]string, error) {
	var ended []string
	var errs []error
	for _, name := range childNames {
		path := pidFilePath(dataDir, name)
		data, err := os.ReadFile(path) //nolint:gosec // a fixed name under the data directory the user chose
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var rec pidRecord
		if err := json.Unmarshal(data, &rec); err == nil && rec.PID > 0 {
			ok, err := endProcess(rec.PID, func() bool {
				st, err1 := startTime(rec.PID)
				cl, err2 := cmdline(rec.PID)
				return err1 == nil && err2 == nil && st == rec.StartTime && slices.Equal(cl, rec.Cmdline)
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("ending the %s left running by an earlier custody-dev (pid %d): %w; end it yourself (kill %d)", name, rec.PID, err, rec.PID))
				continue
			}
			if ok {
				ended = append(ended, fmt.Sprintf("%s (pid %d)", name, rec.PID))
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}

	// An etcd started before pid files existed is still recognisable: its
	// command line names this data directory's etcd directory.
	dataFlag := "--data-dir=" + filepath.Join(dataDir, "etcd")
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return ended, errors.Join(append(errs, err)...)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		isOurEtcd := func() bool {
			cl, err := cmdline(pid)
			return err == nil && len(cl) > 1 && filepath.Base(cl[0]) == "etcd" && slices.Contains(cl[1:], dataFlag)
		}
		if !isOurEtcd() {
			continue
		}
		ok, err := endProcess(pid, isOurEtcd)
		if err != nil {
			errs = append(errs, fmt.Errorf("ending the etcd left running by an earlier custody-dev (pid %d): %w; end it yourself (kill %d)", pid, err, pid))
			continue
		}
		if ok {
			ended = append(ended, fmt.Sprintf("etcd (pid %d)", pid))
		}
	}
	return ended, errors.Join(errs...)
}

// endProcess terminates pid if match holds for it, and waits until it has
// exited. Holding a pidfd from before the check, it never signals another
// process that took the pid in between. It reports whether it ended one.
func endProcess(pid int, match func() bool) (bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd) //nolint:errcheck // read-only use
	if !match() {
		return false, nil
	}
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGKILL} {
		if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return true, nil
			}
			return false, err
		}
		exited, err := awaitExit(fd, 10*time.Second)
		if err != nil || exited {
			return exited, err
		}
	}
	return false, errors.New("it did not exit after SIGKILL")
}

// awaitExit waits until the process of pidfd fd has exited, or timeout.
func awaitExit(fd int, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1) //nolint:gosec // a file descriptor fits
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n > 0, err
	}
}
