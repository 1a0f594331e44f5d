package dfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// dataNode is a chunk store served over HTTP, as an agent serves it, and,
// when made local, on a short-circuit socket too. failPuts makes its PUTs
// fail after reading part of the body; hook, if set, may answer a request
// instead of the store. gets counts the chunk reads over HTTP; corrupt
// receives what the node reports corrupt.
type dataNode struct {
	name      string
	store     *chunkstore.Store
	srv       *httptest.Server
	socket    string // short-circuit socket, "" when not local
	advertise string // the socket its replicas name, if not socket
	failPuts  atomic.Bool
	hook      atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
	gets      atomic.Int32
	corrupt   chan string
}

func newDataNode(t *testing.T, name string) *dataNode {
	t.Helper()
	st, err := chunkstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d := &dataNode{name: name, store: st, corrupt: make(chan string, 100)}
	d.srv = httptest.NewServer(d.handler())
	t.Cleanup(d.srv.Close)
	return d
}

// newLocalDataNode is a data node that serves a short-circuit socket too,
// in a directory of its own (short, for the socket path's sake).
func newLocalDataNode(t *testing.T, name string) *dataNode {
	t.Helper()
	d := newDataNode(t, name)
	dir, err := os.MkdirTemp("", "dn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d.socket = filepath.Join(dir, "chunks.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: d.socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ls := &chunkstore.LocalServer{Store: d.store, Node: name, OnCorrupt: func(id string) { d.corrupt <- id }}
	go ls.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	return d
}

func (d *dataNode) handler() http.Handler {
	h := d.store.Handler(chunkstore.HandlerOptions{OnCorrupt: func(id string) { d.corrupt <- id }})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			d.gets.Add(1)
		}
		if hook := d.hook.Load(); hook != nil && (*hook)(w, r) {
			return
		}
		if r.Method == "PUT" && d.failPuts.Load() {
			io.CopyN(io.Discard, r.Body, 100<<10)
			http.Error(w, "disk on fire", http.StatusInternalServerError)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// setHook installs hook (nil removes it).
func (d *dataNode) setHook(hook func(w http.ResponseWriter, r *http.Request) bool) {
	if hook == nil {
		d.hook.Store(nil)
		return
	}
	d.hook.Store(&hook)
}

func (d *dataNode) replica() api.Replica {
	sock := d.socket
	if d.advertise != "" {
		sock = d.advertise
	}
	return api.Replica{Node: d.name, Zone: "z-" + d.name, Addr: d.srv.Listener.Addr().String(),
		State: api.ReplicaOK, Socket: sock}
}

// fakeNS is an in-memory namespace that allocates the first free nodes.
// events lists the allocations ("alloc ID"), commits ("commit ID") and
// abort in the order they came.
type fakeNS struct {
	mu      sync.Mutex
	nodes   []*dataNode
	file    *api.FileInfo
	chunks  []api.ChunkInfo
	aborted bool
	next    int
	events  []string
	// lease is the lease FSCreate grants, in seconds; renewals counts
	// FSRenew calls and renewed, if set, hears of each.
	lease    int
	renewals int
	renewed  chan struct{}
}

func (f *fakeNS) log(e string) {
	f.events = append(f.events, e)
}

// history returns the events so far.
func (f *fakeNS) history() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

func (f *fakeNS) FSCreate(_ context.Context, r *api.FileCreate) (*api.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.file = &api.FileInfo{Path: r.Path, FileID: 1, ChunkSize: r.ChunkSize, State: api.FileOpen, LeaseSeconds: f.lease}
	return f.file, nil
}

func (f *fakeNS) FSAllocate(_ context.Context, r *api.ChunkAllocate) (*api.ChunkAllocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Chunk == "" {
		f.log("alloc " + strings.Repeat("c", f.next+1))
	}
	count := 3
	if r.Count > 0 {
		count = r.Count
	}
	a := &api.ChunkAllocation{ID: r.Chunk}
	if a.ID == "" {
		f.next++
		a.ID = strings.Repeat("c", f.next)
	}
	for _, n := range f.nodes {
		if len(a.Replicas) < count && !contains(r.Exclude, n.name) && (r.Chunk == "" || n.name == "spare") {
			a.Replicas = append(a.Replicas, n.replica())
		}
	}
	return a, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (f *fakeNS) FSCommit(_ context.Context, r *api.ChunkCommit) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("commit " + r.ID)
	ci := api.ChunkInfo{ID: r.ID, Offset: f.file.Size, Length: r.Length, CRC: r.CRC}
	for _, name := range r.Replicas {
		for _, n := range f.nodes {
			if n.name == name {
				ci.Replicas = append(ci.Replicas, n.replica())
			}
		}
	}
	f.chunks = append(f.chunks, ci)
	f.file.Size += r.Length
	return nil
}

func (f *fakeNS) FSClose(_ context.Context, r *api.FileClose) (*api.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Size != f.file.Size {
		return nil, errors.New("size mismatch")
	}
	f.file.State, f.file.Chunks = api.FileClosed, f.chunks
	return f.file, nil
}

func (f *fakeNS) FSAbort(context.Context, *api.FileAbort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("abort")
	f.aborted = true
	return nil
}

// FSRenew counts renewals and signals each on renewed, if set.
func (f *fakeNS) FSRenew(context.Context, *api.FileRenew) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewals++
	if f.renewed != nil {
		select {
		case f.renewed <- struct{}{}:
		default:
		}
	}
	return nil
}

func setup(t *testing.T, names ...string) (*fakeNS, *Writer) {
	ns := &fakeNS{}
	for _, n := range names {
		ns.nodes = append(ns.nodes, newDataNode(t, n))
	}
	return ns, &Writer{NS: ns, Chunks: &chunkstore.Client{}, Log: slog.New(slog.DiscardHandler)}
}

func randomData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func readAll(t *testing.T, fi *api.FileInfo, o ReadOptions) ([]byte, error) {
	t.Helper()
	rd := NewReader(context.Background(), &chunkstore.Client{}, fi, o, slog.New(slog.DiscardHandler))
	defer rd.Close()
	return io.ReadAll(rd)
}

func TestWriteReadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, api.MinChunkSize, 3*api.MinChunkSize + 17, 2<<20 + 5} {
		ns, w := setup(t, "a", "b", "c")
		data := randomData(size)
		fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: int64(size)})
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if want := (size + api.MinChunkSize - 1) / api.MinChunkSize; len(fi.Chunks) != want {
			t.Errorf("size %d: %d chunks, want %d", size, len(fi.Chunks), want)
		}
		for _, c := range ns.chunks {
			if len(c.Replicas) != 3 {
				t.Errorf("chunk %s committed with %d replicas", c.ID, len(c.Replicas))
			}
		}
		got, err := readAll(t, fi, ReadOptions{Node: "b"})
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: read %d bytes, err %v; want the data back", size, len(got), err)
		}
	}
}

func TestWriteReplacesFailedReplica(t *testing.T) {
	ns, w := setup(t, "a", "b", "c", "spare")
	ns.nodes[1].failPuts.Store(true)
	data := randomData(1 << 20)
	fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: 256 << 10, Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range fi.Chunks {
		var names []string
		for _, r := range c.Replicas {
			names = append(names, r.Node)
		}
		if len(names) != 3 || contains(names, "b") || !contains(names, "spare") {
			t.Errorf("chunk %s replicas %v: want a, c and the spare replacing b", c.ID, names)
		}
		if _, err := ns.nodes[3].store.Stat(c.ID); err != nil {
			t.Errorf("spare does not hold chunk %s: %v", c.ID, err)
		}
	}
	got, err := readAll(t, fi, ReadOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back: %d bytes, %v", len(got), err)
	}
}

func TestWriteFailsCleanly(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	short := io.MultiReader(bytes.NewReader(randomData(1000)), errReader{io.ErrUnexpectedEOF})
	if _, err := w.Write(context.Background(), "/f", short, WriteOptions{ChunkSize: api.MinChunkSize, Size: 5000}); err == nil {
		t.Fatal("a body cut short was accepted")
	}
	if !ns.aborted {
		t.Error("the file was not deleted after a failed write")
	}
	ns, w = setup(t, "a", "b", "c")
	_, err := w.Write(context.Background(), "/f", bytes.NewReader(randomData(100)), WriteOptions{ChunkSize: api.MinChunkSize, Size: 200})
	if !errors.Is(err, ErrShortBody) || !ns.aborted {
		t.Errorf("short body: %v (aborted %v), want ErrShortBody and abort", err, ns.aborted)
	}
	ns, w = setup(t, "a", "b", "c")
	for _, n := range ns.nodes {
		n.failPuts.Store(true)
	}
	if _, err := w.Write(context.Background(), "/f", bytes.NewReader(randomData(1000)), WriteOptions{ChunkSize: api.MinChunkSize, Size: -1}); err == nil || !ns.aborted {
		t.Errorf("every replica failing: %v (aborted %v)", err, ns.aborted)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestReadFallsBack(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	data := randomData(300 << 10)
	fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Corrupt every chunk on the nearest node, and stop another node.
	for _, c := range fi.Chunks {
		if err := flipByte(ns.nodes[0].store.Path(c.ID)); err != nil {
			t.Fatal(err)
		}
	}
	ns.nodes[1].srv.Close()
	got, err := readAll(t, fi, ReadOptions{Node: "a"})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with one corrupt and one dead replica: %d bytes, %v", len(got), err)
	}
	ns.nodes[2].srv.Close()
	if _, err := readAll(t, fi, ReadOptions{Node: "a"}); err == nil {
		t.Error("a read with no readable replica succeeded")
	}
}

func flipByte(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	b[len(b)/2] ^= 0xff
	return os.WriteFile(path, b, 0o444)
}

// gatedReader yields data once open is closed, then EOF.
type gatedReader struct {
	open <-chan struct{}
	data []byte
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.open
	if len(g.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.data)
	g.data = g.data[n:]
	return n, nil
}

// TestWriteRenewsLease checks that a writer waiting for its input renews
// its lease on the open file.
func TestWriteRenewsLease(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	ns.lease = 1 // renew every third of a second
	ns.renewed = make(chan struct{}, 1)
	open := make(chan struct{})
	data := randomData(1000)
	go func() {
		// Release the input only after two renewals: the write cannot
		// finish unless the writer renews while its input is stalled.
		<-ns.renewed
		<-ns.renewed
		close(open)
	}()
	fi, err := w.Write(t.Context(), "/f", &gatedReader{open: open, data: data}, WriteOptions{Size: -1, ChunkSize: api.MinChunkSize})
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if fi.Size != int64(len(data)) {
		t.Errorf("size %d, want %d", fi.Size, len(data))
	}
	ns.mu.Lock()
	after := ns.renewals
	ns.mu.Unlock()
	if after < 2 {
		t.Errorf("%d renewals, want at least 2", after)
	}
}
