package state_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/scheduler"
	"github.com/shoal-dev/shoal/internal/state"
)

// rstore drives a store with a random but seeded sequence of writes, as
// the FSM applies them (a model test written in review of the jobs-at-scale
// change).
type rstore struct {
	t       *testing.T
	s       *state.Store
	index   uint64
	now     time.Time
	rng     *rand.Rand
	log     []string
	stale   [][]state.Placement
	noDrain bool
}

func (r *rstore) next() uint64 { r.index++; return r.index }

func (r *rstore) must(err error, what string) {
	r.t.Helper()
	if err != nil {
		r.t.Fatalf("%s: %v\nlog:\n%s", what, err, strings.Join(r.log, "\n"))
	}
}

func newRstore(t *testing.T, seed int64) *rstore {
	r := &rstore{t: t, s: state.New(), now: t0, rng: rand.New(rand.NewSource(seed))}
	for _, n := range []struct{ name, zone string }{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}, {"b2", "b"}, {"c1", "c"}} {
		r.must(r.s.RegisterNode(r.next(), &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: n.name, Zone: n.zone,
			Addr: n.name + ":1", CPU: 1000, MemoryMB: 1000}, Now: r.now}), "register")
		r.must(r.s.SetNodeState(r.next(), &state.NodeStateRequest{Name: n.name, State: api.NodeReady, Now: r.now}), "ready")
	}
	_, err := r.s.CreateCluster(r.next(), &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 4, Zones: 2}, Now: r.now, Token: "x"})
	r.must(err, "cluster")
	return r
}

func (r *rstore) step() {
	rng := r.rng
	r.now = r.now.Add(time.Duration(rng.Intn(3000)) * time.Millisecond)
	snap := r.s.Snapshot()
	jobs := snap.Jobs(nil, "")
	switch op := rng.Intn(20); {
	case op < 2 || len(jobs) == 0:
		names := []string{"b", "a", "c", "zz", "a0"}
		rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		var groups []api.GroupSpec
		for i := 0; i < 1+rng.Intn(3); i++ {
			groups = append(groups, api.GroupSpec{Name: names[i], Count: 1 + rng.Intn(25), Command: []string{"/bin/true"},
				Resources: api.Resources{CPU: int64(100 * (1 + rng.Intn(3))), MemoryMB: 64}, MaxAttempts: 1 + rng.Intn(3)})
		}
		j, err := r.s.SubmitJob(r.next(), &state.JobSubmitRequest{Now: r.now, Spec: api.JobSpec{Name: "j", Cluster: "c", Groups: groups}})
		if err != nil {
			r.log = append(r.log, "submit failed")
			break
		}
		r.log = append(r.log, "submit "+j.ID)
	case op < 7:
		res := scheduler.Plan(snap, r.now)
		ps := res.Placements
		if rng.Intn(3) == 0 && len(ps) > 1 {
			// part of the plan, shuffled
			rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
			ps = ps[:1+rng.Intn(len(ps))]
		}
		if rng.Intn(4) == 0 {
			r.stale = append(r.stale, slices.Clone(ps))
		}
		_, err := r.s.ApplyPlan(r.next(), &state.PlanRequest{Placements: ps, Now: r.now})
		r.must(err, "plan")
		r.log = append(r.log, fmt.Sprintf("plan %d", len(ps)))
	case op < 8 && len(r.stale) > 0:
		ps := r.stale[0]
		r.stale = r.stale[1:]
		_, err := r.s.ApplyPlan(r.next(), &state.PlanRequest{Placements: ps, Now: r.now})
		r.must(err, "stale plan")
		r.log = append(r.log, fmt.Sprintf("stale plan %d", len(ps)))
	case op < 14:
		// reports for placed tasks
		for _, n := range snap.Nodes(nil) {
			var ups []api.TaskUpdate
			for _, tk := range snap.NodeTasks(nil, n.Name) {
				if rng.Intn(2) == 0 {
					continue
				}
				st := []string{api.TaskRunning, api.TaskComplete, api.TaskFailed, api.TaskLost}[rng.Intn(4)]
				ups = append(ups, api.TaskUpdate{TaskID: tk.ID, RunID: tk.RunID, State: st, ExitCode: 1, Finished: r.now})
			}
			if len(ups) > 0 {
				r.must(r.s.UpdateTasks(r.next(), &state.TaskUpdateRequest{Updates: api.TaskUpdates{Node: n.Name, Updates: ups}, Now: r.now}), "update")
				r.log = append(r.log, fmt.Sprintf("update %s %d", n.Name, len(ups)))
			}
		}
	case op < 15:
		j := jobs[rng.Intn(len(jobs))]
		r.must(r.s.CancelJob(r.next(), &state.JobCancelRequest{ID: j.ID, Now: r.now}), "cancel")
		r.log = append(r.log, "cancel "+j.ID)
	case op < 17:
		nodes := snap.Nodes(nil)
		n := nodes[rng.Intn(len(nodes))]
		st := api.NodeDown
		if n.State == api.NodeDown {
			st = api.NodeReady
		}
		req := &state.NodeStateRequest{Name: n.Name, State: st, Now: r.now}
		switch {
		case st == api.NodeDown && rng.Intn(2) == 0:
			req.KeepUntil = r.now.Add(2 * time.Second) // an orderly stop
		case st == api.NodeReady && !n.ExpectedBack.IsZero() && rng.Intn(2) == 0:
			req.State, req.Expired = api.NodeDown, true // not back in time (if due)
		}
		_ = r.s.SetNodeState(r.next(), req)
		r.log = append(r.log, fmt.Sprintf("node %s %s keep %v expired %v", n.Name, req.State, !req.KeepUntil.IsZero(), req.Expired))
	case op < 19 && r.noDrain:
	case op < 18:
		nodes := snap.Nodes(nil)
		n := nodes[rng.Intn(len(nodes))]
		_ = r.s.DrainNode(r.next(), &state.NodeDrainRequest{Name: n.Name, Deadline: r.now.Add(time.Second), Now: r.now})
		r.log = append(r.log, "drain "+n.Name)
	case op < 19:
		for _, n := range snap.Nodes(nil) {
			if n.State == api.NodeDraining {
				_ = r.s.DrainDeadline(r.next(), &state.DrainDeadlineRequest{Name: n.Name, Now: r.now.Add(time.Hour)})
				_ = r.s.DrainNode(r.next(), &state.NodeDrainRequest{Name: n.Name, Disable: true, Now: r.now})
				r.log = append(r.log, "deadline+undrain "+n.Name)
			}
		}
	default:
		// persist and restore
		var b bytes.Buffer
		r.must(r.s.Snapshot().Persist(&b), "persist")
		s2, err := state.Restore(&b)
		r.must(err, "restore")
		r.s = s2
		r.log = append(r.log, "restore")
	}
}

// bruteTasks lists every task of j through Task(), group name then index.
func bruteTasks(t *testing.T, snap *state.Snapshot, j *api.Job) []*api.Task {
	gs := slices.Clone(j.Groups)
	slices.SortFunc(gs, func(a, b api.GroupSpec) int { return strings.Compare(a.Name, b.Name) })
	var out []*api.Task
	for _, g := range gs {
		for i := 0; i < g.Count; i++ {
			tk := snap.Task(nil, state.TaskID(j.ID, g.Name, i))
			if tk == nil {
				t.Fatalf("task %s/%d of %s missing", g.Name, i, j.ID)
			}
			out = append(out, tk)
		}
	}
	return out
}

func (r *rstore) check() {
	t := r.t
	t.Helper()
	snap := r.s.Snapshot()
	for _, j := range snap.Jobs(nil, "") {
		all := bruteTasks(t, snap, j)
		var c api.TaskCounts
		gc := map[string]*api.TaskCounts{}
		for _, tk := range all {
			c.Add(tk.State, 1)
			if gc[tk.Group] == nil {
				gc[tk.Group] = &api.TaskCounts{}
			}
			gc[tk.Group].Add(tk.State, 1)
		}
		if c != j.Counts {
			t.Fatalf("job %s counts %+v, brute %+v\nlog:\n%s", j.ID, j.Counts, c, strings.Join(r.log, "\n"))
		}
		for _, gs := range j.GroupStatus {
			if *gc[gs.Name] != gs.Counts {
				t.Fatalf("job %s group %s counts %+v, brute %+v\nlog:\n%s", j.ID, gs.Name, gs.Counts, *gc[gs.Name], strings.Join(r.log, "\n"))
			}
		}
		for _, st := range append([]string{""}, api.TaskStates...) {
			for _, g := range append([]string{""}, func() (n []string) {
				for _, g := range j.Groups {
					n = append(n, g.Name)
				}
				return
			}()...) {
				var want []string
				for _, tk := range all {
					if (st == "" || tk.State == st) && (g == "" || tk.Group == g) {
						want = append(want, tk.ID+"="+tk.State)
					}
				}
				limit := 1 + r.rng.Intn(7)
				var got []string
				off := 0
				for k := 0; ; k++ {
					p, err := snap.TaskPage(nil, j.ID, &api.TaskFilter{State: st, Group: g, Limit: limit, Offset: off})
					if err != nil {
						t.Fatalf("TaskPage: %v", err)
					}
					if p.Total != len(want) {
						t.Fatalf("job %s state %q group %q: total %d, want %d", j.ID, st, g, p.Total, len(want))
					}
					for _, tk := range p.Tasks {
						got = append(got, tk.ID+"="+tk.State)
					}
					if p.NextOffset == 0 {
						break
					}
					if p.NextOffset != off+len(p.Tasks) || len(p.Tasks) != limit {
						t.Fatalf("bad next offset %d after %d+%d (limit %d)", p.NextOffset, off, len(p.Tasks), limit)
					}
					off = p.NextOffset
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Fatalf("job %s state %q group %q limit %d:\n got %v\nwant %v\nlog:\n%s", j.ID, st, g, limit, got, want, strings.Join(r.log, "\n"))
				}
			}
		}
	}
}

// TestRandomWrites applies seeded random sequences of writes (submits,
// plans fresh, partial and stale, reports, cancels, nodes down and up,
// drains, a persist and restore) and checks after each that counts, pages
// and node usage agree with the tasks, and that the same writes give the
// same state.
func TestRandomWrites(t *testing.T) {
	for seed := int64(1); seed <= 40; seed++ {
		// c runs the same writes: the two stores must end up identical.
		a := newRstore(t, seed)
		c := newRstore(t, seed)
		for i := 0; i < 150; i++ {
			a.step()
			c.step()
			a.check()
			// c.check consumes rng; keep in step
			c.check()
		}
		checkNodes(t, a.s)
		if t.Failed() {
			t.Logf("log:\n%s", strings.Join(a.log, "\n"))
		}
		if !bytes.Equal(dump(t, a.s), dump(t, c.s)) {
			t.Fatalf("seed %d: two runs of the same ops differ", seed)
		}
		if t.Failed() {
			t.Fatalf("seed %d failed", seed)
		}
	}
}

func checkNodes(t *testing.T, s *state.Store) {
	snap := s.Snapshot()
	for _, n := range snap.Nodes(nil) {
		var used api.Resources
		cnt := 0
		for _, tk := range snap.NodeTasks(nil, n.Name) {
			used.CPU += tk.Resources.CPU
			used.MemoryMB += tk.Resources.MemoryMB
			cnt++
		}
		if used != n.Used || cnt != n.Tasks {
			t.Errorf("node %s used %+v tasks %d, recomputed %+v %d", n.Name, n.Used, n.Tasks, used, cnt)
		}
	}
}

func (r *rstore) finish() {
	t := r.t
	for _, n := range r.s.Snapshot().Nodes(nil) {
		if n.State == api.NodeDraining {
			_ = r.s.DrainNode(r.next(), &state.NodeDrainRequest{Name: n.Name, Disable: true, Now: r.now})
		}
		if n.State == api.NodeDown {
			_ = r.s.SetNodeState(r.next(), &state.NodeStateRequest{Name: n.Name, State: api.NodeReady, Now: r.now})
		}
	}
	for k := 0; k < 200; k++ {
		r.now = r.now.Add(2 * time.Minute)
		snap := r.s.Snapshot()
		res := scheduler.Plan(snap, r.now)
		if len(res.Placements) > 0 {
			pr, err := r.s.ApplyPlan(r.next(), &state.PlanRequest{Placements: res.Placements, Now: r.now})
			r.must(err, "plan")
			if pr.Rejected > 0 {
				t.Errorf("fresh plan rejected %d of %d", pr.Rejected, len(res.Placements))
				after := r.s.Snapshot()
				for _, p := range res.Placements {
					tb, ta := snap.Task(nil, p.TaskID), after.Task(nil, p.TaskID)
					if ta.RunID != r.index {
						n := snap.Node(nil, p.Node)
						t.Logf("rejected %s on %s: before %s node=%q mod=%d (placement mod %d); node %s cluster %q used %+v",
							p.TaskID, p.Node, tb.State, tb.Node, tb.ModifyIndex, p.TaskModifyIndex, n.State, n.Cluster, n.Used)
					}
				}
				t.Logf("cluster nodes %v", snap.Cluster(nil, "c").Nodes)
				for _, p := range res.Placements {
					tb := snap.Task(nil, p.TaskID)
					t.Logf("plan %s on %s cpu %d", p.TaskID, p.Node, tb.Resources.CPU)
				}
				t.FailNow()
			}
		}
		snap = r.s.Snapshot()
		for _, n := range snap.Nodes(nil) {
			var ups []api.TaskUpdate
			for _, tk := range snap.NodeTasks(nil, n.Name) {
				ups = append(ups, api.TaskUpdate{TaskID: tk.ID, RunID: tk.RunID, State: api.TaskComplete, Finished: r.now})
			}
			if len(ups) > 0 {
				r.must(r.s.UpdateTasks(r.next(), &state.TaskUpdateRequest{Updates: api.TaskUpdates{Node: n.Name, Updates: ups}, Now: r.now}), "update")
			}
		}
	}
	snap := r.s.Snapshot()
	c := snap.Cluster(nil, "c")
	for _, j := range snap.Jobs(nil, "") {
		if j.State == api.JobPending || j.State == api.JobRunning {
			t.Errorf("job %s still %s: %+v (cluster nodes %v) groups %+v", j.ID, j.State, j.Counts, c.Nodes, j.GroupStatus)
		}
	}
}

// TestRandomWritesFinish checks that after random writes every job
// finishes once the nodes are back and fresh plans are applied, none of
// them rejected.
func TestRandomWritesFinish(t *testing.T) {
	for seed := int64(1); seed <= 30; seed++ {
		a := newRstore(t, seed)
		a.noDrain = true
		for i := 0; i < 100; i++ {
			a.step()
		}
		a.finish()
		a.check()
		if t.Failed() {
			t.Fatalf("seed %d\nlog:\n%s", seed, strings.Join(a.log, "\n"))
		}
	}
}

// TestRandomMembership checks after every random write that a cluster
// lists each member once and every member is attached to it.
func TestRandomMembership(t *testing.T) {
	for seed := int64(1); seed <= 40; seed++ {
		a := newRstore(t, seed)
		for i := 0; i < 100; i++ {
			before := dumpNodes(a.s)
			a.step()
			c := a.s.Snapshot().Cluster(nil, "c")
			seen := map[string]bool{}
			for _, n := range c.Nodes {
				if seen[n] {
					t.Fatalf("seed %d step %d: duplicate member %s in %v after %q\nbefore:\n%s\nafter:\n%s", seed, i, n, c.Nodes, a.log[len(a.log)-1], before, dumpNodes(a.s))
				}
				seen[n] = true
				if nn := a.s.Snapshot().Node(nil, n); nn == nil || nn.Cluster != "c" {
					t.Fatalf("seed %d step %d: member %s not attached after %q\nbefore:\n%s\nafter:\n%s\nlog:%s", seed, i, n, a.log[len(a.log)-1], before, dumpNodes(a.s), strings.Join(a.log[max(0, len(a.log)-8):], "; "))
				}
			}
		}
	}
}

func dumpNodes(s *state.Store) string {
	snap := s.Snapshot()
	var b strings.Builder
	if c := snap.Cluster(nil, "c"); c != nil {
		fmt.Fprintf(&b, "cluster %v\n", c.Nodes)
	}
	for _, n := range snap.Nodes(nil) {
		fmt.Fprintf(&b, "%s %s cluster=%q tasks=%d\n", n.Name, n.State, n.Cluster, n.Tasks)
	}
	return b.String()
}
