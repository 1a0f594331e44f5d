// Package dfs is the client side of Shoal's distributed file system: it
// writes a stream into a new file (split into chunks, each sent to all its
// replicas and committed only once every replica synced it, the next chunk
// streaming while one syncs) and reads a file back from the nearest
// healthy replicas, ahead of the caller, with checksums verified and local
// replicas read straight from their files. [Client] is what the CLI and
// other programs use: it talks to the servers only for metadata and moves
// the bytes to and from the data nodes itself. The servers' streaming
// endpoints and the agents (task inputs and outputs) use [Writer] and
// [NewReader] directly. It reaches the namespace only through [Namespace],
// which *api.Client implements.
package dfs

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// Namespace is the part of the server API a writer uses.
type Namespace interface {
	FSCreate(ctx context.Context, r *api.FileCreate) (*api.FileInfo, error)
	FSAllocate(ctx context.Context, r *api.ChunkAllocate) (*api.ChunkAllocation, error)
	FSCommit(ctx context.Context, r *api.ChunkCommit) error
	FSClose(ctx context.Context, r *api.FileClose) (*api.FileInfo, error)
	FSAbort(ctx context.Context, r *api.FileAbort) error
	FSRenew(ctx context.Context, r *api.FileRenew) error
}

// ErrShortBody means the data ended before the length the caller declared.
var ErrShortBody = errors.New("dfs: the data ended before its declared length")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const (
	// pipelineDepth is how many chunks a writer has in flight: one
	// streams to its replicas while the one before it is synced and
	// committed. More would only add memory: the replicas' disks take
	// one chunk's sync at a time.
	pipelineDepth = 2
	// replicaQueue is how many buffers may wait for one replica's upload;
	// the slowest replica sets the pace beyond that.
	replicaQueue = 8
	// abortTimeout bounds deleting a file whose write failed.
	abortTimeout = 30 * time.Second
)

// WriteOptions tune [Writer.Write].
type WriteOptions struct {
	Replication int
	ChunkSize   int64
	Overwrite   bool
	// Size is the number of bytes r must yield, or -1 when unknown.
	Size int64
	// Writer is the writing data node, whose disk gets the first replica.
	Writer string
}

// Writer writes files. It is safe for concurrent use.
type Writer struct {
	NS     Namespace
	Chunks *chunkstore.Client
	Log    *slog.Logger
}

// Write creates path and fills it with r. Each chunk is sent to all its
// replicas at once (fan-out) and committed only after every replica that
// took it synced it to disk. A replica that fails during the chunk is
// replaced by a node that copies the chunk from one that succeeded, so a
// chunk is committed with fewer replicas than asked only when no other
// node can take one, and then the namespace records exactly which nodes
// hold it (repair adds the rest later). Chunks are pipelined: the next
// chunk streams while the replicas of the one before sync it, and chunks
// are committed in order, each after the one before it. If r fails or
// ends early, ctx ends, or no replica of a chunk survives, the file is
// deleted and Write returns the error: the file exists, closed, only when
// Write returns nil, and an overwritten file is then left as it was.
//
// r is read ahead of the chunks being sent, in another goroutine, so that
// a cancelled write returns even while a Read of r blocks; when Write
// fails, that Read may still be running (it ends when r returns).
func (w *Writer) Write(ctx context.Context, path string, r io.Reader, o WriteOptions) (*api.FileInfo, error) {
	fi, err := w.NS.FSCreate(ctx, &api.FileCreate{Path: path, Replication: o.Replication,
		ChunkSize: o.ChunkSize, Overwrite: o.Overwrite})
	if err != nil {
		return nil, err
	}
	stopRenewing := w.renew(ctx, fi)
	size, err := w.fill(ctx, fi, r, o)
	stopRenewing()
	if err == nil && o.Size >= 0 && size != o.Size {
		err = fmt.Errorf("%w: got %d of %d bytes", ErrShortBody, size, o.Size)
	}
	if err == nil {
		var closed *api.FileInfo
		if closed, err = w.NS.FSClose(ctx, &api.FileClose{Path: fi.Path, FileID: fi.FileID, Size: size}); err == nil {
			return closed, nil
		}
	}
	// Abort with a fresh context: the caller's may be what failed.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	if aerr := w.NS.FSAbort(actx, &api.FileAbort{Path: fi.Path, FileID: fi.FileID}); aerr != nil && !api.IsNotFound(aerr) {
		w.Log.Warn("could not delete a file whose write failed", "path", fi.Path, "err", aerr)
	}
	return nil, err
}

// renew keeps fi open while it is being written, renewing the writer's
// lease every third of it, so that a writer waiting for slow input keeps
// its file while one that died loses it within a lease. It returns a
// function that stops renewing and waits until it has.
func (w *Writer) renew(ctx context.Context, fi *api.FileInfo) (stop func()) {
	lease := time.Duration(fi.LeaseSeconds) * time.Second
	if lease <= 0 {
		lease = api.DefaultOpenFileLease
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := w.NS.FSRenew(ctx, &api.FileRenew{Path: fi.Path, FileID: fi.FileID}); err != nil && ctx.Err() == nil {
				w.Log.Warn("renewing the lease of a file being written", "path", fi.Path, "err", err)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// chunkWrite is one chunk on its way: streamed by fill, then synced,
// repaired and committed by finish. err is set before done is closed.
type chunkWrite struct {
	id     string
	puts   []*replicaPut
	cancel context.CancelFunc // of the uploads
	length int64
	crc    uint32
	last   bool // the data ended in this chunk
	done   chan struct{}
	err    error
}

// fill writes the chunks of an open file and returns the bytes written.
// It streams one chunk at a time from r and hands each, once streamed, to
// a goroutine that waits for its replicas and commits it; at most
// pipelineDepth chunks are in flight. The namespace appends chunks to the
// file in the order they are committed, so each chunk's commit waits for
// the one before it, and a chunk after a failed one is never committed.
// The first failure, wherever it happens, cancels everything in flight
// and is what fill returns, once nothing runs any more.
func (w *Writer) fill(ctx context.Context, fi *api.FileInfo, r io.Reader, o WriteOptions) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	src := startSource(r, fi.ChunkSize)
	defer src.close()
	var (
		total    int64
		inflight []*chunkWrite // oldest first
		prev     *chunkWrite
		failed   bool
	)
	for !failed {
		if len(inflight) == pipelineDepth {
			<-inflight[0].done
			failed = inflight[0].err != nil
			inflight = inflight[1:]
			continue
		}
		first, err := src.next(ctx)
		if err != nil && err != io.EOF {
			if first != nil {
				first.release()
			}
			cancel(err)
			failed = true
			break
		}
		if len(first.b) == 0 { // the data ended with the chunk before
			first.release()
			break
		}
		cw, err := w.stream(ctx, fi, first, err, src, o.Writer)
		if err != nil {
			cancel(err)
			failed = true
			break
		}
		total += cw.length
		go w.finish(ctx, cancel, fi, cw, prev, o.Writer)
		inflight, prev = append(inflight, cw), cw
		if cw.last {
			break
		}
	}
	for _, cw := range inflight {
		<-cw.done
		failed = failed || cw.err != nil
	}
	if failed {
		return total, context.Cause(ctx)
	}
	return total, nil
}

// readFull reads until b is full or r ends. Unlike io.ReadFull it returns
// io.EOF whenever r ended cleanly, and passes on any other error as it is
// (an HTTP body cut short says io.ErrUnexpectedEOF, which must not look
// like the end of the data).
func readFull(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// sourceAhead is how many buffers of its data a writer reads ahead.
const sourceAhead = 2

// source reads a writer's data ahead of it, in its own goroutine: reading
// overlaps checksumming and sending, and a writer whose context ends is
// never stuck in a Read that does not return (a terminal, a pipe whose
// writer waits); such a Read is left to end on its own.
type source struct {
	bufs chan sourceBuf
	stop chan struct{}
}

// sourceBuf is a buffer of data, all of it within one chunk, and the error
// that ended the data after it: io.EOF at its end.
type sourceBuf struct {
	b   *buffer
	err error
}

// startSource starts reading r in buffers that never cross a chunk boundary.
func startSource(r io.Reader, chunkSize int64) *source {
	s := &source{bufs: make(chan sourceBuf, sourceAhead), stop: make(chan struct{})}
	go func() {
		for left := chunkSize; ; {
			b := writeBuffers.get()
			n, err := readFull(r, b.full()[:min(int64(writeBuffers.size), left)])
			b.b = b.b[:n]
			if err != nil && err != io.EOF {
				err = fmt.Errorf("dfs: reading data: %w", err)
			}
			select {
			case s.bufs <- sourceBuf{b, err}:
			case <-s.stop:
				b.release()
				return
			}
			if err != nil {
				return
			}
			if left -= int64(n); left == 0 {
				left = chunkSize
			}
		}
	}()
	return s
}

// next returns the next buffer and the error that ended the data after it,
// or ctx's cause.
func (s *source) next(ctx context.Context) (*buffer, error) {
	select {
	case sb := <-s.bufs:
		return sb.b, sb.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (s *source) close() { close(s.stop) }

// stream allocates a chunk and sends it to all its replicas: first, whose
// read ended with firstErr, and then what src yields up to the chunk's
// end. It returns once every byte was handed to the replicas' uploads; it
// fails, with the uploads cancelled so that no replica keeps a partial
// chunk, if reading fails or ctx ends.
func (w *Writer) stream(ctx context.Context, fi *api.FileInfo, first *buffer, firstErr error, src *source, writer string) (*chunkWrite, error) {
	alloc, err := w.NS.FSAllocate(ctx, &api.ChunkAllocate{Path: fi.Path, FileID: fi.FileID, Writer: writer})
	if err != nil || len(alloc.Replicas) == 0 {
		first.release()
		if err == nil {
			err = fmt.Errorf("dfs: no replica allocated for a chunk of %s", fi.Path)
		}
		return nil, err
	}
	pctx, cancelPuts := context.WithCancel(ctx)
	cw := &chunkWrite{id: alloc.ID, done: make(chan struct{}), cancel: cancelPuts}
	for _, rep := range alloc.Replicas {
		p := &replicaPut{rep: rep, done: make(chan struct{}),
			body: newChunkBody()}
		cw.puts = append(cw.puts, p)
		go w.put(pctx, alloc.ID, alloc.Capability, p)
	}
	var readErr error
	for b, berr := first, firstErr; ; {
		if len(b.b) > 0 {
			cw.crc = crc32.Update(cw.crc, castagnoli, b.b)
			cw.length += int64(len(b.b))
			cw.send(b)
		} else {
			b.release()
		}
		if berr == io.EOF {
			cw.last = true
			break
		}
		if berr != nil {
			readErr = berr
			break
		}
		if cw.length == fi.ChunkSize {
			break
		}
		if b, berr = src.next(ctx); b == nil {
			readErr = berr // ctx ended
			break
		}
	}
	if readErr != nil {
		// The replicas must not sync a partial chunk: cancel their
		// uploads before ending the bodies, which then end in error.
		cancelPuts()
		for _, p := range cw.puts {
			p.body.aborted.Store(true)
		}
	}
	for _, p := range cw.puts {
		close(p.body.bufs)
	}
	if readErr != nil {
		for _, p := range cw.puts {
			<-p.done
		}
		return nil, readErr
	}
	return cw, nil
}

// send hands b, and the caller's reference to it, to every replica's
// upload; one that already failed is skipped.
func (cw *chunkWrite) send(b *buffer) {
	b.refs.Store(int32(len(cw.puts)))
	for _, p := range cw.puts {
		select {
		case p.body.bufs <- b:
		case <-p.done:
			b.release()
		}
	}
}

// finish waits for the replicas of a streamed chunk, replaces those that
// failed, waits for the chunk before it to be committed and commits it. A
// failure cancels the whole write.
func (w *Writer) finish(ctx context.Context, cancel context.CancelCauseFunc, fi *api.FileInfo, cw, prev *chunkWrite, writer string) {
	defer close(cw.done)
	defer cw.cancel()
	fail := func(err error) {
		cw.err = err
		cancel(err)
	}
	var ok, failed []api.Replica
	for _, p := range cw.puts {
		<-p.done
		switch {
		case p.err != nil:
			if ctx.Err() == nil {
				w.Log.Warn("replica failed during a chunk write", "chunk", cw.id, "node", p.rep.Node, "err", p.err)
			}
			failed = append(failed, p.rep)
		case p.res.Length != cw.length || p.res.CRC != cw.crc:
			w.Log.Warn("replica stored different bytes", "chunk", cw.id, "node", p.rep.Node)
			failed = append(failed, p.rep)
		default:
			ok = append(ok, p.rep)
		}
	}
	if ctx.Err() != nil {
		fail(context.Cause(ctx))
		return
	}
	if len(ok) == 0 {
		fail(fmt.Errorf("dfs: chunk %s of %s: every replica failed (%s)", cw.id, fi.Path, describe(cw.puts)))
		return
	}
	if len(failed) > 0 {
		ok = w.replace(ctx, fi, cw.id, ok, failed, cw.length, cw.crc, writer)
	}
	if prev != nil {
		<-prev.done
		if prev.err != nil {
			cw.err = prev.err
			return
		}
	}
	if ctx.Err() != nil {
		fail(context.Cause(ctx))
		return
	}
	names := make([]string, len(ok))
	for i, r := range ok {
		names[i] = r.Node
	}
	if err := w.NS.FSCommit(ctx, &api.ChunkCommit{Path: fi.Path, FileID: fi.FileID, ID: cw.id,
		Length: cw.length, CRC: cw.crc, Replicas: names}); err != nil {
		fail(err)
	}
}

// replicaPut is one replica's upload of a chunk.
type replicaPut struct {
	rep  api.Replica
	body *chunkBody
	res  api.StoredChunk
	err  error
	done chan struct{}
}

// put uploads p's body to its replica. Once the upload returned, the
// buffers still sent to it are released as they come, so that the writer
// never blocks on a failed replica.
func (w *Writer) put(ctx context.Context, id, capToken string, p *replicaPut) {
	p.res, p.err = w.Chunks.Put(ctx, p.rep.Addr, id, capToken, p.body, -1)
	close(p.body.stop)
	close(p.done)
	for b := range p.body.bufs {
		b.release()
	}
}

// errUploadEnded ends a body whose upload already returned.
var errUploadEnded = errors.New("dfs: replica upload ended")

// errChunkAborted ends the body of a chunk whose write failed, so that
// the replica sees a cut stream rather than a short chunk.
var errChunkAborted = errors.New("dfs: chunk write aborted")

// chunkBody is the request body of one replica's upload: the buffers the
// writer sends it, in order, until it closes bufs; its bufferStream hands
// each MiB to the HTTP transport in one write. The transport
// may still read the body after the upload returned; stop, closed then,
// ends it.
type chunkBody struct {
	bufs    chan *buffer
	stop    chan struct{}
	aborted atomic.Bool // set before bufs is closed on a failed chunk
	bufferStream
}

func newChunkBody() *chunkBody {
	b := &chunkBody{bufs: make(chan *buffer, replicaQueue), stop: make(chan struct{})}
	b.bufferStream.next = b.next
	return b
}

func (b *chunkBody) next() (*buffer, error) {
	select {
	case buf, ok := <-b.bufs:
		switch {
		case ok:
			return buf, nil
		case b.aborted.Load():
			return nil, errChunkAborted
		}
		return nil, io.EOF
	case <-b.stop:
		return nil, errUploadEnded
	}
}

// replace finds nodes for the failed replicas of a written chunk and has
// each copy it from a replica that has it. It returns the replicas that
// hold the chunk in the end.
func (w *Writer) replace(ctx context.Context, fi *api.FileInfo, id string, ok, failed []api.Replica,
	length int64, crc uint32, writer string) []api.Replica {
	exclude := make([]string, len(failed))
	for i, f := range failed {
		exclude[i] = f.Node
	}
	alloc, err := w.NS.FSAllocate(ctx, &api.ChunkAllocate{Path: fi.Path, FileID: fi.FileID, Writer: writer,
		Chunk: id, Exclude: exclude, Count: len(failed)})
	if err != nil {
		w.Log.Warn("no replacement for failed replicas; the chunk is committed under-replicated and repaired later",
			"chunk", id, "err", err)
		return ok
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, rep := range alloc.Replicas {
		src := ok[i%len(ok)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := w.Chunks.Replicate(ctx, rep.Addr, id, alloc.Capability,
				api.ReplicateRequest{Source: src.Addr, Length: length, CRC: crc, SourceCapability: alloc.ReadCapability})
			if err != nil {
				w.Log.Warn("replacement replica failed", "chunk", id, "node", rep.Node, "err", err)
				return
			}
			mu.Lock()
			ok = append(ok, rep)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return slices.Clip(ok)
}

func describe(puts []*replicaPut) string {
	s := ""
	for i, p := range puts {
		if i > 0 {
			s += "; "
		}
		s += fmt.Sprintf("%s: %v", p.rep.Node, p.err)
	}
	return s
}
