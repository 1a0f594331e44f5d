package dfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// waitFor polls cond every 10ms until it holds, failing the test with its
// last message when timeout passes first. (testutil, which has one, would
// import this package.)
func waitFor(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdAnswer makes d store chunk id as usual but hold its answer to the
// PUT until release is closed, as a replica slow to sync it would.
func holdAnswer(d *dataNode, id string, release <-chan struct{}) {
	d.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "PUT" || !strings.HasSuffix(r.URL.Path, "/"+id) {
			return false
		}
		sc, err := d.store.Put(id, r.Body, r.ContentLength)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return true
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return true
		}
		json.NewEncoder(w).Encode(sc)
		return true
	})
}

// failPut makes d fail PUTs of chunk id after reading part of the body.
func failPut(d *dataNode, id string) {
	d.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "PUT" || !strings.HasSuffix(r.URL.Path, "/"+id) {
			return false
		}
		io.CopyN(io.Discard, r.Body, 10<<10)
		http.Error(w, "disk on fire", http.StatusInternalServerError)
		return true
	})
}

// stored reports whether every node in nodes holds chunk id.
func stored(id string, nodes ...*dataNode) bool {
	for _, d := range nodes {
		if _, err := d.store.Stat(id); err != nil {
			return false
		}
	}
	return true
}

// TestWritePipelinesChunks holds the replicas' answers for the first chunk
// (they stored it but have not said so): the second chunk streams and is
// stored meanwhile, the third waits (two chunks in flight at most), and
// the second is committed only after the first.
func TestWritePipelinesChunks(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	release := make(chan struct{})
	for _, d := range ns.nodes {
		holdAnswer(d, "c", release)
	}
	data := randomData(4*api.MinChunkSize + 100)
	type result struct {
		fi  *api.FileInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: -1})
		done <- result{fi, err}
	}()
	waitFor(t, 10*time.Second, func() (bool, string) {
		return stored("cc", ns.nodes...), "waiting for the second chunk to be stored while the first is unanswered"
	})
	if h := ns.history(); !cmp.Equal(h, []string{"alloc c", "alloc cc"}) {
		t.Errorf("while the first chunk is unanswered: %v; want the first two chunks allocated and none committed", h)
	}
	close(release)
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not finish once the first chunk was answered")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	want := []string{"alloc c", "alloc cc", "commit c", "alloc ccc", "commit cc", "alloc cccc", "commit ccc", "alloc ccccc", "commit cccc", "commit ccccc"}
	h := ns.history()
	if !cmp.Equal(commits(h), commits(want)) || len(h) != len(want) {
		t.Errorf("events %v, want the chunks committed in order, each once: %v", h, want)
	}
	// Never more than two chunks allocated and not yet committed.
	inflight := 0
	for _, e := range h {
		if strings.HasPrefix(e, "alloc") {
			inflight++
		} else {
			inflight--
		}
		if inflight > pipelineDepth {
			t.Errorf("events %v: %d chunks in flight at once", h, inflight)
			break
		}
	}
	got, err := readAll(t, res.fi, ReadOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %v; want the %d written", len(got), err, len(data))
	}
}

func commits(events []string) []string {
	var out []string
	for _, e := range events {
		if strings.HasPrefix(e, "commit") {
			out = append(out, e)
		}
	}
	return out
}

// TestWritePipelineReplacesFailedReplica fails one replica of the second
// chunk while the first one is still unanswered: the writer replaces it
// and commits both chunks, in order, with three replicas each.
func TestWritePipelineReplacesFailedReplica(t *testing.T) {
	ns, w := setup(t, "a", "b", "c", "spare")
	release := make(chan struct{})
	holdAnswer(ns.nodes[0], "c", release)
	holdAnswer(ns.nodes[2], "c", release)
	failPut(ns.nodes[1], "cc")
	data := randomData(2*api.MinChunkSize + 5)
	type result struct {
		fi  *api.FileInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: int64(len(data))})
		done <- result{fi, err}
	}()
	// The second chunk is stored on a and c, and copied to the spare, while
	// the first still waits for a and c to answer.
	waitFor(t, 10*time.Second, func() (bool, string) {
		return stored("cc", ns.nodes[0], ns.nodes[2], ns.nodes[3]), "waiting for the second chunk on a, c and the spare"
	})
	if c := commits(ns.history()); len(c) != 0 {
		t.Errorf("commits %v before the first chunk was answered", c)
	}
	close(release)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	want := map[string][]string{"c": {"a", "b", "c"}, "cc": {"a", "c", "spare"}, "ccc": {"a", "b", "c"}}
	for _, c := range res.fi.Chunks {
		var names []string
		for _, r := range c.Replicas {
			names = append(names, r.Node)
		}
		slices.Sort(names)
		if !cmp.Equal(names, want[c.ID]) {
			t.Errorf("chunk %s on %v, want %v", c.ID, names, want[c.ID])
		}
	}
	if got := commits(ns.history()); !cmp.Equal(got, []string{"commit c", "commit cc", "commit ccc"}) {
		t.Errorf("commits %v, want in order", got)
	}
	got, err := readAll(t, res.fi, ReadOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %v; want the %d written", len(got), err, len(data))
	}
}

// TestWritePipelineFailsCleanly loses every replica of the second chunk
// while the first is unanswered: the write fails, nothing is committed,
// the file is deleted and no third chunk is started.
func TestWritePipelineFailsCleanly(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	release := make(chan struct{})
	defer close(release)
	for _, d := range ns.nodes {
		d := d
		holdAnswer(d, "c", release)
		hold := d.hook.Load()
		d.setHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/cc") {
				io.CopyN(io.Discard, r.Body, 10<<10)
				http.Error(w, "disk on fire", http.StatusInternalServerError)
				return true
			}
			return (*hold)(w, r)
		})
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(context.Background(), "/f", bytes.NewReader(randomData(3*api.MinChunkSize)),
			WriteOptions{ChunkSize: api.MinChunkSize, Size: -1})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not fail within 10s of losing every replica of a chunk")
	}
	if err == nil || !strings.Contains(err.Error(), "every replica failed") {
		t.Errorf("Write = %v, want every replica of chunk cc failed", err)
	}
	if h := ns.history(); !cmp.Equal(h, []string{"alloc c", "alloc cc", "abort"}) {
		t.Errorf("events %v, want the two chunks allocated, none committed, then the abort", h)
	}
}

// TestWriteCancelled cancels a write whose data stops coming in the middle
// of its second chunk, as Ctrl-C does to `shoal fs put -`: the write ends
// at once, the file is deleted and no replica keeps the partial chunk.
func TestWriteCancelled(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	pr, pw := io.Pipe()
	defer pw.Close()
	// A chunk of two writer buffers, and then one buffer and a half: the
	// second chunk streams, then waits for data that does not come.
	const chunk = 2 * 1 << 20
	go pw.Write(randomData(chunk + chunk*3/4))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(ctx, "/f", pr, WriteOptions{ChunkSize: chunk, Size: -1})
		done <- err
	}()
	waitFor(t, 10*time.Second, func() (bool, string) {
		h := ns.history()
		return slices.Contains(h, "commit c") && slices.Contains(h, "alloc cc"), strings.Join(h, ", ")
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Write = %v, want %v", err, context.Canceled)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not return within 10s of its context ending")
	}
	if !ns.aborted {
		t.Error("the cancelled write's file was not deleted")
	}
	for _, d := range ns.nodes {
		if _, err := d.store.Stat("cc"); !errors.Is(err, chunkstore.ErrNotFound) {
			t.Errorf("%s: Stat(cc) = %v, want the partial chunk not stored", d.name, err)
		}
	}
}

// lockedSet is a set of strings safe for concurrent use.
type lockedSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (s *lockedSet) add(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]bool{}
	}
	s.m[v] = true
}

func (s *lockedSet) has(v string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[v]
}
