package replication

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// harness applies entries through the real FSM, as the leader would.
type harness struct {
	t     *testing.T
	store *state.Store
	fsm   *fsm.FSM
	index uint64
	now   time.Time
}

func newHarness(t *testing.T) *harness {
	s := state.New()
	return &harness{t: t, store: s, fsm: fsm.New(s, slog.New(slog.DiscardHandler)),
		now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (h *harness) apply(t fsm.MessageType, req any) (any, uint64, error) {
	b, err := fsm.Encode(t, req)
	if err != nil {
		return nil, 0, err
	}
	h.index++
	res := h.fsm.Apply(&raft.Log{Index: h.index, Type: raft.LogCommand, Data: b}).(fsm.Result)
	return res.Value, h.index, res.Err
}

func (h *harness) must(t fsm.MessageType, req any) any {
	h.t.Helper()
	v, _, err := h.apply(t, req)
	if err != nil {
		h.t.Fatalf("%s: %v", t, err)
	}
	return v
}

func (h *harness) manager() *Manager {
	return New(Config{Store: h.store, Apply: h.apply, Log: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return h.now }})
}

// setup registers three ready nodes and writes one closed one-chunk file.
func (h *harness) setup() (fileID uint64, chunk string) {
	for _, n := range []string{"a", "b", "c"} {
		h.must(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: n, Zone: "z" + n,
			Addr: n + ":1", CPU: 1000, MemoryMB: 1024}, Now: h.now})
		h.must(fsm.NodeState, &state.NodeStateRequest{Name: n, State: api.NodeReady, Now: h.now})
	}
	fi := h.must(fsm.FSCreate, &state.FSCreateRequest{Req: api.FileCreate{Path: "/f"}, Now: h.now}).(*api.FileInfo)
	a := h.must(fsm.FSAllocate, &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: "/f", FileID: fi.FileID}, Now: h.now}).(*api.ChunkAllocation)
	h.must(fsm.FSCommit, &state.FSCommitRequest{Req: api.ChunkCommit{Path: "/f", FileID: fi.FileID, ID: a.ID,
		Length: 10, CRC: 7, Replicas: []string{"a", "b", "c"}}, Now: h.now})
	h.must(fsm.FSClose, &state.FSCloseRequest{Req: api.FileClose{Path: "/f", FileID: fi.FileID, Size: 10}, Now: h.now})
	return fi.FileID, a.ID
}

func TestReconcile(t *testing.T) {
	h := newHarness(t)
	_, id := h.setup()
	m := h.manager()
	h.now = h.now.Add(time.Minute) // past the grace period

	// a holds the chunk and an unknown one; b holds a stale copy; c lost it.
	del, err := m.Reconcile("a", []api.StoredChunk{{ID: id, Length: 10, CRC: 7}, {ID: "999", Length: 1}}, 10*time.Second)
	if err != nil || !slices.Equal(del, []string{"999"}) {
		t.Errorf("a: delete %v, %v; want only the unknown chunk", del, err)
	}
	del, _ = m.Reconcile("b", []api.StoredChunk{{ID: id, Length: 10, CRC: 8}}, 10*time.Second)
	if !slices.Equal(del, []string{id}) {
		t.Errorf("b: delete %v, want the stale copy", del)
	}
	if _, err := m.Reconcile("c", nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c, _ := h.store.Snapshot().FSChunk(id)
	if !slices.Equal(c.Replicas, []string{"a"}) {
		t.Errorf("replicas after reconciling = %v, want only a", c.Replicas)
	}
	if _, err := m.Reconcile("nobody", nil, time.Second); err == nil {
		t.Error("a report from an unknown node was accepted")
	}
}

func TestReconcileGrace(t *testing.T) {
	h := newHarness(t)
	_, id := h.setup()
	// An inventory taken before the chunk was committed lacks it: within
	// the grace period that is not a loss.
	h.manager().Reconcile("c", nil, 10*time.Second)
	c, _ := h.store.Snapshot().FSChunk(id)
	if len(c.Replicas) != 3 {
		t.Errorf("replicas = %v: a fresh chunk was judged missing", c.Replicas)
	}
}

func TestExpireOpenFiles(t *testing.T) {
	h := newHarness(t)
	h.setup()
	fi := h.must(fsm.FSCreate, &state.FSCreateRequest{Req: api.FileCreate{Path: "/open"}, Now: h.now}).(*api.FileInfo)
	m := h.manager()
	m.expireOpenFiles(h.store.Snapshot())
	if _, err := h.store.Snapshot().FSStat(nil, "/open"); err != nil {
		t.Fatalf("a fresh open file was expired: %v", err)
	}
	h.now = h.now.Add(11 * time.Minute)
	m.expireOpenFiles(h.store.Snapshot())
	if _, err := h.store.Snapshot().FSStat(nil, "/open"); err == nil {
		t.Errorf("file %d open for 11 minutes without a chunk is still there", fi.FileID)
	}
	if _, err := h.store.Snapshot().FSStat(nil, "/f"); err != nil {
		t.Errorf("a closed file was expired: %v", err)
	}
}
