package chunkstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
)

const bs = api.BlockSize

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// content returns n deterministic pseudo-random bytes.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func stored(id string, b []byte) api.StoredChunk {
	return api.StoredChunk{ID: id, Length: int64(len(b)), CRC: crc32.Checksum(b, castagnoli)}
}

func mustPut(t *testing.T, s *Store, id string, b []byte) api.StoredChunk {
	t.Helper()
	sc, err := s.Put(id, bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("Put(%s): %v", id, err)
	}
	return sc
}

// tmpFiles lists the store's temporary files.
func tmpFiles(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.tmp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestPutOpenRoundTrip(t *testing.T) {
	s := newStore(t)
	for _, n := range []int{0, 1, bs - 1, bs, bs + 1, 3*bs + 17, copyBuf + bs + 3} {
		data := content(uint64(n), n)
		id := "c" + strings.Repeat("x", n%7)
		t.Run(id, func(t *testing.T) {
			sc := mustPut(t, s, id, data)
			if diff := cmp.Diff(stored(id, data), sc); diff != "" {
				t.Fatalf("Put (-want +got):\n%s", diff)
			}
			if got, err := s.Stat(id); err != nil || got != sc {
				t.Errorf("Stat = %+v, %v; want %+v", got, err, sc)
			}
			if err := s.Verify(id); err != nil {
				t.Errorf("Verify: %v", err)
			}
			for _, off := range []int64{0, 1, bs - 1, bs, bs + 1, 2*bs + 5, copyBuf, int64(n) - 1, int64(n)} {
				if off < 0 || off > int64(n) {
					continue
				}
				r, osc, err := s.Open(id, off)
				if err != nil {
					t.Fatalf("Open(%d): %v", off, err)
				}
				if osc != sc {
					t.Errorf("Open(%d) chunk = %+v, want %+v", off, osc, sc)
				}
				if err := iotest.TestReader(r, data[off:]); err != nil {
					t.Errorf("n=%d offset %d: %v", n, off, err)
				}
				r.Close()
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	s := newStore(t)
	mustPut(t, s, "c", content(1, 100))
	for _, tt := range []struct {
		name   string
		id     string
		offset int64
		want   error
	}{
		{"missing", "nope", 0, ErrNotFound},
		{"negative offset", "c", -1, ErrInvalid},
		{"offset past end", "c", 101, ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := s.Open(tt.id, tt.offset); !errors.Is(err, tt.want) {
				t.Errorf("Open(%q, %d) = %v, want %v", tt.id, tt.offset, err, tt.want)
			}
		})
	}
	if _, err := s.Stat("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(missing) = %v, want %v", err, ErrNotFound)
	}
	if err := s.Verify("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Verify(missing) = %v, want %v", err, ErrNotFound)
	}
	if err := s.Delete("nope"); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}
}

func TestInvalidIDs(t *testing.T) {
	s := newStore(t)
	for _, id := range []string{"", "../x", "a/b", "..", ".", "a b", "x.meta", "é", strings.Repeat("a", 65)} {
		t.Run(id, func(t *testing.T) {
			if _, err := s.Put(id, strings.NewReader("x"), 1); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Put(%q) = %v, want %v", id, err, ErrInvalidID)
			}
			if _, _, err := s.Open(id, 0); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Open(%q) = %v, want %v", id, err, ErrInvalidID)
			}
			if _, err := s.Stat(id); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Stat(%q) = %v, want %v", id, err, ErrInvalidID)
			}
			if err := s.Delete(id); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Delete(%q) = %v, want %v", id, err, ErrInvalidID)
			}
			if err := s.Verify(id); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Verify(%q) = %v, want %v", id, err, ErrInvalidID)
			}
			if p := s.Path(id); p != "" {
				t.Errorf("Path(%q) = %q, want empty", id, p)
			}
		})
	}
	for _, id := range []string{"a", "A-b_9", strings.Repeat("z", 64)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v, want nil", id, err)
		}
	}
}

// failingReader yields data and then fails.
func failingReader(data []byte) io.Reader {
	return io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errors.New("connection reset")))
}

func TestPutRejects(t *testing.T) {
	data := content(7, 3*bs+17)
	for _, tt := range []struct {
		name   string
		r      io.Reader
		length int64
		want   error
	}{
		{"read error", failingReader(data), int64(len(data)) + 10, ErrSource},
		{"read error, unknown length", failingReader(data), -1, ErrSource},
		{"truncated HTTP body", io.MultiReader(bytes.NewReader(data), iotest.ErrReader(io.ErrUnexpectedEOF)), -1, ErrSource},
		{"fewer bytes than declared", bytes.NewReader(data), int64(len(data)) + 1, ErrLength},
		{"more bytes than declared", bytes.NewReader(data), int64(len(data)) - 1, ErrLength},
		{"declared too large", bytes.NewReader(data), api.MaxChunkSize + 1, ErrTooLarge},
		{"bad length", bytes.NewReader(data), -2, ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			old := mustPut(t, s, "keep", data[:10])
			if _, err := s.Put("c", tt.r, tt.length); !errors.Is(err, tt.want) {
				t.Fatalf("Put = %v, want %v", err, tt.want)
			}
			// A failed replacement leaves the old chunk alone.
			if _, err := s.Put("keep", failingReader(data), -1); !errors.Is(err, ErrSource) {
				t.Fatalf("Put(keep) = %v, want %v", err, ErrSource)
			}
			list, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]api.StoredChunk{old}, list); diff != "" {
				t.Errorf("List after failed puts (-want +got):\n%s", diff)
			}
			if got := tmpFiles(t, s); len(got) != 0 {
				t.Errorf("temporary files left: %q", got)
			}
			if _, err := os.Stat(s.Path("c")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("data file of failed chunk: %v, want not exist", err)
			}
			if got := s.Used(); got != 10 {
				t.Errorf("Used = %d, want 10", got)
			}
		})
	}
}

func TestPutIdempotentAndReplace(t *testing.T) {
	s := newStore(t)
	a, b := content(1, 2*bs+1), content(2, bs)
	first := mustPut(t, s, "c", a)
	if again := mustPut(t, s, "c", a); again != first {
		t.Errorf("second Put = %+v, want %+v", again, first)
	}
	if got := s.Used(); got != int64(len(a)) {
		t.Errorf("Used = %d, want %d", got, len(a))
	}
	r, _, err := s.Open("c", 0) // opened before the replacement
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := mustPut(t, s, "c", b); got != stored("c", b) {
		t.Errorf("replacing Put = %+v, want %+v", got, stored("c", b))
	}
	if got := s.Used(); got != int64(len(b)) {
		t.Errorf("Used = %d, want %d", got, len(b))
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, a) {
		t.Errorf("reader opened before replace: %d bytes, %v; want the old %d bytes", len(got), err, len(a))
	}
	if err := s.Verify("c"); err != nil {
		t.Errorf("Verify: %v", err)
	}
	r2, _, err := s.Open("c", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got, err := io.ReadAll(r2); err != nil || !bytes.Equal(got, b) {
		t.Errorf("after replace: %d bytes, %v; want the new %d bytes", len(got), err, len(b))
	}
	if err := s.Delete("c"); err != nil {
		t.Fatal(err)
	}
	if got := s.Used(); got != 0 {
		t.Errorf("Used after Delete = %d, want 0", got)
	}
}

func TestCorruption(t *testing.T) {
	small, large := content(3, 3*bs+17), content(4, 2*copyBuf+100)
	flip := func(off int64) func(*testing.T, *Store) {
		return func(t *testing.T, s *Store) { flipByte(t, s.Path("c"), off) }
	}
	for _, tt := range []struct {
		name      string
		data      []byte
		damage    func(t *testing.T, s *Store)
		offset    int64
		verify    bool // read with Verify rather than Open
		wantBlock int64
	}{
		{name: "Open, first span", data: small, damage: flip(2*bs + 3), wantBlock: 2},
		{name: "Open, later span", data: large, damage: flip(int64(len(large)) - 1), wantBlock: 32},
		{name: "Open at offset", data: small, damage: flip(3 * bs), offset: 3*bs + 5, wantBlock: 3},
		{name: "Verify", data: small, damage: flip(0), verify: true, wantBlock: 0},
		{name: "metadata", data: small, wantBlock: -1, damage: func(t *testing.T, s *Store) {
			flipByte(t, s.metaPath("c"), 30)
		}},
		{name: "truncated data", data: small, wantBlock: -1, damage: func(t *testing.T, s *Store) {
			if err := os.Chmod(s.Path("c"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(s.Path("c"), 2*bs); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			mustPut(t, s, "c", tt.data)
			tt.damage(t, s)
			var got []byte
			var err error
			if tt.verify {
				err = s.Verify("c")
			} else {
				var r io.ReadCloser
				if r, _, err = s.Open("c", tt.offset); err == nil {
					got, err = io.ReadAll(r)
					r.Close()
				}
			}
			var ce *CorruptError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) {
				t.Fatalf("read = %v, want a *CorruptError", err)
			}
			if ce.ID != "c" || ce.Block != tt.wantBlock || !ce.Dropped {
				t.Errorf("error = %+v, want chunk c block %d dropped", ce, tt.wantBlock)
			}
			if !bytes.HasPrefix(tt.data[tt.offset:], got) {
				t.Errorf("the %d bytes returned before the error are not stored bytes", len(got))
			}
			if _, err := s.Stat("c"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat after corruption = %v, want %v", err, ErrNotFound)
			}
			if _, err := os.Stat(s.Path("c")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("corrupt data file: %v, want removed", err)
			}
		})
	}
}

func TestCorruptionReportedOnce(t *testing.T) {
	s := newStore(t)
	mustPut(t, s, "c", content(5, 2*bs))
	r1, _, err1 := s.Open("c", 0)
	r2, _, err2 := s.Open("c", 0)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	defer r1.Close()
	defer r2.Close()
	flipByte(t, s.Path("c"), 1)
	dropped := 0
	for _, r := range []io.Reader{r1, r2} {
		var ce *CorruptError
		if _, err := io.ReadAll(r); !errors.As(err, &ce) {
			t.Fatalf("ReadAll = %v, want a *CorruptError", err)
		}
		if ce.Dropped {
			dropped++
		}
	}
	if dropped != 1 {
		t.Errorf("%d errors say they dropped the chunk, want 1", dropped)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{0, 10, 2*bs + 1} {
		mustPut(t, s, string(rune('a'+i)), content(uint64(i), n))
	}
	want, _ := s.List()
	wantUsed := s.Used()

	// What a crash can leave: temporary files, data without metadata, and
	// a chunk whose metadata is torn.
	for _, name := range []string{"a.123", "b.456.meta"} {
		if err := os.WriteFile(filepath.Join(s.tmp, name), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(s.Path("orphan")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path("orphan"), []byte("data"), 0o444); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "torn", content(9, 100))
	if err := os.Truncate(s.metaPath("torn"), 10); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	got, _ := s2.List()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List after reopen (-want +got):\n%s", diff)
	}
	if got := s2.Used(); got != wantUsed {
		t.Errorf("Used after reopen = %d, want %d", got, wantUsed)
	}
	if got := tmpFiles(t, s2); len(got) != 0 {
		t.Errorf("temporary files left after reopen: %q", got)
	}
	for _, p := range []string{s2.Path("orphan"), s2.Path("torn"), s2.metaPath("torn")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want removed", p, err)
		}
	}
	if err := s2.Verify("c"); err != nil {
		t.Errorf("Verify after reopen: %v", err)
	}
}

func TestReopenRefusesNewerMetadata(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "c", content(1, 10))
	m := chunkMeta{length: 10, crc: 1, blocks: []uint32{1}}
	b := m.encode()
	b[4] = metaVersion + 1
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	if err := os.WriteFile(s.metaPath("c"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, errMetaVersion) {
		t.Errorf("Open = %v, want %v", err, errMetaVersion)
	}
	if _, err := os.Stat(s.Path("c")); err != nil {
		t.Errorf("chunk data of a newer format: %v, want kept", err)
	}
}

// TestConcurrentPutRead replaces a chunk while others read it: every read
// sees one version whole.
func TestConcurrentPutRead(t *testing.T) {
	s := newStore(t)
	versions := [][]byte{content(1, 3*bs+1), content(2, bs+7)}
	mustPut(t, s, "c", versions[0])
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := range 10 {
				if _, err := s.Put("c", bytes.NewReader(versions[(w+i)%2]), -1); err != nil {
					t.Errorf("Put: %v", err)
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 20 {
				r, _, err := s.Open("c", 0)
				if err != nil {
					t.Errorf("Open: %v", err)
					return
				}
				got, err := io.ReadAll(r)
				r.Close()
				if err != nil || !(bytes.Equal(got, versions[0]) || bytes.Equal(got, versions[1])) {
					t.Errorf("read %d bytes, %v; want one whole version", len(got), err)
				}
			}
		})
	}
	wg.Wait()
}
