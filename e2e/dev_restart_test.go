package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// devShoal runs the CLI against the dev installation in dir and fails the test
// unless it exits 0.
func devShoal(t *testing.T, dir, addr string, args ...string) string {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), append([]string{"--addr", addr}, args...)...)
	cmd.Env = append(os.Environ(), devEnv(dir)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("shoal %v: %v\nstdout: %s\nstderr: %s", args, err, out.String(), errOut.String())
	}
	return out.String()
}

// TestDevRestartKeepsClusters stops `shoal dev` with SIGINT and starts it
// again in the same directory: the same clusters come back on the same
// nodes, with their files and their task data, and no pool node is drawn
// in place of a member.
func TestDevRestartKeepsClusters(t *testing.T) {
	dir := t.TempDir()
	addr := testutil.FreeAddr(t)
	c := devClient(t, dir, addr)
	ctx := context.Background()
	waitClusterHealthy := func(name string, members []string) *api.Cluster {
		var cl *api.Cluster
		testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
			got, _, err := c.Cluster(ctx, name, nil)
			if err != nil {
				return false, err.Error()
			}
			cl = got
			return got.State == api.ClusterHealthy && (members == nil || slices.Equal(got.Nodes, members)),
				fmt.Sprintf("cluster %s is %s %q with %v, want healthy with %v", name, got.State, got.Problems, got.Nodes, members)
		})
		return cl
	}

	dev := startDev(t, dir, addr, "--agent-cpu", "1000", "--agent-memory", "1024")
	waitPool(t, c, 3, func([]*api.Node) (bool, string) { return true, "" })
	devShoal(t, dir, addr, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	before := waitClusterHealthy("c1", nil)
	data := randomBytes(7, 3<<20)
	local := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	devShoal(t, dir, addr, "fs", "put", local, "/clusters/c1/data.bin")
	job := writeFile(t, "job.yaml", fmt.Sprintf(sleepJob, 3, "0"))
	devShoal(t, dir, addr, "job", "run", "--wait", job)
	var nodesBefore []*api.Node
	if err := json.Unmarshal([]byte(devShoal(t, dir, addr, "node", "list", "-o", "json")), &nodesBefore); err != nil {
		t.Fatal(err)
	}

	dev.stop()
	startDev(t, dir, addr, "--agent-cpu", "1000", "--agent-memory", "1024")
	after := waitClusterHealthy("c1", before.Nodes)
	if !hasEvent(after.Events, "member-back", "") {
		t.Errorf("cluster events %v: want members back", after.Events)
	}
	for _, e := range after.Events {
		if e.Type == "member-lost" || e.Type == "replaced" {
			t.Errorf("cluster event %s: %s after an orderly restart", e.Type, e.Message)
		}
	}
	zones := map[string]string{}
	for _, n := range nodesBefore {
		zones[n.Name] = n.Zone
	}
	for _, name := range after.Nodes {
		n, err := c.Node(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if n.Zone != zones[name] {
			t.Errorf("node %s came back in zone %s, was in %s", name, n.Zone, zones[name])
		}
		if _, err := os.Stat(filepath.Join(dir, "agents", name, "alloc", "c1")); err != nil {
			t.Errorf("task data of c1 on %s after the restart: %v", name, err)
		}
	}
	got := filepath.Join(t.TempDir(), "got.bin")
	devShoal(t, dir, addr, "fs", "get", "/clusters/c1/data.bin", got)
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, "file after the restart", b, data)
	devShoal(t, dir, addr, "job", "run", "--wait", job)
}
