package state_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestNodeLifecycle(t *testing.T) {
	f := newFixture(t)
	f.register("n1", "a", 4000, 8192)
	n := f.node("n1")
	want := &api.Node{Name: "n1", Zone: "a", Addr: "n1:4647", CPU: 4000, MemoryMB: 8192, State: api.NodeInitializing,
		Registered: t0, StateSince: t0, CreateIndex: 1, ModifyIndex: 1}
	if diff := cmp.Diff(want, n); diff != "" {
		t.Errorf("registered node (-want +got):\n%s", diff)
	}

	steps := []struct {
		name  string
		write func(now time.Time) error
		state string
	}{
		{"ready", func(now time.Time) error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: now})
		}, api.NodeReady},
		{"re-register resets a ready node", func(now time.Time) error {
			return f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{Now: now,
				Reg: api.NodeRegistration{Name: "n1", Zone: "a", Addr: "n1:4648", CPU: 2000, MemoryMB: 4096}})
		}, api.NodeInitializing},
		{"ready again", func(now time.Time) error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: now})
		}, api.NodeReady},
		{"down", func(now time.Time) error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeDown, Reason: "missed heartbeats", Now: now})
		}, api.NodeDown},
		{"re-register keeps a down node down", func(now time.Time) error {
			return f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{Now: now,
				Reg: api.NodeRegistration{Name: "n1", Zone: "a", Addr: "n1:4648", CPU: 2000, MemoryMB: 4096}})
		}, api.NodeDown},
		{"back up", func(now time.Time) error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: now})
		}, api.NodeReady},
	}
	for i, st := range steps {
		now := t0.Add(time.Duration(i+1) * time.Minute)
		if err := st.write(now); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		n := f.node("n1")
		if n.State != st.state {
			t.Errorf("%s: state: got %v, want %v", st.name, n.State, st.state)
		}
		if n.ModifyIndex != f.index {
			t.Errorf("%s: modify index: got %v, want %v", st.name, n.ModifyIndex, f.index)
		}
		if n.CreateIndex != 1 || !n.Registered.Equal(t0) {
			t.Errorf("%s: create index %v, registered %v; want 1, %v", st.name, n.CreateIndex, n.Registered, t0)
		}
	}
	n = f.node("n1")
	if n.Addr != "n1:4648" || n.CPU != 2000 || n.MemoryMB != 4096 {
		t.Errorf("re-registration: got addr %v cpu %v memory %v, want n1:4648 2000 4096", n.Addr, n.CPU, n.MemoryMB)
	}

	// Setting the state a node already has writes nothing.
	before := dump(t, f.s)
	if err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: f.now}); err != nil {
		t.Fatalf("SetNodeState: %v", err)
	}
	checkUnchanged(t, f.s, before)
}

func TestNodeWriteErrors(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "a")
	tests := []struct {
		name  string
		write func() error
		want  error
	}{
		{"invalid registration", func() error {
			return f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "n2", Zone: "a", CPU: 0, MemoryMB: 1}})
		}, state.ErrInvalid},
		{"bad node name", func() error {
			return f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "../x", Zone: "a", CPU: 1, MemoryMB: 1}})
		}, api.ErrInvalid},
		{"state draining cannot be set", func() error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "n1", State: api.NodeDraining})
		}, state.ErrInvalid},
		{"unknown node state", func() error {
			return f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "nope", State: api.NodeDown})
		}, state.ErrNotFound},
		{"drain unknown node", func() error {
			return f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "nope"})
		}, state.ErrNotFound},
		{"undrain a node not draining", func() error {
			return f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "n1", Disable: true})
		}, state.ErrConflict},
		{"drain deadline of unknown node", func() error {
			return f.s.DrainDeadline(f.next(), &state.DrainDeadlineRequest{Name: "nope"})
		}, state.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dump(t, f.s)
			err := tt.write()
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
			checkUnchanged(t, f.s, before)
		})
	}

	t.Run("drain a down node", func(t *testing.T) {
		f.setState("n1", api.NodeDown)
		before := dump(t, f.s)
		err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "n1", Deadline: t0.Add(time.Hour), Now: t0})
		if !errors.Is(err, state.ErrConflict) {
			t.Errorf("got %v, want %v", err, state.ErrConflict)
		}
		checkUnchanged(t, f.s, before)
	})
}

// TestNodeDownLosesTasks: the tasks of a dead node are lost, unplaced and
// keep their attempt; the node leaves its cluster and the cluster draws a
// pool node from the zone where it has the fewest members.
func TestNodeDownLosesTasks(t *testing.T) {
	f := newFixture(t)
	for _, n := range []struct{ name, zone string }{{"a1", "a"}, {"a2", "a"}, {"a3", "a"}, {"b1", "b"}, {"b2", "b"}} {
		f.addNode(n.name, n.zone)
	}
	// Picks a (more pool nodes), b, then a again: a1, a2, b1. Left in the
	// pool: a3 and b2.
	c := f.createCluster("c", 3, 2)
	if diff := cmp.Diff([]string{"a1", "a2", "b1"}, c.Nodes); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}
	res := api.Resources{CPU: 1000, MemoryMB: 1024}
	j := f.submit("job", "c", 4, res, 3)
	f.place(taskID(j.ID, 0), "b1")
	f.place(taskID(j.ID, 1), "b1")
	f.place(taskID(j.ID, 2), "a1")
	f.report(taskID(j.ID, 0), api.TaskRunning, 0)
	run0 := f.task(taskID(j.ID, 0)).RunID

	f.now = t0.Add(time.Minute)
	if err := f.s.SetNodeState(f.next(), &state.NodeStateRequest{Name: "b1", State: api.NodeDown, Reason: "missed heartbeats", Now: f.now}); err != nil {
		t.Fatalf("SetNodeState: %v", err)
	}
	for _, i := range []int{0, 1} {
		tk := f.task(taskID(j.ID, i))
		if tk.State != api.TaskLost || tk.Node != "" || tk.Attempt != 1 {
			t.Errorf("task %d: got state %v node %q attempt %v, want lost \"\" 1", i, tk.State, tk.Node, tk.Attempt)
		}
	}
	if tk := f.task(taskID(j.ID, 2)); tk.State != api.TaskPending || tk.Node != "a1" {
		t.Errorf("task on a1: got %v on %q, want pending on a1", tk.State, tk.Node)
	}
	if got := f.task(taskID(j.ID, 0)).RunID; got != run0 {
		t.Errorf("lost task run id: got %v, want %v", got, run0)
	}
	want := api.TaskCounts{Pending: 2, Lost: 2}
	if diff := cmp.Diff(want, f.job(j.ID).Counts); diff != "" {
		t.Errorf("job counts (-want +got):\n%s", diff)
	}
	n := f.node("b1")
	if n.State != api.NodeDown || n.Cluster != "" || n.Tasks != 0 || n.Used != (api.Resources{}) {
		t.Errorf("b1: got state %v cluster %q tasks %v used %+v, want down, no cluster, nothing used", n.State, n.Cluster, n.Tasks, n.Used)
	}
	// The cluster has members in a (2) and none left in b, so it draws b2
	// even though the pool holds a3 too.
	c = f.cluster("c")
	if diff := cmp.Diff([]string{"a1", "a2", "b2"}, c.Nodes); diff != "" {
		t.Errorf("members after b1 died (-want +got):\n%s", diff)
	}
	if got := eventTypes(c.Events); !cmp.Equal(got, []string{"created", "member-lost", "replaced"}) {
		t.Errorf("cluster events: got %v, want [created member-lost replaced]", got)
	}
	if got, want := lastEvent(c.Events), "replaced: drew from the pool: b2 (zone b)"; got != want {
		t.Errorf("last cluster event: got %q, want %q", got, want)
	}
	if f.node("b2").Cluster != "c" {
		t.Errorf("b2 cluster: got %q, want c", f.node("b2").Cluster)
	}

	// Lost tasks are placeable again and keep their attempt when placed.
	placeable := map[string]bool{}
	for _, tk := range f.snap().PlaceableTasks(nil) {
		placeable[tk.ID] = true
	}
	for _, i := range []int{0, 1} {
		if !placeable[taskID(j.ID, i)] {
			t.Errorf("task %d not placeable", i)
		}
	}
	// Task 3 was never placed: it has no row and waits in its job's
	// unplaced range.
	if placeable[taskID(j.ID, 3)] || f.task(taskID(j.ID, 3)).State != api.TaskPending {
		t.Errorf("task 3: got a placeable row or state %q, want an unplaced pending task", f.task(taskID(j.ID, 3)).State)
	}
	f.place(taskID(j.ID, 0), "b2")
	if tk := f.task(taskID(j.ID, 0)); tk.Attempt != 1 || tk.State != api.TaskPending || tk.RunID == run0 {
		t.Errorf("re-placed lost task: got attempt %v state %v run %v, want 1 pending new run", tk.Attempt, tk.State, tk.RunID)
	}

	// A node coming back joins the pool, not its old cluster; the pool
	// being empty, the next death leaves the cluster short.
	f.setState("b1", api.NodeReady)
	if n := f.node("b1"); n.Cluster != "" {
		t.Errorf("b1 back up: got cluster %q, want none", n.Cluster)
	}
	f.setState("a3", api.NodeDown)
	f.setState("b1", api.NodeDown)
	f.setState("a1", api.NodeDown)
	c = f.cluster("c")
	if diff := cmp.Diff([]string{"a2", "b2"}, c.Nodes); diff != "" {
		t.Errorf("members with an empty pool (-want +got):\n%s", diff)
	}
	if got := c.Events[len(c.Events)-1].Type; got != "short" {
		t.Errorf("last cluster event: got %v, want short", got)
	}
	// Recording "short" once: another write that heals nothing adds no event.
	events := len(c.Events)
	f.register("y1", "y", 4000, 8192)
	f.setState("y1", api.NodeDown) // heals, finding no pool node
	if got := len(f.cluster("c").Events); got != events {
		t.Errorf("events after a heal that found nothing: got %v, want %v", got, events)
	}
	f.register("z1", "z", 4000, 8192)
	// A node joining the pool fills the gap.
	f.setState("z1", api.NodeReady)
	if diff := cmp.Diff([]string{"a2", "b2", "z1"}, f.cluster("c").Nodes); diff != "" {
		t.Errorf("members after z1 joined (-want +got):\n%s", diff)
	}
}

// TestDrain covers both ways a draining node empties: its running task
// ending, and the drain deadline passing.
func TestDrain(t *testing.T) {
	tests := []struct {
		name   string
		finish func(f *fixture, running string)
		// wantState and wantNode are the running task's state and node
		// after finish.
		wantState, wantNode string
	}{
		{"task completes", func(f *fixture, running string) {
			f.report(running, api.TaskComplete, 0)
		}, api.TaskComplete, "a1"},
		{"deadline passes", func(f *fixture, running string) {
			f.now = t0.Add(time.Hour)
			if err := f.s.DrainDeadline(f.next(), &state.DrainDeadlineRequest{Name: "a1", Now: f.now}); err != nil {
				f.t.Fatalf("DrainDeadline: %v", err)
			}
		}, api.TaskPending, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.addNode("a1", "a")
			f.addNode("a2", "a")
			c := f.createCluster("c", 2, 1)
			f.addNode("a3", "a") // the pool, for the replacement
			if diff := cmp.Diff([]string{"a1", "a2"}, c.Nodes); diff != "" {
				t.Fatalf("members (-want +got):\n%s", diff)
			}
			j := f.submit("job", "c", 3, api.Resources{CPU: 500, MemoryMB: 512}, 2)
			running, pending := taskID(j.ID, 0), taskID(j.ID, 1)
			f.place(running, "a1")
			f.place(pending, "a1")
			f.report(running, api.TaskRunning, 0)

			deadline := t0.Add(time.Hour)
			err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "a1", Deadline: deadline, Now: t0})
			if err != nil {
				t.Fatalf("DrainNode: %v", err)
			}
			if tk := f.task(pending); tk.State != api.TaskPending || tk.Node != "" || tk.Attempt != 1 {
				t.Errorf("not-started task: got %v on %q attempt %v, want pending, unplaced, attempt 1", tk.State, tk.Node, tk.Attempt)
			}
			if tk := f.task(running); tk.State != api.TaskRunning || tk.Node != "a1" {
				t.Errorf("running task: got %v on %q, want running on a1", tk.State, tk.Node)
			}
			n := f.node("a1")
			if n.State != api.NodeDraining || !n.DrainDeadline.Equal(deadline) || n.Cluster != "c" || n.Tasks != 1 {
				t.Errorf("a1: got state %v deadline %v cluster %q tasks %v, want draining %v c 1", n.State, n.DrainDeadline, n.Cluster, n.Tasks, deadline)
			}
			c = f.cluster("c")
			if diff := cmp.Diff([]string{"a2", "a3"}, c.Nodes); diff != "" {
				t.Errorf("members while a1 drains (-want +got):\n%s", diff)
			}
			if got := eventTypes(c.Events); !cmp.Equal(got, []string{"created", "member-lost", "replaced"}) {
				t.Errorf("cluster events: got %v, want [created member-lost replaced]", got)
			}
			// The agent of a draining node keeps its running task.
			if got := f.snap().NodeTasks(nil, "a1"); len(got) != 1 || got[0].ID != running {
				t.Errorf("a1 work: got %d tasks, want just %s", len(got), running)
			}
			// A draining node takes no new tasks, and a heartbeat does not end the drain.
			if res := f.plan(state.Placement{TaskID: pending, Node: "a1", TaskModifyIndex: f.task(pending).ModifyIndex}); res.Placed != 0 {
				t.Errorf("plan onto a draining node: got %+v, want rejected", res)
			}
			f.setState("a1", api.NodeReady)
			if got := f.node("a1").State; got != api.NodeDraining {
				t.Errorf("state after ready heartbeat: got %v, want draining", got)
			}
			// Before the deadline, DrainDeadline does nothing.
			before := dump(t, f.s)
			if err := f.s.DrainDeadline(f.next(), &state.DrainDeadlineRequest{Name: "a1", Now: deadline.Add(-time.Second)}); err != nil {
				t.Fatalf("DrainDeadline: %v", err)
			}
			checkUnchanged(t, f.s, before)
			// Ending the drain while a task of the cluster still runs would
			// hand that node to another cluster: refused, nothing changed.
			err = f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "a1", Disable: true, Now: f.now})
			if !errors.Is(err, state.ErrConflict) {
				t.Errorf("disable while busy: got %v, want ErrConflict", err)
			}
			checkUnchanged(t, f.s, before)

			tt.finish(f, running)
			tk := f.task(running)
			if tk.State != tt.wantState || tk.Node != tt.wantNode || tk.Attempt != 1 {
				t.Errorf("running task: got %v on %q attempt %v, want %v on %q attempt 1", tk.State, tk.Node, tk.Attempt, tt.wantState, tt.wantNode)
			}
			n = f.node("a1")
			if n.State != api.NodeDraining || n.Cluster != "" || n.Tasks != 0 {
				t.Errorf("a1 idle: got state %v cluster %q tasks %v, want draining, released, 0", n.State, n.Cluster, n.Tasks)
			}

			// Ending the drain returns the node to the pool.
			if err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: "a1", Disable: true, Now: f.now}); err != nil {
				t.Fatalf("DrainNode disable: %v", err)
			}
			n = f.node("a1")
			if n.State != api.NodeReady || n.Cluster != "" {
				t.Errorf("a1 after drain ended: got state %v cluster %q, want ready in the pool", n.State, n.Cluster)
			}
		})
	}
}
