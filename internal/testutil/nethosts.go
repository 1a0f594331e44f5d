package testutil

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/clusternet"
)

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
)

// NetProbe returns the path of the netprobe test program (package
// testutil/netprobe), built once per test process, for tasks to run.
func NetProbe(t testing.TB) string {
	t.Helper()
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-netprobe-")
		if err != nil {
			probeErr = err
			return
		}
		probePath = filepath.Join(dir, "netprobe")
		out, err := exec.Command("go", "build", "-o", probePath, "github.com/shoal-dev/shoal/internal/testutil/netprobe").CombinedOutput()
		if err != nil {
			probeErr = fmt.Errorf("go build netprobe: %v\n%s", err, out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	return probePath
}

// TestHosts are network namespaces that act as separate machines: each
// has one interface on a bridge of the host namespace, which holds
// BridgeIP. Addresses are of TEST-NET-2 (198.51.100.0/24).
type TestHosts struct {
	Bridge   string
	BridgeIP string
	Hosts    []TestHost
}

// TestHost is one of TestHosts.
type TestHost struct {
	NS string // the namespace's name (ip netns)
	IP string
}

// NetHosts makes n test hosts (root only; the test is skipped otherwise)
// and removes them when the test ends.
func NetHosts(t testing.TB, n int) *TestHosts {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test hosts in network namespaces need root")
	}
	tag := fmt.Sprintf("%x", os.Getpid()&0xffff)
	h := &TestHosts{Bridge: "shtb" + tag, BridgeIP: "198.51.100.1"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		for _, x := range h.Hosts {
			exec.Command("ip", "netns", "del", x.NS).Run()
		}
		exec.Command("ip", "link", "del", h.Bridge).Run()
	})
	run("link", "add", h.Bridge, "type", "bridge")
	run("addr", "add", h.BridgeIP+"/24", "dev", h.Bridge)
	run("link", "set", h.Bridge, "up")
	for i := 0; i < n; i++ {
		x := TestHost{NS: fmt.Sprintf("shth%s-%d", tag, i+1), IP: fmt.Sprintf("198.51.100.%d", 11+i)}
		h.Hosts = append(h.Hosts, x)
		veth := fmt.Sprintf("shtv%s%d", tag, i+1)
		run("netns", "add", x.NS)
		run("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", x.NS)
		run("link", "set", veth, "master", h.Bridge, "up")
		run("-n", x.NS, "addr", "add", x.IP+"/24", "dev", "eth0")
		run("-n", x.NS, "link", "set", "eth0", "up")
		run("-n", x.NS, "link", "set", "lo", "up")
	}
	return h
}

// sweepNetwork removes the cluster network an agent killed with -9 (or
// stopped) left: its bridge, overlay device, task namespaces and firewall
// table would otherwise stay on the host and clash with the next node
// given the same block, here on the same host. (On a real host, the next
// agent of the node sweeps what the last one left.)
func sweepNetwork(node, dataDir string) {
	if os.Geteuid() == 0 {
		clusternet.SweepNode(node, filepath.Join(dataDir, "net"), nil)
	}
}

// unmountUnder detaches every mount below dir: the network namespace
// files agents bind-mount, which an agent killed with -9 leaves (the next
// agent on the same data dir would sweep them), so that the test's
// temporary directory can be removed.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// SweepDev removes what the agents of the shoal dev installation in dir
// left on the host once they are gone (a test killed shoal dev with -9,
// and its agents died with it): their cluster networks and the mounts of
// their network namespace files.
func SweepDev(dir string) {
	agents := filepath.Join(dir, "agents")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && processesUnder(agents); {
		time.Sleep(50 * time.Millisecond)
	}
	entries, _ := os.ReadDir(agents)
	for _, e := range entries {
		if e.IsDir() {
			sweepNetwork(e.Name(), filepath.Join(agents, e.Name()))
		}
	}
	unmountUnder(dir)
}

// processesUnder reports whether a process's command line names a path
// under dir.
func processesUnder(dir string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir+"/") {
			return true
		}
	}
	return false
}
