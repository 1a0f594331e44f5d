package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestServerRestartKeepsState kills -9 the only server while a job runs and
// restarts it on its data dir: everything acknowledged before the crash is
// there, agents reconnect, and the job completes.
func TestServerRestartKeepsState(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, HeartbeatTTL: 5 * time.Second})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	done := submit(t, in, fmt.Sprintf(sleepJob, 2, "0.1"))
	waitJobState(t, in, done, api.JobComplete, 20*time.Second)
	id := submit(t, in, fmt.Sprintf(sleepJob, 4, "3"))
	runningNode(t, in, id)

	in.Servers[0].Kill9()
	in.Servers[0].Restart(t)
	in.WaitForLeader()
	if j := jobJSON(t, in, done); j.State != api.JobComplete || j.Counts.Complete != 2 {
		t.Errorf("finished job after restart: %s %+v, want complete with 2 tasks", j.State, j.Counts)
	}
	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	if job.Counts.Complete != 4 {
		t.Errorf("counts %+v, want 4 complete", job.Counts)
	}
	c, _, err := in.Client.Cluster(context.Background(), "c1", nil)
	if err != nil || len(c.Nodes) != 2 {
		t.Errorf("cluster after restart: %v %v, want 2 nodes", c, err)
	}
}

// TestResizeFollowLogsAndMetrics covers cluster resize, following a
// running task's logs, and the Prometheus endpoint.
func TestResizeFollowLogsAndMetrics(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	out := mustShoal(t, in, "cluster", "resize", "c1", "--nodes", "3")
	if !strings.Contains(out, "now has 3 nodes") {
		t.Errorf("resize output %q", out)
	}
	if _, errOut, code := in.Shoal("cluster", "resize", "c1", "--nodes", "4"); code == 0 || !strings.Contains(errOut, "needs 1 more nodes") {
		t.Errorf("resize beyond the pool: exit %d stderr %q, want a clear refusal", code, errOut)
	}

	id := submit(t, in, `
name: ticker
cluster: c1
groups:
  - name: t
    count: 1
    command: ["/bin/sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.3; done"]
`)
	runningNode(t, in, id)
	logs := mustShoal(t, in, "job", "logs", id, "--follow")
	if logs != "tick 1\ntick 2\ntick 3\n" {
		t.Errorf("followed logs = %q, want three ticks", logs)
	}
	waitJobState(t, in, id, api.JobComplete, 10*time.Second)

	out = mustShoal(t, in, "cluster", "resize", "c1", "--nodes", "1")
	if !strings.Contains(out, "now has 1 nodes") {
		t.Errorf("shrink output %q", out)
	}
	pool, _, _ := in.Client.Pool(context.Background(), nil)
	if pool.Idle != 2 {
		t.Errorf("pool after shrink: %d idle, want 2", pool.Idle)
	}

	resp, err := in.HTTPClient(tlsfiles.RoleServer).Get("http://" + in.Servers[0].HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`shoal_tasks{state="complete"} 1`, `shoal_nodes{state="ready"} 3`,
		"shoal_raft_apply_seconds_bucket", "shoal_scheduler_plan_seconds_count", "shoal_heartbeats_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
