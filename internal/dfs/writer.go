// Package dfs is the client side of Shoal's distributed file system: it
// writes a stream into a new file (split into chunks, each sent to all its
// replicas and committed only once every replica synced it) and reads a
// file back from the nearest healthy replicas with checksums verified. The
// servers' upload and download endpoints, the agents (task inputs and
// outputs) and the benchmarks all use it; it talks to the namespace only
// through [Namespace], which *api.Client implements.
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

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// Namespace is the part of the server API a writer and a reader use.
type Namespace interface {
	FSCreate(ctx context.Context, r *api.FileCreate) (*api.FileInfo, error)
	FSAllocate(ctx context.Context, r *api.ChunkAllocate) (*api.ChunkAllocation, error)
	FSCommit(ctx context.Context, r *api.ChunkCommit) error
	FSClose(ctx context.Context, r *api.FileClose) (*api.FileInfo, error)
	FSAbort(ctx context.Context, r *api.FileAbort) error
}

// ErrShortBody means the data ended before the length the caller declared.
var ErrShortBody = errors.New("dfs: the data ended before its declared length")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const bufSize = 1 << 20

// WriteOptions tune [Write].
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
// hold it (repair adds the rest later). If r fails or ends early, or no
// replica of a chunk survives, the file is deleted and Write returns the
// error: the file exists, closed, only when Write returns nil.
func (w *Writer) Write(ctx context.Context, path string, r io.Reader, o WriteOptions) (*api.FileInfo, error) {
	fi, err := w.NS.FSCreate(ctx, &api.FileCreate{Path: path, Replication: o.Replication,
		ChunkSize: o.ChunkSize, Overwrite: o.Overwrite})
	if err != nil {
		return nil, err
	}
	size, err := w.fill(ctx, fi, r, o)
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
	if aerr := w.NS.FSAbort(context.WithoutCancel(ctx), &api.FileAbort{Path: fi.Path, FileID: fi.FileID}); aerr != nil && !api.IsNotFound(aerr) {
		w.Log.Warn("could not delete a file whose write failed", "path", fi.Path, "err", aerr)
	}
	return nil, err
}

// fill writes the chunks of an open file and returns the bytes written.
func (w *Writer) fill(ctx context.Context, fi *api.FileInfo, r io.Reader, o WriteOptions) (int64, error) {
	var total int64
	for {
		chunk := io.LimitReader(r, fi.ChunkSize)
		first := make([]byte, min(bufSize, fi.ChunkSize))
		n, err := readFull(chunk, first)
		switch {
		case n == 0 && err == io.EOF:
			return total, nil
		case err != nil && err != io.EOF:
			return total, fmt.Errorf("dfs: reading data: %w", err)
		}
		length, err := w.writeChunk(ctx, fi, first[:n], chunk, o.Writer)
		total += length
		if err != nil || length < fi.ChunkSize {
			return total, err
		}
	}
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

// replicaPut is one replica's upload of the chunk being written.
type replicaPut struct {
	rep  api.Replica
	bufs chan []byte
	res  api.StoredChunk
	err  error
	done chan struct{}
}

// writeChunk allocates a chunk, streams first and then rest to all its
// replicas, replaces failed replicas, and commits it.
func (w *Writer) writeChunk(ctx context.Context, fi *api.FileInfo, first []byte, rest io.Reader, writer string) (int64, error) {
	alloc, err := w.NS.FSAllocate(ctx, &api.ChunkAllocate{Path: fi.Path, FileID: fi.FileID, Writer: writer})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	puts := make([]*replicaPut, len(alloc.Replicas))
	for i, rep := range alloc.Replicas {
		p := &replicaPut{rep: rep, bufs: make(chan []byte, 8), done: make(chan struct{})}
		puts[i] = p
		go w.put(ctx, alloc.ID, p)
	}
	send := func(b []byte) {
		for _, p := range puts {
			select {
			case p.bufs <- b:
			case <-p.done: // this replica failed; the others go on
			}
		}
	}
	crc := crc32.Update(0, castagnoli, first)
	length := int64(len(first))
	send(first)
	var readErr error
	for {
		b := make([]byte, bufSize)
		n, err := readFull(rest, b)
		if n > 0 {
			crc = crc32.Update(crc, castagnoli, b[:n])
			length += int64(n)
			send(b[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("dfs: reading data: %w", err)
			break
		}
	}
	if readErr != nil {
		cancel() // the replicas must not sync a partial chunk
	}
	for _, p := range puts {
		close(p.bufs)
	}
	var ok, failed []api.Replica
	for _, p := range puts {
		<-p.done
		switch {
		case p.err != nil:
			w.Log.Warn("replica failed during a chunk write", "chunk", alloc.ID, "node", p.rep.Node, "err", p.err)
			failed = append(failed, p.rep)
		case p.res.Length != length || p.res.CRC != crc:
			w.Log.Warn("replica stored different bytes", "chunk", alloc.ID, "node", p.rep.Node)
			failed = append(failed, p.rep)
		default:
			ok = append(ok, p.rep)
		}
	}
	if readErr != nil {
		return length, readErr
	}
	if len(ok) == 0 {
		return length, fmt.Errorf("dfs: chunk %s of %s: every replica failed (%s)", alloc.ID, fi.Path, describe(puts))
	}
	if len(failed) > 0 {
		ok = w.replace(ctx, fi, alloc.ID, ok, failed, length, crc, writer)
	}
	names := make([]string, len(ok))
	for i, r := range ok {
		names[i] = r.Node
	}
	err = w.NS.FSCommit(ctx, &api.ChunkCommit{Path: fi.Path, FileID: fi.FileID, ID: alloc.ID,
		Length: length, CRC: crc, Replicas: names})
	return length, err
}

// put streams the buffers of p to its replica. On failure it keeps
// draining p.bufs so that the writer never blocks on it.
func (w *Writer) put(ctx context.Context, id string, p *replicaPut) {
	pr, pw := io.Pipe()
	go func() {
		for b := range p.bufs {
			if _, err := pw.Write(b); err != nil {
				break
			}
		}
		pw.Close()
		for range p.bufs {
		}
	}()
	p.res, p.err = w.Chunks.Put(ctx, p.rep.Addr, id, pr, -1)
	pr.CloseWithError(errors.New("dfs: replica upload ended"))
	close(p.done)
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
			_, err := w.Chunks.Replicate(ctx, rep.Addr, id, api.ReplicateRequest{Source: src.Addr, Length: length, CRC: crc})
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
