// Package chunkstore is a data node's chunk storage. It keeps the chunks of
// Shoal's distributed file system on local disk, each beside a metadata file
// holding its length, its CRC32C and one CRC32C per [api.BlockSize] block;
// it verifies every block it returns, and it serves chunks to writers,
// readers and peer data nodes over HTTP ([Store.Handler], [Client]) and
// passes readers on the same host the chunks' open files over a unix socket
// (short-circuit reads: [LocalServer], [OpenLocal]).
//
// Layout under the store's directory, which only its user may enter
// (mode 0700):
//
//	tmp/          files being written; whatever is left there is removed by Open
//	XX/ID         chunk data, read-only (XX: two hex digits of a hash of ID,
//	              made on first use)
//	XX/ID.meta    the chunk's metadata (see meta.go)
//
// A chunk exists exactly when its metadata file does. Put renames the data
// into place before the metadata and Delete removes the metadata first, so
// a crash can leave data without metadata (removed by Open) but never
// metadata describing data other than its own.
package chunkstore

import (
	"cmp"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/shoal-dev/shoal/api"
)

// Errors returned by the store; the HTTP handler maps each to a status and
// a stable code in one place (writeErr).
var (
	ErrInvalidID = errors.New("chunkstore: invalid chunk id")
	ErrInvalid   = errors.New("chunkstore: invalid argument")
	ErrNotFound  = errors.New("chunkstore: chunk not found")
	ErrCorrupt   = errors.New("chunkstore: chunk corrupt")
	ErrTooLarge  = errors.New("chunkstore: chunk too large")
	// ErrLength is a stream shorter or longer than its declared length.
	ErrLength = errors.New("chunkstore: chunk length mismatch")
	// ErrSource wraps a read error from the reader given to Put.
	ErrSource = errors.New("chunkstore: reading chunk data failed")
	// ErrMismatch is a chunk whose checksum or length is not the one a
	// replication request expected.
	ErrMismatch = errors.New("chunkstore: chunk does not match the expected checksum")
)

// A chunk's subdirectory is hash%subdirs and its lock hash%stripes;
// subdirs is a multiple of stripes, so one lock covers all of a
// subdirectory's changes.
const (
	maxIDLen = 64
	subdirs  = 256
	stripes  = 64
	copyBuf  = 1 << 20
)

// bufPool holds the 1 MiB buffers used to stream chunks in and out.
var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// ValidateID reports whether id can name a chunk: 1 to 64 characters of
// [0-9A-Za-z_-]. IDs become file names, so nothing else is accepted.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > maxIDLen {
		return fmt.Errorf("%w: %q must be 1 to %d characters", ErrInvalidID, id, maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %q may only hold letters, digits, '_' and '-'", ErrInvalidID, id)
		}
	}
	return nil
}

// Store is the set of chunks kept in one directory. All methods are safe
// for concurrent use.
//
// Locking: a chunk's stripe lock (locks[hash(id)%stripes]) guards its
// files: held for reading while a reader opens them and for writing while
// Put, Delete or a corruption drop changes them. mu guards the in-memory
// index and is taken inside a stripe lock, never the other way round.
type Store struct {
	dir string
	tmp string
	log *slog.Logger

	locks [stripes]sync.RWMutex

	mu     sync.Mutex
	chunks map[string]entry
	used   int64
	gen    uint64
}

// entry is a chunk in the index. gen identifies this stored replica, so
// that corruption found through an old reader never drops a newer replica.
type entry struct {
	api.StoredChunk
	gen uint64
}

// Open opens the store in dir, creating the directory if needed. It removes
// temporary files left by interrupted writes, data files without metadata
// and chunks whose metadata is unreadable or disagrees with the data file's
// size, and loads the index of chunks from the metadata files. A nil log
// discards log output.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, tmp: filepath.Join(dir, "tmp"), log: log, chunks: map[string]entry{}}
	// Only the store's user (root on a data node) may reach the chunks:
	// clients read them through the data node, over HTTP or a local
	// socket that hands out open files. A replica hard-linked into a
	// task's directory stays readable there, since its own mode is 0444.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunkstore: creating %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunkstore: %w", err)
	}
	if err := os.MkdirAll(s.tmp, 0o700); err != nil {
		return nil, fmt.Errorf("chunkstore: creating %s: %w", s.tmp, err)
	}
	left, err := os.ReadDir(s.tmp)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: %w", err)
	}
	for _, e := range left {
		if err := os.RemoveAll(filepath.Join(s.tmp, e.Name())); err != nil {
			return nil, fmt.Errorf("chunkstore: removing leftover temporary file: %w", err)
		}
	}
	if len(left) > 0 {
		log.Info("removed temporary files of interrupted chunk writes", "dir", s.tmp, "files", len(left))
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() && isSubdir(e.Name()) {
			if err := s.load(filepath.Join(dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// isSubdir reports whether name is that of a chunk subdirectory.
func isSubdir(name string) bool {
	return len(name) == 2 && strings.Trim(name, "0123456789abcdef") == ""
}

// load adds the chunks of one subdirectory to the index.
func (s *Store) load(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	metas := map[string]bool{}
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), metaSuffix); ok && ValidateID(id) == nil {
			metas[id] = true
		}
	}
	for _, e := range ents {
		name := e.Name()
		if ValidateID(name) == nil && !metas[name] {
			s.log.Warn("removing chunk data without metadata", "chunk", name, "dir", dir)
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("chunkstore: %w", err)
			}
		}
	}
	for id := range metas {
		if s.chunkDir(id) != dir {
			s.log.Warn("ignoring chunk metadata in the wrong directory", "chunk", id, "dir", dir)
			continue
		}
		m, err := readMeta(s.metaPath(id))
		if err == nil {
			var fi os.FileInfo
			fi, err = os.Stat(s.Path(id))
			if err == nil && fi.Size() != m.length {
				err = fmt.Errorf("%w: data file holds %d bytes, metadata says %d", ErrCorrupt, fi.Size(), m.length)
			}
		}
		switch {
		case errors.Is(err, errMetaVersion):
			return fmt.Errorf("chunkstore: chunk %s: %w", id, err)
		case err != nil:
			s.log.Warn("removing unusable chunk", "chunk", id, "err", err)
			if _, err := s.removeFiles(id); err != nil {
				return err
			}
			continue
		}
		s.remember(id, m)
	}
	return nil
}

func readMeta(path string) (chunkMeta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return chunkMeta{}, err
	}
	return decodeMeta(b)
}

// maxMetaSize is the size of the metadata of the largest chunk.
const maxMetaSize = metaHeader + 4*(api.MaxChunkSize/api.BlockSize) + 4

// readMetaFile reads a metadata file from its start, whatever the file's
// offset: a descriptor passed to another process shares its offset.
func readMetaFile(f *os.File) (chunkMeta, error) {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, maxMetaSize+1))
	if err != nil {
		return chunkMeta{}, err
	}
	return decodeMeta(b)
}

func (s *Store) hash(id string) uint32 { return crc32.Checksum([]byte(id), castagnoli) }

func (s *Store) lockFor(id string) *sync.RWMutex { return &s.locks[s.hash(id)%stripes] }

func (s *Store) chunkDir(id string) string {
	return filepath.Join(s.dir, fmt.Sprintf("%02x", s.hash(id)%subdirs))
}

func (s *Store) metaPath(id string) string { return filepath.Join(s.chunkDir(id), id+metaSuffix) }

// Path returns the path of a chunk's data file, or "" for an invalid id.
// The file may not exist. It is meant for an agent that hard-links a local
// replica into a task's directory: the file is read-only and must stay so,
// since the store never rewrites a data file in place (Put replaces it by
// rename, so a link keeps the content it had).
func (s *Store) Path(id string) string {
	if ValidateID(id) != nil {
		return ""
	}
	return filepath.Join(s.chunkDir(id), id)
}

// remember adds or replaces a chunk in the index.
func (s *Store) remember(id string, m chunkMeta) entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.chunks[id]; ok {
		s.used -= old.Length
	}
	s.gen++
	e := entry{StoredChunk: api.StoredChunk{ID: id, Length: m.length, CRC: m.crc}, gen: s.gen}
	s.chunks[id] = e
	s.used += m.length
	return e
}

func (s *Store) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.chunks[id]; ok {
		s.used -= old.Length
		delete(s.chunks, id)
	}
}

func (s *Store) lookup(id string) (entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.chunks[id]
	return e, ok
}

// removeFiles removes a chunk's metadata, then its data, and reports
// whether there was anything to remove. Missing files are not an error.
// The caller holds the chunk's stripe lock, or is Open.
func (s *Store) removeFiles(id string) (bool, error) {
	removed := false
	for _, p := range []string{s.metaPath(id), s.Path(id)} {
		err := os.Remove(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("chunkstore: removing chunk %s: %w", id, err)
		}
		removed = removed || err == nil
	}
	return removed, nil
}

// Stat returns a stored chunk's length and CRC, or [ErrNotFound].
func (s *Store) Stat(id string) (api.StoredChunk, error) {
	if err := ValidateID(id); err != nil {
		return api.StoredChunk{}, err
	}
	e, ok := s.lookup(id)
	if !ok {
		return api.StoredChunk{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e.StoredChunk, nil
}

// List returns every stored chunk, sorted by id. It reads the index built
// from the metadata files when the store was opened and kept up to date
// since; it never reads chunk data.
func (s *Store) List() ([]api.StoredChunk, error) {
	s.mu.Lock()
	out := make([]api.StoredChunk, 0, len(s.chunks))
	for _, e := range s.chunks {
		out = append(out, e.StoredChunk)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b api.StoredChunk) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// Delete removes a chunk. Deleting a missing chunk is not an error. Readers
// already open keep reading the deleted chunk.
func (s *Store) Delete(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	l := s.lockFor(id)
	l.Lock()
	defer l.Unlock()
	return s.deleteLocked(id)
}

func (s *Store) deleteLocked(id string) error {
	s.forget(id)
	removed, err := s.removeFiles(id)
	if err != nil || !removed {
		return err
	}
	return syncDir(s.chunkDir(id))
}

// Used returns the bytes of chunk data stored (metadata not counted).
func (s *Store) Used() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}
