package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestBatchJobEndToEnd runs the README's hello job through the CLI and
// checks placement, environment, logs and the JSON output contract.
func TestBatchJobEndToEnd(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	jobFile := writeFile(t, "hello.yaml", `
name: hello
cluster: c1
type: batch
groups:
  - name: say
    count: 20
    command: ["/bin/sh", "-c", "echo hello $SHOAL_TASK_INDEX of $SHOAL_TASK_COUNT $GREETING attempt=$SHOAL_ATTEMPT cluster=$SHOAL_CLUSTER node=$SHOAL_NODE job=$SHOAL_JOB_ID"]
    env: {GREETING: hi}
    resources: {cpu: 100, memory: 64}
    max_attempts: 3
    timeout: 10m
`)
	out, errOut, code := in.Shoal("job", "run", jobFile, "--wait")
	if code != 0 {
		t.Fatalf("job run --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "complete: 20 complete") {
		t.Errorf("job run --wait printed %q, want the final counts", out)
	}
	if !strings.Contains(errOut, "complete: 20/20 complete") {
		t.Errorf("piped progress %q lacks plain progress lines", errOut)
	}
	var jobs []map[string]any
	if err := json.Unmarshal([]byte(mustShoal(t, in, "job", "list", "-o", "json")), &jobs); err != nil || len(jobs) != 1 {
		t.Fatalf("job list -o json: %v %v", jobs, err)
	}
	id := jobs[0]["id"].(string)
	var raw map[string]any
	if err := json.Unmarshal([]byte(mustShoal(t, in, "job", "status", id, "-o", "json")), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "name", "cluster", "state", "counts", "group_status", "events"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("job JSON lacks %q", k)
		}
	}
	if err := json.Unmarshal([]byte(mustShoal(t, in, "job", "status", id, "--tasks", "-o", "json")), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"total", "tasks"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("task page JSON lacks %q", k)
		}
	}
	task0 := raw["tasks"].([]any)[0].(map[string]any)
	for _, k := range []string{"index", "group", "state", "node", "attempt", "exit_code"} {
		if _, ok := task0[k]; !ok {
			t.Errorf("task JSON lacks %q", k)
		}
	}
	job := jobJSON(t, in, id)
	zones := map[string]int{}
	nodes, _, _ := in.Client.Nodes(context.Background(), nil)
	zoneOf := map[string]string{}
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	for _, tk := range job.Tasks {
		if tk.State != api.TaskComplete || tk.ExitCode != 0 || tk.Attempt != 1 {
			t.Errorf("task %d: state %s exit %d attempt %d, want complete 0 1", tk.Index, tk.State, tk.ExitCode, tk.Attempt)
		}
		zones[zoneOf[tk.Node]]++
	}
	if len(zones) != 3 {
		t.Errorf("tasks ran in zones %v, want spread over 3 zones", zones)
	}
	logs := mustShoal(t, in, "job", "logs", id, "--task", "7")
	want := fmt.Sprintf("hello 7 of 20 hi attempt=1 cluster=c1 node=%s job=%s\n", job.Tasks[7].Node, id)
	if logs != want {
		t.Errorf("logs of task 7 = %q, want %q", logs, want)
	}
	// Node and cluster JSON contracts.
	var nodeJSON []map[string]any
	json.Unmarshal([]byte(mustShoal(t, in, "node", "list", "-o", "json")), &nodeJSON)
	for _, k := range []string{"name", "zone", "state", "cluster"} {
		if _, ok := nodeJSON[0][k]; !ok {
			t.Errorf("node JSON lacks %q", k)
		}
	}
	var cl map[string]any
	json.Unmarshal([]byte(mustShoal(t, in, "cluster", "status", "c1", "-o", "json")), &cl)
	if cl["name"] != "c1" || len(cl["nodes"].([]any)) != 3 {
		t.Errorf("cluster JSON = %v, want name c1 with 3 nodes", cl)
	}
}

// TestRetriesTimeoutAndCancel checks that failed attempts are retried with
// SHOAL_ATTEMPT counting up, that a timeout fails a task, that --wait
// exits non-zero for a failed job, and that cancel stops running tasks.
func TestRetriesTimeoutAndCancel(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	jobFile := writeFile(t, "flaky.yaml", `
name: flaky
cluster: c1
groups:
  - name: retry
    count: 2
    command: ["/bin/sh", "-c", "echo attempt $SHOAL_ATTEMPT; test $SHOAL_ATTEMPT -ge 2"]
    max_attempts: 3
  - name: slow
    count: 1
    command: ["/bin/sleep", "60"]
    timeout: 1s
    max_attempts: 1
`)
	out, errOut, code := in.Shoal("job", "run", jobFile, "--wait")
	if code != 1 {
		t.Fatalf("job run --wait of a failing job: exit %d, want 1\n%s\n%s", code, out, errOut)
	}
	var id string
	fmt.Sscanf(out, "Job %s", &id)
	job := jobJSON(t, in, id)
	if job.State != api.JobFailed {
		t.Errorf("job state %s, want failed", job.State)
	}
	for _, tk := range job.Tasks {
		switch tk.Group {
		case "retry":
			if tk.State != api.TaskComplete || tk.Attempt != 2 {
				t.Errorf("retry task %d: %s on attempt %d, want complete on attempt 2", tk.Index, tk.State, tk.Attempt)
			}
		case "slow":
			if tk.State != api.TaskFailed || !strings.Contains(tk.Message, "timed out") {
				t.Errorf("slow task: %s %q, want failed with a timeout message", tk.State, tk.Message)
			}
		}
	}
	if !hasEvent(job.Events, "task-failed", "retrying in") {
		t.Errorf("events %v lack a retry", job.Events)
	}
	logs := mustShoal(t, in, "job", "logs", id, "--group", "retry", "--task", "1")
	if logs != "attempt 2\n" {
		t.Errorf("logs of the second attempt = %q, want %q", logs, "attempt 2\n")
	}

	// Cancel stops running tasks on their nodes.
	id = submit(t, in, "name: long\ncluster: c1\ngroups:\n  - name: s\n    count: 2\n    command: [\"/bin/sleep\", \"300\"]\n")
	node := runningNode(t, in, id)
	if len(taskProcesses(in, node)) == 0 {
		t.Fatalf("no task process found on %s", node)
	}
	mustShoal(t, in, "job", "cancel", id)
	job = waitJobState(t, in, id, api.JobCancelled, 10*time.Second)
	for _, tk := range job.Tasks {
		if tk.State != api.TaskCancelled {
			t.Errorf("task %d is %s after cancel, want cancelled", tk.Index, tk.State)
		}
	}
	for _, n := range []string{"node-1", "node-2"} {
		waitNoTaskProcesses(t, in, n)
	}
}

// TestBadInputChangesNothing feeds the CLI invalid job files and requests
// and checks each gets a clear error and leaves no trace.
func TestBadInputChangesNothing(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	valid := "name: ok\ncluster: c1\ngroups:\n  - name: g\n    count: 1\n    command: [\"/bin/true\"]\n"
	cases := []struct {
		name string
		job  string
		want string
	}{
		{"bad yaml", "name: [unclosed", "job file"},
		{"unknown field", valid + "    colour: blue\n", `unknown field "colour"`},
		{"count zero", strings.Replace(valid, "count: 1", "count: 0", 1), "groups[0].count: must be at least 1"},
		{"empty command", strings.Replace(valid, `["/bin/true"]`, "[]", 1), "groups[0].command: must not be empty"},
		{"unknown cluster", strings.Replace(valid, "cluster: c1", "cluster: nope", 1), `no cluster named "nope"`},
		{"too big", valid + "    resources: {cpu: 64000, memory: 64}\n", "groups[0].resources.cpu"},
		{"slash in name", strings.Replace(valid, "name: ok", "name: a/b", 1), `name: "a/b" contains '/'`},
		{"control char", strings.Replace(valid, "name: ok", `name: "a\tb"`, 1), `contains '\t'`},
		{"bad timeout", valid + "    timeout: soon\n", `invalid duration "soon"`},
		{"wrong type", strings.Replace(valid, "count: 1", "count: many", 1), "count"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := in.Shoal("job", "run", writeFile(t, "bad.yaml", tc.job))
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want failure mentioning %q (stdout %q)", code, errOut, tc.want, out)
			}
		})
	}
	// The same checks hold on the server for clients that skip the CLI.
	_, err := in.Client.SubmitJob(context.Background(), &api.JobSpec{Name: "x", Cluster: "c1",
		Groups: []api.GroupSpec{{Name: "g", Count: 1, Command: []string{"/bin/true"}, Resources: api.Resources{CPU: 1, MemoryMB: 1 << 30}}}})
	if apiErr, ok := err.(*api.Error); !ok || apiErr.Status != 400 || !strings.Contains(apiErr.Message, "groups[0].resources.memory") {
		t.Errorf("oversized job via API: %v, want a 400 naming groups[0].resources.memory", err)
	}
	for _, args := range [][]string{
		{"cluster", "create", "bad/name", "--nodes", "1"},
		{"cluster", "create", "c2", "--nodes", "0"},
		{"cluster", "create", "c2", "--nodes", "5", "--zones", "2"},
		{"cluster", "create", "c1", "--nodes", "1"},
		{"job", "status", "nope-1"},
		{"node", "drain", "no-such-node"},
		{"node", "list", "-o", "yaml"},
	} {
		out, errOut, code := in.Shoal(args...)
		if code == 0 || !strings.HasPrefix(errOut, "Error: ") {
			t.Errorf("shoal %v: exit %d, stderr %q, stdout %q; want a clear error", args, code, errOut, out)
		}
	}
	jobs, _, err := in.Client.Jobs(context.Background(), "", nil)
	if err != nil || len(jobs) != 0 {
		t.Errorf("after bad input: jobs %v err %v, want none", jobs, err)
	}
	clusters, _, _ := in.Client.Clusters(context.Background(), nil)
	if len(clusters) != 1 {
		t.Errorf("after bad input: %d clusters, want 1", len(clusters))
	}
	// A valid job still runs: nothing was broken.
	id := submit(t, in, valid)
	waitJobState(t, in, id, api.JobComplete, 20*time.Second)
}
