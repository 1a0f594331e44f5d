package dfs

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"sort"
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
}

// NewReader returns a reader of a closed file as fi (from FSStat) describes
// it. Each chunk is read from its nearest healthy replica: the reader's own
// node, then its zone, then the others, down ones last. The data node
// verifies every block against its checksum before sending it; the reader
// checks each chunk's length and CRC32C end to end. On an error or a
// stall, it goes on from the same offset with the next replica, so the
// caller sees an error only when no replica can serve a part of the file.
func NewReader(ctx context.Context, cc *chunkstore.Client, fi *api.FileInfo, o ReadOptions, log *slog.Logger) io.ReadCloser {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	return &reader{ctx: ctx, cancel: cancel, cc: cc, fi: fi, o: o, log: log}
}

type reader struct {
	ctx    context.Context
	cancel context.CancelFunc
	cc     *chunkstore.Client
	fi     *api.FileInfo
	o      ReadOptions
	log    *slog.Logger

	chunk int    // index of the chunk being read
	off   int64  // offset inside it
	crc   uint32 // of the chunk's bytes so far
	order []api.Replica
	next  int // next replica of order to try
	body  io.ReadCloser
	stop  context.CancelFunc // of body's request
	timer *time.Timer
	fails []string
	err   error
}

func (r *reader) Read(p []byte) (int, error) {
	for r.err == nil {
		if r.chunk >= len(r.fi.Chunks) {
			r.err = io.EOF
			break
		}
		c := &r.fi.Chunks[r.chunk]
		if r.off == c.Length {
			if r.crc != c.CRC {
				r.err = fmt.Errorf("dfs: %s: chunk %s failed its end-to-end checksum", r.fi.Path, c.ID)
				break
			}
			r.closeBody()
			r.chunk, r.off, r.crc, r.order, r.next, r.fails = r.chunk+1, 0, 0, nil, 0, nil
			continue
		}
		if r.body == nil {
			r.open(c)
			continue
		}
		if int64(len(p)) > c.Length-r.off {
			p = p[:c.Length-r.off]
		}
		r.timer.Reset(r.o.IdleTimeout)
		n, err := r.body.Read(p)
		r.crc = crc32.Update(r.crc, castagnoli, p[:n])
		r.off += int64(n)
		if err != nil && r.off < c.Length {
			r.failReplica(err)
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, r.err
}

// open starts reading chunk c at r.off from the next replica to try.
func (r *reader) open(c *api.ChunkInfo) {
	if r.order == nil {
		r.order = orderReplicas(c.Replicas, r.o.Node, r.o.Zone)
	}
	for r.next < len(r.order) {
		rep := r.order[r.next]
		r.next++
		ctx, stop := context.WithCancel(r.ctx)
		body, err := r.cc.Get(ctx, rep.Addr, c.ID, r.off)
		if err != nil {
			stop()
			r.fails = append(r.fails, fmt.Sprintf("%s: %v", rep.Node, err))
			continue
		}
		r.body, r.stop = body, stop
		if r.timer != nil {
			r.timer.Stop()
		}
		r.timer = time.AfterFunc(r.o.IdleTimeout, stop) // a stalled replica is abandoned
		return
	}
	if r.ctx.Err() != nil {
		r.err = r.ctx.Err()
		return
	}
	r.err = fmt.Errorf("dfs: %s: no replica of chunk %s could be read (%s)", r.fi.Path, c.ID, joinFails(r.fails))
}

func (r *reader) failReplica(err error) {
	rep := r.order[r.next-1]
	r.log.Warn("replica read failed; trying another", "chunk", r.fi.Chunks[r.chunk].ID, "node", rep.Node, "err", err)
	r.fails = append(r.fails, fmt.Sprintf("%s: %v", rep.Node, err))
	r.closeBody()
}

func (r *reader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.stop()
		r.body = nil
	}
	if r.timer != nil {
		r.timer.Stop()
	}
}

func (r *reader) Close() error {
	r.closeBody()
	r.cancel()
	if r.err == nil {
		r.err = errors.New("dfs: reader closed")
	}
	return nil
}

// orderReplicas sorts replicas nearest first: same node, same zone, other
// zones, and replicas on down nodes last.
func orderReplicas(reps []api.Replica, node, zone string) []api.Replica {
	out := append([]api.Replica(nil), reps...)
	rank := func(r api.Replica) int {
		switch {
		case r.State == api.ReplicaDown:
			return 3
		case node != "" && r.Node == node:
			return 0
		case zone != "" && r.Zone == zone:
			return 1
		}
		return 2
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i]) < rank(out[j]) })
	return out
}

func joinFails(f []string) string {
	if len(f) == 0 {
		return "no replicas recorded"
	}
	s := f[0]
	for _, x := range f[1:] {
		s += "; " + x
	}
	return s
}
