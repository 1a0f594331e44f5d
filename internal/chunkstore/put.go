package chunkstore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/shoal-dev/shoal/api"
)

// Put stores a chunk read from r. length is the number of bytes r must
// yield, or -1 when unknown; either way a chunk is at most
// [api.MaxChunkSize] bytes. Put streams r to a temporary file, checksumming
// it on the way, syncs data and metadata to disk and then renames them into
// place, so it returns only once the chunk is durable. When the stream is
// bad (too many or too few bytes: [ErrTooLarge], [ErrLength]; a read error
// from r: [ErrSource]) nothing is stored and a previous chunk of that id is
// kept; only a disk failure while replacing one may lose both.
//
// Storing a chunk that exists with the same length and CRC succeeds without
// change; one with other contents replaces it once the new one is synced.
// Put does not close r.
func (s *Store) Put(id string, r io.Reader, length int64) (api.StoredChunk, error) {
	return s.put(id, r, length, expect{})
}

// expect is the checksum a replicated chunk must have.
type expect struct {
	crc   uint32
	check bool
}

func (s *Store) put(id string, r io.Reader, length int64, want expect) (api.StoredChunk, error) {
	if err := ValidateID(id); err != nil {
		return api.StoredChunk{}, err
	}
	if length < -1 {
		return api.StoredChunk{}, fmt.Errorf("%w: chunk length %d", ErrInvalid, length)
	}
	if length > api.MaxChunkSize {
		return api.StoredChunk{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, length, api.MaxChunkSize)
	}
	var temps []string
	defer func() {
		for _, t := range temps {
			os.Remove(t) // already renamed away on success
		}
	}()
	m, tmpData, err := s.writeData(id, r, length)
	if tmpData != "" {
		temps = append(temps, tmpData)
	}
	if err != nil {
		return api.StoredChunk{}, err
	}
	if want.check && m.crc != want.crc {
		return api.StoredChunk{}, fmt.Errorf("%w: chunk %s has CRC %d, expected %d", ErrMismatch, id, m.crc, want.crc)
	}
	tmpMeta, err := writeTemp(s.tmp, id+".*"+metaSuffix, m.encode())
	if tmpMeta != "" {
		temps = append(temps, tmpMeta)
	}
	if err != nil {
		return api.StoredChunk{}, err
	}
	e, err := s.commit(id, m, tmpData, tmpMeta)
	return e.StoredChunk, err
}

// writeData streams r into a synced temporary file and returns its
// checksums and name (set whenever a file was created).
func (s *Store) writeData(id string, r io.Reader, length int64) (chunkMeta, string, error) {
	f, err := os.CreateTemp(s.tmp, id+".*")
	if err != nil {
		return chunkMeta{}, "", fmt.Errorf("chunkstore: %w", err)
	}
	defer f.Close()
	// Data files are read-only: a replica hard-linked into a task
	// directory must not be writable through the link.
	if err := f.Chmod(0o444); err != nil {
		return chunkMeta{}, f.Name(), fmt.Errorf("chunkstore: %w", err)
	}
	limit := int64(api.MaxChunkSize)
	if length >= 0 {
		limit = length
	}
	src := io.LimitReader(r, limit+1)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var sum summer
	for {
		n, rerr := fill(src, *bp)
		if sum.n+int64(n) > limit {
			if length >= 0 {
				return chunkMeta{}, f.Name(), fmt.Errorf("%w: chunk %s has more than the %d bytes declared", ErrLength, id, length)
			}
			return chunkMeta{}, f.Name(), fmt.Errorf("%w: chunk %s has more than %d bytes", ErrTooLarge, id, limit)
		}
		if _, err := f.Write((*bp)[:n]); err != nil {
			return chunkMeta{}, f.Name(), fmt.Errorf("chunkstore: writing chunk %s: %w", id, err)
		}
		sum.write((*bp)[:n])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return chunkMeta{}, f.Name(), fmt.Errorf("%w: chunk %s after %d bytes: %w", ErrSource, id, sum.n, rerr)
		}
	}
	if length >= 0 && sum.n != length {
		return chunkMeta{}, f.Name(), fmt.Errorf("%w: chunk %s ended after %d of %d bytes", ErrLength, id, sum.n, length)
	}
	if err := f.Sync(); err != nil {
		return chunkMeta{}, f.Name(), fmt.Errorf("chunkstore: syncing chunk %s: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return chunkMeta{}, f.Name(), fmt.Errorf("chunkstore: %w", err)
	}
	return sum.meta(), f.Name(), nil
}

// fill reads into buf until it is full or r fails; it returns io.EOF, not
// io.ErrUnexpectedEOF, at the end of r, so that a reader that itself fails
// with io.ErrUnexpectedEOF (a truncated HTTP body) is not taken for a
// normal end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// writeTemp writes b to a new synced temporary file and returns its name.
func writeTemp(dir, pattern string, b []byte) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", fmt.Errorf("chunkstore: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return f.Name(), fmt.Errorf("chunkstore: %w", err)
	}
	if err := f.Sync(); err != nil {
		return f.Name(), fmt.Errorf("chunkstore: %w", err)
	}
	return f.Name(), f.Close()
}

// commit moves synced temporary files into place.
func (s *Store) commit(id string, m chunkMeta, tmpData, tmpMeta string) (entry, error) {
	l := s.lockFor(id)
	l.Lock()
	defer l.Unlock()
	old, exists := s.lookup(id)
	if exists && old.Length == m.length && old.CRC == m.crc {
		return old, nil
	}
	dir := s.chunkDir(id)
	// Subdirectories are made on first use, durably.
	if err := os.Mkdir(dir, 0o755); err == nil {
		if err := syncDir(s.dir); err != nil {
			return entry{}, err
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return entry{}, fmt.Errorf("chunkstore: %w", err)
	}
	if exists {
		// Drop the old chunk first, durably, so that a crash between the
		// renames below cannot pair its metadata with the new data.
		if err := os.Remove(s.metaPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return entry{}, fmt.Errorf("chunkstore: replacing chunk %s: %w", id, err)
		}
		s.forget(id)
		if err := syncDir(dir); err != nil {
			return entry{}, err
		}
	}
	err := os.Rename(tmpData, s.Path(id))
	if err == nil {
		err = os.Rename(tmpMeta, s.metaPath(id))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		s.removeFiles(id) // best effort: leave nothing half stored
		return entry{}, fmt.Errorf("chunkstore: storing chunk %s: %w", id, err)
	}
	return s.remember(id, m), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("chunkstore: syncing %s: %w", dir, err)
	}
	return nil
}
