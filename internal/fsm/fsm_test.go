package fsm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// applier feeds entries to an FSM with increasing Raft indexes.
type applier struct {
	t     *testing.T
	store *state.Store
	fsm   *fsm.FSM
	index uint64
	logs  bytes.Buffer
}

func newApplier(t *testing.T) *applier {
	a := &applier{t: t, store: state.New()}
	a.fsm = fsm.New(a.store, slog.New(slog.NewTextHandler(&a.logs, nil)))
	return a
}

// apply encodes req as an entry of type typ, applies it and returns the
// Result.
func (a *applier) apply(typ fsm.MessageType, req any) fsm.Result {
	a.t.Helper()
	data, err := fsm.Encode(typ, req)
	if err != nil {
		a.t.Fatalf("Encode(%s): %v", typ, err)
	}
	return a.applyRaw(data)
}

func (a *applier) applyRaw(data []byte) fsm.Result {
	a.t.Helper()
	a.index++
	v := a.fsm.Apply(&raft.Log{Type: raft.LogCommand, Index: a.index, Term: 1, Data: data})
	res, ok := v.(fsm.Result)
	if !ok {
		a.t.Fatalf("Apply returned %T, want fsm.Result", v)
	}
	return res
}

// mustApply applies an entry and fails the test if it returned an error.
func (a *applier) mustApply(typ fsm.MessageType, req any) fsm.Result {
	a.t.Helper()
	res := a.apply(typ, req)
	if res.Err != nil {
		a.t.Fatalf("apply %s: %v", typ, res.Err)
	}
	return res
}

func (a *applier) snap() *state.Snapshot { return a.store.Snapshot() }

// TestApplyDispatch applies one entry of every message type, in an order
// that builds on the previous ones, and checks each one's effect.
func TestApplyDispatch(t *testing.T) {
	a := newApplier(t)
	reg := func(name, zone string) *state.NodeRegisterRequest {
		return &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: name, Zone: zone, CPU: 1000, MemoryMB: 1024}, Now: t0}
	}
	var jobID string
	steps := []struct {
		typ   fsm.MessageType
		req   any
		check func(t *testing.T, res fsm.Result)
	}{
		{fsm.NodeRegister, reg("n1", "a"), func(t *testing.T, res fsm.Result) {
			if n := a.snap().Node(nil, "n1"); n == nil || n.State != api.NodeInitializing || n.CreateIndex != a.index {
				t.Errorf("node: got %+v, want n1 initializing created at %v", n, a.index)
			}
		}},
		{fsm.NodeState, &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: t0}, func(t *testing.T, res fsm.Result) {
			if got := a.snap().Node(nil, "n1").State; got != api.NodeReady {
				t.Errorf("state: got %v, want ready", got)
			}
		}},
		{fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 1}, Now: t0}, func(t *testing.T, res fsm.Result) {
			c, ok := res.Value.(*api.Cluster)
			if !ok || c.Name != "c" || !cmp.Equal(c.Nodes, []string{"n1"}) {
				t.Errorf("value: got %#v, want cluster c of [n1]", res.Value)
			}
		}},
		{fsm.JobSubmit, &state.JobSubmitRequest{Now: t0, Spec: api.JobSpec{Name: "j", Cluster: "c",
			Groups: []api.GroupSpec{{Name: "g", Count: 2, Command: []string{"true"}}}}}, func(t *testing.T, res fsm.Result) {
			j, ok := res.Value.(*api.Job)
			if !ok || j.Counts.Pending != 2 || j.CreateIndex != a.index {
				t.Fatalf("value: got %#v, want a job of 2 pending tasks created at %v", res.Value, a.index)
			}
			jobID = j.ID
		}},
		{fsm.Plan, nil, func(t *testing.T, res fsm.Result) {
			pr, ok := res.Value.(*state.PlanResult)
			if !ok || *pr != (state.PlanResult{Placed: 1}) {
				t.Errorf("value: got %#v, want 1 placed", res.Value)
			}
			if tk := a.snap().Task(nil, state.TaskID(jobID, "g", 0)); tk.Node != "n1" || tk.RunID != a.index {
				t.Errorf("task: got node %q run %v, want n1 run %v", tk.Node, tk.RunID, a.index)
			}
		}},
		{fsm.TaskUpdate, nil, func(t *testing.T, res fsm.Result) {
			if got := a.snap().Task(nil, state.TaskID(jobID, "g", 0)).State; got != api.TaskRunning {
				t.Errorf("task state: got %v, want running", got)
			}
		}},
		{fsm.JobCancel, nil, func(t *testing.T, res fsm.Result) {
			if got := a.snap().Job(nil, jobID).State; got != api.JobCancelled {
				t.Errorf("job state: got %v, want cancelled", got)
			}
		}},
		{fsm.ClusterResize, &state.ClusterResizeRequest{Name: "c", Nodes: 2, Now: t0}, func(t *testing.T, res fsm.Result) {
			// The pool is empty: refused, and the error comes back.
			if !errors.Is(res.Err, state.ErrNoRoom) {
				t.Errorf("err: got %v, want %v", res.Err, state.ErrNoRoom)
			}
		}},
		{fsm.NodeDrain, &state.NodeDrainRequest{Name: "n1", Deadline: t0.Add(time.Hour), Now: t0}, func(t *testing.T, res fsm.Result) {
			if got := a.snap().Node(nil, "n1").State; got != api.NodeDraining {
				t.Errorf("state: got %v, want draining", got)
			}
		}},
		{fsm.DrainDeadline, &state.DrainDeadlineRequest{Name: "n1", Now: t0.Add(2 * time.Hour)}, func(t *testing.T, res fsm.Result) {
			if n := a.snap().Node(nil, "n1"); n.Cluster != "" || n.Tasks != 0 {
				t.Errorf("node: got cluster %q tasks %v, want released and empty", n.Cluster, n.Tasks)
			}
		}},
		{fsm.ClusterDelete, &state.ClusterDeleteRequest{Name: "c", Now: t0}, func(t *testing.T, res fsm.Result) {
			if c := a.snap().Cluster(nil, "c"); c != nil {
				t.Errorf("cluster: got %+v, want deleted", c)
			}
		}},
		{fsm.ServerUpsert, &state.ServerUpsertRequest{Server: api.ServerInfo{Name: "s1", RaftAddr: "r:1", HTTPAddr: "h:1"}}, func(t *testing.T, res fsm.Result) {
			if got := a.snap().Servers(nil); len(got) != 1 || got[0].Name != "s1" {
				t.Errorf("servers: got %v, want [s1]", got)
			}
		}},
	}
	seen := map[fsm.MessageType]bool{}
	for _, st := range steps {
		t.Run(st.typ.String(), func(t *testing.T) {
			req := st.req
			// Requests that name what earlier steps created.
			switch st.typ {
			case fsm.Plan:
				tk := a.snap().Task(nil, state.TaskID(jobID, "g", 0))
				req = &state.PlanRequest{Now: t0, Placements: []state.Placement{{TaskID: tk.ID, Node: "n1", TaskModifyIndex: tk.ModifyIndex}}}
			case fsm.TaskUpdate:
				tk := a.snap().Task(nil, state.TaskID(jobID, "g", 0))
				req = &state.TaskUpdateRequest{Now: t0, Updates: api.TaskUpdates{Node: "n1",
					Updates: []api.TaskUpdate{{TaskID: tk.ID, RunID: tk.RunID, State: api.TaskRunning}}}}
			case fsm.JobCancel:
				req = &state.JobCancelRequest{ID: jobID, Now: t0}
			}
			res := a.apply(st.typ, req)
			if res.Err != nil && st.typ != fsm.ClusterResize {
				t.Fatalf("apply: %v", res.Err)
			}
			st.check(t, res)
			seen[st.typ] = true
		})
	}
	for typ := fsm.NodeRegister; typ <= fsm.ServerUpsert; typ++ {
		if !seen[typ] {
			t.Errorf("message type %s (%d) not exercised", typ, typ)
		}
	}
}

// TestApplyBadEntries: entries that cannot be applied return an error
// Result, change nothing and never panic.
func TestApplyBadEntries(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want error // nil: an empty Result
		// undecoded: the entry never reached the store, so no Value.
		undecoded bool
	}{
		{"unknown type", append([]byte{200}, `{}`...), state.ErrInvalid, true},
		{"type zero", append([]byte{0}, `{}`...), state.ErrInvalid, true},
		{"garbage json", append([]byte{byte(fsm.NodeRegister)}, `{not json`...), state.ErrInvalid, true},
		{"wrong json shape", append([]byte{byte(fsm.JobSubmit)}, `[1,2,3]`...), state.ErrInvalid, true},
		{"wrong field type", append([]byte{byte(fsm.Plan)}, `{"placements":"x"}`...), state.ErrInvalid, true},
		{"type byte only", []byte{byte(fsm.ClusterCreate)}, state.ErrInvalid, true},
		{"valid json, invalid request", append([]byte{byte(fsm.ClusterCreate)}, `{"req":{"name":"","nodes":1}}`...), state.ErrInvalid, false},
		{"empty", nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApplier(t)
			a.mustApply(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "n1", Zone: "a", CPU: 1, MemoryMB: 1}, Now: t0})
			before := persist(t, a.store)
			res := a.applyRaw(tt.data)
			if !errors.Is(res.Err, tt.want) || (tt.want == nil && res.Err != nil) {
				t.Errorf("err: got %v, want %v", res.Err, tt.want)
			}
			if tt.undecoded && res.Value != nil {
				t.Errorf("value: got %#v, want nil", res.Value)
			}
			if after := persist(t, a.store); !bytes.Equal(before, after) {
				t.Errorf("store changed:\nbefore: %s\nafter: %s", before, after)
			}
		})
	}

	t.Run("unknown type is logged", func(t *testing.T) {
		a := newApplier(t)
		a.applyRaw([]byte{99, '{', '}'})
		if got := a.logs.String(); !strings.Contains(got, "unknown type") || !strings.Contains(got, "type-99") {
			t.Errorf("log: got %q, want it to name the unknown type-99", got)
		}
	})

	t.Run("non-command entries are skipped", func(t *testing.T) {
		a := newApplier(t)
		data, err := fsm.Encode(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "n1", Zone: "a", CPU: 1, MemoryMB: 1}})
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		for _, typ := range []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration} {
			v := a.fsm.Apply(&raft.Log{Type: typ, Index: 1, Data: data})
			if res, ok := v.(fsm.Result); !ok || res != (fsm.Result{}) {
				t.Errorf("%v entry: got %#v, want an empty Result", typ, v)
			}
		}
		if n := a.snap().Node(nil, "n1"); n != nil {
			t.Errorf("node registered by a non-command entry: %+v", n)
		}
	})
}

func TestMessageTypeNames(t *testing.T) {
	tests := []struct {
		typ  fsm.MessageType
		want string
	}{
		{fsm.NodeRegister, "node-register"},
		{fsm.Plan, "plan"},
		{fsm.ServerUpsert, "server-upsert"},
		{fsm.MessageType(77), "type-77"},
	}
	for _, tt := range tests {
		if got := tt.typ.String(); got != tt.want {
			t.Errorf("%d.String(): got %q, want %q", byte(tt.typ), got, tt.want)
		}
	}
	// The values are written to disk; they must never change.
	if fsm.NodeRegister != 1 || fsm.Plan != 11 || fsm.ServerUpsert != 12 {
		t.Errorf("message type values changed: node-register %d, plan %d, server-upsert %d; want 1, 11, 12",
			fsm.NodeRegister, fsm.Plan, fsm.ServerUpsert)
	}
}

func TestEncodeError(t *testing.T) {
	_, err := fsm.Encode(fsm.Plan, func() {})
	if err == nil || !strings.Contains(err.Error(), "fsm: encoding plan") {
		t.Errorf("got %v, want an error naming the plan entry", err)
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	buf       bytes.Buffer
	failWrite bool
	closed    bool
	cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite {
		return 0, errors.New("disk full")
	}
	return s.buf.Write(p)
}
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func persist(t *testing.T, s *state.Store) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Snapshot().Persist(&b); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	return b.Bytes()
}

// populate applies a few entries that leave something in every table.
func populate(a *applier) {
	a.t.Helper()
	for _, n := range []string{"n1", "n2"} {
		a.mustApply(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: n, Zone: "z" + n, CPU: 1000, MemoryMB: 1024}, Now: t0})
		a.mustApply(fsm.NodeState, &state.NodeStateRequest{Name: n, State: api.NodeReady, Now: t0})
	}
	a.mustApply(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 2, Zones: 2}, Now: t0})
	j := a.mustApply(fsm.JobSubmit, &state.JobSubmitRequest{Now: t0, Spec: api.JobSpec{Name: "j", Cluster: "c",
		Groups: []api.GroupSpec{{Name: "g", Count: 3, Command: []string{"true"}}}}}).Value.(*api.Job)
	tk := a.snap().Task(nil, state.TaskID(j.ID, "g", 1))
	a.mustApply(fsm.Plan, &state.PlanRequest{Now: t0, Placements: []state.Placement{{TaskID: tk.ID, Node: "n2", TaskModifyIndex: tk.ModifyIndex}}})
	a.mustApply(fsm.ServerUpsert, &state.ServerUpsertRequest{Server: api.ServerInfo{Name: "s1", RaftAddr: "r:1", HTTPAddr: "h:1"}})
}

func TestSnapshotRestore(t *testing.T) {
	src := newApplier(t)
	populate(src)
	want := persist(t, src.store)

	snap, err := src.fsm.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	// Writes after Snapshot are not in it: it is a point-in-time view.
	src.mustApply(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "late", Zone: "z", CPU: 1, MemoryMB: 1}, Now: t0})
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Errorf("sink: got closed %v cancelled %v, want closed and not cancelled", sink.closed, sink.cancelled)
	}

	// Restore into an FSM whose store has other content and a waiting reader.
	dst := newApplier(t)
	dst.mustApply(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "other", Zone: "z", CPU: 1, MemoryMB: 1}, Now: t0})
	ws := memdb.NewWatchSet()
	dst.snap().WatchTables(ws, state.TableNodes)
	rc := &trackingReader{Reader: bytes.NewReader(sink.buf.Bytes())}
	if err := dst.fsm.Restore(rc); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !rc.closed {
		t.Errorf("Restore did not close its reader")
	}
	if got := persist(t, dst.store); !bytes.Equal(got, want) {
		t.Errorf("restored store:\n%s\nwant:\n%s", got, want)
	}
	if dst.snap().Node(nil, "late") != nil || dst.snap().Node(nil, "other") != nil {
		t.Errorf("restored store has nodes that were not in the snapshot")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if !state.Wait(ctx, ws) {
		t.Errorf("a reader of the old store was not woken by Restore: %v", ctx.Err())
	}

	// The restored FSM applies new entries on top of the snapshot.
	res := dst.apply(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 1}, Now: t0})
	if !errors.Is(res.Err, state.ErrConflict) {
		t.Errorf("creating an existing cluster after restore: got %v, want %v", res.Err, state.ErrConflict)
	}
}

func TestSnapshotPersistFailure(t *testing.T) {
	a := newApplier(t)
	populate(a)
	snap, err := a.fsm.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	sink := &memSink{failWrite: true}
	if err := snap.Persist(sink); err == nil {
		t.Errorf("Persist to a failing sink: got nil error, want one")
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink: got cancelled %v closed %v, want cancelled and not closed", sink.cancelled, sink.closed)
	}
}

func TestRestoreBadSnapshotKeepsStore(t *testing.T) {
	a := newApplier(t)
	populate(a)
	before := persist(t, a.store)
	rc := &trackingReader{Reader: strings.NewReader("{\"t\":\"nodes\",\"o\":{\"name\":\"x\"}}\ngarbage")}
	if err := a.fsm.Restore(rc); err == nil {
		t.Errorf("Restore of a corrupt snapshot: got nil error, want one")
	}
	if !rc.closed {
		t.Errorf("Restore did not close its reader")
	}
	if after := persist(t, a.store); !bytes.Equal(before, after) {
		t.Errorf("store changed by a failed restore")
	}
}

type trackingReader struct {
	io.Reader
	closed bool
}

func (r *trackingReader) Close() error { r.closed = true; return nil }
