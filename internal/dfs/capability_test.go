package dfs

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shoal-dev/shoal/api"
)

// capNS is a namespace that hands out capabilities as the servers do:
// "write ID" and "read ID" for a new chunk.
type capNS struct{ *fakeNS }

func (n capNS) FSAllocate(ctx context.Context, r *api.ChunkAllocate) (*api.ChunkAllocation, error) {
	a, err := n.fakeNS.FSAllocate(ctx, r)
	if err == nil {
		a.Capability, a.ReadCapability = "write "+a.ID, "read "+a.ID
	}
	return a, err
}

// checkCapabilities makes d refuse, as an agent does, chunk PUTs and GETs
// without the capability capNS would grant for them.
func checkCapabilities(d *dataNode) {
	d.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		id, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/chunks/"), "/")
		want := map[string]string{http.MethodPut: "write ", http.MethodGet: "read ", http.MethodPost: "write "}[r.Method] + id
		if got := r.Header.Get(api.CapabilityHeader); got != want {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: api.CodeForbidden, Message: "capability " + got + ", want " + want}})
			return true
		}
		return false
	})
}

// TestCapabilitiesSent checks that the writer sends the allocation's
// capabilities, and that a reader whose capabilities a data node refuses
// (they expired) describes the file again and goes on with fresh ones.
func TestCapabilitiesSent(t *testing.T) {
	ns, w := setup(t, "a", "b", "c")
	for _, n := range ns.nodes {
		checkCapabilities(n)
	}
	w.NS = capNS{ns}
	data := randomData(3*api.MinChunkSize + 5)
	fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: int64(len(data))})
	if err != nil {
		t.Fatalf("Write with capabilities: %v", err)
	}

	stale := *fi
	stale.Chunks = append([]api.ChunkInfo(nil), fi.Chunks...)
	for i := range stale.Chunks {
		stale.Chunks[i].Capability = "read expired"
	}
	if _, err := readAll(t, &stale, ReadOptions{}); err == nil {
		t.Fatal("a read with refused capabilities and no Refresh succeeded")
	}
	var refreshes atomic.Int32
	refresh := func(context.Context) (*api.FileInfo, error) {
		refreshes.Add(1)
		fresh := *fi
		fresh.Chunks = append([]api.ChunkInfo(nil), fi.Chunks...)
		for i := range fresh.Chunks {
			fresh.Chunks[i].Capability = "read " + fresh.Chunks[i].ID
		}
		return &fresh, nil
	}
	got, err := readAll(t, &stale, ReadOptions{Refresh: refresh})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with Refresh: %d bytes, %v; want %d bytes", len(got), err, len(data))
	}
	if n := refreshes.Load(); n != int32(len(fi.Chunks)) {
		t.Errorf("Refresh called %d times, want once per chunk (%d)", n, len(fi.Chunks))
	}
}

// TestCapabilitiesReplaceReplica checks that a replica replacing a failed
// one gets the write capability and presents the read one to its source.
func TestCapabilitiesReplaceReplica(t *testing.T) {
	ns, w := setup(t, "a", "b", "c", "spare")
	for _, n := range ns.nodes {
		checkCapabilities(n)
	}
	ns.nodes[2].failPuts.Store(true)
	w.NS = capNS{ns}
	data := randomData(api.MinChunkSize + 5)
	fi, err := w.Write(context.Background(), "/f", bytes.NewReader(data), WriteOptions{ChunkSize: api.MinChunkSize, Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range fi.Chunks {
		var names []string
		for _, r := range c.Replicas {
			names = append(names, r.Node)
		}
		if !contains(names, "spare") || contains(names, "c") {
			t.Errorf("chunk %s is on %v, want the spare instead of c", c.ID, names)
		}
	}
}
