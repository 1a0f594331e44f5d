package scheduler_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/scheduler"
	"github.com/shoal-dev/shoal/internal/state"
)

var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

var _ scheduler.State = (*state.Snapshot)(nil)

// fakeState is an in-memory scheduler.State built by hand, so that each
// test states exactly what the scheduler sees.
type fakeState struct {
	tasks    []*api.Task
	clusters map[string]*api.Cluster
	nodes    map[string]*api.Node
	local    map[string]map[string]int64 // input path -> node -> bytes
	unplaced []*api.Job
	jobs     map[string]*api.Job // jobs not here are batch jobs
}

func newFakeState() *fakeState {
	return &fakeState{clusters: map[string]*api.Cluster{}, nodes: map[string]*api.Node{},
		local: map[string]map[string]int64{}}
}

func (s *fakeState) PlaceableTasks(memdb.WatchSet) []*api.Task {
	var out []*api.Task
	for _, t := range s.tasks {
		if t.Node == "" && (t.State == api.TaskPending || t.State == api.TaskLost) {
			out = append(out, t)
		}
	}
	return out
}

func (s *fakeState) UnplacedJobs(memdb.WatchSet) []*api.Job { return s.unplaced }

func (s *fakeState) Job(_ memdb.WatchSet, id string) *api.Job {
	if j, ok := s.jobs[id]; ok {
		return j
	}
	return &api.Job{ID: id, Type: api.JobBatch}
}

func (s *fakeState) NodeTasks(_ memdb.WatchSet, node string) []*api.Task {
	var out []*api.Task
	for _, t := range s.tasks {
		if t.Node == node && t.Placed() {
			out = append(out, t)
		}
	}
	return out
}

func (s *fakeState) Cluster(_ memdb.WatchSet, name string) *api.Cluster { return s.clusters[name] }
func (s *fakeState) Node(_ memdb.WatchSet, name string) *api.Node       { return s.nodes[name] }

// InputBytes reports the bytes set in s.local for the first input.
func (s *fakeState) InputBytes(paths []string) map[string]int64 { return s.local[paths[0]] }

// node adds a ready member of cluster "c" with cpu millicores and 1 GiB per
// 1000 millicores.
func (s *fakeState) node(name, zone string, cpu int64) *api.Node {
	n := &api.Node{Name: name, Zone: zone, CPU: cpu, MemoryMB: cpu * 1024 / 1000, State: api.NodeReady, Cluster: "c"}
	s.nodes[name] = n
	c := s.clusters["c"]
	if c == nil {
		c = &api.Cluster{Name: "c"}
		s.clusters["c"] = c
	}
	c.Nodes = append(c.Nodes, name)
	c.Size = len(c.Nodes)
	return n
}

// job adds count pending tasks of cpu millicores (and as many MiB) to job,
// created at index created.
func (s *fakeState) job(job string, created uint64, count int, cpu int64) []*api.Task {
	var out []*api.Task
	for i := range count {
		t := &api.Task{ID: state.TaskID(job, "g", i), JobID: job, Cluster: "c", Group: "g", Index: i,
			State: api.TaskPending, Attempt: 1, Resources: api.Resources{CPU: cpu, MemoryMB: cpu},
			CreateIndex: created, ModifyIndex: created + uint64(i)}
		s.tasks = append(s.tasks, t)
		out = append(out, t)
	}
	return out
}

// nodesOf lists the node of each placement in order.
func nodesOf(res *scheduler.Result) []string {
	var out []string
	for _, p := range res.Placements {
		out = append(out, p.Node)
	}
	return out
}

func TestBinPacking(t *testing.T) {
	tests := []struct {
		name  string
		setup func(s *fakeState)
		want  []string
	}{
		{"fills one node before the next", func(s *fakeState) {
			s.node("n1", "a", 4000)
			s.node("n2", "a", 4000)
			s.node("n3", "a", 4000)
			s.job("j", 1, 10, 1000)
		}, []string{"n1", "n1", "n1", "n1", "n2", "n2", "n2", "n2", "n3", "n3"}},
		{"prefers the fuller node", func(s *fakeState) {
			s.node("n1", "a", 4000)
			s.node("n2", "a", 4000).Used = api.Resources{CPU: 2000, MemoryMB: 2048}
			s.job("j", 1, 3, 1000)
		}, []string{"n2", "n2", "n1"}},
		{"skips a node without room", func(s *fakeState) {
			s.node("n1", "a", 4000).Used = api.Resources{CPU: 3500, MemoryMB: 100}
			s.node("n2", "a", 4000)
			s.job("j", 1, 2, 1000)
		}, []string{"n2", "n2"}},
		{"memory counts too", func(s *fakeState) {
			s.node("n1", "a", 4000).Used = api.Resources{CPU: 0, MemoryMB: 4000}
			s.node("n2", "a", 4000)
			s.job("j", 1, 1, 500)
		}, []string{"n2"}},
		{"a big task that fits nowhere does not block small ones", func(s *fakeState) {
			s.node("n1", "a", 2000)
			s.job("big", 1, 1, 3000)
			s.job("small", 2, 2, 1000)
		}, []string{"n1", "n1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeState()
			tt.setup(s)
			res := scheduler.Plan(s, now)
			if diff := cmp.Diff(tt.want, nodesOf(res)); diff != "" {
				t.Errorf("placements (-want +got):\n%s", diff)
			}
		})
	}
}

func TestZoneSpread(t *testing.T) {
	t.Run("alternates zones", func(t *testing.T) {
		s := newFakeState()
		for _, z := range []string{"b", "a", "c"} {
			s.node(z+"1", z, 4000)
			s.node(z+"2", z, 4000)
		}
		s.job("j", 1, 7, 1000)
		res := scheduler.Plan(s, now)
		want := []string{"a1", "b1", "c1", "a1", "b1", "c1", "a1"}
		if diff := cmp.Diff(want, nodesOf(res)); diff != "" {
			t.Errorf("placements (-want +got):\n%s", diff)
		}
	})
	t.Run("counts tasks already placed", func(t *testing.T) {
		s := newFakeState()
		s.node("a1", "a", 4000)
		s.node("b1", "b", 4000)
		tasks := s.job("j", 1, 4, 500)
		tasks[0].Node, tasks[1].Node = "a1", "a1"
		s.nodes["a1"].Used = api.Resources{CPU: 1000, MemoryMB: 1000}
		res := scheduler.Plan(s, now)
		if diff := cmp.Diff([]string{"b1", "b1"}, nodesOf(res)); diff != "" {
			t.Errorf("placements (-want +got):\n%s", diff)
		}
	})
	t.Run("per job", func(t *testing.T) {
		s := newFakeState()
		s.node("a1", "a", 4000)
		s.node("b1", "b", 4000)
		s.job("j1", 1, 1, 100)
		s.job("j2", 2, 1, 100)
		// Each job starts its spread from the first zone.
		if diff := cmp.Diff([]string{"a1", "a1"}, nodesOf(scheduler.Plan(s, now))); diff != "" {
			t.Errorf("placements (-want +got):\n%s", diff)
		}
	})
	t.Run("a full zone overflows into the others", func(t *testing.T) {
		s := newFakeState()
		s.node("a1", "a", 1000)
		s.node("b1", "b", 4000)
		s.job("j", 1, 4, 1000)
		if diff := cmp.Diff([]string{"a1", "b1", "b1", "b1"}, nodesOf(scheduler.Plan(s, now))); diff != "" {
			t.Errorf("placements (-want +got):\n%s", diff)
		}
	})
}

func TestWaiting(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(s *fakeState)
		wantPlaced  int
		wantWaiting int
	}{
		{"more tasks than room", func(s *fakeState) {
			s.node("n1", "a", 4000)
			s.job("j", 1, 6, 1000)
		}, 4, 2},
		{"task bigger than any node", func(s *fakeState) {
			s.node("n1", "a", 4000)
			s.job("j", 1, 1, 5000)
		}, 0, 1},
		{"cluster without nodes", func(s *fakeState) {
			s.clusters["c"] = &api.Cluster{Name: "c", Size: 1}
			s.job("j", 1, 2, 100)
		}, 0, 2},
		{"unknown cluster", func(s *fakeState) {
			s.job("j", 1, 1, 100)
		}, 0, 1},
		{"member node gone from the state", func(s *fakeState) {
			s.clusters["c"] = &api.Cluster{Name: "c", Size: 1, Nodes: []string{"ghost"}}
			s.job("j", 1, 1, 100)
		}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeState()
			tt.setup(s)
			res := scheduler.Plan(s, now)
			if len(res.Placements) != tt.wantPlaced || res.Waiting != tt.wantWaiting {
				t.Errorf("got %d placed, %d waiting, want %d, %d", len(res.Placements), res.Waiting, tt.wantPlaced, tt.wantWaiting)
			}
			if !res.Wake.IsZero() {
				t.Errorf("wake: got %v, want zero", res.Wake)
			}
		})
	}
}

func TestNotBefore(t *testing.T) {
	s := newFakeState()
	s.node("n1", "a", 4000)
	tasks := s.job("j", 1, 4, 100)
	tasks[0].NotBefore = now.Add(time.Minute)
	tasks[1].NotBefore = now.Add(10 * time.Second)
	tasks[2].NotBefore = now // due: placed
	tasks[3].NotBefore = now.Add(-time.Second)
	tasks[3].State = api.TaskLost // lost tasks are placed like pending ones
	res := scheduler.Plan(s, now)
	var placed []string
	for _, p := range res.Placements {
		placed = append(placed, p.TaskID)
	}
	if diff := cmp.Diff([]string{tasks[2].ID, tasks[3].ID}, placed); diff != "" {
		t.Errorf("placed tasks (-want +got):\n%s", diff)
	}
	if want := now.Add(10 * time.Second); !res.Wake.Equal(want) {
		t.Errorf("wake: got %v, want %v", res.Wake, want)
	}
	if res.Waiting != 0 {
		t.Errorf("waiting: got %v, want 0 (held back tasks are not waiting for room)", res.Waiting)
	}
	// At the wake time the next one is placed.
	res = scheduler.Plan(s, now.Add(10*time.Second))
	if len(res.Placements) != 3 || !res.Wake.Equal(now.Add(time.Minute)) {
		t.Errorf("at wake: got %d placements, wake %v, want 3 (nothing applied yet), %v", len(res.Placements), res.Wake, now.Add(time.Minute))
	}
}

func TestMaxPlacements(t *testing.T) {
	s := newFakeState()
	s.node("n1", "a", 1<<40)
	s.job("j", 1, scheduler.MaxPlacements+10, 1)
	res := scheduler.Plan(s, now)
	if len(res.Placements) != scheduler.MaxPlacements {
		t.Errorf("placements: got %v, want %v", len(res.Placements), scheduler.MaxPlacements)
	}
	if !res.Wake.Equal(now) {
		t.Errorf("wake: got %v, want %v (more to do at once)", res.Wake, now)
	}
	// The first tasks go first.
	if got, want := res.Placements[0].TaskID, state.TaskID("j", "g", 0); got != want {
		t.Errorf("first placement: got %v, want %v", got, want)
	}
}

func TestOnlySchedulableMembers(t *testing.T) {
	s := newFakeState()
	s.node("good", "a", 4000)
	s.node("init", "a", 8000).State = api.NodeInitializing
	s.node("down", "a", 8000).State = api.NodeDown
	s.node("drain", "a", 8000).State = api.NodeDraining
	s.node("elsewhere", "a", 8000).Cluster = "other" // listed, but reserved for another cluster
	// A ready pool node that is not a member.
	s.nodes["pool"] = &api.Node{Name: "pool", Zone: "a", CPU: 8000, MemoryMB: 8000, State: api.NodeReady}
	s.job("j", 1, 6, 1000)
	res := scheduler.Plan(s, now)
	if diff := cmp.Diff([]string{"good", "good", "good", "good"}, nodesOf(res)); diff != "" {
		t.Errorf("placements (-want +got):\n%s", diff)
	}
	if res.Waiting != 2 {
		t.Errorf("waiting: got %v, want 2", res.Waiting)
	}
}

func TestPlanOrder(t *testing.T) {
	s := newFakeState()
	s.node("n1", "a", 2000)
	s.job("young", 10, 2, 1000)
	s.job("old", 5, 2, 1000)
	res := scheduler.Plan(s, now)
	want := scheduler.Result{Placements: []state.Placement{
		{TaskID: state.TaskID("old", "g", 0), Node: "n1", TaskModifyIndex: 5},
		{TaskID: state.TaskID("old", "g", 1), Node: "n1", TaskModifyIndex: 6},
	}, Waiting: 2}
	if diff := cmp.Diff(want, *res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

// TestPlanDoesNotModifyState: the scheduler may run on a shared snapshot.
func TestPlanDoesNotModifyState(t *testing.T) {
	s := newFakeState()
	s.node("a1", "a", 4000)
	s.node("b1", "b", 4000)
	s.job("j", 1, 5, 700)
	copyState := func() (map[string]api.Node, []api.Task, api.Cluster) {
		nodes := map[string]api.Node{}
		for name, n := range s.nodes {
			nodes[name] = *n
		}
		var tasks []api.Task
		for _, tk := range s.tasks {
			tasks = append(tasks, *tk)
		}
		c := *s.clusters["c"]
		c.Nodes = slices.Clone(c.Nodes)
		return nodes, tasks, c
	}
	nodes, tasks, c := copyState()
	if res := scheduler.Plan(s, now); len(res.Placements) != 5 {
		t.Fatalf("placements: got %v, want 5", len(res.Placements))
	}
	nodes2, tasks2, c2 := copyState()
	if diff := cmp.Diff(nodes, nodes2); diff != "" {
		t.Errorf("nodes changed by Plan (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(tasks, tasks2); diff != "" {
		t.Errorf("tasks changed by Plan (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(c, c2); diff != "" {
		t.Errorf("cluster changed by Plan (-before +after):\n%s", diff)
	}
}

// TestPlanAgainstStore runs the scheduler on a real store and applies its
// plans: every placement it makes must be accepted, and the placements
// must respect capacity.
func TestPlanAgainstStore(t *testing.T) {
	st := state.New()
	var index uint64
	next := func() uint64 { index++; return index }
	for _, n := range []struct {
		name, zone string
		cpu        int64
	}{{"a1", "a", 4000}, {"a2", "a", 2000}, {"b1", "b", 4000}, {"b2", "b", 3000}, {"c1", "c", 1000}} {
		if err := st.RegisterNode(next(), &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: n.name, Zone: n.zone, CPU: n.cpu, MemoryMB: 8192}, Now: now}); err != nil {
			t.Fatalf("RegisterNode: %v", err)
		}
		if err := st.SetNodeState(next(), &state.NodeStateRequest{Name: n.name, State: api.NodeReady, Now: now}); err != nil {
			t.Fatalf("SetNodeState: %v", err)
		}
	}
	if _, err := st.CreateCluster(next(), &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 4, Zones: 2}, Now: now}); err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	for _, spec := range []api.JobSpec{
		{Name: "wide", Cluster: "c", Groups: []api.GroupSpec{{Name: "g", Count: 20, Command: []string{"x"}, Resources: api.Resources{CPU: 300, MemoryMB: 100}}}},
		{Name: "fat", Cluster: "c", Groups: []api.GroupSpec{{Name: "g", Count: 3, Command: []string{"x"}, Resources: api.Resources{CPU: 1500, MemoryMB: 100}}}},
	} {
		if _, err := st.SubmitJob(next(), &state.JobSubmitRequest{Spec: spec, Now: now}); err != nil {
			t.Fatalf("SubmitJob: %v", err)
		}
	}
	res := scheduler.Plan(st.Snapshot(), now)
	pr, err := st.ApplyPlan(next(), &state.PlanRequest{Placements: res.Placements, Now: now})
	if err != nil {
		t.Fatalf("ApplyPlan: %v", err)
	}
	if pr.Rejected != 0 || pr.Placed != len(res.Placements) {
		t.Errorf("plan result: got %+v, want all %d placed", pr, len(res.Placements))
	}
	if got := len(res.Placements) + res.Waiting; got != 23 {
		t.Errorf("placed + waiting: got %v, want 23", got)
	}
	snap := st.Snapshot()
	members := snap.Cluster(nil, "c").Nodes
	for _, p := range res.Placements {
		if !slices.Contains(members, p.Node) {
			t.Errorf("placement of %s on %s, not a member of %v", p.TaskID, p.Node, members)
		}
	}
	// A second pass places nothing new: what waited still has no room.
	again := scheduler.Plan(snap, now)
	if len(again.Placements) != 0 || again.Waiting != res.Waiting {
		t.Errorf("second pass: got %d placements, %d waiting; want 0, %d", len(again.Placements), again.Waiting, res.Waiting)
	}
	for _, n := range snap.Nodes(nil) {
		if n.Used.CPU > n.CPU {
			t.Errorf("node %s over capacity: %d of %d", n.Name, n.Used.CPU, n.CPU)
		}
	}
}

func TestLocality(t *testing.T) {
	tests := []struct {
		name  string
		local map[string]int64
		full  string // a node without room
		want  string
	}{
		{"goes to the node holding the most bytes", map[string]int64{"n1": 10, "n3": 30, "n2": 20}, "", "n3"},
		{"skips a holder without room", map[string]int64{"n3": 30, "n2": 20}, "n3", "n2"},
		{"ties go to the first name", map[string]int64{"n3": 5, "n2": 5}, "", "n2"},
		{"bytes before spread", map[string]int64{"n3": 6, "n2": 5}, "", "n3"},
		{"falls back to spreading when no holder has room", map[string]int64{"n3": 30}, "n3", "n1"},
		{"ignores nodes outside the cluster", map[string]int64{"x9": 100, "n2": 1}, "", "n2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeState()
			for _, n := range []string{"n1", "n2", "n3"} {
				s.node(n, "z-"+n, 2000)
			}
			if tt.full != "" {
				s.nodes[tt.full].Used = api.Resources{CPU: 2000, MemoryMB: 2048}
			}
			task := s.job("j", 1, 1, 1000)[0]
			task.Inputs = []string{"/clusters/c/in"}
			s.local["/clusters/c/in"] = tt.local
			got := nodesOf(scheduler.Plan(s, time.Now()))
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("placed on %v, want %s", got, tt.want)
			}
		})
	}
}

func TestLocalitySpreadsEqualHolders(t *testing.T) {
	s := newFakeState()
	for _, n := range []string{"n1", "n2", "n3"} {
		s.node(n, "z-"+n, 4000)
	}
	for _, task := range s.job("j", 1, 3, 100) {
		task.Inputs = []string{"/in"}
	}
	s.local["/in"] = map[string]int64{"n1": 5, "n2": 5, "n3": 5}
	got := nodesOf(scheduler.Plan(s, time.Now()))
	slices.Sort(got)
	if !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("placed on %v, want one task on each holder", got)
	}
}

// unplacedJob adds a job of count tasks never placed (no rows) of cpu
// millicores, created at index created.
func (s *fakeState) unplacedJob(job string, created uint64, count int, cpu int64) *api.Job {
	j := &api.Job{ID: job, Cluster: "c", CreateIndex: created,
		Groups:      []api.GroupSpec{{Name: "g", Count: count, Resources: api.Resources{CPU: cpu, MemoryMB: cpu}}},
		GroupStatus: []api.GroupStatus{{Name: "g"}}}
	s.unplaced = append(s.unplaced, j)
	return j
}

func TestUnplacedRanges(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(s *fakeState)
		wantIDs     []string
		wantWaiting int
	}{
		{"a range takes what fits and counts the rest waiting", func(s *fakeState) {
			s.node("a1", "a", 1000)
			s.unplacedJob("big", 5, 1000000, 500)
		}, []string{"big/g/0", "big/g/1"}, 999998},
		{"a range starts at the first task without a row", func(s *fakeState) {
			s.node("a1", "a", 1000)
			s.unplacedJob("big", 5, 10, 1000).GroupStatus[0].Materialized = 7
		}, []string{"big/g/7"}, 2},
		{"rows of an older job go first", func(s *fakeState) {
			s.node("a1", "a", 1000)
			s.unplacedJob("new", 9, 10, 500)
			s.job("old", 3, 1, 500)
		}, []string{"old/g/0", "new/g/0"}, 9},
		{"an older range goes before newer rows", func(s *fakeState) {
			s.node("a1", "a", 1000)
			s.unplacedJob("old", 3, 1, 500)
			s.job("new", 9, 3, 500)
		}, []string{"old/g/0", "new/g/0"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeState()
			tt.setup(s)
			res := scheduler.Plan(s, now)
			var ids []string
			for _, p := range res.Placements {
				ids = append(ids, p.TaskID)
				if j := s.unplacedByID(p.TaskID); j != nil && p.TaskModifyIndex != j.CreateIndex {
					t.Errorf("%s: got task modify index %d, want the job's create index %d", p.TaskID, p.TaskModifyIndex, j.CreateIndex)
				}
			}
			if diff := cmp.Diff(tt.wantIDs, ids); diff != "" {
				t.Errorf("placements (-want +got):\n%s", diff)
			}
			if res.Waiting != tt.wantWaiting {
				t.Errorf("waiting: got %d, want %d", res.Waiting, tt.wantWaiting)
			}
		})
	}
}

// TestUnplacedRangeBounded: a pass over a huge range stops at
// MaxPlacements and asks to run again at once.
func TestUnplacedRangeBounded(t *testing.T) {
	s := newFakeState()
	s.node("a1", "a", 100000000)
	s.unplacedJob("big", 5, 1000000, 1)
	res := scheduler.Plan(s, now)
	if got := len(res.Placements); got != scheduler.MaxPlacements {
		t.Errorf("placements: got %d, want %d", got, scheduler.MaxPlacements)
	}
	if !res.Wake.Equal(now) {
		t.Errorf("wake: got %v, want now (%v)", res.Wake, now)
	}
}

// unplacedByID returns the unplaced job a task id belongs to, or nil.
func (s *fakeState) unplacedByID(id string) *api.Job {
	for _, j := range s.unplaced {
		if strings.HasPrefix(id, j.ID+"/") {
			return j
		}
	}
	return nil
}
