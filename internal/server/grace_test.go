package server

import (
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// TestExpectedBackAfterLeaderChange: a node that stopped in an orderly way
// is due at the time recorded when it stopped, but never sooner than the
// grace after the current leader took over, so that an installation
// stopped as a whole for longer than the grace keeps its members.
func TestExpectedBackAfterLeaderChange(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	grace := 5 * time.Minute
	tests := []struct {
		name        string
		leaderSince time.Time
		recorded    time.Time
		want        time.Time
	}{
		{"recorded under this leader", t0, t0.Add(7 * time.Minute), t0.Add(7 * time.Minute)},
		{"leader took over later", t0.Add(time.Hour), t0.Add(7 * time.Minute), t0.Add(time.Hour + grace)},
		{"leader took over just before", t0.Add(4 * time.Minute), t0.Add(7 * time.Minute), t0.Add(9 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHeartbeatTracker()
			h.reset(tt.leaderSince)
			got := h.expectedBack(&api.Node{Name: "n", ExpectedBack: tt.recorded}, grace)
			if !got.Equal(tt.want) {
				t.Errorf("expectedBack: got %v, want %v", got, tt.want)
			}
		})
	}
}
