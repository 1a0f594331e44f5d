package dfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// writeFile writes data in chunks of chunkSize to the nodes of ns.
func writeFile(t *testing.T, ns *fakeNS, data []byte, chunkSize int64) *api.FileInfo {
	t.Helper()
	w := &Writer{NS: ns, Chunks: &chunkstore.Client{}, Log: slog.New(slog.DiscardHandler)}
	fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: chunkSize, Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// recordGets makes d note which chunks it is asked for over HTTP, with the
// offset asked for.
func recordGets(d *dataNode, seen *lockedSet) {
	d.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" {
			id := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			seen.add(id)
			seen.add(id + "@" + r.URL.Query().Get("offset"))
		}
		return false
	})
}

// TestReadAhead reads one byte of a file and waits: the reader fetches the
// second chunk meanwhile, but not the third, which would take more memory
// than its read-ahead allows.
func TestReadAhead(t *testing.T) {
	ns, _ := setup(t, "a", "b", "c")
	data := randomData(4 * api.MinChunkSize)
	fi := writeFile(t, ns, data, api.MinChunkSize)
	var seen lockedSet
	for _, d := range ns.nodes {
		recordGets(d, &seen)
	}
	rd := NewReader(context.Background(), &chunkstore.Client{}, fi, ReadOptions{}, slog.New(slog.DiscardHandler))
	defer rd.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(rd, first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		return seen.has("cc"), "waiting for the second chunk to be fetched while the first is read"
	})
	if seen.has("ccc") {
		t.Error("the third chunk was fetched while the reader was still in the first")
	}
	rest, err := io.ReadAll(rd)
	if err != nil || !bytes.Equal(append(first, rest...), data) {
		t.Errorf("read %d bytes, %v; want the %d written", 1+len(rest), err, len(data))
	}
}

// TestShortCircuitRead reads a file whose replicas are all on this host:
// every byte comes straight from the chunk files, none over HTTP.
func TestShortCircuitRead(t *testing.T) {
	ns := &fakeNS{}
	for _, n := range []string{"a", "b", "c"} {
		ns.nodes = append(ns.nodes, newLocalDataNode(t, n))
	}
	data := randomData(3*api.MinChunkSize*4 + 12345)
	fi := writeFile(t, ns, data, 4*api.MinChunkSize)
	got, err := readAll(t, fi, ReadOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	for _, d := range ns.nodes {
		if n := d.gets.Load(); n != 0 {
			t.Errorf("%s served %d chunk reads over HTTP, want none", d.name, n)
		}
	}
}

// TestShortCircuitCorruptBlock flips a byte in the third block of a local
// replica: the reader returns the right bytes, the node has verified,
// dropped and reported its replica, and the rest of the chunk came over
// HTTP from the next replica, from the first bad block on.
func TestShortCircuitCorruptBlock(t *testing.T) {
	ns := &fakeNS{nodes: []*dataNode{newLocalDataNode(t, "a"), newDataNode(t, "b"), newDataNode(t, "c")}}
	data := randomData(2 * 4 * api.MinChunkSize)
	fi := writeFile(t, ns, data, 4*api.MinChunkSize)
	a := ns.nodes[0]
	id := fi.Chunks[0].ID
	raw, err := os.ReadFile(a.store.Path(id))
	if err != nil {
		t.Fatal(err)
	}
	raw[2*api.BlockSize+100] ^= 0x10
	os.Chmod(a.store.Path(id), 0o644)
	if err := os.WriteFile(a.store.Path(id), raw, 0o444); err != nil {
		t.Fatal(err)
	}
	var seen lockedSet
	recordGets(ns.nodes[1], &seen)
	recordGets(ns.nodes[2], &seen)

	got, err := readAll(t, fi, ReadOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	select {
	case c := <-a.corrupt:
		if c != id {
			t.Errorf("a reported chunk %s corrupt, want %s", c, id)
		}
	default:
		t.Errorf("a did not report its corrupt replica of %s", id)
	}
	if _, err := a.store.Stat(id); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("a still holds chunk %s (%v); it should have dropped it", id, err)
	}
	if !seen.has(id+"@131072") || seen.has(id+"@") {
		t.Errorf("HTTP reads of chunk %s: %v; want one from offset 131072 (the bad block) and none from the start", id, seen.m)
	}
	if a.gets.Load() != 0 {
		t.Errorf("a served %d reads over HTTP, want none", a.gets.Load())
	}
}

// TestShortCircuitFallsBack reads over HTTP when a replica's socket cannot
// serve it: no socket file, a socket that belongs to another node, or
// local sockets turned off.
func TestShortCircuitFallsBack(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(a, b *dataNode)
		noLocal bool
	}{
		{name: "no socket file", setup: func(a, b *dataNode) { a.advertise = a.socket + ".gone" }},
		{name: "socket of another node", setup: func(a, b *dataNode) { a.advertise = b.socket }},
		{name: "local sockets off", noLocal: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newLocalDataNode(t, "a"), newLocalDataNode(t, "b")
			ns := &fakeNS{nodes: []*dataNode{a, b}}
			data := randomData(2*api.MinChunkSize + 7)
			fi := writeFile(t, ns, data, api.MinChunkSize)
			if tt.setup != nil {
				tt.setup(a, b)
				// The namespace now lists the replicas with their new sockets.
				for i := range fi.Chunks {
					for j, r := range fi.Chunks[i].Replicas {
						if r.Node == "a" {
							fi.Chunks[i].Replicas[j] = a.replica()
						}
					}
				}
			}
			fi = withOrder(fi, []*dataNode{a, b})
			got, err := readAll(t, fi, ReadOptions{Node: "a", NoLocalSockets: tt.noLocal})
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, %v; want the %d written", len(got), err, len(data))
			}
			if n := a.gets.Load(); n != int32(len(fi.Chunks)) {
				t.Errorf("a served %d chunk reads over HTTP, want %d (all)", n, len(fi.Chunks))
			}
		})
	}
}

// withOrder lists each chunk's replicas in the order of nodes.
func withOrder(fi *api.FileInfo, nodes []*dataNode) *api.FileInfo {
	out := *fi
	out.Chunks = append([]api.ChunkInfo(nil), fi.Chunks...)
	for i := range out.Chunks {
		var reps []api.Replica
		for _, d := range nodes {
			for _, r := range out.Chunks[i].Replicas {
				if r.Node == d.name {
					reps = append(reps, r)
				}
			}
		}
		out.Chunks[i].Replicas = reps
	}
	return &out
}
