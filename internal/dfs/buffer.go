package dfs

import (
	"io"
	"sync"
	"sync/atomic"
)

// Data moves through writers and readers in pooled buffers. Reusing them
// matters: touching fresh memory for every MiB costs more than moving it.
// Writers use large buffers (fewer, larger writes to the replicas' sockets);
// readers use small ones, which stay in the CPU's cache between the read
// that fills them, the checksum that verifies them and the caller's use.
var (
	writeBuffers = newBufferPool(1 << 20)
	readBuffers  = newBufferPool(128 << 10)
)

// bufferPool is a pool of buffers of one size.
type bufferPool struct {
	size int
	pool sync.Pool
}

func newBufferPool(size int) *bufferPool {
	bp := &bufferPool{size: size}
	bp.pool.New = func() any { b := make([]byte, size); return &b }
	return bp
}

// get returns an empty buffer whose one reference is the caller's.
func (bp *bufferPool) get() *buffer {
	p := bp.pool.Get().(*[]byte)
	b := &buffer{pool: bp, p: p, b: (*p)[:0]}
	b.refs.Store(1)
	return b
}

// buffer is a pooled buffer, possibly shared (the uploads of a chunk to
// its replicas share each buffer); the last holder to release it returns
// it to its pool.
type buffer struct {
	pool *bufferPool
	p    *[]byte
	b    []byte // the filled part of *p
	refs atomic.Int32
}

// full returns the whole of the buffer's memory, to read into.
func (b *buffer) full() []byte { return (*b.p)[:b.pool.size] }

func (b *buffer) release() {
	if b.refs.Add(-1) == 0 {
		b.pool.pool.Put(b.p)
	}
}

// bufferStream reads the buffers that next yields, in order, releasing
// each once it is consumed. WriteTo hands each buffer to w whole (io.Copy
// prefers it to Read), so that data moves in large writes rather than in
// 32 KiB pieces.
type bufferStream struct {
	next func() (*buffer, error)
	cur  *buffer // being consumed
	off  int     // of cur
}

func (s *bufferStream) Read(p []byte) (int, error) {
	if s.cur == nil {
		b, err := s.next()
		if err != nil {
			return 0, err
		}
		s.cur, s.off = b, 0
	}
	n := copy(p, s.cur.b[s.off:])
	s.off += n
	if s.off == len(s.cur.b) {
		s.drop()
	}
	return n, nil
}

func (s *bufferStream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if s.cur == nil {
			b, err := s.next()
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, err
			}
			s.cur, s.off = b, 0
		}
		n, err := w.Write(s.cur.b[s.off:])
		total += int64(n)
		s.off += n
		if s.off == len(s.cur.b) || err != nil {
			s.drop()
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrShortWrite
		}
	}
}

// drop releases the buffer being consumed, if any.
func (s *bufferStream) drop() {
	if s.cur != nil {
		s.cur.release()
		s.cur = nil
	}
}
