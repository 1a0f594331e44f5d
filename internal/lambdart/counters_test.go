package lambdart

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestPeaks(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	at := func(min, sec int) time.Time {
		return t0.Add(time.Duration(min)*time.Minute + time.Duration(sec)*time.Second)
	}
	c := &counters{}
	// Minute 0: up to 3 busy. Minute 2: up to 1. Minute 3: 1 still busy.
	c.busyChange(1, at(0, 1))
	c.busyChange(1, at(0, 2))
	c.busyChange(1, at(0, 3))
	c.busyChange(-1, at(0, 4))
	c.busyChange(-1, at(0, 5))
	c.busyChange(-1, at(2, 0))
	c.busyChange(1, at(2, 30))
	want := make([]int, api.ForecastMinutes)
	want[0], want[1], want[2], want[3] = 1, 1, 1, 3 // minute 1 had one busy throughout
	if diff := cmp.Diff(want, c.peakList(at(3, 0))); diff != "" {
		t.Errorf("peaks at minute 3, current first (-want +got):\n%s", diff)
	}
	// One invocation busy all along: every minute of the window saw it.
	late := at(api.ForecastMinutes+5, 0)
	want = make([]int, api.ForecastMinutes)
	for i := range want {
		want[i] = 1
	}
	if diff := cmp.Diff(want, c.peakList(late)); diff != "" {
		t.Errorf("peaks much later (-want +got):\n%s", diff)
	}
	// Once it ends, older minutes fall out of the window.
	c.busyChange(-1, late)
	want = make([]int, api.ForecastMinutes)
	for i := range want {
		want[i] = 1
	}
	if diff := cmp.Diff(want, c.peakList(late)); diff != "" {
		t.Errorf("peaks right after the end (-want +got):\n%s", diff)
	}
	want = make([]int, api.ForecastMinutes)
	want[api.ForecastMinutes-1] = 1 // only the minute it ended is still in the window
	if diff := cmp.Diff(want, c.peakList(late.Add((api.ForecastMinutes-1)*time.Minute))); diff != "" {
		t.Errorf("peaks a window later (-want +got):\n%s", diff)
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
			if sz := l.sizes[k]; sz.bytes > tc.bytes || sz.records > tc.records {
				t.Errorf("store holds %d records, %d bytes; bounds %d, %d", sz.records, sz.bytes, tc.records, tc.bytes)
			}
		})
	}
}
