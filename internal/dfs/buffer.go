package dfs

import (
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
