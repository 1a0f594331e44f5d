package chunkstore

import (
	"context"
	"errors"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// localNode is a store served on a short-circuit socket; corrupt receives
// what it reports.
type localNode struct {
	store   *Store
	socket  string
	corrupt chan string
}

func newLocalNode(t *testing.T, name string) *localNode {
	t.Helper()
	dir, err := os.MkdirTemp("", "sc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &localNode{store: newStore(t), socket: filepath.Join(dir, "chunks.sock"), corrupt: make(chan string, 10)}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: n.socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ls := &LocalServer{Store: n.store, Node: name, OnCorrupt: func(id string) { n.corrupt <- id }}
	done := make(chan error, 1)
	go func() { done <- ls.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v after the listener closed, want nil", err)
		}
	})
	return n
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestLocalRead(t *testing.T) {
	n := newLocalNode(t, "n1")
	data := content(1, 3*bs+17)
	mustPut(t, n.store, "c", data)
	ctx := context.Background()
	lc, err := OpenLocal(ctx, n.socket, "n1", "c")
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	if lc.Length() != int64(len(data)) || lc.CRC() != crc32.Checksum(data, castagnoli) {
		t.Errorf("opened chunk of %d bytes with CRC %08x, want %d with the data's", lc.Length(), lc.CRC(), len(data))
	}
	for _, tt := range []struct {
		name     string
		off, len int
		want     int // bytes returned
	}{
		{"whole blocks", 0, 2 * bs, 2 * bs},
		{"to the end", 2 * bs, bs + 1000, bs + 17},
		{"inside a block", 100, bs, bs - 100},
		{"shorter than a block", bs, 50, 50},
		{"a buffer not a multiple of blocks", 0, bs + 10, bs},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := make([]byte, tt.len)
			got, crc, err := lc.ReadAt(p, int64(tt.off))
			if err != nil || got != tt.want {
				t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d", tt.len, tt.off, got, err, tt.want)
			}
			if want := data[tt.off : tt.off+got]; string(p[:got]) != string(want) || crc != crc32.Checksum(want, castagnoli) {
				t.Errorf("ReadAt returned other bytes or CRC %08x", crc)
			}
		})
	}
	if got, _, err := lc.ReadAt(make([]byte, bs), int64(len(data))); got != 0 || err == nil {
		t.Errorf("ReadAt at the end = %d, %v; want io.EOF", got, err)
	}
}

func TestLocalCorruptBlock(t *testing.T) {
	n := newLocalNode(t, "n1")
	data := content(2, 3*bs)
	mustPut(t, n.store, "c", data)
	flip(t, n.store.Path("c"), bs+5)
	ctx := context.Background()
	lc, err := OpenLocal(ctx, n.socket, "n1", "c")
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	p := make([]byte, 3*bs)
	got, crc, err := lc.ReadAt(p, 0)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Block != 1 || ce.Dropped || got != bs || crc != crc32.Checksum(data[:bs], castagnoli) {
		t.Fatalf("ReadAt over a bad second block = %d, %08x, %v; want the first block, then block 1 corrupt", got, crc, err)
	}
	if err := VerifyLocal(ctx, n.socket, "n1", "c"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("VerifyLocal = %v, want %v", err, ErrCorrupt)
	}
	select {
	case id := <-n.corrupt:
		if id != "c" {
			t.Errorf("reported %s corrupt, want c", id)
		}
	default:
		t.Error("the node did not report its corrupt replica")
	}
	if _, err := n.store.Stat("c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after verify = %v, want the replica dropped", err)
	}
	if _, err := OpenLocal(ctx, n.socket, "n1", "c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenLocal of a dropped chunk = %v, want %v", err, ErrNotFound)
	}
}

func TestLocalVerifySound(t *testing.T) {
	n := newLocalNode(t, "n1")
	mustPut(t, n.store, "c", content(3, bs))
	if err := VerifyLocal(context.Background(), n.socket, "n1", "c"); err != nil {
		t.Errorf("VerifyLocal of a sound chunk = %v", err)
	}
	if _, err := n.store.Stat("c"); err != nil {
		t.Errorf("a sound chunk was dropped: %v", err)
	}
}

// TestLocalWrongNode reaches a socket that belongs to another node: the
// client refuses it and keeps none of the files it passed.
func TestLocalWrongNode(t *testing.T) {
	n := newLocalNode(t, "n1")
	mustPut(t, n.store, "c", content(4, 2*bs))
	ctx := context.Background()
	before := openFDs(t)
	if _, err := OpenLocal(ctx, n.socket, "n2", "c"); !errors.Is(err, ErrLocalNode) {
		t.Errorf("OpenLocal as n2 = %v, want %v", err, ErrLocalNode)
	}
	// The node, in this process too, closes its copies once it answered.
	for deadline := time.Now().Add(5 * time.Second); openFDs(t) != before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d open files after refusing the node's, %d before", openFDs(t), before)
		}
	}
	if lc, err := OpenLocal(ctx, n.socket, "n1", "c"); err != nil {
		t.Errorf("OpenLocal as n1 = %v", err)
	} else {
		lc.Close()
	}
	if _, err := OpenLocal(ctx, filepath.Join(t.TempDir(), "none.sock"), "n1", "c"); err == nil {
		t.Error("OpenLocal of a missing socket succeeded")
	}
}

func flip(t *testing.T, path string, at int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[at] ^= 0x01
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
}
