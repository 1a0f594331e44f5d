package chunkstore

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"

	"github.com/shoal-dev/shoal/api"
)

// CorruptError reports a stored chunk whose data does not match its
// checksums. It matches [ErrCorrupt] with errors.Is.
//
// The store drops a corrupt chunk as soon as it finds it, so that it is not
// served again. Dropped is true on exactly one of the errors returned for
// one stored replica, the one whose detection dropped it: a caller that
// tells the cluster about corrupt replicas reports only those.
type CorruptError struct {
	ID string
	// Block is the index of the first block found bad, or -1 when the
	// metadata itself, the data file's size or the whole-chunk CRC is bad.
	Block   int64
	Dropped bool
	// Reason says what failed when Block is -1.
	Reason string
}

func (e *CorruptError) Error() string {
	if e.Block < 0 {
		return fmt.Sprintf("%v: chunk %s: %s", ErrCorrupt, e.ID, e.Reason)
	}
	start := e.Block * api.BlockSize
	return fmt.Sprintf("%v: chunk %s block %d (bytes %d to %d) fails its CRC32C",
		ErrCorrupt, e.ID, e.Block, start, start+api.BlockSize-1)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Open returns a reader of a chunk from offset to its end, with the
// chunk's length and CRC. The reader reads whole blocks and returns a
// block's bytes only after checking it against its stored CRC32C; a block
// that fails makes Read return a [*CorruptError] (and the chunk is dropped
// from the store), so bytes returned are always bytes that were stored.
// Open returns [ErrNotFound] for a missing chunk and [ErrInvalid] for an
// offset outside [0, length]. The caller must Close the reader; a reader
// keeps reading the chunk it opened even if the chunk is then replaced or
// deleted.
func (s *Store) Open(id string, offset int64) (io.ReadCloser, api.StoredChunk, error) {
	r, sc, err := s.open(id, offset)
	if err != nil {
		return nil, api.StoredChunk{}, err
	}
	return r, sc, nil
}

func (s *Store) open(id string, offset int64) (*chunkReader, api.StoredChunk, error) {
	f, _, m, e, err := s.openChecked(id, false)
	if err != nil {
		return nil, api.StoredChunk{}, err
	}
	if offset < 0 || offset > m.length {
		f.Close()
		return nil, api.StoredChunk{}, fmt.Errorf("%w: offset %d is outside chunk %s of %d bytes", ErrInvalid, offset, id, m.length)
	}
	r := &chunkReader{
		s:      s,
		f:      f,
		e:      e,
		blocks: m.blocks,
		next:   offset / api.BlockSize,
		skip:   offset % api.BlockSize,
		buf:    bufPool.Get().(*[]byte),
	}
	return r, e.StoredChunk, nil
}

// openChecked opens a chunk's data file and, with withMeta, its metadata
// file too, and checks the metadata against the index. Both are opened
// under the chunk's lock, so they belong together even if the chunk is
// replaced or deleted right after: open files keep their contents, since
// the store never rewrites a file in place. The metadata is read through
// the descriptor returned, so a caller handing it on hands on what was
// checked. A chunk whose files are unusable is dropped as corrupt.
func (s *Store) openChecked(id string, withMeta bool) (f, mf *os.File, m chunkMeta, e entry, err error) {
	if err := ValidateID(id); err != nil {
		return nil, nil, chunkMeta{}, entry{}, err
	}
	l := s.lockFor(id)
	l.RLock()
	e, ok := s.lookup(id)
	if !ok {
		l.RUnlock()
		return nil, nil, chunkMeta{}, entry{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	mf, merr := os.Open(s.metaPath(id))
	f, ferr := os.Open(s.Path(id))
	l.RUnlock()
	if merr == nil {
		m, merr = readMetaFile(mf)
	}
	closeBoth := func() {
		if f != nil {
			f.Close()
		}
		if mf != nil {
			mf.Close()
		}
	}

	var reason string
	switch {
	case merr != nil && !errors.Is(merr, ErrCorrupt):
		reason = fmt.Sprintf("reading metadata: %v", merr)
	case merr != nil:
		reason = merr.Error()
	case ferr != nil && errors.Is(ferr, fs.ErrNotExist):
		reason = "data file is missing"
	case ferr != nil:
		closeBoth()
		return nil, nil, chunkMeta{}, entry{}, fmt.Errorf("chunkstore: opening chunk %s: %w", id, ferr)
	case m.length != e.Length || m.crc != e.CRC:
		reason = "metadata changed under the store"
	}
	if reason != "" {
		closeBoth()
		return nil, nil, chunkMeta{}, entry{}, s.corrupt(e, -1, reason)
	}
	if !withMeta {
		mf.Close()
		mf = nil
	}
	return f, mf, m, e, nil
}

// corrupt drops the replica e if it is still the stored one and returns
// the error describing it.
func (s *Store) corrupt(e entry, block int64, reason string) *CorruptError {
	return &CorruptError{ID: e.ID, Block: block, Reason: reason, Dropped: s.drop(e)}
}

// drop deletes the stored replica e, unless it was already dropped or
// replaced. It reports whether it deleted it.
func (s *Store) drop(e entry) bool {
	l := s.lockFor(e.ID)
	l.Lock()
	defer l.Unlock()
	if cur, ok := s.lookup(e.ID); !ok || cur.gen != e.gen {
		return false
	}
	if err := s.deleteLocked(e.ID); err != nil {
		// The chunk is out of the index, so it is not served again; the
		// files go at the next Open if they still fail then.
		s.log.Error("cannot delete corrupt chunk", "chunk", e.ID, "err", err)
	}
	s.log.Warn("dropped corrupt chunk", "chunk", e.ID)
	return true
}

// chunkReader reads a chunk block by block, verifying each block before
// returning any of its bytes. Reads go through a 1 MiB buffer: up to 16
// blocks are read with one system call and all verified.
type chunkReader struct {
	s      *Store
	f      *os.File
	e      entry
	blocks []uint32
	next   int64 // index of the next block to load
	skip   int64 // bytes of the next loaded block before the offset asked for
	buf    *[]byte
	avail  []byte // verified bytes not yet returned
	err    error  // sticky: io.EOF or the error that stopped the reader
}

// load reads and verifies the next span of blocks into avail.
func (r *chunkReader) load() error {
	if r.buf == nil {
		return errors.New("chunkstore: read from a closed chunk reader")
	}
	start := r.next * api.BlockSize
	if start >= r.e.Length {
		return io.EOF
	}
	b := (*r.buf)[:min(int64(len(*r.buf)), r.e.Length-start)]
	if _, err := r.f.ReadAt(b, start); err != nil {
		if errors.Is(err, io.EOF) {
			return r.s.corrupt(r.e, -1, "data file is shorter than its metadata says")
		}
		return fmt.Errorf("chunkstore: reading chunk %s: %w", r.e.ID, err)
	}
	for off := 0; off < len(b); off += api.BlockSize {
		i := r.next + int64(off/api.BlockSize)
		if crc32.Checksum(b[off:min(off+api.BlockSize, len(b))], castagnoli) != r.blocks[i] {
			return r.s.corrupt(r.e, i, "")
		}
	}
	r.next += blockCount(int64(len(b)))
	r.avail = b[r.skip:]
	r.skip = 0
	return nil
}

// prime loads the first span, if need be, so that an error in it is seen
// before any byte is returned. It returns the reader's error if any.
func (r *chunkReader) prime() error {
	for len(r.avail) == 0 && r.err == nil {
		r.err = r.load()
	}
	return r.err
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.avail) == 0 {
		if err := r.prime(); len(r.avail) == 0 {
			return 0, err
		}
	}
	n := copy(p, r.avail)
	r.avail = r.avail[n:]
	return n, nil
}

// WriteTo writes the rest of the chunk to w without an intermediate copy.
// A read failure is kept in r.err, so that callers can tell it from a
// write failure.
func (r *chunkReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := r.prime(); err != nil { // err is set only once avail is empty
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		n, err := w.Write(r.avail)
		total += int64(n)
		r.avail = r.avail[n:]
		if err != nil {
			return total, err
		}
	}
}

// Close releases the reader's file and buffer. It may be called twice.
func (r *chunkReader) Close() error {
	if r.buf == nil {
		return nil
	}
	bufPool.Put(r.buf)
	r.buf, r.avail = nil, nil
	return r.f.Close()
}

// Verify reads a whole chunk, checking every block and the whole-chunk
// CRC. A corrupt chunk yields a [*CorruptError] and is dropped from the
// store; a missing one, [ErrNotFound].
func (s *Store) Verify(id string) error {
	r, _, err := s.open(id, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	h := crc32.New(castagnoli)
	if _, err := r.WriteTo(h); err != nil {
		return err
	}
	if h.Sum32() != r.e.CRC {
		return s.corrupt(r.e, -1, fmt.Sprintf("whole-chunk CRC is %d, metadata says %d", h.Sum32(), r.e.CRC))
	}
	return nil
}
