package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func TestSingleServerBootstrap(t *testing.T) {
	g := testutil.StartServers(t, 1, longTTL)
	if got := g.Leader(t); got != 0 {
		t.Fatalf("Leader() = %d, want 0", got)
	}
	s := g.Server(0)
	c := g.Client(0)

	leader, err := c.Leader(reqCtx(t))
	if err != nil {
		t.Fatalf("GET /v1/status/leader: %v", err)
	}
	if leader != s.RaftAddr() {
		t.Errorf("leader = %q, want %q", leader, s.RaftAddr())
	}
	peers, err := c.Peers(reqCtx(t))
	if err != nil {
		t.Fatalf("GET /v1/status/peers: %v", err)
	}
	if diff := cmp.Diff([]string{s.RaftAddr()}, peers); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
	servers, err := c.Servers(reqCtx(t))
	if err != nil {
		t.Fatalf("GET /v1/status/servers: %v", err)
	}
	want := []api.ServerInfo{{Name: "server-1", RaftAddr: s.RaftAddr(), HTTPAddr: s.HTTPAddr(), Leader: true, Voter: true}}
	if diff := cmp.Diff(want, servers); diff != "" {
		t.Errorf("servers (-want +got):\n%s", diff)
	}
}

// TestJoinAndForwardWrites forms a group where only the first server is
// named by the others (discovery must be transitive) and checks that writes
// sent to a follower are forwarded to the leader and replicated everywhere.
func TestJoinAndForwardWrites(t *testing.T) {
	g := testutil.StartServers(t, 3, longTTL, func(i int, c *server.Config) {
		if i == 0 {
			c.Join = nil
		} else {
			c.Join = c.Join[:1] // server 0's address
		}
	})
	if got := g.Config(2).Join; len(got) != 1 || got[0] != g.HTTPAddr(0) {
		t.Fatalf("server 2 joins %q, want only server 0 (%s)", got, g.HTTPAddr(0))
	}
	leader := g.Leader(t)
	checkPeers(t, g, 3)

	follower := (leader + 1) % g.Len()
	fc := g.Client(follower)
	addReadyNode(t, fc, "n1", "z1", 1000, 1024)
	addReadyNode(t, fc, "n2", "z1", 1000, 1024)
	cl, err := fc.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 2})
	if err != nil {
		t.Fatalf("CreateCluster through follower %d: %v", follower, err)
	}
	if diff := cmp.Diff([]string{"n1", "n2"}, cl.Nodes); diff != "" {
		t.Errorf("cluster nodes (-want +got):\n%s", diff)
	}
	sub, err := fc.SubmitJob(reqCtx(t), &api.JobSpec{Name: "j", Cluster: "c1",
		Groups: []api.GroupSpec{{Name: "g", Count: 2, Command: []string{"true"}}}})
	if err != nil {
		t.Fatalf("SubmitJob through follower %d: %v", follower, err)
	}

	// An error from the leader keeps its status and code through the proxy.
	_, err = fc.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 1})
	if e := new(api.Error); !errors.As(err, &e) || e.Code != api.CodeConflict {
		t.Errorf("creating c1 twice through a follower: err = %v, want code %s", err, api.CodeConflict)
	}

	for i := 0; i < g.Len(); i++ {
		s := g.Server(i)
		testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
			snap := s.Store().Snapshot()
			for _, n := range []string{"n1", "n2"} {
				if nd := snap.Node(nil, n); nd == nil || nd.State != api.NodeReady || nd.Cluster != "c1" {
					return false, fmt.Sprintf("server %d: node %s = %+v, want ready in c1", i, n, nd)
				}
			}
			if snap.Job(nil, sub.ID) == nil {
				return false, fmt.Sprintf("server %d: no job %s", i, sub.ID)
			}
			return true, ""
		})
	}
	waitConverged(t, g)
}

// TestLeaderKill kills the leader, writes through a follower while it is
// away, and restarts it from its data directory.
func TestLeaderKill(t *testing.T) {
	g := testutil.StartServers(t, 3, longTTL)
	old := g.Leader(t)
	addReadyNode(t, g.Client(old), "before", "z1", 1000, 1024)

	g.Kill(old)
	leader := g.Leader(t)
	if leader == old {
		t.Fatalf("killed server %d still leads", old)
	}
	// What the old leader committed survives it.
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		return findNode(g.Server(leader), "before") != nil, "the new leader has no node before"
	})
	var follower int
	for _, i := range g.Running() {
		if i != leader {
			follower = i
		}
	}
	fc := g.Client(follower)
	addReadyNode(t, fc, "after", "z1", 1000, 1024)
	if _, err := fc.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c-after", Nodes: 2}); err != nil {
		t.Fatalf("CreateCluster through follower %d after the leader died: %v", follower, err)
	}

	s := g.Restart(t, old)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		snap := s.Store().Snapshot()
		if snap.Node(nil, "after") == nil || snap.Cluster(nil, "c-after") == nil {
			return false, "the restarted server has not caught up with node after and cluster c-after"
		}
		return true, ""
	})
	g.Leader(t)
	checkPeers(t, g, 3)
	waitConverged(t, g)
}

// TestSnapshotRestore restarts a server from a Raft snapshot and checks
// that its state is what it was.
func TestSnapshotRestore(t *testing.T) {
	g := testutil.StartServers(t, 1, longTTL)
	c := g.Client(0)
	for i := range 12 {
		addReadyNode(t, c, fmt.Sprintf("n%02d", i), fmt.Sprintf("z%d", i%3), 2000, 2048)
	}
	var jobs []string
	for i := range 3 {
		name := fmt.Sprintf("c%d", i)
		if _, err := c.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: name, Nodes: 3, Zones: 2}); err != nil {
			t.Fatalf("CreateCluster(%s): %v", name, err)
		}
		for k := range 4 {
			sub, err := c.SubmitJob(reqCtx(t), &api.JobSpec{Name: fmt.Sprintf("job%d", k), Cluster: name,
				Groups: []api.GroupSpec{
					{Name: "a", Count: 3, Command: []string{"sleep", "1"}, Env: map[string]string{"K": "v"}},
					{Name: "b", Count: 1, Command: []string{"true"}, Resources: api.Resources{CPU: 250, MemoryMB: 100}},
				}})
			if err != nil {
				t.Fatalf("SubmitJob: %v", err)
			}
			jobs = append(jobs, sub.ID)
		}
	}
	if err := c.CancelJob(reqCtx(t), jobs[0]); err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	// Let the scheduler place everything, then report some tasks started
	// and some finished, so that the snapshot holds tasks in many states.
	s := g.Server(0)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		n := len(s.Store().Snapshot().PlaceableTasks(nil))
		return n == 0, fmt.Sprintf("%d tasks still to place", n)
	})
	for _, id := range jobs[1:5] {
		for k, task := range s.Store().Snapshot().JobTasks(nil, id) {
			u := api.TaskUpdate{TaskID: task.ID, RunID: task.RunID, State: api.TaskRunning, Started: time.Now()}
			if k%2 == 1 {
				u.State, u.Finished = api.TaskComplete, time.Now()
			}
			if err := c.UpdateTasks(reqCtx(t), &api.TaskUpdates{Node: task.Node, Updates: []api.TaskUpdate{u}}); err != nil {
				t.Fatalf("UpdateTasks(%s): %v", task.ID, err)
			}
		}
	}
	if _, err := c.ResizeCluster(reqCtx(t), "c2", 2); err != nil {
		t.Fatalf("ResizeCluster: %v", err)
	}
	if err := c.DrainNode(reqCtx(t), "n11", &api.DrainRequest{Deadline: api.Duration(time.Hour)}); err != nil {
		t.Fatalf("DrainNode: %v", err)
	}
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		n := len(s.Store().Snapshot().PlaceableTasks(nil))
		return n == 0, fmt.Sprintf("%d tasks still to place", n)
	})

	before := dumpState(s)
	if len(before.Tasks) != 12*4 || before.Index == 0 {
		t.Fatalf("state before restart has %d tasks and index %d; the test wrote too little", len(before.Tasks), before.Index)
	}
	if err := s.SnapshotNow(); err != nil {
		t.Fatalf("SnapshotNow: %v", err)
	}
	snaps, err := os.ReadDir(filepath.Join(g.Config(0).DataDir, "raft", "snapshots"))
	if err != nil || len(snaps) == 0 {
		t.Fatalf("no snapshot on disk after SnapshotNow: %v (%d entries)", err, len(snaps))
	}
	g.Kill(0)
	s = g.Restart(t, 0)
	g.Leader(t)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		diff := cmp.Diff(before, dumpState(s))
		return diff == "", "state after restart differs (-before +after):\n" + diff
	})
}

// checkPeers waits until every running server lists want voters.
func checkPeers(t *testing.T, g *testutil.InProcGroup, want int) {
	t.Helper()
	for _, i := range g.Running() {
		testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			peers, err := g.Client(i).Peers(ctx)
			if err != nil || len(peers) != want || slices.Contains(peers, "") {
				return false, fmt.Sprintf("server %d: peers = %q, err %v; want %d", i, peers, err, want)
			}
			return true, ""
		})
	}
}

// waitConverged waits until every running server holds the same state.
func waitConverged(t *testing.T, g *testutil.InProcGroup) {
	t.Helper()
	running := g.Running()
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		want := dumpState(g.Server(running[0]))
		for _, i := range running[1:] {
			if diff := cmp.Diff(want, dumpState(g.Server(i))); diff != "" {
				return false, fmt.Sprintf("server %d differs from server %d (-%d +%d):\n%s", i, running[0], running[0], i, diff)
			}
		}
		return true, ""
	})
}

// TestNoQuorum kills two of three servers: the survivor still answers
// reads from its copy of the state but refuses writes with a 503 until a
// second server is back.
func TestNoQuorum(t *testing.T) {
	g := testutil.StartServers(t, 3, longTTL)
	leader := g.Leader(t)
	addReadyNode(t, g.Client(leader), "n1", "z1", 1000, 1024)
	survivor := (leader + 1) % g.Len()
	s := g.Server(survivor)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		return findNode(s, "n1") != nil, "node n1 has not reached the survivor"
	})
	for _, i := range g.Running() {
		if i != survivor {
			g.Kill(i)
		}
	}

	c := g.Client(survivor)
	// Once the survivor has noticed that the leader is gone, it stands for
	// election, which it cannot win alone.
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		l, err := c.Leader(ctx)
		return err == nil && l == "", fmt.Sprintf("the survivor reports leader %q (err %v), want none", l, err)
	})
	before := s.Store().Snapshot().Index(allTables...)
	reg := &api.NodeRegistration{Name: "n2", Zone: "z1", CPU: 1000, MemoryMB: 1024}
	err := c.RegisterNode(reqCtx(t), reg)
	if e := new(api.Error); !errors.As(err, &e) || e.Status != 503 || e.Code != api.CodeNoLeader {
		t.Errorf("RegisterNode without a quorum: err = %#v, want a 503 with code %s", err, api.CodeNoLeader)
	}
	nodes, _, err := c.Nodes(reqCtx(t), nil)
	if err != nil || len(nodes) != 1 {
		t.Errorf("Nodes() without a quorum = %d nodes, err %v; want the 1 node the survivor knows", len(nodes), err)
	}
	if after := s.Store().Snapshot().Index(allTables...); after != before {
		t.Errorf("state index moved from %d to %d without a quorum", before, after)
	}

	g.Restart(t, (survivor+1)%g.Len())
	g.Leader(t)
	if err := c.RegisterNode(reqCtx(t), reg); err != nil {
		t.Fatalf("RegisterNode once two servers are up again: %v", err)
	}
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		return findNode(s, "n2") != nil, "node n2 has not reached the survivor"
	})
}
