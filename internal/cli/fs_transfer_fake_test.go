package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// dfsFake is a DFS for the CLI's transfer tests: an in-memory namespace
// served as the servers serve theirs, and one real data node (a chunk
// store behind its HTTP API) that every chunk goes to and comes from, as
// the CLI moves file data itself.
type dfsFake struct {
	t     *testing.T
	srv   *httptest.Server // the servers' API
	node  *httptest.Server // the data node
	store *chunkstore.Store

	mu      sync.Mutex
	reqs    []string                 // "METHOD /v1/fs/x PATH", PATH from the query or the body
	entries map[string]*api.FileInfo // closed files and directories
	open    map[uint64]*api.FileInfo // files being written, by FileID
	creates []api.FileCreate
	aborts  int
	next    uint64
	// nodeFault, if set, answers the data node's requests it returns true
	// for, instead of the chunk store.
	nodeFault func(w http.ResponseWriter, r *http.Request) bool
}

func newDFSFake(t *testing.T) *dfsFake {
	t.Helper()
	st, err := chunkstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	f := &dfsFake{t: t, store: st, entries: map[string]*api.FileInfo{"/": {Path: "/", Dir: true}},
		open: map[uint64]*api.FileInfo{}}
	h := st.Handler(chunkstore.HandlerOptions{})
	f.node = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		fault := f.nodeFault
		f.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(f.node.Close)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/fs/stat", f.stat)
	mux.HandleFunc("GET /v1/fs/list", f.list)
	mux.HandleFunc("POST /v1/fs/mkdir", f.mkdir)
	mux.HandleFunc("POST /v1/fs/create", f.create)
	mux.HandleFunc("POST /v1/fs/allocate", f.allocate)
	mux.HandleFunc("POST /v1/fs/commit", f.commit)
	mux.HandleFunc("POST /v1/fs/close", f.close)
	mux.HandleFunc("POST /v1/fs/abort", f.abort)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// args prefixes args with "fs" and appends the fake's address.
func (f *dfsFake) args(args ...string) []string {
	return append(append([]string{"fs"}, args...), "--addr", f.srv.URL)
}

func (f *dfsFake) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// log records a request; the caller holds f.mu.
func (f *dfsFake) log(r *http.Request, p string) {
	f.reqs = append(f.reqs, r.Method+" "+r.URL.Path+" "+p)
}

func (f *dfsFake) replica() api.Replica {
	return api.Replica{Node: "dn1", Zone: "z1", Addr: f.node.Listener.Addr().String(), State: api.ReplicaOK}
}

// addFile stores data as a closed file of chunks of chunkSize bytes.
func (f *dfsFake) addFile(p string, data []byte, chunkSize int) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := &api.FileInfo{Path: p, Name: path.Base(p), Size: int64(len(data)), State: api.FileClosed, ChunkSize: int64(chunkSize)}
	for off := 0; off < len(data); off += chunkSize {
		b := data[off:min(off+chunkSize, len(data))]
		f.next++
		id := fmt.Sprintf("c%d", f.next)
		if _, err := f.store.Put(id, bytes.NewReader(b), int64(len(b))); err != nil {
			f.t.Fatal(err)
		}
		fi.Chunks = append(fi.Chunks, api.ChunkInfo{ID: id, Offset: int64(off), Length: int64(len(b)),
			CRC: crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)), Replicas: []api.Replica{f.replica()}})
	}
	f.entries[p] = fi
}

// content returns a closed file's bytes as its data node holds them.
func (f *dfsFake) content(p string) (string, bool) {
	f.mu.Lock()
	fi, ok := f.entries[p]
	f.mu.Unlock()
	if !ok || fi.Dir {
		return "", false
	}
	var b strings.Builder
	for _, c := range fi.Chunks {
		r, _, err := f.store.Open(c.ID, 0)
		if err != nil {
			f.t.Fatalf("chunk %s of %s: %v", c.ID, p, err)
		}
		io.Copy(&b, r)
		r.Close()
	}
	return b.String(), true
}

func (f *dfsFake) stat(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(r, p)
	fi, ok := f.entries[p]
	if !ok {
		fsError(404, api.CodeNotFound, "no such file or directory")(w, r)
		return
	}
	fsJSON(fi)(w, r)
}

func (f *dfsFake) list(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(r, p)
	var out []*api.FileInfo
	for q, fi := range f.entries {
		if q != "/" && path.Dir(q) == p {
			e := *fi
			e.Chunks = nil
			out = append(out, &e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	fsJSON(out)(w, r)
}

// decode reads a JSON body into v and logs the request with its path.
func (f *dfsFake) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		fsError(400, api.CodeInvalid, err.Error())(w, r)
		return false
	}
	var p struct {
		Path string `json:"path"`
	}
	b, _ := json.Marshal(v)
	json.Unmarshal(b, &p)
	f.log(r, p.Path)
	return true
}

func (f *dfsFake) mkdir(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.Mkdir
	if !f.decode(w, r, &req) {
		return
	}
	for p := req.Path; p != "/"; p = path.Dir(p) {
		if _, ok := f.entries[p]; !ok {
			f.entries[p] = &api.FileInfo{Path: p, Name: path.Base(p), Dir: true}
		}
	}
	fsJSON(struct{}{})(w, r)
}

func (f *dfsFake) create(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.FileCreate
	if !f.decode(w, r, &req) {
		return
	}
	f.creates = append(f.creates, req)
	if old, ok := f.entries[req.Path]; ok && (old.Dir || !req.Overwrite) {
		fsError(409, api.CodeConflict, "file exists")(w, r)
		return
	}
	if dir, ok := f.entries[path.Dir(req.Path)]; !ok || !dir.Dir {
		fsError(404, api.CodeNotFound, "no such directory")(w, r)
		return
	}
	if req.ChunkSize == 0 {
		req.ChunkSize = api.DefaultChunkSize
	}
	f.next++
	fi := &api.FileInfo{Path: req.Path, Name: path.Base(req.Path), State: api.FileOpen,
		ChunkSize: req.ChunkSize, Replication: req.Replication, FileID: f.next}
	f.open[fi.FileID] = fi
	fsJSON(fi)(w, r)
}

// openFile returns the file being written, or answers an error.
func (f *dfsFake) openFile(w http.ResponseWriter, r *http.Request, id uint64) *api.FileInfo {
	fi, ok := f.open[id]
	if !ok {
		fsError(404, api.CodeNotFound, "no such open file")(w, r)
	}
	return fi
}

func (f *dfsFake) allocate(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.ChunkAllocate
	if !f.decode(w, r, &req) || f.openFile(w, r, req.FileID) == nil {
		return
	}
	if req.Chunk != "" {
		fsError(503, api.CodeUnavailable, "no other data node")(w, r)
		return
	}
	f.next++
	fsJSON(&api.ChunkAllocation{ID: fmt.Sprintf("c%d", f.next), Replicas: []api.Replica{f.replica()}})(w, r)
}

func (f *dfsFake) commit(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.ChunkCommit
	fi := (*api.FileInfo)(nil)
	if !f.decode(w, r, &req) {
		return
	}
	if fi = f.openFile(w, r, req.FileID); fi == nil {
		return
	}
	fi.Chunks = append(fi.Chunks, api.ChunkInfo{ID: req.ID, Offset: fi.Size, Length: req.Length, CRC: req.CRC,
		Replicas: []api.Replica{f.replica()}})
	fi.Size += req.Length
	fsJSON(struct{}{})(w, r)
}

func (f *dfsFake) close(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.FileClose
	fi := (*api.FileInfo)(nil)
	if !f.decode(w, r, &req) {
		return
	}
	if fi = f.openFile(w, r, req.FileID); fi == nil {
		return
	}
	if req.Size != fi.Size {
		fsError(400, api.CodeInvalid, "size does not match the committed chunks")(w, r)
		return
	}
	delete(f.open, req.FileID)
	fi.State = api.FileClosed
	f.entries[fi.Path] = fi
	fsJSON(fi)(w, r)
}

func (f *dfsFake) abort(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var req api.FileAbort
	if !f.decode(w, r, &req) || f.openFile(w, r, req.FileID) == nil {
		return
	}
	delete(f.open, req.FileID)
	f.aborts++
	fsJSON(struct{}{})(w, r)
}
