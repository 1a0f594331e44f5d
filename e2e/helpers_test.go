// Package e2e holds end-to-end tests that spawn real shoal server and agent
// processes and drive them through the CLI and the HTTP API.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_SKIP_E2E") != "" {
		fmt.Println("SHOAL_SKIP_E2E set; skipping end-to-end tests")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// writeFile writes content to a file in a fresh temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustShoal runs the CLI and fails the test unless it exits 0.
func mustShoal(t *testing.T, in *testutil.Installation, args ...string) string {
	t.Helper()
	out, errOut, code := in.Shoal(args...)
	if code != 0 {
		t.Fatalf("shoal %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// submit runs `shoal job run FILE` and returns the job id.
func submit(t *testing.T, in *testutil.Installation, jobYAML string) string {
	t.Helper()
	out := mustShoal(t, in, "job", "run", writeFile(t, "job.yaml", jobYAML))
	var id string
	if _, err := fmt.Sscanf(out, "Job %s submitted.", &id); err != nil {
		t.Fatalf("cannot read job id from %q: %v", out, err)
	}
	return id
}

// jobJSON reads a job's summary through `shoal job status -o json` and
// its tasks through `shoal job status --tasks -o json`, page by page.
func jobJSON(t *testing.T, in *testutil.Installation, id string) *api.Job {
	t.Helper()
	var j api.Job
	if err := json.Unmarshal([]byte(mustShoal(t, in, "job", "status", id, "-o", "json")), &j); err != nil {
		t.Fatal(err)
	}
	for offset := 0; ; {
		var p api.TaskPage
		out := mustShoal(t, in, "job", "status", id, "--tasks", "--limit", "10000", "--offset", strconv.Itoa(offset), "-o", "json")
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatal(err)
		}
		j.Tasks = append(j.Tasks, p.Tasks...)
		if offset = p.NextOffset; offset == 0 {
			return &j
		}
	}
}

// waitJobState waits until the job reaches state.
func waitJobState(t *testing.T, in *testutil.Installation, id, state string, timeout time.Duration) *api.Job {
	t.Helper()
	var job *api.Job
	testutil.WaitFor(t, timeout, func() (bool, string) {
		j, _, err := in.Client.Job(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		job = j
		return j.State == state, fmt.Sprintf("job %s is %s (%+v), want %s", id, j.State, j.Counts, state)
	})
	return job
}

// nodeOf returns the node running task index of the job's first group,
// waiting until it runs.
func runningNode(t *testing.T, in *testutil.Installation, id string) string {
	t.Helper()
	var node string
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		j, _, err := in.Client.Job(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		for _, tk := range j.Tasks {
			if tk.State == api.TaskRunning {
				node = tk.Node
				return true, ""
			}
		}
		return false, "no task running yet"
	})
	return node
}

// taskProcesses lists the pids of processes whose environment names the
// node: the tasks an agent of in started there. Other installations on the
// machine (other tests, other worktrees) have nodes of the same names:
// with TLS, a task's SHOAL_CACERT, a file of in's own, tells them apart.
func taskProcesses(in *testutil.Installation, node string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	marker := []byte("SHOAL_NODE=" + node + "\x00")
	var ca []byte
	if in.TLS != nil {
		ca = []byte("SHOAL_CACERT=" + in.TLS.CACert() + "\x00")
	}
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		if strings.Contains(string(env)+"\x00", string(marker)) && strings.Contains(string(env)+"\x00", string(ca)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitNoTaskProcesses waits until no task process of in's node is left.
func waitNoTaskProcesses(t *testing.T, in *testutil.Installation, node string) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		p := taskProcesses(in, node)
		return len(p) == 0, fmt.Sprintf("task processes of %s still alive: %v", node, p)
	})
}

func hasEvent(events []api.Event, typ, substr string) bool {
	for _, e := range events {
		if e.Type == typ && strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}

// waitRunningElsewhere waits until every task of the job runs on a node
// other than node, and returns the job.
func waitRunningElsewhere(t *testing.T, in *testutil.Installation, id, node string, timeout time.Duration) *api.Job {
	t.Helper()
	var job *api.Job
	testutil.WaitFor(t, timeout, func() (bool, string) {
		j, _, err := in.Client.Job(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		job = j
		for _, tk := range j.Tasks {
			if tk.Node == node || tk.State != api.TaskRunning {
				return false, fmt.Sprintf("task %d %s on %s", tk.Index, tk.State, tk.Node)
			}
		}
		return true, ""
	})
	return job
}

// nodesInZone returns the names of the nodes in zone, sorted.
func nodesInZone(t *testing.T, in *testutil.Installation, zone string) []string {
	t.Helper()
	nodes, _, err := in.Client.Nodes(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range nodes {
		if n.Zone == zone {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}
