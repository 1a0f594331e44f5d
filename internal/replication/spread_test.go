package replication

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// spread is a harness of six data nodes in three zones (a1 a2 in za, b1
// b2 in zb, c1 c2 in zc), each serving a real chunk store over HTTP, so
// that the manager's copies really move bytes.
type spread struct {
	*harness
	stores map[string]*chunkstore.Store
	addrs  map[string]string
	chunks *chunkstore.Client
}

var spreadNodes = []string{"a1", "a2", "b1", "b2", "c1", "c2"}

func newSpread(t *testing.T) *spread {
	h := newHarness(t)
	s := &spread{harness: h, stores: map[string]*chunkstore.Store{}, addrs: map[string]string{}, chunks: &chunkstore.Client{}}
	for _, n := range spreadNodes {
		st, err := chunkstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(st.Handler(chunkstore.HandlerOptions{}))
		t.Cleanup(srv.Close)
		s.stores[n], s.addrs[n] = st, strings.TrimPrefix(srv.URL, "http://")
		h.must(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: n, Zone: "z" + n[:1],
			Addr: s.addrs[n], CPU: 1000, MemoryMB: 1024}, Now: h.now})
		h.must(fsm.NodeState, &state.NodeStateRequest{Name: n, State: api.NodeReady, Now: h.now})
	}
	return s
}

func (s *spread) manager() *Manager {
	return New(Config{Store: s.store, Apply: s.apply, Chunks: s.chunks, Log: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return s.now }})
}

// nodeState sets a node's state.
func (s *spread) nodeState(name, st string) {
	s.t.Helper()
	s.must(fsm.NodeState, &state.NodeStateRequest{Name: name, State: st, Now: s.now})
}

// create opens a file for writing.
func (s *spread) create(path string) uint64 {
	s.t.Helper()
	return s.must(fsm.FSCreate, &state.FSCreateRequest{Req: api.FileCreate{Path: path}, Now: s.now}).(*api.FileInfo).FileID
}

// writeChunk allocates the next chunk of an open file, stores data on
// the given nodes' stores and commits it with those replicas (the
// allocation's picks are replaced by them through FSReplicas afterwards).
func (s *spread) writeChunk(path string, fileID uint64, data []byte, on ...string) string {
	s.t.Helper()
	a := s.must(fsm.FSAllocate, &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: path, FileID: fileID}, Now: s.now}).(*api.ChunkAllocation)
	crc := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	var allocated []string
	for _, r := range a.Replicas {
		allocated = append(allocated, r.Node)
	}
	for _, n := range append(slices.Clone(on), allocated...) {
		if _, err := s.stores[n].Stat(a.ID); err == nil {
			continue
		}
		if _, err := s.chunks.Put(context.Background(), s.addrs[n], a.ID, "", bytes.NewReader(data), int64(len(data))); err != nil {
			s.t.Fatalf("storing chunk %s on %s: %v", a.ID, n, err)
		}
	}
	s.must(fsm.FSCommit, &state.FSCommitRequest{Req: api.ChunkCommit{Path: path, FileID: fileID, ID: a.ID,
		Length: int64(len(data)), CRC: crc, Replicas: allocated}, Now: s.now})
	var remove []string
	for _, n := range allocated {
		if !slices.Contains(on, n) {
			remove = append(remove, n)
		}
	}
	s.must(fsm.FSReplicas, &state.FSReplicaRequest{Chunk: a.ID, Add: on, Remove: remove, Now: s.now})
	return a.ID
}

func (s *spread) close(path string, fileID uint64, size int64) {
	s.t.Helper()
	s.must(fsm.FSClose, &state.FSCloseRequest{Req: api.FileClose{Path: path, FileID: fileID, Size: size}, Now: s.now})
}

// pass runs one repair pass and waits for the copies it started.
func (s *spread) pass(m *Manager) {
	var wg sync.WaitGroup
	m.repair(context.Background(), s.store.Snapshot(), &wg)
	wg.Wait()
}

// zonesOf returns the sorted zones of a chunk's replicas and the replicas.
func (s *spread) zonesOf(id string) (zones []string, replicas []string) {
	s.t.Helper()
	c, ok := s.store.Snapshot().FSChunk(id)
	if !ok {
		s.t.Fatalf("chunk %s is gone", id)
	}
	for _, r := range c.Replicas {
		z := "z" + r[:1]
		if !slices.Contains(zones, z) {
			zones = append(zones, z)
		}
	}
	slices.Sort(zones)
	replicas = slices.Sorted(slices.Values(c.Replicas))
	return zones, replicas
}

func TestMisplacedCount(t *testing.T) {
	tests := []struct {
		name     string
		replicas []string
		down     []string
		want     int
	}{
		{"three zones", []string{"a1", "b1", "c1"}, nil, 0},
		{"two zones, third has ready nodes", []string{"a1", "a2", "b1"}, nil, 1},
		{"one zone", []string{"a1", "a2"}, nil, 1},
		{"two zones, third zone down", []string{"a1", "a2", "b1"}, []string{"c1", "c2"}, 0},
		{"two zones, one node of the third down", []string{"a1", "a2", "b1"}, []string{"c1"}, 1},
		{"a replica down leaves two zones, all three usable", []string{"a1", "b1", "c1"}, []string{"b1"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSpread(t)
			id := s.create("/f")
			s.writeChunk("/f", id, []byte("0123456789"), tt.replicas...)
			s.close("/f", id, 10)
			for _, n := range tt.down {
				s.nodeState(n, api.NodeDown)
			}
			if got := s.store.Snapshot().FSStatus(nil).Misplaced; got != tt.want {
				t.Errorf("replicas %v, down %v: misplaced = %d, want %d", tt.replicas, tt.down, got, tt.want)
			}
		})
	}
}

// TestMoveBack: a chunk repaired into two zones while the third was down
// is copied into the third zone when it returns, then trimmed from the
// most crowded zone, never dropping below three replicas.
func TestMoveBack(t *testing.T) {
	s := newSpread(t)
	data := []byte("the quick brown fox")
	fid := s.create("/f")
	id := s.writeChunk("/f", fid, data, "a1", "a2", "b1")
	s.close("/f", fid, int64(len(data)))
	m := s.manager()

	// While zone zc is down there is nowhere better to go.
	s.nodeState("c1", api.NodeDown)
	s.nodeState("c2", api.NodeDown)
	s.pass(m)
	if zones, reps := s.zonesOf(id); !slices.Equal(zones, []string{"za", "zb"}) || len(reps) != 3 {
		t.Fatalf("with zc down: replicas %v, want the same three in za and zb", reps)
	}
	if m.MovedBytes() != 0 {
		t.Errorf("moved %d bytes with no zone to move to", m.MovedBytes())
	}

	// zc returns: one pass copies, the next trims.
	s.nodeState("c2", api.NodeReady)
	if got := s.store.Snapshot().FSStatus(nil).Misplaced; got != 1 {
		t.Fatalf("misplaced = %d once zc is back, want 1", got)
	}
	s.pass(m)
	zones, reps := s.zonesOf(id)
	if len(reps) != 4 || !slices.Equal(zones, []string{"za", "zb", "zc"}) {
		t.Fatalf("after the copy: replicas %v, want four spanning za, zb and zc", reps)
	}
	if got, err := s.stores["c2"].Stat(id); err != nil || got.Length != int64(len(data)) {
		t.Errorf("c2's store: %+v, %v; want the chunk's %d bytes", got, err, len(data))
	}
	if m.MovedBytes() != int64(len(data)) || m.RepairedBytes() != 0 {
		t.Errorf("moved %d and repaired %d bytes, want %d moved, 0 repaired", m.MovedBytes(), m.RepairedBytes(), len(data))
	}
	s.pass(m)
	zones, reps = s.zonesOf(id)
	if len(reps) != 3 || !slices.Equal(zones, []string{"za", "zb", "zc"}) {
		t.Errorf("after the trim: replicas %v, want three, one in each zone", reps)
	}
	if got := s.store.Snapshot().FSStatus(nil).Misplaced; got != 0 {
		t.Errorf("misplaced = %d after the move, want 0", got)
	}
	// A further pass changes nothing.
	s.pass(m)
	if _, again := s.zonesOf(id); !slices.Equal(again, reps) {
		t.Errorf("a pass after the move changed replicas %v to %v", reps, again)
	}
}

// TestPlanRepairsBeforeMoves: under-replicated chunks take the slots
// first; moves get what is left, at most moveSlots, and none while a
// repair waits for a slot.
func TestPlanRepairsBeforeMoves(t *testing.T) {
	s := newSpread(t)
	fid := s.create("/f")
	var under, misplaced []string
	for i := range 3 {
		under = append(under, s.writeChunk("/f", fid, []byte(fmt.Sprint("u", i)), "a1", "b1"))
	}
	for i := range 3 {
		misplaced = append(misplaced, s.writeChunk("/f", fid, []byte(fmt.Sprint("m", i)), "a1", "a2", "b1"))
	}
	s.close("/f", fid, 12)
	m := s.manager()
	tests := []struct {
		slots, moveSlots int
		wantRepairs      int
		wantMoves        int
	}{
		{slots: 2, moveSlots: 2, wantRepairs: 2, wantMoves: 0}, // a repair waits: no moves
		{slots: 3, moveSlots: 2, wantRepairs: 3, wantMoves: 0}, // no slot left
		{slots: 4, moveSlots: 2, wantRepairs: 3, wantMoves: 1},
		{slots: 8, moveSlots: 2, wantRepairs: 3, wantMoves: 2},
		{slots: 8, moveSlots: 0, wantRepairs: 3, wantMoves: 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("slots=%d,moves=%d", tt.slots, tt.moveSlots), func(t *testing.T) {
			copies, _, _ := m.plan(s.store.Snapshot(), tt.slots, tt.moveSlots)
			var repairs, moves int
			for i, p := range copies {
				switch p.kind {
				case repairCopy:
					if moves > 0 {
						t.Errorf("copy %d is a repair of %s planned after a move", i, p.chunk.ID)
					}
					if !slices.Contains(under, p.chunk.ID) {
						t.Errorf("repair of %s, which is not under-replicated", p.chunk.ID)
					}
					repairs++
				case moveCopy:
					if !slices.Contains(misplaced, p.chunk.ID) {
						t.Errorf("move of %s, which is not mis-placed", p.chunk.ID)
					}
					if p.dst.Zone != "zc" {
						t.Errorf("move of %s to %s in %s, want a node of zc", p.chunk.ID, p.dst.Name, p.dst.Zone)
					}
					moves++
				}
			}
			if repairs != tt.wantRepairs || moves != tt.wantMoves {
				t.Errorf("planned %d repairs and %d moves, want %d and %d", repairs, moves, tt.wantRepairs, tt.wantMoves)
			}
		})
	}
}

// TestNoMoveWithoutExtraZone: a chunk short of zones stays where it is
// when no node of a zone it lacks can take it.
func TestNoMoveWithoutExtraZone(t *testing.T) {
	tests := []struct {
		name  string
		setup func(s *spread)
	}{
		{"zone down", func(s *spread) {
			s.nodeState("c1", api.NodeDown)
			s.nodeState("c2", api.NodeDown)
		}},
		{"zone draining", func(s *spread) {
			for _, n := range []string{"c1", "c2"} {
				s.must(fsm.NodeDrain, &state.NodeDrainRequest{Name: n, Deadline: s.now, Now: s.now})
			}
		}},
		{"zone initializing", func(s *spread) {
			s.nodeState("c1", api.NodeDown)
			s.nodeState("c2", api.NodeDown)
			s.must(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "c1", Zone: "zc",
				Addr: s.addrs["c1"], CPU: 1000, MemoryMB: 1024}, Now: s.now})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSpread(t)
			fid := s.create("/f")
			id := s.writeChunk("/f", fid, []byte("data"), "a1", "a2", "b1")
			s.close("/f", fid, 4)
			tt.setup(s)
			if got := s.store.Snapshot().FSStatus(nil).Misplaced; got != 0 {
				t.Errorf("misplaced = %d, want 0: no zone can take a replica", got)
			}
			m := s.manager()
			if copies, _, _ := m.plan(s.store.Snapshot(), 8, 2); len(copies) != 0 {
				t.Errorf("planned %d copies, want none", len(copies))
			}
			s.pass(m)
			if _, reps := s.zonesOf(id); !slices.Equal(reps, []string{"a1", "a2", "b1"}) {
				t.Errorf("replicas %v, want a1 a2 b1 unchanged", reps)
			}
		})
	}
}

// TestMoveBackOpenFile: a committed chunk of a file still being written
// is moved back while the writer goes on; the writer then commits its
// next chunk and closes the file as if nothing happened. The chunk being
// written (uncommitted) is never copied.
func TestMoveBackOpenFile(t *testing.T) {
	s := newSpread(t)
	fid := s.create("/f")
	first := s.writeChunk("/f", fid, []byte("first"), "a1", "a2", "b1")
	pending := s.must(fsm.FSAllocate, &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: "/f", FileID: fid}, Now: s.now}).(*api.ChunkAllocation)
	m := s.manager()
	s.pass(m)
	s.pass(m)
	if zones, reps := s.zonesOf(first); len(reps) != 3 || len(zones) != 3 {
		t.Errorf("committed chunk of the open file: replicas %v, want three in three zones", reps)
	}
	if c, _ := s.store.Snapshot().FSChunk(pending.ID); len(c.Replicas) != len(pending.Replicas) {
		t.Errorf("the chunk being written has replicas %v, want its allocation %v", c.Replicas, pending.Replicas)
	}
	var on []string
	for _, r := range pending.Replicas {
		on = append(on, r.Node)
		if _, err := s.chunks.Put(context.Background(), s.addrs[r.Node], pending.ID, "", strings.NewReader("second"), 6); err != nil {
			t.Fatal(err)
		}
	}
	crc := crc32.Checksum([]byte("second"), crc32.MakeTable(crc32.Castagnoli))
	if _, _, err := s.apply(fsm.FSCommit, &state.FSCommitRequest{Req: api.ChunkCommit{Path: "/f", FileID: fid, ID: pending.ID,
		Length: 6, CRC: crc, Replicas: on}, Now: s.now}); err != nil {
		t.Fatalf("committing the next chunk after the move: %v", err)
	}
	s.close("/f", fid, 11)
	fi, err := s.store.Snapshot().FSStat(nil, "/f")
	if err != nil || fi.Size != 11 || len(fi.Chunks) != 2 {
		t.Fatalf("file after the move: %+v, %v; want 11 bytes in 2 chunks", fi, err)
	}
}

// TestRestingReplicasAreNotCopied: a replica on a member that stopped in
// an orderly way and is expected back is not copied elsewhere; once the
// node is declared gone, the chunk is repaired.
func TestRestingReplicasAreNotCopied(t *testing.T) {
	s := newSpread(t)
	s.must(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 6, Zones: 3}, Now: s.now, Token: "t"})
	fid := s.create("/f")
	data := []byte("resting replica")
	id := s.writeChunk("/f", fid, data, "a1", "b1", "c1")
	s.close("/f", fid, int64(len(data)))
	m := s.manager()

	s.must(fsm.NodeState, &state.NodeStateRequest{Name: "a1", State: api.NodeDown, KeepUntil: s.now.Add(time.Minute), Now: s.now})
	s.pass(m)
	if _, got := s.zonesOf(id); !slices.Equal(got, []string{"a1", "b1", "c1"}) {
		t.Errorf("replicas while a1 is expected back: got %v, want [a1 b1 c1] (no copy)", got)
	}
	if got := m.RepairedBytes(); got != 0 {
		t.Errorf("repaired bytes while a1 is expected back: got %d, want 0", got)
	}

	s.now = s.now.Add(time.Minute)
	s.must(fsm.NodeState, &state.NodeStateRequest{Name: "a1", State: api.NodeDown, Expired: true, Now: s.now})
	s.pass(m)
	if got := m.RepairedBytes(); got != int64(len(data)) {
		t.Errorf("repaired bytes once a1 is gone: got %d, want %d", got, len(data))
	}
	if _, got := s.zonesOf(id); !slices.Contains(got, "a2") {
		t.Errorf("replicas once a1 is gone: got %v, want a copy on a2", got)
	}
}
