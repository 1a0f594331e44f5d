package state_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

type poolNode struct{ name, zone string }

// pool3x3 is three ready nodes in each of zones a, b and c.
var pool3x3 = []poolNode{
	{"a1", "a"}, {"a2", "a"}, {"a3", "a"},
	{"b1", "b"}, {"b2", "b"}, {"b3", "b"},
	{"c1", "c"}, {"c2", "c"}, {"c3", "c"},
}

func fixtureWithPool(t *testing.T, pool []poolNode) *fixture {
	t.Helper()
	f := newFixture(t)
	for _, n := range pool {
		f.addNode(n.name, n.zone)
	}
	return f
}

func TestCreateClusterSpreadsOverZones(t *testing.T) {
	tests := []struct {
		name        string
		pool        []poolNode
		nodes, zone int
		wantZones   map[string]int
		wantNodes   []string
	}{
		{"one per zone", pool3x3, 3, 3, map[string]int{"a": 1, "b": 1, "c": 1}, []string{"a1", "b1", "c1"}},
		{"spread without a minimum", pool3x3, 6, 0, map[string]int{"a": 2, "b": 2, "c": 2}, []string{"a1", "a2", "b1", "b2", "c1", "c2"}},
		{"uneven", pool3x3, 4, 2, map[string]int{"a": 2, "b": 1, "c": 1}, []string{"a1", "a2", "b1", "c1"}},
		{"all", pool3x3, 9, 3, map[string]int{"a": 3, "b": 3, "c": 3}, nil},
		// Ties between zones go to the zone with more pool nodes left.
		{"bigger zone first", []poolNode{{"x1", "x"}, {"y1", "y"}, {"y2", "y"}}, 1, 1, map[string]int{"y": 1}, []string{"y1"}},
		{"one zone holds the rest", []poolNode{{"x1", "x"}, {"y1", "y"}, {"y2", "y"}, {"y3", "y"}}, 4, 2, map[string]int{"x": 1, "y": 3}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtureWithPool(t, tt.pool)
			c := f.createCluster("c", tt.nodes, tt.zone)
			if diff := cmp.Diff(tt.wantZones, zonesOf(f, c)); diff != "" {
				t.Errorf("members by zone (-want +got):\n%s", diff)
			}
			if tt.wantNodes != nil {
				if diff := cmp.Diff(tt.wantNodes, c.Nodes); diff != "" {
					t.Errorf("members (-want +got):\n%s", diff)
				}
			}
			wantMin := max(tt.zone, 1)
			if c.Size != tt.nodes || c.MinZones != wantMin || c.CreateIndex != f.index || c.ModifyIndex != f.index {
				t.Errorf("cluster: got size %v zones %v create %v modify %v, want %v %v %v %v",
					c.Size, c.MinZones, c.CreateIndex, c.ModifyIndex, tt.nodes, wantMin, f.index, f.index)
			}
			if got := eventTypes(c.Events); !cmp.Equal(got, []string{"created"}) {
				t.Errorf("events: got %v, want [created]", got)
			}
			// What CreateCluster returned is what the store holds.
			if diff := cmp.Diff(c, f.cluster("c")); diff != "" {
				t.Errorf("stored cluster differs from the returned one (-returned +stored):\n%s", diff)
			}
			for _, name := range c.Nodes {
				if got := f.node(name).Cluster; got != "c" {
					t.Errorf("node %s cluster: got %q, want c", name, got)
				}
			}
		})
	}
}

// TestCreateClusterRefused: a cluster that cannot be made changes nothing,
// and the error says what is missing.
func TestCreateClusterRefused(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fixture)
		req     api.ClusterRequest
		want    error
		wantMsg []string
	}{
		{"too few nodes", func(f *fixture) {
			f.addNode("a1", "a")
			f.addNode("a2", "a")
			f.addNode("b1", "b")
		}, api.ClusterRequest{Name: "c", Nodes: 4}, state.ErrNoRoom,
			[]string{`cluster "c" needs 4 nodes in at least 1 zones`, "the pool has 3 ready nodes in 2 zones (a: 2, b: 1)"}},
		{"too few zones", func(f *fixture) {
			f.addNode("a1", "a")
			f.addNode("a2", "a")
			f.addNode("a3", "a")
		}, api.ClusterRequest{Name: "c", Nodes: 2, Zones: 2}, state.ErrNoRoom,
			[]string{"needs 2 nodes in at least 2 zones", "the pool has 3 ready nodes in 1 zones (a: 3)"}},
		{"nodes not ready", func(f *fixture) {
			f.register("a1", "a", 4000, 8192)
			f.addNode("a2", "a")
			f.addNode("b1", "b")
			f.setState("b1", api.NodeDown)
		}, api.ClusterRequest{Name: "c", Nodes: 2}, state.ErrNoRoom,
			[]string{"the pool has 1 ready nodes in 1 zones (a: 1)"}},
		{"nodes reserved", func(f *fixture) {
			f.addNode("a1", "a")
			f.addNode("a2", "a")
			f.createCluster("other", 2, 1)
		}, api.ClusterRequest{Name: "c", Nodes: 1}, state.ErrNoRoom,
			[]string{"the pool has no ready nodes"}},
		{"duplicate", func(f *fixture) {
			for _, n := range pool3x3 {
				f.addNode(n.name, n.zone)
			}
			f.createCluster("c", 1, 1)
		}, api.ClusterRequest{Name: "c", Nodes: 1}, state.ErrConflict,
			[]string{`cluster "c" already exists`}},
		{"no nodes asked for", func(f *fixture) {
			f.addNode("a1", "a")
		}, api.ClusterRequest{Name: "c", Nodes: 0}, state.ErrInvalid, []string{"nodes"}},
		{"more zones than nodes", func(f *fixture) {
			f.addNode("a1", "a")
		}, api.ClusterRequest{Name: "c", Nodes: 1, Zones: 2}, state.ErrInvalid, []string{"zones"}},
		{"bad name", func(f *fixture) {
			f.addNode("a1", "a")
		}, api.ClusterRequest{Name: "no/slash", Nodes: 1}, state.ErrInvalid, []string{"name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tt.setup(f)
			before := dump(t, f.s)
			index := f.snap().Index(allTables...)
			c, err := f.s.CreateCluster(f.next(), &state.ClusterCreateRequest{Req: tt.req, Now: t0})
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if c != nil {
				t.Errorf("got cluster %+v, want nil", c)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			if got := f.snap().Index(allTables...); got != index {
				t.Errorf("index: got %v, want %v", got, index)
			}
			checkUnchanged(t, f.s, before)
		})
	}
}

func TestResizeClusterGrow(t *testing.T) {
	f := fixtureWithPool(t, pool3x3)
	f.createCluster("c", 2, 2) // a1, b1
	c, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 5, Now: t0})
	if err != nil {
		t.Fatalf("ResizeCluster: %v", err)
	}
	// The zones with the fewest members come first: c, then a and b.
	if diff := cmp.Diff(map[string]int{"a": 2, "b": 2, "c": 1}, zonesOf(f, c)); diff != "" {
		t.Errorf("members by zone (-want +got):\n%s", diff)
	}
	if c.Size != 5 || len(c.Nodes) != 5 || c.ModifyIndex != f.index {
		t.Errorf("cluster: got size %v with %v members, modify %v; want 5, 5, %v", c.Size, len(c.Nodes), c.ModifyIndex, f.index)
	}
	if got, want := lastEvent(c.Events), "resized: size 2 -> 5"; got != want {
		t.Errorf("last event: got %q, want %q", got, want)
	}

	t.Run("not enough in the pool", func(t *testing.T) {
		before := dump(t, f.s)
		_, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 10, Now: t0})
		if !errors.Is(err, state.ErrNoRoom) {
			t.Fatalf("got %v, want %v", err, state.ErrNoRoom)
		}
		if want := `cluster "c" needs 5 more nodes; the pool has 4 ready nodes in 3 zones`; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
		checkUnchanged(t, f.s, before)
	})
	t.Run("invalid", func(t *testing.T) {
		for _, req := range []state.ClusterResizeRequest{
			{Name: "c", Nodes: 1},     // below MinZones 2
			{Name: "c", Nodes: 0},     // out of range
			{Name: "nope", Nodes: 1},  // unknown
			{Name: "c", Nodes: 10001}, // out of range
		} {
			before := dump(t, f.s)
			_, err := f.s.ResizeCluster(f.next(), &req)
			want := state.ErrInvalid
			if req.Name == "nope" {
				want = state.ErrNotFound
			}
			if !errors.Is(err, want) {
				t.Errorf("resize %+v: got %v, want %v", req, err, want)
			}
			checkUnchanged(t, f.s, before)
		}
	})
}

// TestResizeClusterShrink: shrinking releases the least busy members but
// keeps MinZones zones, and moves the tasks of released members.
func TestResizeClusterShrink(t *testing.T) {
	f := newFixture(t)
	for _, n := range []poolNode{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}, {"b2", "b"}} {
		f.addNode(n.name, n.zone)
	}
	f.createCluster("c", 4, 2)
	j := f.submit("job", "c", 6, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	// Busy: b1 3 tasks, a1 2, a2 1, b2 none.
	for i, node := range []string{"b1", "b1", "b1", "a1", "a1", "a2"} {
		f.place(taskID(j.ID, i), node)
	}
	f.report(taskID(j.ID, 5), api.TaskRunning, 0)

	c, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 2, Now: t0})
	if err != nil {
		t.Fatalf("ResizeCluster: %v", err)
	}
	if diff := cmp.Diff([]string{"a1", "b1"}, c.Nodes); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	for _, name := range []string{"a2", "b2"} {
		if n := f.node(name); n.Cluster != "" || n.Tasks != 0 {
			t.Errorf("released %s: got cluster %q with %v tasks, want the pool and none", name, n.Cluster, n.Tasks)
		}
	}
	// The task running on a2 is moved without using up an attempt.
	if tk := f.task(taskID(j.ID, 5)); tk.State != api.TaskPending || tk.Node != "" || tk.Attempt != 1 {
		t.Errorf("moved task: got %v on %q attempt %v, want pending, unplaced, attempt 1", tk.State, tk.Node, tk.Attempt)
	}
	if got := f.job(j.ID).Counts; got != (api.TaskCounts{Pending: 6}) {
		t.Errorf("counts: got %+v, want 6 pending", got)
	}

	t.Run("keeps zones", func(t *testing.T) {
		// Only one member per zone left: shrinking to 1 would drop a zone.
		before := dump(t, f.s)
		_, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 1, Now: t0})
		if !errors.Is(err, state.ErrInvalid) {
			t.Errorf("got %v, want %v", err, state.ErrInvalid)
		}
		checkUnchanged(t, f.s, before)
	})
}

// TestResizeClusterShrinkSparesLastZoneMember checks the zone rule inside
// shrink itself: the idlest member is kept when it is its zone's last.
func TestResizeClusterShrinkSparesLastZoneMember(t *testing.T) {
	f := newFixture(t)
	for _, n := range []poolNode{{"a1", "a"}, {"a2", "a"}, {"a3", "a"}, {"b1", "b"}} {
		f.addNode(n.name, n.zone)
	}
	c := f.createCluster("c", 4, 2)
	if diff := cmp.Diff([]string{"a1", "a2", "a3", "b1"}, c.Nodes); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}
	j := f.submit("job", "c", 1, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	f.place(taskID(j.ID, 0), "a1")
	c, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 2, Now: t0})
	if err != nil {
		t.Fatalf("ResizeCluster: %v", err)
	}
	if diff := cmp.Diff([]string{"a1", "b1"}, c.Nodes); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if tk := f.task(taskID(j.ID, 0)); tk.Node != "a1" {
		t.Errorf("task on a kept member: got node %q, want a1", tk.Node)
	}
}

func TestDeleteCluster(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}})
	f.createCluster("c", 2, 1) // a1, a2... or the bigger zone first
	f.createCluster("short", 1, 1)
	// Make "short" short: its only member dies and the pool is empty.
	short := f.cluster("short").Nodes[0]
	f.setState(short, api.NodeDown)
	if got := len(f.cluster("short").Nodes); got != 0 {
		t.Fatalf("short cluster members: got %v, want 0", got)
	}
	members := f.cluster("c").Nodes

	running := f.submit("running", "c", 3, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	f.place(taskID(running.ID, 0), members[0])
	f.place(taskID(running.ID, 1), members[1])
	f.report(taskID(running.ID, 0), api.TaskRunning, 0)
	done := f.submit("done", "c", 1, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	f.place(taskID(done.ID, 0), members[0])
	f.report(taskID(done.ID, 0), api.TaskComplete, 0)
	if got := f.job(done.ID).State; got != api.JobComplete {
		t.Fatalf("done job: got %v, want complete", got)
	}

	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "c", Now: t0}); err != nil {
		t.Fatalf("DeleteCluster: %v", err)
	}
	if c := f.snap().Cluster(nil, "c"); c != nil {
		t.Errorf("cluster c still exists: %+v", c)
	}
	j := f.job(running.ID)
	if j.State != api.JobCancelled || j.Counts != (api.TaskCounts{Cancelled: 3}) {
		t.Errorf("running job: got %v %+v, want cancelled with 3 cancelled tasks", j.State, j.Counts)
	}
	if got := eventTypes(j.Events); !cmp.Equal(got, []string{"submitted", "job-running", "job-cancelled"}) {
		t.Errorf("running job events: got %v, want [submitted job-running job-cancelled]", got)
	}
	for i := range 3 {
		if tk := f.task(taskID(running.ID, i)); tk.State != api.TaskCancelled || tk.Node != "" {
			t.Errorf("task %d: got %v on %q, want cancelled, unplaced", i, tk.State, tk.Node)
		}
	}
	if got := f.job(done.ID).State; got != api.JobComplete {
		t.Errorf("finished job: got %v, want it left complete", got)
	}
	// One freed node healed the short cluster; the other is in the pool.
	shortNow := f.cluster("short")
	if len(shortNow.Nodes) != 1 || shortNow.Events[len(shortNow.Events)-1].Type != "replaced" {
		t.Errorf("short cluster: got members %v, last event %q; want one member, replaced", shortNow.Nodes, lastEvent(shortNow.Events))
	}
	inPool := 0
	for _, name := range members {
		n := f.node(name)
		if n.Used != (api.Resources{}) || n.Tasks != 0 {
			t.Errorf("node %s: got used %+v tasks %v, want nothing", name, n.Used, n.Tasks)
		}
		if n.Cluster == "" {
			inPool++
		}
	}
	if inPool != 1 {
		t.Errorf("freed nodes in the pool: got %v, want 1", inPool)
	}

	before := dump(t, f.s)
	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "c", Now: t0}); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second delete: got %v, want %v", err, state.ErrNotFound)
	}
	checkUnchanged(t, f.s, before)
}

// TestDeleteClusterReleasesDrainingNode: a node draining out of a deleted
// cluster is detached from it too.
func TestDeleteClusterReleasesDrainingNode(t *testing.T) {
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"a2", "a"}})
	f.createCluster("c", 1, 1)
	j := f.submit("job", "c", 1, api.Resources{CPU: 100, MemoryMB: 64}, 1)
	first := f.cluster("c").Nodes[0]
	f.place(taskID(j.ID, 0), first)
	f.report(taskID(j.ID, 0), api.TaskRunning, 0)
	if err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: first, Deadline: t0.Add(1e12), Now: t0}); err != nil {
		t.Fatalf("DrainNode: %v", err)
	}
	if n := f.node(first); n.Cluster != "c" || n.Tasks != 1 {
		t.Fatalf("draining node: got cluster %q tasks %v, want c 1", n.Cluster, n.Tasks)
	}
	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "c", Now: t0}); err != nil {
		t.Fatalf("DeleteCluster: %v", err)
	}
	for _, n := range f.snap().Nodes(nil) {
		if n.Cluster != "" || n.Tasks != 0 {
			t.Errorf("node %s: got cluster %q tasks %v, want none", n.Name, n.Cluster, n.Tasks)
		}
	}
}

func TestClusterTokens(t *testing.T) {
	f := fixtureWithPool(t, pool3x3)
	f.createCluster("c1", 1, 1)
	f.createCluster("c2", 1, 1)
	for token, want := range map[string]string{"token-c1": "c1", "token-c2": "c2", "": "", "token-c": "", "token-c1x": ""} {
		got := ""
		if c := f.snap().ClusterByToken(token); c != nil {
			got = c.Name
		}
		if got != want {
			t.Errorf("ClusterByToken(%q) = %q, want %q", token, got, want)
		}
	}

	c, err := f.s.SetClusterToken(f.next(), &state.ClusterTokenRequest{Name: "c1", Token: "new", Now: f.now})
	if err != nil || c.Token != "new" {
		t.Fatalf("SetClusterToken: %+v, %v", c, err)
	}
	if f.snap().ClusterByToken("token-c1") != nil {
		t.Error("the replaced token still finds c1")
	}
	if c := f.snap().ClusterByToken("new"); c == nil || c.Name != "c1" {
		t.Errorf("ClusterByToken(new) = %v, want c1", c)
	}

	before := dump(t, f.s)
	for _, req := range []*state.ClusterTokenRequest{{Name: "c1", Token: ""}, {Name: "nope", Token: "x"}} {
		if _, err := f.s.SetClusterToken(f.next(), req); err == nil {
			t.Errorf("SetClusterToken(%+v) succeeded", req)
		}
	}
	checkUnchanged(t, f.s, before)
}
