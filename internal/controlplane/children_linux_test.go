package controlplane

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// envHolder makes the re-executed test binary start a control plane in
// the data directory it names, say so, and wait to be killed.
const envHolder = "CUSTODY_TEST_HOLDER_DATA_DIR"

// TestChildrenDieWithParent kills a process running the control plane with
// SIGKILL, as the OOM killer would, and checks that its etcd and
// kube-apiserver exit with it and that the next start in the same data
// directory succeeds.
func TestChildrenDieWithParent(t *testing.T) {
	if dir := os.Getenv(envHolder); dir != "" {
		holdControlPlane(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run=^TestChildrenDieWithParent$", "-test.timeout=3m")
	holder.Env = append(os.Environ(), envHolder+"="+dir)
	holder.Stderr = os.Stderr
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	up := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if s.Text() == "control plane up" {
				up <- true
				break
			}
		}
		for s.Scan() { //nolint:revive // drain
		}
		close(up)
	}()
	select {
	case ok := <-up:
		if !ok {
			t.Fatal("the control plane did not start in the child process")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the control plane did not start in the child process within 2 minutes")
	}

	// Hold each child by a pidfd, so that its pid cannot be reused unseen.
	children := map[string]int{}
	for _, name := range childNames {
		var rec pidRecord
		data, err := os.ReadFile(pidFilePath(dir, name))
		if err != nil {
			t.Fatalf("no pid file for %s: %v", name, err)
		}
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(rec.Cmdline[0]) != name {
			t.Fatalf("the pid file of %s records %q", name, rec.Cmdline)
		}
		fd, err := unix.PidfdOpen(rec.PID, 0)
		if err != nil {
			t.Fatalf("%s (pid %d) is not running: %v", name, rec.PID, err)
		}
		defer unix.Close(fd)
		children[name] = fd
	}

	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	for name, fd := range children {
		exited, err := awaitExit(fd, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !exited {
			t.Errorf("%s kept running after its parent was killed", name)
		}
	}

	// The next start in the same data directory comes up.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{DataDir: dir})
	if err != nil {
		t.Fatalf("the next start failed: %v", err)
	}
	if err := cp.Stop(); err != nil {
		t.Error(err)
	}
}

func holdControlPlane(t *testing.T, dir string) {
	cp, err := Start(context.Background(), Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var nss corev1.NamespaceList
	if err := cp.Client.List(context.Background(), &nss, client.Limit(1)); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("control plane up\n") //nolint:errcheck // the parent notices
	select {}                                   // until killed
}

// TestEndLeftovers checks that the next start ends exactly the processes an
// earlier run left behind: those whose pid file still describes them, and
// an etcd of this data directory with no pid file; never a process that
// merely has a recorded pid.
func TestEndLeftovers(t *testing.T) {
	dir := t.TempDir()
	bin := t.TempDir()
	// Stand-ins: a shell blocked on a read, with no children of its own,
	// started under the name of the child it plays.
	start := func(name string, args ...string) (*exec.Cmd, pidRecord) {
		link := filepath.Join(bin, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink("/bin/sh", link); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(link, append([]string{"-c", "read x"}, args...)...)
		if _, err := cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		st, err := startTime(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, pidRecord{PID: cmd.Process.Pid, StartTime: st, Cmdline: cmd.Args}
	}
	writeRecord := func(name string, rec pidRecord) {
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pidFilePath(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	leftover, rec := start("kube-apiserver", "--secure-port=1")
	writeRecord("kube-apiserver", rec)
	// A process that took a recorded pid: same pid, another start time.
	bystander, rec := start("etcd", "--data-dir=/elsewhere")
	rec.StartTime++
	writeRecord("etcd", rec)
	// An etcd of this data directory from before pid files.
	oldEtcd, _ := start("etcd", "--data-dir="+filepath.Join(dir, "etcd"))

	ended, err := EndLeftovers(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kube-apiserver (pid " + itoa(leftover.Process.Pid) + ")", "etcd (pid " + itoa(oldEtcd.Process.Pid) + ")"}
	if strings.Join(ended, ",") != strings.Join(want, ",") {
		t.Errorf("ended %q, want %q", ended, want)
	}
	for _, cmd := range []*exec.Cmd{leftover, oldEtcd} {
		if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "signal") {
			t.Errorf("%s: want it ended by a signal, got %v", cmd.Args, err)
		}
	}
	if err := bystander.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process that merely had a recorded pid was signalled: %v", err)
	}
	for _, name := range childNames {
		if _, err := os.Stat(pidFilePath(dir, name)); !os.IsNotExist(err) {
			t.Errorf("pid file of %s left behind: %v", name, err)
		}
	}
	// Nothing is left for another call.
	if ended, err := EndLeftovers(dir); err != nil || len(ended) > 0 {
		t.Errorf("second call: ended %q, %v", ended, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
