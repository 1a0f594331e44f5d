package pool

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestWanted(t *testing.T) {
	three := func(a, b, c ZoneCount) map[string]ZoneCount {
		return map[string]ZoneCount{"zone-1": a, "zone-2": b, "zone-3": c}
	}
	tests := []struct {
		name  string
		p     Policy
		zones map[string]ZoneCount
		want  map[string]int
	}{
		{"no wish", Policy{MinPerZone: 0, MaxNew: -1}, three(ZoneCount{}, ZoneCount{}, ZoneCount{}), map[string]int{}},
		{"no zones", Policy{MinPerZone: 1, MaxNew: -1}, nil, map[string]int{}},
		{"full", Policy{MinPerZone: 1, MaxNew: -1}, three(ZoneCount{Idle: 1}, ZoneCount{Idle: 2}, ZoneCount{Idle: 1}), map[string]int{}},
		// After `cluster create c1 --nodes 3 --zones 3` on a fresh dev
		// installation: one node in every zone.
		{"every zone empty", Policy{MinPerZone: 1, MaxNew: -1}, three(ZoneCount{}, ZoneCount{}, ZoneCount{}),
			map[string]int{"zone-1": 1, "zone-2": 1, "zone-3": 1}},
		// A member of zone-2 died and took zone-2's idle node: only zone-2.
		{"one zone empty", Policy{MinPerZone: 1, MaxNew: -1}, three(ZoneCount{Idle: 1}, ZoneCount{}, ZoneCount{Idle: 1}),
			map[string]int{"zone-2": 1}},
		// The node already starting fills the deficit: nothing more.
		{"starting counts", Policy{MinPerZone: 1, MaxNew: -1}, three(ZoneCount{Idle: 1}, ZoneCount{Starting: 1}, ZoneCount{Idle: 1}),
			map[string]int{}},
		{"starting counts partly", Policy{MinPerZone: 3, MaxNew: -1}, three(ZoneCount{Idle: 1, Starting: 1}, ZoneCount{Starting: 1}, ZoneCount{Idle: 5}),
			map[string]int{"zone-1": 1, "zone-2": 2}},
		{"no room", Policy{MinPerZone: 1, MaxNew: 0}, three(ZoneCount{}, ZoneCount{}, ZoneCount{}), map[string]int{}},
		// With room for fewer than lack, the zones lacking most come
		// first, ties by name.
		{"room for two of three", Policy{MinPerZone: 1, MaxNew: 2}, three(ZoneCount{}, ZoneCount{}, ZoneCount{}),
			map[string]int{"zone-1": 1, "zone-2": 1}},
		{"most lacking first", Policy{MinPerZone: 3, MaxNew: 3}, three(ZoneCount{Idle: 2}, ZoneCount{}, ZoneCount{Idle: 1}),
			map[string]int{"zone-2": 2, "zone-3": 1}},
		{"more than a zone lacks is never asked", Policy{MinPerZone: 2, MaxNew: 10}, three(ZoneCount{Idle: 1}, ZoneCount{Idle: 2}, ZoneCount{Idle: 2}),
			map[string]int{"zone-1": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Wanted(tt.p, tt.zones)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Wanted(%+v, %v) = %v, want %v (-want +got):\n%s", tt.p, tt.zones, got, tt.want, diff)
			}
		})
	}
}

func TestCount(t *testing.T) {
	nodes := []*api.Node{
		{Name: "a", Zone: "zone-1", State: api.NodeReady},
		{Name: "b", Zone: "zone-1", State: api.NodeReady, Cluster: "c1"},
		{Name: "c", Zone: "zone-2", State: api.NodeInitializing},
		{Name: "d", Zone: "zone-3", State: api.NodeDown},
		{Name: "e", Zone: "zone-1", State: api.NodeDraining},
		{Name: "f", Zone: "zone-2", State: api.NodeReady},
	}
	got := Count(nodes)
	want := map[string]ZoneCount{
		"zone-1": {Idle: 1},
		"zone-2": {Idle: 1, Starting: 1},
		"zone-3": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Count() = %v, want %v (-want +got):\n%s", got, want, diff)
	}
}
