// Package replication is the leader's DFS replication manager. It keeps
// every chunk at its replication factor: when a data node goes down or a
// replica is found corrupt or missing, it has another node copy the chunk
// from a surviving replica (most endangered chunks first, a few at a time,
// each data node limiting its own copy bandwidth), records the new replica
// through Raft, and forgets replicas on nodes that are gone. When a zone
// comes back after its chunks were repaired into the zones left, it moves
// those mis-placed chunks back to full zone spread (a copy into the
// missing zone, then a trim of the most crowded one), after repairs and a
// few at a time. It also sends
// the deletions of chunks no file refers to any more, and reconciles the
// inventories data nodes report so that a returning node's stale or
// surplus replicas are deleted rather than trusted.
package replication

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// ApplyFunc proposes one Raft entry and returns its result.
type ApplyFunc func(t fsm.MessageType, req any) (any, uint64, error)

// Config configures a [Manager].
type Config struct {
	Store  *state.Store
	Apply  ApplyFunc
	Chunks *chunkstore.Client
	Log    *slog.Logger
	Now    func() time.Time
	// MaxConcurrent bounds the chunk copies in flight, repairs and moves
	// together (default 8).
	MaxConcurrent int
	// MaxMoves bounds the copies in flight that move mis-placed chunks
	// back to full zone spread (default 2): repairs keep the other slots
	// and are always planned first.
	MaxMoves int
	// Interval is how often the manager looks again without a change
	// (default 1 s).
	Interval time.Duration
	// OpenLease is how long a file may stay open after its writer last
	// renewed it or committed a chunk before it is deleted as abandoned by a
	// writer that died (default api.DefaultOpenFileLease).
	OpenLease time.Duration
	// Capability returns a capability for op on a chunk, which the
	// manager sends to data nodes: a write one to the target of a copy,
	// a read one for the target to present to the source, a delete one
	// to drop garbage. Nil sends none (data nodes that check refuse).
	Capability func(op capability.Op, chunk string) string
}

// capability returns Config.Capability's capability for op on chunk.
func (m *Manager) capability(op capability.Op, chunk string) string {
	if m.cfg.Capability == nil {
		return ""
	}
	return m.cfg.Capability(op, chunk)
}

// Manager repairs under-replicated chunks and deletes garbage. Run it on
// the leader only. Its methods are safe for concurrent use.
type Manager struct {
	cfg Config

	mu       sync.Mutex
	inflight map[string]string // chunk -> node it is being copied to
	// recorded holds, per chunk just repaired, the Raft index of the write
	// that recorded it: a snapshot older than that must not repair it again.
	recorded map[string]uint64

	repaired atomic.Int64 // bytes copied by repairs since this manager started
	moved    atomic.Int64 // bytes copied by moves since this manager started
	running  atomic.Int64 // repairs in flight
	moving   atomic.Int64 // moves in flight
}

// New returns a manager.
func New(cfg Config) *Manager {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 8
	}
	if cfg.MaxMoves <= 0 {
		cfg.MaxMoves = 2
	}
	if cfg.MaxMoves > cfg.MaxConcurrent {
		cfg.MaxMoves = cfg.MaxConcurrent
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OpenLease <= 0 {
		cfg.OpenLease = api.DefaultOpenFileLease
	}
	return &Manager{cfg: cfg, inflight: map[string]string{}, recorded: map[string]uint64{}}
}

// RepairedBytes returns the bytes re-replicated so far.
func (m *Manager) RepairedBytes() int64 { return m.repaired.Load() }

// Running returns the number of repairs in flight.
func (m *Manager) Running() int64 { return m.running.Load() }

// MovedBytes returns the bytes copied so far to move mis-placed chunks
// back to full zone spread.
func (m *Manager) MovedBytes() int64 { return m.moved.Load() }

// Moving returns the number of moves in flight.
func (m *Manager) Moving() int64 { return m.moving.Load() }

// minPassGap is the least time between two repair passes.
const minPassGap = 200 * time.Millisecond

// Run repairs and collects garbage until stop closes. It looks again
// whenever nodes, chunks or garbage change, and at least every Interval.
func (m *Manager) Run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-stop; cancel() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	var lastExpiry, lastPass time.Time
	for ctx.Err() == nil {
		// A pass reads every chunk. While chunks change quickly (a large
		// upload commits one every few milliseconds) passes are spaced
		// minPassGap apart, so that scanning costs the leader a bounded
		// share of a core however large the namespace.
		if wait := minPassGap - time.Since(lastPass); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		lastPass = time.Now()
		snap := m.cfg.Store.Snapshot()
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws, state.TableNodes, state.TableChunks, state.TableGarbage)
		m.collectGarbage(ctx, snap)
		m.repair(ctx, snap, &wg)
		if time.Since(lastExpiry) > m.cfg.OpenLease/6 {
			m.expireOpenFiles(snap)
			lastExpiry = time.Now()
		}
		wctx, wcancel := context.WithTimeout(ctx, m.cfg.Interval)
		state.Wait(wctx, ws)
		wcancel()
	}
}

// copyKind says why a chunk is copied.
type copyKind int

const (
	// repairCopy restores an under-replicated chunk's replication factor.
	repairCopy copyKind = iota
	// moveCopy gives a mis-placed chunk a replica in a zone it lacks; the
	// surplus replica this leaves is trimmed from the most crowded zone
	// on a later pass.
	moveCopy
)

func (k copyKind) String() string {
	if k == moveCopy {
		return "move"
	}
	return "repair"
}

// copyPlan is one chunk copy to start: from a live replica src to dst.
type copyPlan struct {
	kind  copyKind
	chunk state.ChunkState
	src   *api.Node
	dst   *api.Node
}

// repair starts copies for the most endangered chunks, then moves for
// mis-placed ones, and trims chunks that have replicas to spare.
func (m *Manager) repair(ctx context.Context, snap *state.Snapshot, wg *sync.WaitGroup) {
	seen := snap.Index(state.TableChunks)
	m.mu.Lock()
	for id, idx := range m.recorded {
		if seen >= idx {
			delete(m.recorded, id)
		}
	}
	m.mu.Unlock()
	running, moving := int(m.running.Load()), int(m.moving.Load())
	copies, trims, byName := m.plan(snap, m.cfg.MaxConcurrent-running-moving, m.cfg.MaxMoves-moving)
	for _, c := range trims {
		m.trim(c, byName)
	}
	for _, p := range copies {
		m.start(ctx, wg, p)
	}
}

// plan decides which copies to start now, with at most slots copies in
// all and at most moveSlots of them moves, and which chunks to trim.
//
// Under-replicated chunks come first, one live replica before two. Moves
// are planned only when every under-replicated chunk is being repaired or
// has no node to go to, so a move never takes a slot a repair could use.
// A mis-placed chunk is moved only to a ready node in a zone none of its
// live replicas is in; when there is none (the zone it lacks has no node
// with room, or no node that is not already a replica), it stays as it is.
// Only committed chunks are copied or trimmed: the writer of an open file
// never touches a chunk again once it is committed, so copying one does
// not disturb it, and the chunk being written is the writer's alone.
func (m *Manager) plan(snap *state.Snapshot, slots, moveSlots int) (copies []copyPlan, trims []state.ChunkState, byName map[string]*api.Node) {
	nodes := snap.Nodes(nil)
	byName = map[string]*api.Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	zones := state.PlacementZones(nodes)
	var todo, misplaced []state.ChunkState
	for _, c := range snap.FSChunks(nil) {
		if !c.Committed || len(c.Live) == 0 {
			continue
		}
		switch {
		case len(c.Live)+len(c.Resting) < c.Replication:
			// Replicas of a node expected back (an orderly restart) are not
			// copied elsewhere meanwhile, as long as one replica is live:
			// copying a node's whole store for a restart would cost far
			// more than it protects, and its copies would be thrown away
			// when it returns (HDFS's maintenance state does the same).
			todo = append(todo, c)
		case len(c.Live) > c.Replication || len(c.Live) < len(c.Replicas):
			trims = append(trims, c)
		case c.Misplaced(zones):
			misplaced = append(misplaced, c)
		}
	}
	// Most endangered first: one live replica before two.
	sort.SliceStable(todo, func(i, j int) bool {
		a, b := len(todo[i].Live), len(todo[j].Live)
		if a != b {
			return a < b
		}
		return todo[i].ID < todo[j].ID
	})
	// Fewest zones first: those a second zone loss would hurt most.
	sort.SliceStable(misplaced, func(i, j int) bool {
		a, b := misplaced[i].LiveZones, misplaced[j].LiveZones
		if a != b {
			return a < b
		}
		return misplaced[i].ID < misplaced[j].ID
	})
	for _, c := range todo {
		if len(copies) >= slots {
			return copies, trims, byName // repairs wait for a slot: no moves now
		}
		if p, ok := m.target(snap, nodes, byName, c, repairCopy); ok {
			copies = append(copies, p)
		}
	}
	moves := 0
	for _, c := range misplaced {
		if len(copies) >= slots || moves >= moveSlots {
			break
		}
		if p, ok := m.target(snap, nodes, byName, c, moveCopy); ok {
			copies = append(copies, p)
			moves++
		}
	}
	return copies, trims, byName
}

// target picks the source and destination of a copy of chunk c, or false
// when c is already being copied, was just copied (the snapshot predates
// the write that recorded it), or no node can take it now. A move's
// destination must be in a zone c has no live replica in.
func (m *Manager) target(snap *state.Snapshot, nodes []*api.Node, byName map[string]*api.Node, c state.ChunkState, kind copyKind) (copyPlan, bool) {
	m.mu.Lock()
	_, busy := m.inflight[c.ID]
	_, stale := m.recorded[c.ID]
	m.mu.Unlock()
	if busy || stale {
		return copyPlan{}, false
	}
	exclude := map[string]bool{}
	for _, r := range c.Replicas {
		exclude[r] = true
	}
	live := liveNodes(c, byName)
	if len(live) == 0 {
		return copyPlan{}, false
	}
	targets := state.PlaceReplicas(nodes, snap.ClusterMembers(c.Cluster), live, 1, "", exclude, uint64(len(c.ID))+uint64(c.CRC))
	if len(targets) == 0 {
		return copyPlan{}, false // no node can take it now; look again on the next change
	}
	dst := targets[0]
	if kind == moveCopy && slices.ContainsFunc(live, func(n *api.Node) bool { return n.Zone == dst.Zone }) {
		// PlaceReplicas prefers a new zone: if it picked a zone the chunk
		// is in, no node of a missing zone can take it.
		return copyPlan{}, false
	}
	return copyPlan{kind: kind, chunk: c, src: live[int(c.CRC)%len(live)], dst: dst}, true
}

func liveNodes(c state.ChunkState, byName map[string]*api.Node) []*api.Node {
	var out []*api.Node
	for _, name := range c.Live {
		if n := byName[name]; n != nil {
			out = append(out, n)
		}
	}
	return out
}

// start copies a chunk in the background and records the new replica.
// A repair also drops replicas on down nodes that the copy replaces; a
// move only adds (the chunk had exactly its factor of live replicas and
// none on down nodes), so the chunk never has fewer replicas than its
// factor while it moves, and the next pass trims the surplus.
func (m *Manager) start(ctx context.Context, wg *sync.WaitGroup, p copyPlan) {
	c, src, dst := p.chunk, p.src, p.dst
	counter := &m.running
	if p.kind == moveCopy {
		counter = &m.moving
	}
	m.mu.Lock()
	m.inflight[c.ID] = dst.Name
	m.mu.Unlock()
	counter.Add(1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer counter.Add(-1)
		defer func() {
			m.mu.Lock()
			delete(m.inflight, c.ID)
			m.mu.Unlock()
		}()
		log := m.cfg.Log.With("chunk", c.ID, "from", src.Name, "to", dst.Name, "kind", p.kind.String())
		req := api.ReplicateRequest{Source: src.Addr, Length: c.Length, CRC: c.CRC,
			SourceCapability: m.capability(capability.OpRead, c.ID)}
		if _, err := m.cfg.Chunks.Replicate(ctx, dst.Addr, c.ID, m.capability(capability.OpWrite, c.ID), req); err != nil {
			if ctx.Err() == nil {
				log.Warn("chunk copy failed", "err", err)
			}
			return
		}
		var dead []string
		reason := "moved for zone spread"
		if p.kind == repairCopy {
			reason = "repaired"
			for _, r := range c.Replicas {
				if !slices.Contains(c.Live, r) {
					dead = append(dead, r)
				}
			}
			// Drop as many dead replicas as copies now exist beyond the live ones.
			if extra := len(c.Live) + 1 - c.Replication; extra > 0 && len(dead) > extra {
				dead = dead[:extra]
			} else if extra <= 0 {
				dead = nil
			}
		}
		_, idx, err := m.cfg.Apply(fsm.FSReplicas, &state.FSReplicaRequest{Chunk: c.ID, Add: []string{dst.Name},
			Remove: dead, Reason: reason, Now: m.cfg.Now()})
		if err != nil {
			log.Warn("recording a copied replica failed", "err", err)
			return
		}
		m.mu.Lock()
		m.recorded[c.ID] = idx
		m.mu.Unlock()
		if p.kind == moveCopy {
			m.moved.Add(c.Length)
			log.Info("chunk moved to a zone it lacked", "bytes", c.Length, "zones", c.LiveZones+1)
			return
		}
		m.repaired.Add(c.Length)
		log.Info("chunk repaired", "bytes", c.Length, "live", len(c.Live)+1, "want", c.Replication)
	}()
}

// trim forgets replicas on down nodes once the chunk is fully replicated
// without them, and removes surplus live replicas (say, of a node that
// came back after its chunks were repaired elsewhere), keeping the zone
// spread.
func (m *Manager) trim(c state.ChunkState, byName map[string]*api.Node) {
	var remove []string
	for _, r := range c.Replicas {
		if !slices.Contains(c.Live, r) && len(c.Live) >= c.Replication {
			remove = append(remove, r)
		}
	}
	if surplus := len(c.Live) - c.Replication; surplus > 0 {
		zones := map[string]int{}
		for _, r := range c.Live {
			if n := byName[r]; n != nil {
				zones[n.Zone]++
			}
		}
		// Remove from the most crowded zones first, last replicas first.
		live := slices.Clone(c.Live)
		for surplus > 0 {
			best := -1
			for i := len(live) - 1; i >= 0; i-- {
				if best < 0 || zones[byName[live[i]].Zone] > zones[byName[live[best]].Zone] {
					best = i
				}
			}
			zones[byName[live[best]].Zone]--
			remove = append(remove, live[best])
			live = slices.Delete(live, best, best+1)
			surplus--
		}
	}
	if len(remove) == 0 {
		return
	}
	if _, _, err := m.cfg.Apply(fsm.FSReplicas, &state.FSReplicaRequest{Chunk: c.ID, Remove: remove,
		Reason: "surplus", Now: m.cfg.Now()}); err != nil {
		m.cfg.Log.Warn("trimming replicas failed", "chunk", c.ID, "err", err)
	}
}

// expireOpenFiles deletes files whose writer stopped committing chunks
// longer than the open lease ago: a writer that died mid-file.
func (m *Manager) expireOpenFiles(snap *state.Snapshot) {
	now := m.cfg.Now()
	for _, f := range snap.FSOpenFiles() {
		lease := f.Lease
		if lease <= 0 {
			lease = m.cfg.OpenLease
		}
		if now.Sub(f.Modified) < lease {
			continue
		}
		_, _, err := m.cfg.Apply(fsm.FSAbort, &state.FSAbortRequest{Req: api.FileAbort{Path: f.Path, FileID: f.FileID}, Now: now})
		if err != nil {
			m.cfg.Log.Warn("deleting an abandoned open file failed", "path", f.Path, "err", err)
			continue
		}
		m.cfg.Log.Info("deleted a file left open by a writer that stopped", "path", f.Path, "idle", now.Sub(f.Modified))
	}
}

// collectGarbage sends deletions of unreferenced chunks to the live nodes
// that may hold them, then forgets them. A node that was down deletes its
// copies when it reports its inventory.
func (m *Manager) collectGarbage(ctx context.Context, snap *state.Snapshot) {
	garbage := snap.FSGarbage(nil)
	if len(garbage) == 0 {
		return
	}
	var done []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for id, nodes := range garbage {
		for _, name := range nodes {
			n := snap.Node(nil, name)
			if n == nil || n.State == api.NodeDown || n.Addr == "" {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if err := m.cfg.Chunks.Delete(dctx, n.Addr, id, m.capability(capability.OpDelete, id)); err != nil {
					m.cfg.Log.Debug("deleting a garbage chunk failed; the node drops it when it reports", "chunk", id, "node", name, "err", err)
				}
			}()
		}
		done = append(done, id)
		if len(done) == 1000 {
			break
		}
	}
	wg.Wait()
	if _, _, err := m.cfg.Apply(fsm.FSGarbageDone, &state.FSGarbageDoneRequest{Chunks: done}); err != nil {
		m.cfg.Log.Warn("recording garbage deletions failed", "err", err)
	}
}

// Reconcile compares a data node's inventory with the namespace. It
// returns the chunks the node must delete (unknown to the namespace, not
// counted as this node's replica, or not matching the chunk's length and
// checksum), and removes from the namespace this node's replicas that the
// inventory lacks or that do not match. A chunk committed or repaired in
// the last grace period is not judged missing: the inventory may predate
// it.
func (m *Manager) Reconcile(node string, inv []api.StoredChunk, grace time.Duration) ([]string, error) {
	snap := m.cfg.Store.Snapshot()
	if snap.Node(nil, node) == nil {
		return nil, fmt.Errorf("%w: node %s is not registered", state.ErrNotFound, node)
	}
	now := m.cfg.Now()
	reported := map[string]api.StoredChunk{}
	del := []string{}
	var bad []string
	m.mu.Lock()
	inflight := maps.Clone(m.inflight)
	m.mu.Unlock()
	for _, sc := range inv {
		reported[sc.ID] = sc
		c, ok := snap.FSChunk(sc.ID)
		switch {
		case !ok:
			del = append(del, sc.ID)
		case !slices.Contains(c.Replicas, node):
			if inflight[sc.ID] != node {
				del = append(del, sc.ID)
			}
		case c.Committed && (c.Length != sc.Length || c.CRC != sc.CRC):
			del = append(del, sc.ID)
			bad = append(bad, sc.ID)
		}
	}
	for _, c := range snap.FSChunks(nil) {
		if c.Committed && slices.Contains(c.Replicas, node) && now.Sub(c.Updated) > grace {
			if _, ok := reported[c.ID]; !ok {
				bad = append(bad, c.ID)
			}
		}
	}
	for _, id := range bad {
		if _, _, err := m.cfg.Apply(fsm.FSReplicas, &state.FSReplicaRequest{Chunk: id, Remove: []string{node},
			Reason: "missing or stale on " + node, Now: now}); err != nil {
			m.cfg.Log.Warn("dropping a stale replica failed", "chunk", id, "node", node, "err", err)
		}
	}
	return del, nil
}
