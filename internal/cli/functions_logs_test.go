package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// waitOutput waits until b holds want, failing the test after a deadline.
func waitOutput(t *testing.T, b *testutil.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q does not hold %q after 10s", b.String(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFollowLogs(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := func(id string, start time.Duration, ended bool) *api.FunctionLogRecord {
		r := &api.FunctionLogRecord{RequestID: id, Node: "n1", Sandbox: "sb1", Version: 1, Start: t0.Add(start), Log: "log of " + id + "\n"}
		if ended {
			r.End, r.Outcome = r.Start.Add(time.Second), "ok"
		}
		return r
	}
	var (
		mu     sync.Mutex
		recs   = []*api.FunctionLogRecord{rec("r1", 0, true), rec("r2", time.Second, false)}
		sinces []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		s := r.URL.Query().Get("since")
		sinces = append(sinces, s)
		var since time.Time
		if s != "" {
			since = must(time.Parse(time.RFC3339Nano, s))
		}
		var out []*api.FunctionLogRecord
		for _, rc := range recs {
			if !rc.Start.Before(since) {
				out = append(out, rc)
			}
		}
		json.NewEncoder(w).Encode(out)
	}))
	defer srv.Close()

	var stdout, stderr testutil.Buffer
	g := &globals{stdout: &stdout, stderr: &stderr, output: "table"}
	cl := api.NewClient([]string{srv.URL}, "")
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- followLogs(ctx, g, cl, "c1", "hello", time.Time{}, "", 5*time.Millisecond) }()

	waitOutput(t, &stdout, "r1 -> ok")
	mu.Lock()
	n := len(sinces)
	mu.Unlock()
	for { // a few more polls, which must print nothing new
		mu.Lock()
		m := len(sinces)
		mu.Unlock()
		if m >= n+3 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(stdout.String(), "r2") {
		t.Errorf("printed r2 before it ended:\n%s", stdout.String())
	}
	mu.Lock()
	recs[1] = rec("r2", time.Second, true)
	recs = append(recs, rec("r3", 2*time.Second, true))
	mu.Unlock()
	waitOutput(t, &stdout, "r3 -> ok")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		last := sinces[len(sinces)-1]
		mu.Unlock()
		if last == "2026-11-30T12:00:02Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("followLogs still asks since %s, want r3's start", last)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("followLogs returned %v after Ctrl-C, want nil", err)
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		if c := strings.Count(stdout.String(), "] "+id+" -> "); c != 1 {
			t.Errorf("%s printed %d times, want once:\n%s", id, c, stdout.String())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// The cursor stays at r2's start while it runs.
	if sinces[0] != "" || sinces[1] != "2026-11-30T12:00:01Z" {
		t.Errorf("asked since %v, want \"\", then r2's start", sinces)
	}
}
