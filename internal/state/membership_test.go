package state_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// stop marks a node down as an agent that shuts down does: kept in its
// cluster until keep after now.
func (f *fixture) stop(name string, keep time.Duration) {
	f.t.Helper()
	err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: name, State: api.NodeDown,
		Reason: "agent shut down", KeepUntil: f.now.Add(keep), Now: f.now})
	if err != nil {
		f.t.Fatalf("SetNodeState(%s, down, keep %s): %v", name, keep, err)
	}
}

func (f *fixture) expire(name string) {
	f.t.Helper()
	err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: name, State: api.NodeDown, Expired: true, Now: f.now})
	if err != nil {
		f.t.Fatalf("SetNodeState(%s, expired): %v", name, err)
	}
}

func health(f *fixture, name string) (string, []string) {
	snap := f.snap()
	return snap.ClusterHealth(nil, snap.Cluster(nil, name))
}

// TestOrderlyStopKeepsMembership: a member whose agent stops in an orderly
// way stays in its cluster (no refill) until it is due; its tasks are
// lost and placed elsewhere; when it comes back it is a member again.
func TestOrderlyStopKeepsMembership(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}, {"c1", "c"}, {"a2", "a"}})
	f.createCluster("c", 3, 3)
	j := f.submit("j", "c", 1, api.Resources{CPU: 100, MemoryMB: 10}, 1)
	f.place(taskID(j.ID, 0), "a1")

	f.stop("a1", 5*time.Minute)
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a1", "b1", "c1"}) {
		t.Errorf("members after an orderly stop: got %v, want [a1 b1 c1] (no refill)", got)
	}
	n := f.node("a1")
	if n.State != api.NodeDown || n.Cluster != "c" || !n.ExpectedBack.Equal(t0.Add(5*time.Minute)) {
		t.Errorf("stopped node: got state %s cluster %q expected back %v, want down, c, %v", n.State, n.Cluster, n.ExpectedBack, t0.Add(5*time.Minute))
	}
	if got := f.node("a2").Cluster; got != "" {
		t.Errorf("pool node a2 drawn into %q while a1 is expected back", got)
	}
	if got := f.task(taskID(j.ID, 0)); got.State != api.TaskLost || got.Node != "" {
		t.Errorf("task of the stopped node: got %s on %q, want lost and unplaced", got.State, got.Node)
	}
	if st, problems := health(f, "c"); st != api.ClusterDegraded || len(problems) != 1 {
		t.Errorf("health while a1 is away: got %s %q, want degraded with one problem", st, problems)
	}
	if got := lastEvent(f.cluster("c").Events); got == "" || eventTypes(f.cluster("c").Events)[len(f.cluster("c").Events)-1] != "member-stopped" {
		t.Errorf("last cluster event: got %q, want member-stopped", got)
	}

	// Expiring before it is due changes nothing.
	f.now = t0.Add(4 * time.Minute)
	before := dump(t, f.s)
	f.expire("a1")
	checkUnchanged(t, f.s, before)

	// It comes back: a member again, nothing expected any more.
	f.register("a1", "a", 4000, 8192)
	f.setState("a1", api.NodeReady)
	n = f.node("a1")
	if n.State != api.NodeReady || n.Cluster != "c" || !n.ExpectedBack.IsZero() {
		t.Errorf("node back: got state %s cluster %q expected back %v, want ready in c", n.State, n.Cluster, n.ExpectedBack)
	}
	if st, problems := health(f, "c"); st != api.ClusterHealthy || problems != nil {
		t.Errorf("health once a1 is back: got %s %q, want healthy", st, problems)
	}
	// Expiring a node that came back changes nothing.
	f.now = t0.Add(10 * time.Minute)
	before = dump(t, f.s)
	f.expire("a1")
	checkUnchanged(t, f.s, before)
}

// TestOrderlyStopNotBackIsReplaced: a stopped member that is not back when
// due is replaced from the pool as a dead one is.
func TestOrderlyStopNotBackIsReplaced(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}, {"c1", "c"}, {"a2", "a"}})
	f.createCluster("c", 3, 3)
	f.stop("a1", time.Minute)
	f.now = t0.Add(time.Minute)
	f.expire("a1")
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a2", "b1", "c1"}) {
		t.Errorf("members after expiry: got %v, want [a2 b1 c1]", got)
	}
	if n := f.node("a1"); n.Cluster != "" || !n.ExpectedBack.IsZero() {
		t.Errorf("expired node: got cluster %q expected back %v, want neither", n.Cluster, n.ExpectedBack)
	}
	// Back later, it joins the pool.
	f.setState("a1", api.NodeReady)
	if got := f.node("a1").Cluster; got != "" {
		t.Errorf("node back after expiry: got cluster %q, want the pool", got)
	}
}

// TestStopWithoutGraceDetaches: a zero or past KeepUntil, a node in the
// pool and a draining node are not kept.
func TestStopWithoutGraceDetaches(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}, {"a2", "a"}, {"b2", "b"}})
	f.createCluster("c", 2, 2)
	f.stop("a1", 0)
	if n := f.node("a1"); n.Cluster != "" || !n.ExpectedBack.IsZero() {
		t.Errorf("stop without grace: got cluster %q expected back %v, want detached", n.Cluster, n.ExpectedBack)
	}
	f.stop("b2", time.Minute) // a pool node
	if n := f.node("b2"); !n.ExpectedBack.IsZero() {
		t.Errorf("pool node stopped: got expected back %v, want none", n.ExpectedBack)
	}
	if err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "a1", State: api.NodeReady, Expired: true, Now: f.now}); err == nil {
		t.Error("Expired with state ready: got no error")
	}
}

// TestSpreadReturnsWithTheZone: a cluster refilled into fewer zones than it
// asked for is degraded, and swaps an idle member for a node of the
// missing zone when one joins the pool; busy members are not moved until
// they are idle.
func TestSpreadReturnsWithTheZone(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}, {"c1", "c"}, {"a2", "a"}})
	f.createCluster("c", 3, 3)
	f.setState("c1", api.NodeDown) // zone c is lost; a2 replaces c1
	if got := zonesOf(f, f.cluster("c")); !cmp.Equal(got, map[string]int{"a": 2, "b": 1}) {
		t.Fatalf("zones after losing c: got %v, want a:2 b:1", got)
	}
	if st, problems := health(f, "c"); st != api.ClusterDegraded || len(problems) != 1 {
		t.Errorf("health with 2 of 3 zones: got %s %q, want degraded with one problem", st, problems)
	}
	// Both a-members busy: the zone's return moves nobody.
	j := f.submit("j", "c", 2, api.Resources{CPU: 100, MemoryMB: 10}, 1)
	f.place(taskID(j.ID, 0), "a1")
	f.place(taskID(j.ID, 1), "a2")
	f.addNode("c2", "c")
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a1", "a2", "b1"}) {
		t.Errorf("members with busy a-nodes: got %v, want [a1 a2 b1]", got)
	}
	// a2 finishes its task: it is idle, and swapped for c2.
	f.report(taskID(j.ID, 1), api.TaskComplete, 0)
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a1", "b1", "c2"}) {
		t.Errorf("members once a2 is idle: got %v, want [a1 b1 c2]", got)
	}
	if got := f.node("a2").Cluster; got != "" {
		t.Errorf("swapped-out a2: got cluster %q, want the pool", got)
	}
	if got := f.task(taskID(j.ID, 0)); got.Node != "a1" {
		t.Errorf("the running task moved: got node %q, want a1", got.Node)
	}
	if st, _ := health(f, "c"); st != api.ClusterHealthy {
		t.Errorf("health after rebalancing: got %s, want healthy", st)
	}
	if got := eventTypes(f.cluster("c").Events); got[len(got)-1] != "rebalanced" {
		t.Errorf("last event: got %v, want rebalanced", got)
	}
}

// TestSpreadIdleMemberAtOnce: with an idle member in a crowded zone, the
// swap happens in the write that brings the zone's node to the pool.
func TestSpreadIdleMemberAtOnce(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}, {"c1", "c"}, {"a2", "a"}})
	f.createCluster("c", 3, 3)
	f.setState("c1", api.NodeDown)
	f.setState("c1", api.NodeReady) // back, in the pool
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a2", "b1", "c1"}) {
		t.Errorf("members once zone c is back: got %v, want [a2 b1 c1] (a1, the first idle member of zone a, back in the pool)", got)
	}
}

// TestDrainMemberWithUnstartedTasks: a member drained while it holds only
// tasks that have not started leaves its cluster's list, is replaced from
// the pool, and is not listed twice when it comes back to the pool.
func TestDrainMemberWithUnstartedTasks(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}})
	f.createCluster("c", 2, 2)
	f.addNode("b2", "b")
	j := f.submit("j", "c", 1, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	f.place(taskID(j.ID, 0), "b1") // placed, not yet running
	if err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "b1", Deadline: f.now.Add(time.Minute), Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"a1", "b2"}) {
		t.Errorf("members after draining b1: got %v, want [a1 b2]", got)
	}
	if err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "b1", Disable: true, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	f.setState("a1", api.NodeDown) // c draws from the pool, where b1 now is
	if got := f.cluster("c").Nodes; !cmp.Equal(got, []string{"b1", "b2"}) {
		t.Errorf("members after a1 went down: got %v, want [b1 b2]", got)
	}
}
