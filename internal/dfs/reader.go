package dfs

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// ReadOptions say where the reader is, so that it reads the nearest
// replicas first.
type ReadOptions struct {
	Node string
	Zone string
	// IdleTimeout abandons a replica that sends nothing for this long and
	// goes on from another (default 10 s).
	IdleTimeout time.Duration
	// NoLocalSockets reads every replica over HTTP, even one whose data
	// node runs on this host (no short-circuit reads).
	NoLocalSockets bool
	// Refresh describes the file again, with fresh capabilities, when a
	// data node refuses a chunk's capability (it expired during a long
	// read); nil never refreshes.
	Refresh func(ctx context.Context) (*api.FileInfo, error)
}

// A reader holds at most readAhead*(fetchQueue+localAhead+2)+1 read
// buffers of 128 KiB: about 9 MiB. Deeper queues were slower in the
// benchmarks: the buffers then leave the CPU's cache between the read that
// fills them and the checksum and the caller that use them.
const (
	// readAhead is how many chunks a reader fetches at once: the one
	// being read and the next, so that the next is open and flowing when
	// the reader reaches it.
	readAhead = 2
	// fetchQueue is how many verified buffers a chunk's fetch may hold
	// ahead of the reader.
	fetchQueue = 16
	// localAhead is how many pieces (read buffers) of a local replica may
	// be read ahead of their verification.
	localAhead = 16
)

// NewReader returns a reader of a closed file as fi (from FSStat) describes
// it. Each chunk is read from its nearest healthy replica: one on this
// host (whose data node passes it the chunk's open files over a local
// socket, unless o.NoLocalSockets), then the reader's own node, its zone,
// the others, down ones last. It reads ahead: the next chunk is fetched
// while the current one is consumed, in bounded memory.
//
// Every byte is checksummed once on this side: a replica read over HTTP is
// verified block by block by its data node and checked end to end here,
// per chunk, against the namespace's CRC32C; a replica read directly is
// verified here block by block, before any of its bytes is returned, and a
// bad block is reported to its data node, which checks, drops and reports
// the replica. On an error, a bad block or a stall, the reader goes on
// from the same offset with the next replica, so the caller sees an error
// only when no replica can serve a part of the file.
//
// The reader implements io.WriterTo: io.Copy then hands the reader's
// buffers to the destination without a copy.
func NewReader(ctx context.Context, cc *chunkstore.Client, fi *api.FileInfo, o ReadOptions, log *slog.Logger) io.ReadCloser {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reader{ctx: ctx, cancel: cancel, cc: cc, fi: fi, o: o, log: log}
	r.bufferStream.next = r.next
	return r
}

// reader hands out, in order, the buffers that one fetch goroutine per
// chunk verifies; at most readAhead fetches run at a time.
type reader struct {
	ctx    context.Context
	cancel context.CancelFunc
	cc     *chunkstore.Client
	fi     *api.FileInfo
	o      ReadOptions
	log    *slog.Logger
	wg     sync.WaitGroup

	fetches      []*chunkFetch // started and not yet read to the end, in file order
	started      int           // chunks whose fetch has started
	err          error         // sticky: io.EOF or what stopped the reader
	bufferStream               // Read and WriteTo, over the buffers next yields
}

// chunkFetch is one chunk on its way to the reader: out carries its
// verified bytes in order and is closed at the end, after err is set.
type chunkFetch struct {
	c   *api.ChunkInfo
	out chan *buffer
	err error
	// capToken is the read capability sent to data nodes: c's, until a
	// refresh replaces it.
	capToken string
}

// next returns the next buffer of the file, starting fetches as needed.
func (r *reader) next() (*buffer, error) {
	for r.err == nil {
		for len(r.fetches) < readAhead && r.started < len(r.fi.Chunks) {
			c := &r.fi.Chunks[r.started]
			f := &chunkFetch{c: c, out: make(chan *buffer, fetchQueue), capToken: c.Capability}
			r.started++
			r.fetches = append(r.fetches, f)
			r.wg.Add(1)
			go r.fetch(f)
		}
		if len(r.fetches) == 0 {
			r.err = io.EOF
			if n := r.chunkBytes(); n != r.fi.Size {
				r.err = fmt.Errorf("dfs: %s: its chunks hold %d bytes, but the file has %d", r.fi.Path, n, r.fi.Size)
			}
			break
		}
		f := r.fetches[0]
		if b, ok := <-f.out; ok {
			return b, nil
		}
		if f.err != nil {
			r.err = f.err
			break
		}
		r.fetches = r.fetches[1:]
	}
	return nil, r.err
}

func (r *reader) chunkBytes() int64 {
	var n int64
	for _, c := range r.fi.Chunks {
		n += c.Length
	}
	return n
}

// Close stops the fetches and waits for them to end.
func (r *reader) Close() error {
	r.cancel()
	r.wg.Wait()
	r.drop()
	for _, f := range r.fetches {
		for b := range f.out {
			b.release()
		}
	}
	r.fetches = nil
	if r.err == nil {
		r.err = errors.New("dfs: reader closed")
	}
	return nil
}

// fetchState is how far a chunk's fetch got: the bytes delivered and
// their CRC32C.
type fetchState struct {
	off int64
	crc uint32
}

// fetch delivers chunk f.c to f.out from its replicas, nearest first,
// going on from where a failed replica stopped.
func (r *reader) fetch(f *chunkFetch) {
	defer r.wg.Done()
	defer close(f.out)
	c := f.c
	var st fetchState
	var fails []string
	done, refreshed := false, false
	for _, cand := range r.order(c) {
		err := r.fromReplica(f, cand, &st)
		if refusedCapability(err) && !refreshed && r.ctx.Err() == nil {
			refreshed = true
			if r.refresh(f) {
				err = r.fromReplica(f, cand, &st)
			}
		}
		if err == nil {
			done = true
			break
		}
		if r.ctx.Err() != nil {
			break
		}
		r.log.Warn("replica read failed; trying another", "chunk", c.ID, "node", cand.rep.Node, "offset", st.off, "err", err)
		fails = append(fails, fmt.Sprintf("%s: %v", cand.rep.Node, err))
	}
	switch {
	case r.ctx.Err() != nil:
		f.err = r.ctx.Err()
	case !done:
		f.err = fmt.Errorf("dfs: %s: no replica of chunk %s could be read (%s)", r.fi.Path, c.ID, joinFails(fails))
	case st.crc != c.CRC:
		f.err = fmt.Errorf("dfs: %s: chunk %s failed its end-to-end checksum", r.fi.Path, c.ID)
	}
}

// refusedCapability reports whether a data node refused a request's
// capability.
func refusedCapability(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden)
}

// refresh asks ReadOptions.Refresh for a new capability for f's chunk and
// reports whether it got one.
func (r *reader) refresh(f *chunkFetch) bool {
	if r.o.Refresh == nil {
		return false
	}
	fi, err := r.o.Refresh(r.ctx)
	if err != nil {
		r.log.Warn("a data node refused a chunk's capability and describing the file again failed", "chunk", f.c.ID, "err", err)
		return false
	}
	for _, c := range fi.Chunks {
		if c.ID == f.c.ID && c.Capability != "" {
			f.capToken = c.Capability
			return true
		}
	}
	return false
}

// candidate is a replica to read from; local says its data node's socket
// is on this host.
type candidate struct {
	rep   api.Replica
	local bool
}

// order returns the replicas of c to try, nearest first.
func (r *reader) order(c *api.ChunkInfo) []candidate {
	local := map[string]bool{}
	if !r.o.NoLocalSockets {
		for _, rep := range c.Replicas {
			local[rep.Node] = socketHere(rep.Socket)
		}
	}
	reps := orderReplicas(c.Replicas, r.o.Node, r.o.Zone, func(rep api.Replica) bool { return local[rep.Node] })
	out := make([]candidate, len(reps))
	for i, rep := range reps {
		out[i] = candidate{rep: rep, local: local[rep.Node]}
	}
	return out
}

// socketHere reports whether path names a unix socket on this host that
// this process may see.
func socketHere(path string) bool {
	if path == "" {
		return false
	}
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// fromReplica delivers the rest of the chunk from one replica: through its
// data node's socket when it is local, else (or if that fails to open)
// over HTTP.
func (r *reader) fromReplica(f *chunkFetch, cand candidate, st *fetchState) error {
	if cand.local {
		lc, err := chunkstore.OpenLocal(r.ctx, cand.rep.Socket, cand.rep.Node, f.c.ID)
		var ce *chunkstore.CorruptError
		switch {
		case err == nil:
			defer lc.Close()
			return r.readLocal(f, cand.rep, lc, st)
		case errors.As(err, &ce):
			r.reportCorrupt(cand.rep, f.c.ID, err)
			return err
		case errors.Is(err, chunkstore.ErrNotFound) || errors.Is(err, chunkstore.ErrCorrupt):
			return err // the node has no sound copy: HTTP would say the same
		case r.ctx.Err() != nil:
			return err
		}
		r.log.Debug("short-circuit read unavailable; reading over HTTP", "chunk", f.c.ID, "node", cand.rep.Node, "err", err)
	}
	return r.readHTTP(f, cand.rep, st)
}

// piece is one read of a local replica, on its way to be verified.
type piece struct {
	off int64
	b   *buffer
	err error // of the read
}

// readLocal delivers the rest of a chunk read straight from its file. It
// reads in this goroutine, one steady stream of reads that keeps the
// kernel's read-ahead going, up to localAhead pieces ahead of a second
// goroutine that verifies them and delivers them in order. A bad block,
// reported to the data node, ends the read after the verified bytes before
// it. Pieces are whole blocks from block boundaries (after a resume at
// another offset, a first read ends at the next boundary), so that each
// byte is checksummed once: the chunk's running CRC is combined from the
// pieces'.
func (r *reader) readLocal(f *chunkFetch, rep api.Replica, lc *chunkstore.LocalChunk, st *fetchState) error {
	c := f.c
	if lc.Length() != c.Length || lc.CRC() != c.CRC {
		return fmt.Errorf("dfs: %s holds chunk %s as %d bytes with CRC32C %d; the namespace says %d bytes with %d",
			rep.Node, c.ID, lc.Length(), lc.CRC(), c.Length, c.CRC)
	}
	if skip := st.off % api.BlockSize; skip != 0 && st.off < c.Length {
		b := readBuffers.get()
		n, crc, err := lc.ReadAt(b.full()[:api.BlockSize-skip], st.off)
		b.b = b.b[:n]
		if err == nil && !r.deliver(f, b) {
			return r.ctx.Err()
		}
		if err != nil {
			b.release()
			return r.localFailed(rep, c.ID, err)
		}
		st.off, st.crc = st.off+int64(n), chunkstore.CombineCRC(st.crc, crc, int64(n))
	}
	ctx, stop := context.WithCancel(r.ctx)
	defer stop()
	pieces := make(chan *piece, localAhead)
	verified := make(chan error, 1)
	go func() { verified <- r.verifyLocal(ctx, stop, f, lc, pieces, st) }()
	for off := st.off; off < c.Length && ctx.Err() == nil; {
		b := readBuffers.get()
		n, err := lc.ReadRaw(b.full(), off)
		b.b = b.b[:n]
		pieces <- &piece{off: off, b: b, err: err}
		if err != nil {
			break
		}
		off += int64(n)
	}
	close(pieces)
	if err := <-verified; err != nil {
		return r.localFailed(rep, c.ID, err)
	}
	return nil
}

// verifyLocal verifies the pieces readLocal reads and delivers them in
// order, updating st, until pieces is closed; after a failure it only
// drains them. It returns the first failure.
func (r *reader) verifyLocal(ctx context.Context, stop context.CancelFunc, f *chunkFetch, lc *chunkstore.LocalChunk,
	pieces <-chan *piece, st *fetchState) error {
	var err error
	for p := range pieces {
		if err != nil {
			p.b.release()
			continue
		}
		if p.err != nil {
			err = p.err
			p.b.release()
			stop()
			continue
		}
		n, crc, verr := lc.Verify(p.b.b, p.off)
		p.b.b = p.b.b[:n]
		switch {
		case n == 0:
			p.b.release()
		case !r.deliver(f, p.b):
			verr = r.ctx.Err()
		default:
			st.off, st.crc = st.off+int64(n), chunkstore.CombineCRC(st.crc, crc, int64(n))
		}
		if verr != nil {
			err = verr
			stop()
		}
	}
	if err == nil && ctx.Err() != nil {
		err = r.ctx.Err()
	}
	return err
}

// localFailed reports a bad block found by a local read to its data node
// and returns err.
func (r *reader) localFailed(rep api.Replica, id string, err error) error {
	if errors.Is(err, chunkstore.ErrCorrupt) {
		r.reportCorrupt(rep, id, err)
	}
	return err
}

// reportCorrupt asks the data node of a replica whose block failed its
// checksum to verify it; the node drops and reports it if it is corrupt.
func (r *reader) reportCorrupt(rep api.Replica, id string, cause error) {
	err := chunkstore.VerifyLocal(r.ctx, rep.Socket, rep.Node, id)
	switch {
	case errors.Is(err, chunkstore.ErrCorrupt):
		r.log.Warn("corrupt replica found by a local read; its node dropped and reported it", "chunk", id, "node", rep.Node, "err", cause)
	case err == nil:
		r.log.Warn("a local read found a bad block, but the node finds its replica sound", "chunk", id, "node", rep.Node, "err", cause)
	default:
		r.log.Warn("a local read found a bad block and its node could not verify the replica", "chunk", id, "node", rep.Node, "err", err)
	}
}

// readHTTP delivers the rest of a chunk from a replica's data node over
// HTTP, checksumming what arrives for the end-to-end check. A replica that
// sends nothing for the idle timeout is abandoned.
func (r *reader) readHTTP(f *chunkFetch, rep api.Replica, st *fetchState) error {
	c := f.c
	ctx, stop := context.WithCancel(r.ctx)
	defer stop()
	idle := time.AfterFunc(r.o.IdleTimeout, stop)
	defer idle.Stop()
	body, sc, err := r.cc.Fetch(ctx, rep.Addr, c.ID, f.capToken, st.off)
	if err != nil {
		return err
	}
	defer body.Close()
	if sc.Length >= 0 && (sc.Length != c.Length || sc.CRC != c.CRC) {
		return fmt.Errorf("dfs: %s holds chunk %s as %d bytes with CRC32C %d; the namespace says %d bytes with %d",
			rep.Node, c.ID, sc.Length, sc.CRC, c.Length, c.CRC)
	}
	src := &idleReader{r: body, timer: idle, d: r.o.IdleTimeout}
	for st.off < c.Length {
		b := readBuffers.get()
		n, err := readFull(src, b.full()[:min(int64(readBuffers.size), c.Length-st.off)])
		if n > 0 {
			b.b = b.b[:n]
			crc := crc32.Update(st.crc, castagnoli, b.b)
			if !r.deliver(f, b) {
				return r.ctx.Err()
			}
			st.off, st.crc = st.off+int64(n), crc
		} else {
			b.release()
		}
		if err != nil && st.off < c.Length {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// deliver queues b for the reader; it reports false, dropping b, if the
// reader was closed.
func (r *reader) deliver(f *chunkFetch, b *buffer) bool {
	select {
	case f.out <- b:
		return true
	case <-r.ctx.Done():
		b.release()
		return false
	}
}

// idleReader restarts an idle timer on every read.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	ir.timer.Reset(ir.d)
	return ir.r.Read(p)
}

// orderReplicas sorts replicas nearest first: on this host or the reader's
// node, same zone, other zones, and replicas on down nodes last.
func orderReplicas(reps []api.Replica, node, zone string, local func(api.Replica) bool) []api.Replica {
	out := append([]api.Replica(nil), reps...)
	rank := make(map[string]int, len(out))
	for _, r := range out {
		switch {
		case r.State == api.ReplicaDown:
			rank[r.Node] = 3
		case node != "" && r.Node == node || local != nil && local(r):
			rank[r.Node] = 0
		case zone != "" && r.Zone == zone:
			rank[r.Node] = 1
		default:
			rank[r.Node] = 2
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return rank[out[i].Node] < rank[out[j].Node] })
	return out
}

func joinFails(f []string) string {
	if len(f) == 0 {
		return "no replicas recorded"
	}
	return strings.Join(f, "; ")
}
