package state_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// richFixture builds a store holding one of nearly everything: nodes in
// every state, a short cluster, jobs with tasks in every state, a server.
func richFixture(t *testing.T) *fixture {
	t.Helper()
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}, {"b2", "b"}})
	f.createCluster("c", 3, 2)
	f.register("i1", "a", 2000, 1024)
	if err := f.s.RegisterNode(f.next(), &state.NodeRegisterRequest{Now: t0,
		Reg: api.NodeRegistration{Name: "l1", Zone: "b", CPU: 1000, MemoryMB: 512, Labels: map[string]string{"gpu": "none"}}}); err != nil {
		t.Fatalf("RegisterNode: %v", err)
	}
	j := f.submit("mixed", "c", 6, small, 2)
	members := f.cluster("c").Nodes
	for i := range 5 {
		f.place(taskID(j.ID, i), members[i%len(members)])
	}
	f.report(taskID(j.ID, 0), api.TaskRunning, 0)
	f.report(taskID(j.ID, 1), api.TaskComplete, 0)
	f.report(taskID(j.ID, 2), api.TaskFailed, 1) // retried, with NotBefore
	if err := f.s.DrainNode(f.next(), &state.NodeDrainRequest{Name: members[0], Deadline: t0.Add(time.Hour), Now: t0}); err != nil {
		t.Fatalf("DrainNode: %v", err)
	}
	f.setState(f.cluster("c").Nodes[0], api.NodeDown) // lost tasks; the cluster goes short
	cancelled := f.submit("cancelled", "c", 2, small, 1)
	if err := f.s.CancelJob(f.next(), &state.JobCancelRequest{ID: cancelled.ID, Now: t0}); err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	if err := f.s.UpsertServer(f.next(), &state.ServerUpsertRequest{Server: api.ServerInfo{Name: "s1", RaftAddr: "10.0.0.1:4648", HTTPAddr: "10.0.0.1:4646", Leader: true, Voter: true}}); err != nil {
		t.Fatalf("UpsertServer: %v", err)
	}
	return f
}

// storeContent is everything a snapshot can read, for comparison.
type storeContent struct {
	Nodes     []*api.Node
	Clusters  []*api.Cluster
	Jobs      []*api.Job
	Tasks     map[string][]*api.Task
	Placeable []*api.Task
	Servers   []*api.ServerInfo
	Indexes   map[string]uint64
}

func contentOf(s *state.Store) storeContent {
	snap := s.Snapshot()
	c := storeContent{Nodes: snap.Nodes(nil), Clusters: snap.Clusters(nil), Jobs: snap.Jobs(nil, ""),
		Tasks: map[string][]*api.Task{}, Placeable: snap.PlaceableTasks(nil), Servers: snap.Servers(nil),
		Indexes: map[string]uint64{}}
	for _, j := range c.Jobs {
		c.Tasks[j.ID] = snap.JobTasks(nil, j.ID)
	}
	for _, tb := range allTables {
		c.Indexes[tb] = snap.Index(tb)
	}
	return c
}

func TestPersistRestore(t *testing.T) {
	f := richFixture(t)
	want := contentOf(f.s)
	// The fixture must exercise what the round trip could lose.
	states := map[string]bool{}
	for _, tasks := range want.Tasks {
		for _, tk := range tasks {
			states[tk.State] = true
		}
	}
	for _, st := range []string{api.TaskPending, api.TaskRunning, api.TaskComplete, api.TaskLost, api.TaskCancelled} {
		if !states[st] {
			t.Errorf("fixture has no %s task (has %v)", st, states)
		}
	}
	if len(want.Servers) != 1 || len(want.Placeable) == 0 {
		t.Fatalf("fixture: got %d servers and %d placeable tasks, want 1 and some", len(want.Servers), len(want.Placeable))
	}

	var buf bytes.Buffer
	if err := f.s.Snapshot().Persist(&buf); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	restored, err := state.Restore(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if diff := cmp.Diff(want, contentOf(restored)); diff != "" {
		t.Errorf("restored store (-want +got):\n%s", diff)
	}
	checkConsistent(t, restored)

	// The restored store keeps working: writes see the restored data.
	cur := f.index
	j, err := restored.SubmitJob(cur+1, &state.JobSubmitRequest{Spec: jobSpec("after", "c", 1, small, 1), Now: t0})
	if err != nil {
		t.Fatalf("SubmitJob on the restored store: %v", err)
	}
	if got := restored.Snapshot().Index(state.TableJobs); got != cur+1 {
		t.Errorf("jobs index after a write: got %v, want %v", got, cur+1)
	}
	if got := restored.Snapshot().Job(nil, j.ID); got == nil {
		t.Errorf("job %s not found after writing it", j.ID)
	}
}

func TestRestoreRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"unknown table", `{"t":"widgets","o":{}}` + "\n", `unknown table "widgets"`},
		{"garbage", "not json\n", "reading snapshot"},
		{"bad record", `{"t":"nodes","o":{"name":7}}` + "\n", "decoding nodes record"},
		{"node without a name", `{"t":"nodes","o":{}}` + "\n", "restoring nodes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := state.Restore(strings.NewReader(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
			if s != nil {
				t.Errorf("got a store, want nil")
			}
		})
	}
}

// TestWatchSetFires: a watch set filled by a read fires after a write that
// changes what was read, and not before.
func TestWatchSetFires(t *testing.T) {
	tests := []struct {
		name  string
		read  func(snap *state.Snapshot, ws memdb.WatchSet)
		write func(f *fixture, job string)
	}{
		{"node on state change",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.Node(ws, "a1") },
			func(f *fixture, job string) { f.setState("a1", api.NodeDown) }},
		{"node list on registration",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.Nodes(ws) },
			func(f *fixture, job string) { f.register("z9", "z", 1000, 1000) }},
		{"node work on placement",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.NodeTasks(ws, "a1") },
			func(f *fixture, job string) { f.place(taskID(job, 0), "a1") }},
		{"unplaced jobs on submission",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.UnplacedJobs(ws) },
			func(f *fixture, job string) { f.submit("more", "c", 1, small, 1) }},
		{"job on a task report",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.Job(ws, "job-8") },
			func(f *fixture, job string) {
				f.place(taskID(job, 0), "a1")
				f.report(taskID(job, 0), api.TaskRunning, 0)
			}},
		{"task on placement",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.Task(ws, taskID("job-8", 1)) },
			func(f *fixture, job string) { f.place(taskID(job, 1), "b1") }},
		{"cluster on resize",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.Cluster(ws, "c") },
			func(f *fixture, job string) {
				if _, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "c", Nodes: 3, Now: t0}); err != nil {
					f.t.Fatalf("ResizeCluster: %v", err)
				}
			}},
		{"table index on plan",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.WatchTables(ws, state.TableTasks) },
			func(f *fixture, job string) { f.place(taskID(job, 0), "a1") }},
		{"abandon on restore",
			func(snap *state.Snapshot, ws memdb.WatchSet) { snap.WatchTables(ws, state.TableServers) },
			func(f *fixture, job string) { f.s.Abandon(state.New()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtureWithCluster(t) // job "job-8" is the next write
			j := f.submit("job", "c", 2, small, 1)
			if j.ID != "job-8" {
				t.Fatalf("job id: got %v, want job-8", j.ID)
			}
			ws := memdb.NewWatchSet()
			tt.read(f.snap(), ws)
			if len(ws) == 0 {
				t.Fatal("the read added nothing to the watch set")
			}
			done, cancel := context.WithCancel(context.Background())
			cancel()
			if state.Wait(done, ws) {
				t.Fatal("watch set fired before any write")
			}
			tt.write(f, j.ID)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if !state.Wait(ctx, ws) {
				t.Errorf("watch set did not fire after the write: %v", ctx.Err())
			}
		})
	}
}

// TestSnapshotIsolation: a snapshot does not see later writes.
func TestSnapshotIsolation(t *testing.T) {
	f := fixtureWithCluster(t)
	snap := f.snap()
	index := snap.Index(allTables...)
	f.submit("job", "c", 1, small, 1)
	if got := len(snap.PlaceableTasks(nil)); got != 0 {
		t.Errorf("old snapshot placeable tasks: got %v, want 0", got)
	}
	if got := snap.Index(allTables...); got != index {
		t.Errorf("old snapshot index: got %v, want %v", got, index)
	}
	if got := f.snap().Index(allTables...); got != f.index {
		t.Errorf("new snapshot index: got %v, want %v", got, f.index)
	}
}

func TestUpsertServer(t *testing.T) {
	f := newFixture(t)
	srv := api.ServerInfo{Name: "s1", RaftAddr: "r:1", HTTPAddr: "h:1", Leader: true, Voter: true}
	if err := f.s.UpsertServer(f.next(), &state.ServerUpsertRequest{Server: srv}); err != nil {
		t.Fatalf("UpsertServer: %v", err)
	}
	srv.HTTPAddr = "h:2"
	if err := f.s.UpsertServer(f.next(), &state.ServerUpsertRequest{Server: srv}); err != nil {
		t.Fatalf("UpsertServer: %v", err)
	}
	// Leadership is not stored: it changes without a log entry.
	want := []*api.ServerInfo{{Name: "s1", RaftAddr: "r:1", HTTPAddr: "h:2", Voter: true}}
	if diff := cmp.Diff(want, f.snap().Servers(nil)); diff != "" {
		t.Errorf("servers (-want +got):\n%s", diff)
	}
}

// TestErrorsAreDistinct guards the sentinels the HTTP layer maps to codes.
func TestErrorsAreDistinct(t *testing.T) {
	errs := []error{state.ErrNotFound, state.ErrConflict, state.ErrInvalid, state.ErrNoRoom}
	for i, a := range errs {
		for j, b := range errs {
			if got := errors.Is(a, b); got != (i == j) {
				t.Errorf("errors.Is(%v, %v): got %v, want %v", a, b, got, i == j)
			}
		}
		if !strings.HasPrefix(a.Error(), "state: ") {
			t.Errorf("error %q: want the package prefix \"state: \"", a)
		}
	}
}
