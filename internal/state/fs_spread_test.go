package state_test

import (
	"fmt"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestPlacementZones(t *testing.T) {
	node := func(name, zone, st, addr string) *api.Node {
		return &api.Node{Name: name, Zone: zone, State: st, Addr: addr}
	}
	tests := []struct {
		name  string
		nodes []*api.Node
		want  int
	}{
		{"none", nil, 0},
		{"two ready in one zone", []*api.Node{node("a1", "za", api.NodeReady, "x"), node("a2", "za", api.NodeReady, "x")}, 1},
		{"three zones", []*api.Node{node("a", "za", api.NodeReady, "x"), node("b", "zb", api.NodeReady, "x"), node("c", "zc", api.NodeReady, "x")}, 3},
		{"down, draining and initializing zones do not count", []*api.Node{node("a", "za", api.NodeReady, "x"),
			node("b", "zb", api.NodeDown, "x"), node("c", "zc", api.NodeDraining, "x"), node("d", "zd", api.NodeInitializing, "x")}, 1},
		{"a node without a data address does not count", []*api.Node{node("a", "za", api.NodeReady, "x"), node("b", "zb", api.NodeReady, "")}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := state.PlacementZones(tt.nodes); got != tt.want {
				t.Errorf("PlacementZones = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestChunkMisplaced(t *testing.T) {
	tests := []struct {
		c     state.ChunkState
		zones int
		want  bool
	}{
		{state.ChunkState{Committed: true, Live: []string{"a", "b", "c"}, LiveZones: 3, Replication: 3}, 3, false},
		{state.ChunkState{Committed: true, Live: []string{"a", "b", "c"}, LiveZones: 2, Replication: 3}, 3, true},
		{state.ChunkState{Committed: true, Live: []string{"a", "b", "c"}, LiveZones: 2, Replication: 3}, 2, false},
		{state.ChunkState{Committed: true, Live: []string{"a", "b", "c"}, LiveZones: 2, Replication: 3}, 5, true},
		{state.ChunkState{Committed: true, Live: []string{"a", "b"}, LiveZones: 2, Replication: 2}, 3, false},
		{state.ChunkState{Committed: true, Live: []string{"a"}, LiveZones: 1, Replication: 1}, 3, false},
		{state.ChunkState{Committed: true, Live: []string{"a", "b"}, LiveZones: 1, Replication: 3}, 3, true}, // under-replicated too
		{state.ChunkState{Committed: true, Live: nil, LiveZones: 0, Replication: 3}, 3, false},               // unavailable, not mis-placed
		{state.ChunkState{Committed: false, Live: []string{"a", "b", "c"}, LiveZones: 1, Replication: 3}, 3, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%+v/zones=%d", tt.c, tt.zones), func(t *testing.T) {
			if got := tt.c.Misplaced(tt.zones); got != tt.want {
				t.Errorf("Misplaced(%d) = %v, want %v", tt.zones, got, tt.want)
			}
		})
	}
}

// TestFSChunksLiveZones: FSChunks counts the zones of live replicas only.
func TestFSChunksLiveZones(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"a1", "a2", "b1", "c1"} {
		f.addNode(n, "z"+n[:1])
	}
	ids := f.writeFile("/f", 10)
	for _, tt := range []struct {
		down string
		want int
	}{{"", 3}, {"c1", 2}} {
		if tt.down != "" {
			f.setState(tt.down, api.NodeDown)
		}
		found := false
		for _, c := range f.snap().FSChunks(nil) {
			if c.ID != ids[0] {
				continue
			}
			found = true
			if c.LiveZones != tt.want {
				t.Errorf("after %q went down: LiveZones = %d for replicas %v, want %d", tt.down, c.LiveZones, c.Replicas, tt.want)
			}
		}
		if !found {
			t.Fatalf("FSChunks lacks chunk %s", ids[0])
		}
	}
}
