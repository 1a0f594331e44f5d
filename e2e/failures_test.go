package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

const sleepJob = `
name: sleepy
cluster: c1
groups:
  - name: s
    count: %d
    command: ["/bin/sh", "-c", "sleep %s; echo done on $SHOAL_NODE attempt $SHOAL_ATTEMPT"]
    resources: {cpu: 100, memory: 64}
`

// TestJobSurvivesAgentKill kills -9 the agent of a node running tasks: the
// node is declared down, its tasks are lost and run elsewhere without using
// up an attempt, the cluster draws a replacement from the pool, and no
// task process of the dead agent is left behind.
func TestJobSurvivesAgentKill(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4, Zones: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "2")
	id := submit(t, in, fmt.Sprintf(sleepJob, 6, "4"))
	victim := runningNode(t, in, id)
	in.Agent(victim).Kill9()
	waitNoTaskProcesses(t, in, victim)

	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	if !hasEvent(job.Events, "task-lost", "node "+victim+" down") {
		t.Errorf("job events %v record no task lost on %s", job.Events, victim)
	}
	for _, tk := range job.Tasks {
		if tk.Node == victim {
			t.Errorf("task %d completed on the dead node %s", tk.Index, victim)
		}
		if tk.Attempt != 1 {
			t.Errorf("task %d used attempt %d; a lost run must not use up an attempt", tk.Index, tk.Attempt)
		}
	}
	c, _, err := in.Client.Cluster(context.Background(), "c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 3 || slices.Contains(c.Nodes, victim) {
		t.Errorf("cluster nodes %v, want 3 live nodes without %s", c.Nodes, victim)
	}
	if !hasEvent(c.Events, "replaced", "drew from the pool") {
		t.Errorf("cluster events %v record no replacement", c.Events)
	}
	n, _ := in.Client.Node(context.Background(), victim)
	if n.State != api.NodeDown || n.Cluster != "" {
		t.Errorf("dead node: state %s cluster %q, want down and out of the cluster", n.State, n.Cluster)
	}
}

// TestJobSurvivesLeaderKill kills -9 the Raft leader of three servers while
// a job runs: a new leader takes over, the job completes, writes succeed,
// and the old leader restarted with its data rejoins and catches up.
func TestJobSurvivesLeaderKill(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Servers: 3, Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	id := submit(t, in, fmt.Sprintf(sleepJob, 9, "2"))
	runningNode(t, in, id)
	old := in.Leader()
	in.Servers[old].Kill9()
	newLeader := in.Leader()
	if newLeader == old {
		t.Fatalf("leader still %d after kill", old)
	}
	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	if job.Counts.Complete != 9 {
		t.Errorf("counts %+v, want 9 complete", job.Counts)
	}
	// Writes work through any surviving server.
	id2 := submit(t, in, fmt.Sprintf(sleepJob, 3, "0.1"))
	waitJobState(t, in, id2, api.JobComplete, 30*time.Second)

	in.Servers[old].Restart(t)
	c := in.NewClient([]string{in.Servers[old].HTTPAddr}, "")
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		j, _, err := c.Job(context.Background(), id2, nil)
		if err != nil {
			return false, err.Error()
		}
		return j.State == api.JobComplete, "restarted server sees job " + id2 + " as " + j.State
	})
	peers, err := c.Peers(context.Background())
	if err != nil || len(peers) != 3 {
		t.Errorf("peers after rejoin: %v %v, want 3", peers, err)
	}
}

// TestClusterRefillAndDelete checks that a cluster keeps its size and
// zone spread from the pool, and that deleting it stops its tasks, wipes
// their data and returns every node to the pool.
func TestClusterRefillAndDelete(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 5, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	c, _, _ := in.Client.Cluster(context.Background(), "c1", nil)
	victim := c.Nodes[0]
	in.Agent(victim).Kill9()
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		c, _, err := in.Client.Cluster(context.Background(), "c1", nil)
		if err != nil {
			return false, err.Error()
		}
		return len(c.Nodes) == 3 && !slices.Contains(c.Nodes, victim), fmt.Sprintf("members %v", c.Nodes)
	})

	id := submit(t, in, fmt.Sprintf(sleepJob, 3, "300"))
	node := runningNode(t, in, id)
	var dir string
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		m, _ := filepath.Glob(filepath.Join(in.Dir, node, "alloc", "c1", id, "*", "work"))
		if len(m) > 0 {
			dir = m[0]
		}
		return len(m) > 0, "no working directory for the job on " + node
	})
	mustShoal(t, in, "cluster", "delete", "c1")
	job := waitJobState(t, in, id, api.JobCancelled, 10*time.Second)
	if job.Counts.Cancelled != 3 {
		t.Errorf("counts after delete %+v, want 3 cancelled", job.Counts)
	}
	waitNoTaskProcesses(t, in, node)
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		_, err := os.Stat(dir)
		return os.IsNotExist(err), "task data still at " + dir
	})
	pool, _, _ := in.Client.Pool(context.Background(), nil)
	if pool.Idle != 4 || pool.Reserved != 0 {
		t.Errorf("pool after delete: %d idle %d reserved, want 4 idle 0 reserved", pool.Idle, pool.Reserved)
	}
	if _, errOut, code := in.Shoal("cluster", "status", "c1"); code == 0 {
		t.Errorf("cluster status of a deleted cluster succeeded; stderr %q", errOut)
	}
}

// TestAgentRestartRecovers kills -9 an agent and restarts it on the same
// data dir before the servers notice: the tasks it had are reported lost,
// run again, and no process of the old runs is left.
func TestAgentRestartRecovers(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, HeartbeatTTL: 10 * time.Second})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	id := submit(t, in, fmt.Sprintf(sleepJob, 4, "3"))
	victim := runningNode(t, in, id)
	agent := in.Agent(victim)
	agent.Kill9()
	waitNoTaskProcesses(t, in, victim)
	agent.Restart(t)

	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	if !hasEvent(job.Events, "task-lost", "agent restarted") {
		t.Errorf("events %v: want tasks reported lost by the restarted agent", job.Events)
	}
	n, _ := in.Client.Node(context.Background(), victim)
	if n.State != api.NodeReady || n.Cluster != "c1" {
		t.Errorf("restarted node: %s in %q, want ready in c1", n.State, n.Cluster)
	}
}

// TestDrainMovesTasks drains a node running tasks: they move to another
// node at the deadline and the cluster is refilled from the pool.
func TestDrainMovesTasks(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	id := submit(t, in, fmt.Sprintf(sleepJob, 2, "300"))
	node := runningNode(t, in, id)
	mustShoal(t, in, "node", "drain", node, "--deadline", "1s")
	waitRunningElsewhere(t, in, id, node, 20*time.Second)
	waitNoTaskProcesses(t, in, node)
	n, _ := in.Client.Node(context.Background(), node)
	if n.State != api.NodeDraining || n.Cluster != "" {
		t.Errorf("drained node: %s in %q, want draining outside any cluster", n.State, n.Cluster)
	}
	c, _, _ := in.Client.Cluster(context.Background(), "c1", nil)
	if len(c.Nodes) != 2 || slices.Contains(c.Nodes, node) {
		t.Errorf("cluster nodes %v, want 2 without %s", c.Nodes, node)
	}
	mustShoal(t, in, "node", "drain", node, "--disable")
	in.WaitForReady(3)
	mustShoal(t, in, "job", "cancel", id)
}

// TestAgentStopHandsTasksBack stops an agent with SIGTERM: it kills its
// tasks and tells the servers it leaves, so that they run elsewhere long
// before the (here 30 s) heartbeat TTL would notice.
func TestAgentStopHandsTasksBack(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, HeartbeatTTL: 30 * time.Second})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	id := submit(t, in, fmt.Sprintf(sleepJob, 2, "300"))
	victim := runningNode(t, in, id)
	in.Agent(victim).Stop()
	waitNoTaskProcesses(t, in, victim)
	job := waitRunningElsewhere(t, in, id, victim, 10*time.Second)
	if !hasEvent(job.Events, "task-lost", "agent shut down") {
		t.Errorf("events %v: want tasks lost because the agent shut down", job.Events)
	}
	mustShoal(t, in, "job", "cancel", id)
}

// TestJobSurvivesLostZone kills -9 every agent of one zone while a job
// runs: the job completes on the other zones and the cluster is refilled
// from the surviving pool.
func TestJobSurvivesLostZone(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 6, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	id := submit(t, in, fmt.Sprintf(sleepJob, 6, "3"))
	runningNode(t, in, id)
	lost := nodesInZone(t, in, "zone-1")
	for _, n := range lost {
		in.Agent(n).Kill9()
	}
	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	for _, tk := range job.Tasks {
		if slices.Contains(lost, tk.Node) {
			t.Errorf("task %d completed on %s in the lost zone", tk.Index, tk.Node)
		}
	}
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		c, _, err := in.Client.Cluster(context.Background(), "c1", nil)
		if err != nil {
			return false, err.Error()
		}
		for _, n := range c.Nodes {
			if slices.Contains(lost, n) {
				return false, fmt.Sprintf("members %v still include a lost node", c.Nodes)
			}
		}
		return len(c.Nodes) == 3, fmt.Sprintf("members %v, want 3", c.Nodes)
	})
	c := clusterJSON(t, in, "c1")
	if !hasEvent(c.Events, "replaced", "spans 2 zones, fewer than the 3 asked for") {
		t.Errorf("cluster events %v do not record the lost zone spread", c.Events)
	}
	if c.State != api.ClusterDegraded || !strings.Contains(strings.Join(c.Problems, "; "), "spans 2 zones, fewer than the 3 asked for") {
		t.Errorf("cluster with a lost zone: got %s %q, want degraded saying it spans 2 zones", c.State, c.Problems)
	}

	// The zone comes back: an idle member of a crowded zone goes back to
	// the pool and a node of zone-1 takes its place.
	back := in.AddAgent("zone-1").Name
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		c := clusterJSON(t, in, "c1")
		return c.State == api.ClusterHealthy && slices.Contains(c.Nodes, back),
			fmt.Sprintf("cluster %s %q members %v, want healthy with %s", c.State, c.Problems, c.Nodes, back)
	})
	if c := clusterJSON(t, in, "c1"); !hasEvent(c.Events, "rebalanced", back) {
		t.Errorf("cluster events %v do not record the rebalance", c.Events)
	}
}
