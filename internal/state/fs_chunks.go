package state

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// fsChunk is one chunk: its content's length and checksum once committed,
// the nodes that hold a synced replica (for an uncommitted chunk, the nodes
// it was allocated to), and how many file versions refer to it.
type fsChunk struct {
	ID          string    `json:"id"`
	Length      int64     `json:"length"`
	CRC         uint32    `json:"crc32c"`
	Replicas    []string  `json:"replicas"`
	Committed   bool      `json:"committed,omitempty"`
	Refs        int       `json:"refs"`
	Replication int       `json:"replication"`
	Cluster     string    `json:"cluster,omitempty"` // whose nodes it prefers
	FileID      uint64    `json:"file_id"`
	Updated     time.Time `json:"updated"` // last time a replica was added
}

// fsGarbage is a chunk no file refers to any more, and the nodes that may
// still hold a copy.
type fsGarbage struct {
	Chunk string   `json:"chunk"`
	Nodes []string `json:"nodes"`
}

// FSAllocateRequest allocates a chunk (or more replicas for one).
type FSAllocateRequest struct {
	Req api.ChunkAllocate `json:"req"`
	Now time.Time         `json:"now"`
	// Nonce, drawn at random by the server that received the request, ends
	// a new chunk's id so that ids cannot be guessed: the data nodes serve
	// a chunk to whoever names it.
	Nonce string `json:"nonce,omitempty"`
}

// FSCommitRequest appends a written chunk to its file.
type FSCommitRequest struct {
	Req api.ChunkCommit `json:"req"`
	Now time.Time       `json:"now"`
}

// FSReplicaRequest changes where a chunk's replicas are: Add after a
// repair copied it to a node, Remove for replicas that are lost, corrupt,
// surplus or stale. A removed replica's node is told to delete its copy.
// Length and CRC, when set, must match the chunk (a repair of an old
// version is refused).
type FSReplicaRequest struct {
	Chunk  string    `json:"chunk"`
	Add    []string  `json:"add,omitempty"`
	Remove []string  `json:"remove,omitempty"`
	Reason string    `json:"reason,omitempty"`
	Now    time.Time `json:"now"`
}

// FSGarbageDoneRequest forgets garbage chunks whose deletion was sent.
type FSGarbageDoneRequest struct {
	Chunks []string `json:"chunks"`
}

// clusterOfPath returns the cluster whose prefix holds p, or "".
func clusterOfPath(p string) string {
	rest, ok := strings.CutPrefix(p, "/clusters/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	return name
}

func (tx *writeTxn) chunk(id string) *fsChunk {
	raw, _ := tx.First(tableFSChunks, "id", id)
	if raw == nil {
		return nil
	}
	return raw.(*fsChunk)
}

func (tx *writeTxn) chunkForWrite(id string) (*fsChunk, error) {
	c := tx.chunk(id)
	if c == nil {
		return nil, fmt.Errorf("%w: chunk %s does not exist", ErrNotFound, id)
	}
	n := *c
	n.Replicas = slices.Clone(c.Replicas)
	return &n, nil
}

// refChunk changes a chunk's reference count; at zero it is dropped.
func (tx *writeTxn) refChunk(id string, d int) error {
	c, err := tx.chunkForWrite(id)
	if err != nil {
		return nil // already gone: nothing to release
	}
	c.Refs += d
	if c.Refs <= 0 {
		return tx.dropChunk(id)
	}
	return tx.put(tableFSChunks, c)
}

// dropChunk deletes a chunk and queues its replicas for deletion.
func (tx *writeTxn) dropChunk(id string) error {
	c := tx.chunk(id)
	if c == nil {
		return nil
	}
	if err := tx.del(tableFSChunks, c); err != nil {
		return err
	}
	return tx.addGarbage(id, c.Replicas...)
}

func (tx *writeTxn) addGarbage(id string, nodes ...string) error {
	if len(nodes) == 0 {
		return nil
	}
	g := &fsGarbage{Chunk: id}
	if raw, _ := tx.First(tableFSGarbage, "id", id); raw != nil {
		g.Nodes = slices.Clone(raw.(*fsGarbage).Nodes)
	}
	for _, n := range nodes {
		if !slices.Contains(g.Nodes, n) {
			g.Nodes = append(g.Nodes, n)
		}
	}
	return tx.put(tableFSGarbage, g)
}

// FSAllocate allocates a new chunk of an open file and picks its replica
// nodes: distinct zones while there are enough, else distinct nodes, the
// writer's node first when it is a data node, the file's cluster's nodes
// before others. With Req.Chunk set it picks more nodes for that chunk
// (a writer replacing a replica that failed).
func (s *Store) FSAllocate(index uint64, req *FSAllocateRequest) (*api.ChunkAllocation, error) {
	r := req.Req
	var out *api.ChunkAllocation
	err := s.write(index, func(tx *writeTxn) error {
		e, err := tx.openFile(r.Path, r.FileID)
		if err != nil {
			return err
		}
		nodes := tx.allNodes()
		exclude := map[string]bool{}
		for _, n := range r.Exclude {
			exclude[n] = true
		}
		var c *fsChunk
		count := e.Replication
		if r.Chunk != "" {
			if !slices.Contains(e.Pending, r.Chunk) {
				return fmt.Errorf("%w: chunk %s is not being written to %s", ErrConflict, r.Chunk, r.Path)
			}
			if c, err = tx.chunkForWrite(r.Chunk); err != nil {
				return err
			}
			for _, n := range c.Replicas {
				exclude[n] = true
			}
			count = 1
		} else {
			id := strconv.FormatUint(index, 10)
			if req.Nonce != "" {
				id += "-" + req.Nonce
			}
			c = &fsChunk{ID: id, Replication: e.Replication,
				Cluster: clusterOfPath(e.Path), FileID: e.FileID}
			e.Pending = append(e.Pending, c.ID)
			if err := tx.putEntry(e); err != nil {
				return err
			}
		}
		if r.Count > 0 && r.Count < count {
			count = r.Count
		}
		have := byName(nodes, c.Replicas)
		picked := PlaceReplicas(nodes, memberSet(tx.cluster(c.Cluster)), have, count, r.Writer, exclude, index)
		if len(picked) == 0 {
			return fmt.Errorf("%w: no ready data node can take a replica of %s", ErrNoRoom, r.Path)
		}
		out = &api.ChunkAllocation{ID: c.ID}
		for _, n := range picked {
			c.Replicas = append(c.Replicas, n.Name)
			out.Replicas = append(out.Replicas, api.Replica{Node: n.Name, Zone: n.Zone, Addr: n.Addr, Socket: n.Socket})
		}
		c.Updated = req.Now
		return tx.put(tableFSChunks, c)
	})
	return out, err
}

// memberSet returns the names of a cluster's nodes (none for nil).
func memberSet(c *api.Cluster) map[string]bool {
	out := map[string]bool{}
	if c != nil {
		for _, n := range c.Nodes {
			out[n] = true
		}
	}
	return out
}

func byName(nodes []*api.Node, names []string) []*api.Node {
	var out []*api.Node
	for _, n := range nodes {
		if slices.Contains(names, n.Name) {
			out = append(out, n)
		}
	}
	return out
}

// FSCommit appends a chunk that its replicas have synced to its file.
func (s *Store) FSCommit(index uint64, req *FSCommitRequest) error {
	r := req.Req
	if r.Length < 0 || r.Length > api.MaxChunkSize {
		return fmt.Errorf("%w: length: %d is out of range", ErrInvalid, r.Length)
	}
	if len(r.Replicas) == 0 {
		return fmt.Errorf("%w: replicas: a chunk needs at least one replica", ErrInvalid)
	}
	return s.write(index, func(tx *writeTxn) error {
		e, err := tx.openFile(r.Path, r.FileID)
		if err != nil {
			return err
		}
		i := slices.Index(e.Pending, r.ID)
		if i < 0 {
			return fmt.Errorf("%w: chunk %s is not being written to %s", ErrConflict, r.ID, r.Path)
		}
		c, err := tx.chunkForWrite(r.ID)
		if err != nil {
			return err
		}
		if r.Length > e.ChunkSize {
			return fmt.Errorf("%w: chunk %s is %d bytes, more than the file's chunk size %d", ErrInvalid, r.ID, r.Length, e.ChunkSize)
		}
		var keep, drop []string
		for _, n := range c.Replicas {
			if slices.Contains(r.Replicas, n) {
				keep = append(keep, n)
			} else {
				drop = append(drop, n)
			}
		}
		if len(keep) == 0 {
			return fmt.Errorf("%w: none of the replicas %v of chunk %s was allocated to it", ErrInvalid, r.Replicas, r.ID)
		}
		if err := tx.addGarbage(r.ID, drop...); err != nil {
			return err
		}
		c.Replicas, c.Length, c.CRC, c.Committed, c.Refs, c.Updated = keep, r.Length, r.CRC, true, 1, req.Now
		if err := tx.put(tableFSChunks, c); err != nil {
			return err
		}
		e.Pending = slices.Delete(e.Pending, i, i+1)
		e.Chunks = append(e.Chunks, r.ID)
		e.Size += r.Length
		e.Modified = req.Now
		return tx.putEntry(e)
	})
}

// FSReplicas adds and removes replicas of a committed chunk.
func (s *Store) FSReplicas(index uint64, req *FSReplicaRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		c, err := tx.chunkForWrite(req.Chunk)
		if err != nil {
			return err
		}
		if !c.Committed {
			return fmt.Errorf("%w: chunk %s is still being written", ErrConflict, req.Chunk)
		}
		for _, n := range req.Add {
			if tx.node(n) == nil {
				return fmt.Errorf("%w: node %s does not exist", ErrNotFound, n)
			}
			if !slices.Contains(c.Replicas, n) {
				c.Replicas = append(c.Replicas, n)
			}
		}
		var removed []string
		c.Replicas = slices.DeleteFunc(c.Replicas, func(n string) bool {
			if slices.Contains(req.Remove, n) {
				removed = append(removed, n)
				return true
			}
			return false
		})
		if len(c.Replicas) == 0 {
			// Never forget the last copy's location: it may come back.
			return fmt.Errorf("%w: chunk %s would have no replica left", ErrConflict, req.Chunk)
		}
		if len(req.Add) > 0 {
			// Only a new replica may be missing from an inventory taken
			// just before it; removing one must not delay judging others.
			c.Updated = req.Now
		}
		if err := tx.put(tableFSChunks, c); err != nil {
			return err
		}
		return tx.addGarbage(c.ID, removed...)
	})
}

// FSGarbageDone forgets garbage entries whose deletion was sent to their
// nodes (a node that missed it deletes the chunk when it next reports).
func (s *Store) FSGarbageDone(index uint64, req *FSGarbageDoneRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		for _, id := range req.Chunks {
			if raw, _ := tx.First(tableFSGarbage, "id", id); raw != nil {
				if err := tx.del(tableFSGarbage, raw); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// PlaceReplicas picks up to count nodes for new replicas of a chunk that
// already has replicas on have. Candidates are ready nodes not excluded
// and not in have. Preference, in order: a zone no replica is in yet; the
// writer's node; a member of the chunk's cluster; then a rotation by seed
// so that chunks spread over nodes. It is deterministic.
func PlaceReplicas(nodes []*api.Node, members map[string]bool, have []*api.Node, count int,
	writer string, exclude map[string]bool, seed uint64) []*api.Node {
	zones := map[string]bool{}
	taken := map[string]bool{}
	for _, n := range have {
		zones[n.Zone] = true
		taken[n.Name] = true
	}
	var cands []*api.Node
	for _, n := range nodes {
		if n.State == api.NodeReady && !exclude[n.Name] && !taken[n.Name] && n.Addr != "" {
			cands = append(cands, n)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].Name < cands[j].Name })
	rot := func(name string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(name))
		return mix64(h.Sum64() ^ seed*0x9e3779b97f4a7c15)
	}
	var out []*api.Node
	for len(out) < count && len(cands) > 0 {
		best := -1
		var bestKey [4]uint64
		for i, n := range cands {
			key := [4]uint64{b2u(zones[n.Zone]), b2u(n.Name != writer), b2u(!members[n.Name]), rot(n.Name)}
			if best < 0 || less4(key, bestKey) {
				best, bestKey = i, key
			}
		}
		n := cands[best]
		out = append(out, n)
		zones[n.Zone] = true
		cands = slices.Delete(cands, best, best+1)
	}
	return out
}

// mix64 is the splitmix64 finalizer: every input bit affects every output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func less4(a, b [4]uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// --- reads for the replication manager and the API ---

// ChunkState is a chunk as the replication manager sees it.
type ChunkState struct {
	ID       string
	Length   int64
	CRC      uint32
	Replicas []string
	Live     []string // replicas on nodes that are not down
	// Resting are replicas on down nodes that stopped in an orderly way
	// and are expected back (api.Node.ExpectedBack): not readable now, but
	// not lost either.
	Resting []string
	// LiveZones is the number of distinct zones of the Live replicas.
	LiveZones   int
	Replication int
	Cluster     string
	Committed   bool
	Updated     time.Time
}

// FSChunks returns every chunk with its live replicas and the number of
// zones they span. It costs one pass over the nodes and one over the
// chunks' replica lists.
func (s *Snapshot) FSChunks(ws memdb.WatchSet) []ChunkState {
	nodes := map[string]*api.Node{}
	for _, n := range s.Nodes(ws) {
		nodes[n.Name] = n
	}
	var out []ChunkState
	var zones []string // reused: a chunk has a handful of replicas
	for _, c := range collect[*fsChunk](s.txn, ws, tableFSChunks, "id") {
		cs := c.state()
		zones = zones[:0]
		for _, r := range c.Replicas {
			n := nodes[r]
			switch {
			case n == nil:
			case n.State != api.NodeDown:
				cs.Live = append(cs.Live, r)
				if !slices.Contains(zones, n.Zone) {
					zones = append(zones, n.Zone)
				}
			case !n.ExpectedBack.IsZero():
				cs.Resting = append(cs.Resting, r)
			}
		}
		cs.LiveZones = len(zones)
		out = append(out, cs)
	}
	return out
}

// PlacementZones returns the number of distinct zones that have a node
// able to take a new replica now (ready, with a data address): the most
// zones a chunk's replicas can be spread over at the moment.
func PlacementZones(nodes []*api.Node) int {
	zones := map[string]bool{}
	for _, n := range nodes {
		if n.State == api.NodeReady && n.Addr != "" {
			zones[n.Zone] = true
		}
	}
	return len(zones)
}

// Misplaced reports whether the chunk's live replicas span fewer zones
// than they could: fewer than its replication factor or zones, the
// number of zones with a node able to take a replica
// ([PlacementZones]), whichever is smaller. Only committed chunks with a
// live replica can be mis-placed; a chunk can be both under-replicated
// and mis-placed (HDFS's mis-replicated blocks).
func (c ChunkState) Misplaced(zones int) bool {
	return c.Committed && len(c.Live) > 0 && c.LiveZones < min(c.Replication, zones)
}

// FSChunk returns one chunk, or false.
func (s *Snapshot) FSChunk(id string) (ChunkState, bool) {
	c := first[*fsChunk](s.txn, nil, tableFSChunks, id)
	if c == nil {
		return ChunkState{}, false
	}
	return c.state(), true
}

// state describes c without its liveness (Live is left empty).
func (c *fsChunk) state() ChunkState {
	return ChunkState{ID: c.ID, Length: c.Length, CRC: c.CRC, Replicas: c.Replicas,
		Replication: c.Replication, Cluster: c.Cluster, Committed: c.Committed, Updated: c.Updated}
}

// ClusterMembers returns the names of a cluster's nodes (none for "").
func (s *Snapshot) ClusterMembers(cluster string) map[string]bool {
	return memberSet(s.Cluster(nil, cluster))
}

// FSGarbage returns the chunks to delete and the nodes that may hold them.
func (s *Snapshot) FSGarbage(ws memdb.WatchSet) map[string][]string {
	out := map[string][]string{}
	for _, g := range collect[*fsGarbage](s.txn, ws, tableFSGarbage, "id") {
		out[g.Chunk] = g.Nodes
	}
	return out
}

// chunkInfos describes chunks in file order with their replicas.
func (s *Snapshot) chunkInfos(ws memdb.WatchSet, ids []string) []api.ChunkInfo {
	var out []api.ChunkInfo
	var off int64
	for _, id := range ids {
		c := first[*fsChunk](s.txn, ws, tableFSChunks, id)
		if c == nil {
			continue
		}
		ci := api.ChunkInfo{ID: id, Offset: off, Length: c.Length, CRC: c.CRC}
		for _, name := range c.Replicas {
			r := api.Replica{Node: name, State: api.ReplicaDown}
			if n := s.Node(ws, name); n != nil {
				r.Zone, r.Addr, r.Socket = n.Zone, n.Addr, n.Socket
				if n.State != api.NodeDown {
					r.State = api.ReplicaOK
				}
			}
			ci.Replicas = append(ci.Replicas, r)
		}
		off += c.Length
		out = append(out, ci)
	}
	return out
}

// FSStatus summarises the namespace and chunks (not the repair counters,
// which the leader keeps).
func (s *Snapshot) FSStatus(ws memdb.WatchSet) *api.FSStatus {
	st := &api.FSStatus{}
	for _, e := range collect[*fsEntry](s.txn, ws, tableFSEntries, "id") {
		if e.Dir {
			st.Dirs++
		} else {
			st.Files++
			st.LogicalBytes += e.Size
		}
	}
	zones := PlacementZones(s.Nodes(ws))
	for _, c := range s.FSChunks(ws) {
		if !c.Committed {
			continue
		}
		if c.Misplaced(zones) {
			st.Misplaced++
		}
		st.Chunks++
		st.StoredBytes += c.Length * int64(len(c.Live))
		switch {
		case len(c.Live) == 0:
			st.Unavailable++
			st.UnderReplicated++
		case len(c.Live) < c.Replication:
			st.UnderReplicated++
		}
	}
	st.SnapshotCount = len(collect[*fsSnapshot](s.txn, ws, tableFSSnapshots, "id"))
	st.PendingDeletions = len(collect[*fsGarbage](s.txn, ws, tableFSGarbage, "id"))
	return st
}

// InputBytes returns, per node, the bytes of the given files it holds in
// replicas on nodes that are not down (the scheduler's locality hint).
func (s *Snapshot) InputBytes(paths []string) map[string]int64 {
	out := map[string]int64{}
	for _, p := range paths {
		e := s.fsEntry(nil, p)
		if e == nil {
			continue
		}
		for _, id := range e.Chunks {
			c := first[*fsChunk](s.txn, nil, tableFSChunks, id)
			if c == nil {
				continue
			}
			for _, r := range c.Replicas {
				if n := s.Node(nil, r); n != nil && n.State != api.NodeDown {
					out[r] += c.Length
				}
			}
		}
	}
	return out
}
