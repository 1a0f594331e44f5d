package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newTestNetNS creates a network namespace bind-mounted in a temporary
// directory, with lo and an eth0 whose veth peer in the host namespace is
// returned. Both go when the test ends.
func newTestNetNS(t *testing.T) (path, hostVeth string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "ns")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if serr := netns.Set(home); serr != nil {
			errc <- errors.Join(err, serr) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})

	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	hostVeth = "shtsb" + hex.EncodeToString(b)
	la := netlink.NewLinkAttrs()
	la.Name = hostVeth
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(hostVeth); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Error(err)
			}
		}
	})
	return path, hostVeth
}

// linkNames parses the interface names out of /proc/net/dev output.
func linkNames(dev string) []string {
	var names []string
	for _, line := range strings.Split(dev, "\n") {
		name, _, ok := strings.Cut(line, ":")
		if ok {
			names = append(names, strings.TrimSpace(name))
		}
	}
	return names
}

func TestExecNetNS(t *testing.T) {
	requireRoot(t)
	path, hostVeth := newTestNetNS(t)
	for _, mode := range testModes() {
		t.Run(mode.name, func(t *testing.T) {
			e := newTestExec(t, mode.isolate)

			spec := testSpec(t, "cat", "/proc/self/net/dev")
			spec.NetNS = path
			if res := start(t, e, spec).Wait(); res.ExitCode != 0 || res.Err != nil {
				t.Fatalf("run in netns: %+v, stderr %q", res, readFile(t, spec.Stderr))
			}
			got := linkNames(readFile(t, spec.Stdout))
			slices.Sort(got)
			if want := []string{"eth0", "lo"}; !slices.Equal(got, want) {
				t.Errorf("links in the task's namespace %q, want %q", got, want)
			}

			spec = testSpec(t, "cat", "/proc/self/net/dev")
			if res := start(t, e, spec).Wait(); res.ExitCode != 0 || res.Err != nil {
				t.Fatalf("run without netns: %+v", res)
			}
			if got := linkNames(readFile(t, spec.Stdout)); !slices.Contains(got, hostVeth) {
				t.Errorf("links without NetNS %q, want the host's (with %s)", got, hostVeth)
			}

			spec = testSpec(t, "true")
			spec.NetNS = filepath.Join(t.TempDir(), "missing")
			if _, err := e.Start(t.Context(), spec); err == nil {
				t.Error("Start with a missing netns succeeded")
			}
		})
	}
}

// TestExecNetNSRunOutlivesStarter checks that closing the driver's netns
// starter does not take the parent-death signal to the runs it started.
func TestExecNetNSRunOutlivesStarter(t *testing.T) {
	requireRoot(t)
	path, _ := newTestNetNS(t)
	for _, mode := range testModes() {
		t.Run(mode.name, func(t *testing.T) {
			e := newTestExec(t, mode.isolate)
			spec := testSpec(t, "sleep", "30")
			spec.NetNS = path
			h := start(t, e, spec)
			t.Cleanup(func() { _ = h.Stop(0) })
			e.closeNetNS()
			done := make(chan *ExitResult, 1)
			go func() { done <- h.Wait() }()
			select {
			case res := <-done:
				t.Fatalf("run ended when the starter stopped: %+v", res)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
}
