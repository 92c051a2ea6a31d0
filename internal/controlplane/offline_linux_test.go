package controlplane

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// envOffline marks the re-executed test binary that runs inside a network
// namespace of its own.
const envOffline = "CUSTODY_TEST_OFFLINE_CHILD"

// TestStartsOffline starts the control plane on a machine with no network
// but loopback, as on an offline laptop: the test re-executes itself in a
// new network namespace (only lo, no default route) and starts there.
// Without an explicit --advertise-address kube-apiserver refuses to start
// with "no default routes found".
func TestStartsOffline(t *testing.T) {
	if os.Getenv(envOffline) != "" {
		startOffline(t)
		return
	}
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartsOffline$", "-test.v", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), envOffline+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) {
		t.Skipf("cannot create a network namespace here (%v): run as root, or where unprivileged namespaces are allowed, to test offline start-up", err)
	}
	if err != nil {
		t.Fatalf("the control plane did not start without a network (%v):\n%s", err, out)
	}
	if !strings.Contains(string(out), "offline start-up: ok") {
		t.Fatalf("the child did not run the offline check:\n%s", out)
	}
}

func startOffline(t *testing.T) {
	if err := loopbackUp(); err != nil {
		t.Fatalf("bringing up lo in the new network namespace: %v", err)
	}
	if hasDefaultRoute(t) {
		t.Fatal("the network namespace has a default route; the test would prove nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	}()
	var nss corev1.NamespaceList
	if err := cp.Client.List(ctx, &nss, client.Limit(1)); err != nil {
		t.Fatal(err)
	}
	t.Log("offline start-up: ok")
}

// loopbackUp sets lo up, which a new network namespace starts without.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// hasDefaultRoute reports whether /proc/net/route holds an IPv4 default route.
func hasDefaultRoute(t *testing.T) bool {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 1 && fields[1] == "00000000" {
			return true
		}
	}
	return false
}
