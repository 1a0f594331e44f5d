package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/devmode"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// devProc is a running `shoal dev`.
type devProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	dir  string
	addr string
	out  *testutil.Buffer
	err  *testutil.Buffer
	done chan error
}

// devClient makes the TLS files that `shoal dev` in dir will use (it
// reuses files it finds) and returns an API client of its server at addr
// presenting the client certificate. Call it before startDev.
func devClient(t *testing.T, dir, addr string) *api.Client {
	t.Helper()
	set, err := tlsfiles.MakeSet(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	return testutil.NewClient([]string{addr}, "", testutil.Identity(t, set, tlsfiles.RoleClient))
}

// devEnv is the environment of a CLI that talks to the `shoal dev` in dir.
func devEnv(dir string) []string {
	set := tlsfiles.Set{Dir: filepath.Join(dir, "tls")}
	f := set.Files(tlsfiles.RoleClient)
	return []string{"SHOAL_CACERT=" + f.CACert, "SHOAL_CLIENT_CERT=" + f.Cert, "SHOAL_CLIENT_KEY=" + f.Key}
}

// startDev starts `shoal dev` with args in dir, serving on addr; it is
// killed when the test ends, and its output printed if the test failed.
func startDev(t *testing.T, dir, addr string, args ...string) *devProc {
	t.Helper()
	bin := testutil.Binary(t)
	cmd := exec.Command(bin, append([]string{"dev", "--dir", dir, "--addr", addr}, args...)...)
	d := &devProc{t: t, cmd: cmd, dir: dir, addr: addr, out: &testutil.Buffer{}, err: &testutil.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.out, d.err
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		testutil.SweepDev(dir)
		if t.Failed() {
			t.Logf("shoal dev stdout:\n%s\nstderr:\n%s", d.out.String(), d.err.String())
		}
	})
	return d
}

// stop sends SIGINT, as Ctrl-C does, and waits until shoal dev and every
// process it started have ended.
func (d *devProc) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("shoal dev exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		d.t.Fatal("shoal dev did not stop within 30s of SIGINT")
	}
	testutil.WaitFor(d.t, 10*time.Second, func() (bool, string) {
		left := processesMentioning(d.dir)
		return len(left) == 0, fmt.Sprintf("processes still running: %v", left)
	})
}

// nodeSummary lists the nodes as "name zone state", sorted.
func nodeSummary(nodes []*api.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name+" "+n.Zone+" "+n.State)
	}
	sort.Strings(out)
	return out
}

// waitPool waits until every zone has exactly one ready idle node and the
// servers want no node added, with cond true of the nodes too, and returns
// the nodes.
func waitPool(t *testing.T, c *api.Client, zones int, cond func([]*api.Node) (bool, string)) []*api.Node {
	t.Helper()
	var nodes []*api.Node
	testutil.WaitFor(t, 45*time.Second, func() (bool, string) {
		p, _, err := c.Pool(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		for z := 1; z <= zones; z++ {
			if p.ByZone[fmt.Sprintf("zone-%d", z)] != 1 {
				return false, fmt.Sprintf("idle by zone %v, want 1 in each of %d zones", p.ByZone, zones)
			}
		}
		if len(p.WantedByZone) != 0 {
			return false, fmt.Sprintf("the servers want %v more nodes", p.WantedByZone)
		}
		nodes, _, err = c.Nodes(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		return cond(nodes)
	})
	return nodes
}

func readAgentsRecord(t *testing.T, dir string) *devmode.Record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, devmode.RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	var r devmode.Record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", devmode.RecordFile, err)
	}
	return &r
}

// TestDevMode starts `shoal dev` and checks that its pool provider starts
// exactly the agents the pool lacks, in the zones that lack them; that
// `shoal dev kill` kills only its own agents; that Ctrl-C (SIGINT) leaves
// no process running; and that `shoal dev` started again in the same
// directory brings back the agents that ran when it stopped, with their
// names and zones.
func TestDevMode(t *testing.T) {
	bin := testutil.Binary(t)
	dir := t.TempDir()
	addr := testutil.FreeAddr(t)
	args := []string{"--agents", "2", "--zones", "2", "--pool-min", "1", "--agent-cpu", "1000", "--agent-memory", "1024"}
	c := devClient(t, dir, addr)
	dev := startDev(t, dir, addr, args...)
	env := []string{"SHOAL_ADDR=https://" + addr}

	waitPool(t, c, 2, func(nodes []*api.Node) (bool, string) { return true, "" })
	if !strings.Contains(dev.out.String(), "https://"+addr) {
		t.Errorf("shoal dev output %q does not print the API address", dev.out.String())
	}
	rec := readAgentsRecord(t, dir)
	for _, a := range rec.Agents {
		if want := fmt.Sprintf("%s  %s  %d", a.Name, a.Zone, a.PID); a.PID == 0 || !strings.Contains(dev.out.String(), want) {
			t.Errorf("shoal dev output %q does not show agent %s with its pid (%q)", dev.out.String(), a.Name, want)
		}
	}

	// The cluster takes both nodes: one new agent in each zone, no more.
	if _, err := c.CreateCluster(context.Background(), &api.ClusterRequest{Name: "c1", Nodes: 2, Zones: 2}); err != nil {
		t.Fatal(err)
	}
	nodes := waitPool(t, c, 2, func(nodes []*api.Node) (bool, string) {
		return len(nodes) >= 4, fmt.Sprintf("nodes %v", nodeSummary(nodes))
	})
	want := []string{"node-1 zone-1 ready", "node-2 zone-2 ready", "node-3 zone-1 ready", "node-4 zone-2 ready"}
	if got := nodeSummary(nodes); !slices.Equal(got, want) {
		t.Errorf("after the cluster took the pool: got nodes %v, want %v", got, want)
	}

	// Killing a member: its zone's idle node replaces it, and exactly one
	// agent starts in that zone.
	for _, tt := range []struct {
		node string
		code int
		want string
	}{
		{"nope", 1, `no agent named "nope"`},
		{"node-1", 0, "Sent SIGKILL to agent node-1 (pid "},
	} {
		out, errOut, code := testutil.RunCLI(t, bin, env, "dev", "kill", tt.node, "--dir", dir)
		if code != tt.code || !strings.Contains(out+errOut, tt.want) {
			t.Errorf("shoal dev kill %s: got exit %d, stdout %q, stderr %q; want exit %d and %q", tt.node, code, out, errOut, tt.code, tt.want)
		}
	}
	nodes = waitPool(t, c, 2, func(nodes []*api.Node) (bool, string) {
		return len(nodes) >= 5 && slices.Contains(nodeSummary(nodes), "node-1 zone-1 down"), fmt.Sprintf("nodes %v", nodeSummary(nodes))
	})
	want = []string{"node-1 zone-1 down", "node-2 zone-2 ready", "node-3 zone-1 ready", "node-4 zone-2 ready", "node-5 zone-1 ready"}
	if got := nodeSummary(nodes); !slices.Equal(got, want) {
		t.Errorf("after node-1 died: got nodes %v, want %v", got, want)
	}
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		out, errOut, code := testutil.RunCLI(t, bin, env, "dev", "kill", "node-1", "--dir", dir)
		return code == 1 && strings.Contains(errOut, "agent node-1 is not running"),
			fmt.Sprintf("shoal dev kill node-1 again: exit %d, stdout %q, stderr %q; want exit 1, \"agent node-1 is not running\"", code, out, errOut)
	})

	dev.stop()
	running := func(r *devmode.Record) []string {
		var out []string
		for _, a := range r.Agents {
			if a.State == devmode.AgentRunning || a.State == devmode.AgentStopped {
				out = append(out, a.Name+" "+a.Zone+" "+a.DataDir)
			}
		}
		return out
	}
	before := running(readAgentsRecord(t, dir))
	if len(before) != 4 {
		t.Fatalf("after the stop the record lists agents %v, want node-2 to node-5", before)
	}

	// Started again: the same four agents, not fresh ones, and not node-1.
	dev = startDev(t, dir, addr, args...)
	testutil.WaitFor(t, 45*time.Second, func() (bool, string) {
		nodes, _, err := c.Nodes(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		ready := map[string]string{}
		for _, n := range nodes {
			if n.State == api.NodeReady {
				ready[n.Name] = n.Zone
			}
		}
		for _, n := range []string{"node-2 zone-2", "node-3 zone-1", "node-4 zone-2", "node-5 zone-1"} {
			name, zone, _ := strings.Cut(n, " ")
			if ready[name] != zone {
				return false, fmt.Sprintf("nodes %v, want %s ready", nodeSummary(nodes), n)
			}
		}
		return true, ""
	})
	after := readAgentsRecord(t, dir)
	var back []string
	for _, a := range after.Agents {
		if a.State == devmode.AgentRunning && slices.Contains(before, a.Name+" "+a.Zone+" "+a.DataDir) {
			back = append(back, a.Name+" "+a.Zone+" "+a.DataDir)
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.PID)); err != nil || !strings.Contains(string(cmdline), a.DataDir) {
				t.Errorf("agent %s is recorded as pid %d, which does not run it (%q, %v)", a.Name, a.PID, cmdline, err)
			}
		}
		if a.Name == "node-1" && a.State != devmode.AgentExited {
			t.Errorf("node-1, killed before the stop, is %s after the restart, want %s", a.State, devmode.AgentExited)
		}
	}
	if !slices.Equal(back, before) {
		t.Errorf("after the restart the record lists running %v, want %v", back, before)
	}
	if !strings.Contains(dev.out.String(), "are back") {
		t.Errorf("shoal dev output %q does not say the agents are back", dev.out.String())
	}
	dev.stop()
}

// processesMentioning lists pids whose command line contains s.
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}
