package state_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// t0 is the clock every test starts from. It has no monotonic reading, so
// times survive a JSON round trip unchanged.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// allTables names every table a snapshot index can be asked about.
var allTables = []string{state.TableNodes, state.TableClusters, state.TableJobs, state.TableTasks, state.TableServers}

// fixture drives a store the way the FSM does: every write gets the next
// Raft index. Its constructor registers a consistency check that runs when
// the test ends, so every test that uses it checks node accounting.
type fixture struct {
	t     *testing.T
	s     *state.Store
	index uint64
	now   time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, s: state.New(), now: t0}
	t.Cleanup(func() { checkConsistent(t, f.s) })
	return f
}

// next returns the index of the next write. A failed write uses up an index
// too, as a Raft entry that the FSM refused does.
func (f *fixture) next() uint64 {
	f.index++
	return f.index
}

func (f *fixture) snap() *state.Snapshot { return f.s.Snapshot() }

// register registers a node and leaves it initializing.
func (f *fixture) register(name, zone string, cpu, mem int64) {
	f.t.Helper()
	err := f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{
		Reg: api.NodeRegistration{Name: name, Zone: zone, Addr: name + ":4647", CPU: cpu, MemoryMB: mem}, Now: f.now})
	if err != nil {
		f.t.Fatalf("RegisterNode(%s): %v", name, err)
	}
}

// setState marks a node ready or down and fails the test on error.
func (f *fixture) setState(name, st string) {
	f.t.Helper()
	if err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: name, State: st, Now: f.now}); err != nil {
		f.t.Fatalf("SetNodeState(%s, %s): %v", name, st, err)
	}
}

// addNode registers a ready pool node with 4000 millicores and 8192 MiB.
func (f *fixture) addNode(name, zone string) {
	f.t.Helper()
	f.addSizedNode(name, zone, 4000, 8192)
}

func (f *fixture) addSizedNode(name, zone string, cpu, mem int64) {
	f.t.Helper()
	f.register(name, zone, cpu, mem)
	f.setState(name, api.NodeReady)
}

func (f *fixture) createCluster(name string, nodes, zones int) *api.Cluster {
	f.t.Helper()
	c, err := f.s.CreateCluster(f.next(), &state.ClusterCreateRequest{
		Req: api.ClusterRequest{Name: name, Nodes: nodes, Zones: zones}, Now: f.now, Token: "token-" + name})
	if err != nil {
		f.t.Fatalf("CreateCluster(%s): %v", name, err)
	}
	return c
}

// submit submits a job of one group "g" of count tasks.
func (f *fixture) submit(name, cluster string, count int, res api.Resources, maxAttempts int) *api.Job {
	f.t.Helper()
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: jobSpec(name, cluster, count, res, maxAttempts), Now: f.now})
	if err != nil {
		f.t.Fatalf("SubmitJob(%s): %v", name, err)
	}
	return j
}

func jobSpec(name, cluster string, count int, res api.Resources, maxAttempts int) api.JobSpec {
	return api.JobSpec{Name: name, Cluster: cluster, Groups: []api.GroupSpec{{
		Name: "g", Count: count, Command: []string{"/bin/true"}, Resources: res, MaxAttempts: maxAttempts}}}
}

// place applies a one-placement plan built from the task as it is now and
// fails the test unless it was placed.
func (f *fixture) place(taskID, node string) {
	f.t.Helper()
	res := f.plan(state.Placement{TaskID: taskID, Node: node, TaskModifyIndex: f.task(taskID).ModifyIndex})
	if res.Placed != 1 {
		f.t.Fatalf("placing %s on %s: got %+v, want 1 placed", taskID, node, res)
	}
}

func (f *fixture) plan(ps ...state.Placement) *state.PlanResult {
	f.t.Helper()
	res, err := f.s.ApplyPlan(f.next(), &state.PlanRequest{Placements: ps, Now: f.now})
	if err != nil {
		f.t.Fatalf("ApplyPlan: %v", err)
	}
	return res
}

// report sends one agent report for the task's current run from its node.
func (f *fixture) report(taskID, st string, exit int) {
	f.t.Helper()
	t := f.task(taskID)
	f.reportRun(t.Node, api.TaskUpdate{TaskID: taskID, RunID: t.RunID, State: st, ExitCode: exit, Finished: f.now})
}

func (f *fixture) reportRun(node string, u api.TaskUpdate) {
	f.t.Helper()
	err := f.s.UpdateTasks(f.next(), &state.TaskUpdateRequest{
		Updates: api.TaskUpdates{Node: node, Updates: []api.TaskUpdate{u}}, Now: f.now})
	if err != nil {
		f.t.Fatalf("UpdateTasks: %v", err)
	}
}

func (f *fixture) task(id string) *api.Task {
	f.t.Helper()
	t := f.snap().Task(nil, id)
	if t == nil {
		f.t.Fatalf("task %s not found", id)
	}
	return t
}

func (f *fixture) node(name string) *api.Node {
	f.t.Helper()
	n := f.snap().Node(nil, name)
	if n == nil {
		f.t.Fatalf("node %s not found", name)
	}
	return n
}

func (f *fixture) cluster(name string) *api.Cluster {
	f.t.Helper()
	c := f.snap().Cluster(nil, name)
	if c == nil {
		f.t.Fatalf("cluster %s not found", name)
	}
	return c
}

func (f *fixture) job(id string) *api.Job {
	f.t.Helper()
	j := f.snap().Job(nil, id)
	if j == nil {
		f.t.Fatalf("job %s not found", id)
	}
	return j
}

// dump is the store's whole content as Persist writes it, including the
// table indexes; two equal dumps mean nothing changed.
func dump(t *testing.T, s *state.Store) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Snapshot().Persist(&b); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	return b.Bytes()
}

// checkUnchanged fails the test if the store differs from before (a dump).
func checkUnchanged(t *testing.T, s *state.Store, before []byte) {
	t.Helper()
	if after := dump(t, s); !bytes.Equal(before, after) {
		t.Errorf("store changed by a failed write:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// checkConsistent recomputes what the store keeps incrementally and reports
// every difference: node Used and Tasks from the tasks placed on them, job
// counts from their tasks, and cluster membership from both sides.
func checkConsistent(t *testing.T, s *state.Store) {
	t.Helper()
	snap := s.Snapshot()
	nodes := map[string]*api.Node{}
	for _, n := range snap.Nodes(nil) {
		nodes[n.Name] = n
	}
	used := map[string]api.Resources{}
	count := map[string]int{}
	for _, j := range snap.Jobs(nil, "") {
		var c api.TaskCounts
		for _, tk := range snap.JobTasks(nil, j.ID) {
			c.Add(tk.State, 1)
			// A finished task remembers where it ran; any other task not
			// holding resources must name no node.
			if tk.Node != "" && !tk.Placed() && tk.State != api.TaskComplete && tk.State != api.TaskFailed {
				t.Errorf("task %s is %s but names node %q", tk.ID, tk.State, tk.Node)
			}
			if !tk.Placed() {
				continue
			}
			if nodes[tk.Node] == nil {
				t.Errorf("task %s is placed on unknown node %q", tk.ID, tk.Node)
			}
			r := used[tk.Node]
			r.CPU += tk.Resources.CPU
			r.MemoryMB += tk.Resources.MemoryMB
			used[tk.Node] = r
			count[tk.Node]++
		}
		if c != j.Counts {
			t.Errorf("job %s counts: got %+v, want %+v (recomputed from tasks)", j.ID, j.Counts, c)
		}
		checkGroups(t, snap, j)
	}
	for name, n := range nodes {
		if n.Used != used[name] {
			t.Errorf("node %s used: got %+v, want %+v (recomputed from tasks)", name, n.Used, used[name])
		}
		if n.Tasks != count[name] {
			t.Errorf("node %s tasks: got %d, want %d (recomputed from tasks)", name, n.Tasks, count[name])
		}
		if n.Used.CPU > n.CPU || n.Used.MemoryMB > n.MemoryMB {
			t.Errorf("node %s over capacity: used %+v of %d/%d", name, n.Used, n.CPU, n.MemoryMB)
		}
	}
	members := map[string]string{}
	for _, c := range snap.Clusters(nil) {
		if len(c.Nodes) > c.Size {
			t.Errorf("cluster %s has %d members, more than its size %d", c.Name, len(c.Nodes), c.Size)
		}
		for _, name := range c.Nodes {
			if other, dup := members[name]; dup {
				t.Errorf("node %s is a member of both %s and %s", name, other, c.Name)
			}
			members[name] = c.Name
			n := nodes[name]
			switch {
			case n == nil:
				t.Errorf("cluster %s member %s does not exist", c.Name, name)
			case n.Cluster != c.Name:
				t.Errorf("cluster %s member %s: got node cluster %q, want %q", c.Name, name, n.Cluster, c.Name)
			}
		}
	}
	for name, n := range nodes {
		if !n.ExpectedBack.IsZero() && (n.State != api.NodeDown || members[name] == "") {
			t.Errorf("node %s is expected back but is %s and a member of %q", name, n.State, members[name])
		}
		if n.Cluster == "" || members[name] == n.Cluster {
			continue
		}
		// Only a draining node with work left may stay attached to a cluster
		// it is no longer a member of.
		if n.State != api.NodeDraining || n.Tasks == 0 {
			t.Errorf("node %s (%s, %d tasks) is attached to cluster %q without being a member", name, n.State, n.Tasks, n.Cluster)
		}
	}
}

// zonesOf counts a cluster's members by zone.
func zonesOf(f *fixture, c *api.Cluster) map[string]int {
	f.t.Helper()
	m := map[string]int{}
	for _, name := range c.Nodes {
		m[f.node(name).Zone]++
	}
	return m
}

// taskID is the id of task i of group "g" of a job.
func taskID(job string, i int) string { return state.TaskID(job, "g", i) }

// lastEvent returns the type and message of the newest event.
func lastEvent(evs []api.Event) string {
	if len(evs) == 0 {
		return ""
	}
	e := evs[len(evs)-1]
	return fmt.Sprintf("%s: %s", e.Type, e.Message)
}

// eventTypes lists the types of evs in order.
func eventTypes(evs []api.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// checkGroups checks a job's per-group counts against its tasks, and that
// each filtered page lists exactly the tasks it counts, in index order.
func checkGroups(t *testing.T, snap *state.Snapshot, j *api.Job) {
	t.Helper()
	all := snap.JobTasks(nil, j.ID)
	for gi, gs := range j.GroupStatus {
		var c api.TaskCounts
		for _, tk := range all {
			if tk.Group == gs.Name {
				c.Add(tk.State, 1)
			}
		}
		if c != gs.Counts || gs.Name != j.Groups[gi].Name {
			t.Errorf("job %s group %s counts: got %+v, want %+v (recomputed from tasks)", j.ID, gs.Name, gs.Counts, c)
		}
		for _, st := range api.TaskStates {
			p, err := snap.TaskPage(nil, j.ID, &api.TaskFilter{State: st, Group: gs.Name, Limit: api.MaxTaskLimit})
			if err != nil {
				t.Fatalf("TaskPage(%s, %s, %s): %v", j.ID, st, gs.Name, err)
			}
			last := -1
			for _, tk := range p.Tasks {
				if tk.State != st || tk.Group != gs.Name || tk.Index <= last {
					t.Errorf("page of %s %s/%s: task %s (%s) out of place", j.ID, gs.Name, st, tk.ID, tk.State)
				}
				last = tk.Index
			}
			if p.Total != c.Get(st) || len(p.Tasks) != c.Get(st) {
				t.Errorf("page of %s %s/%s: got total %d and %d tasks, want %d", j.ID, gs.Name, st, p.Total, len(p.Tasks), c.Get(st))
			}
		}
	}
}
