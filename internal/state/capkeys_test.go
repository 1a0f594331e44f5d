package state_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestCapabilityKeys(t *testing.T) {
	f := newFixture(t)
	ws := memdb.NewWatchSet()
	if keys := f.snap().CapabilityKeys(ws); len(keys) != 0 {
		t.Fatalf("a new store has keys %v", keys)
	}
	first := bytes.Repeat([]byte{1}, 32)
	if err := f.s.SetCapabilityKey(f.next(), &state.CapabilityKeyRequest{Key: state.CapabilityKey{ID: "a", Seed: first}}); err != nil {
		t.Fatal(err)
	}
	if ws.Watch(time.After(10 * time.Second)) {
		t.Error("the watch on an empty key table did not fire when the first key came")
	}
	// A second proposal (another leader's, say) is dropped.
	if err := f.s.SetCapabilityKey(f.next(), &state.CapabilityKeyRequest{Key: state.CapabilityKey{ID: "b", Seed: bytes.Repeat([]byte{2}, 32)}}); err != nil {
		t.Fatal(err)
	}
	check := func(s *state.Snapshot) {
		t.Helper()
		keys := s.CapabilityKeys(nil)
		if len(keys) != 1 || keys[0].ID != "a" || !bytes.Equal(keys[0].Seed, first) || keys[0].CreateIndex != 1 {
			t.Fatalf("keys = %+v, want the first one only", keys)
		}
	}
	check(f.snap())
	var buf bytes.Buffer
	if err := f.snap().Persist(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := state.Restore(&buf)
	if err != nil {
		t.Fatal(err)
	}
	check(r.Snapshot())
}
