package lambdart

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestPeaks(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC) // the start of a slot
	const n = api.ForecastSlots
	at := func(slot int, d time.Duration) time.Time { return t0.Add(time.Duration(slot)*api.ForecastSlot + d) }
	c := &counters{}
	// Slot 0: up to 3 busy. Slot 2: up to 1. Slot 3: 1 still busy.
	c.busyChange(1, at(0, 100*time.Millisecond))
	c.busyChange(1, at(0, 200*time.Millisecond))
	c.busyChange(1, at(0, 300*time.Millisecond))
	c.busyChange(-1, at(0, 400*time.Millisecond))
	c.busyChange(-1, at(0, 500*time.Millisecond))
	c.busyChange(-1, at(2, 0))
	c.busyChange(1, at(2, time.Second))
	want := make([]int, n)
	want[0], want[1], want[2], want[3] = 1, 1, 1, 3 // slot 1 had one busy throughout
	peaks, slot := c.peakList(at(3, 0))
	if diff := cmp.Diff(want, peaks); diff != "" {
		t.Errorf("peaks at slot 3, current first (-want +got):\n%s", diff)
	}
	if slot != slotOf(t0)+3 {
		t.Errorf("current slot %d, want %d", slot, slotOf(t0)+3)
	}
	// One invocation busy all along: every slot of the window saw it.
	late := at(n+5, 0)
	ones := make([]int, n)
	for i := range ones {
		ones[i] = 1
	}
	if peaks, _ := c.peakList(late); !cmp.Equal(ones, peaks) {
		t.Errorf("peaks much later: %v, want all 1", peaks)
	}
	// Once it ends, older slots fall out of the window.
	c.busyChange(-1, late)
	if peaks, _ := c.peakList(late); !cmp.Equal(ones, peaks) {
		t.Errorf("peaks right after the end: %v, want all 1", peaks)
	}
	want = make([]int, n)
	want[n-1] = 1 // only the slot it ended in is still in the window
	if peaks, _ := c.peakList(late.Add((n - 1) * api.ForecastSlot)); !cmp.Equal(want, peaks) {
		t.Errorf("peaks a window later: %v, want %v", peaks, want)
	}
}

func TestLogStoreBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		records  int
		bytes    int64
		add      int
		maxAfter int
	}{
		{"by count", 10, 1 << 20, 25, 10},
		{"by size", 1000, 2000, 40, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLogStore(t.TempDir(), tc.records, tc.bytes)
			p := &Pool{logs: l}
			k := fnKey{"c1", "fn"}
			for i := range tc.add {
				l.add(k, &api.FunctionLogRecord{RequestID: fmt.Sprint("r", i), Function: "fn", Log: "some log text"})
			}
			got := p.Logs("c1", "fn", time.Time{}, "")
			if len(got) == 0 || len(got) > tc.maxAfter {
				t.Fatalf("%d records kept, want 1 to %d", len(got), tc.maxAfter)
			}
			if last := got[len(got)-1].RequestID; last != fmt.Sprint("r", tc.add-1) {
				t.Errorf("newest record kept is %s, want r%d", last, tc.add-1)
			}
			for i := 1; i < len(got); i++ {
				if got[i-1].RequestID >= got[i].RequestID && len(got[i-1].RequestID) == len(got[i].RequestID) {
					t.Errorf("records out of order: %s before %s", got[i-1].RequestID, got[i].RequestID)
				}
			}
			var onDisk int64
			for _, p := range []string{l.path(k), l.path(k) + ".1"} {
				if fi, err := os.Stat(p); err == nil {
					onDisk += fi.Size()
				}
			}
			if onDisk > tc.bytes || len(got) > tc.records {
				t.Errorf("store holds %d records, %d bytes; bounds %d, %d", len(got), onDisk, tc.records, tc.bytes)
			}
			if len(got) < tc.maxAfter/2 {
				t.Errorf("store holds %d records; want at least half of the %d it can hold", len(got), tc.maxAfter)
			}
		})
	}
}
