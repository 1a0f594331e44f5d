package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// taskServer implements PUT /v1/nodes/{name}/tasks and records every batch
// it receives, including those it refuses.
type taskServer struct {
	*httptest.Server
	// before, when set, runs before a request is answered; n counts
	// requests from 1. It returns the status to answer with.
	before func(n int, batch api.TaskUpdates) int

	mu       sync.Mutex
	requests []api.TaskUpdates // every request, in arrival order
	statuses []int
	paths    []string
}

func newTaskServer(t *testing.T, before func(n int, batch api.TaskUpdates) int) *taskServer {
	t.Helper()
	s := &taskServer{before: before}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/nodes/{name}/tasks", func(w http.ResponseWriter, r *http.Request) {
		var batch api.TaskUpdates
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":{"code":"invalid_argument","message":%q}}`, err.Error())
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, batch)
		s.paths = append(s.paths, r.URL.Path)
		n := len(s.requests)
		s.mu.Unlock()
		status := http.StatusOK
		if s.before != nil {
			status = s.before(n, batch)
		}
		s.mu.Lock()
		s.statuses = append(s.statuses, status)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if status >= 300 {
			io.WriteString(w, `{"error":{"code":"internal","message":"try again"}}`)
			return
		}
		io.WriteString(w, `{"index":1}`)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// newHoldingServer returns a task server that holds its first request
// until release is called; inFlight is closed when that request arrives.
func newHoldingServer(t *testing.T) (srv *taskServer, inFlight <-chan struct{}, release func()) {
	t.Helper()
	arrived, held := make(chan struct{}), make(chan struct{})
	srv = newTaskServer(t, func(n int, _ api.TaskUpdates) int {
		if n == 1 {
			close(arrived)
			<-held
		}
		return http.StatusOK
	})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	t.Cleanup(release) // runs before the server's Close, which waits for the handler
	return srv, arrived, release
}

// waitClosed waits for ch to be closed, failing the test with msg after 10s.
func waitClosed(t *testing.T, ch <-chan struct{}, msg string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}

// accepted returns the updates of every request answered with 200, in order.
func (s *taskServer) accepted() []api.TaskUpdate {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []api.TaskUpdate
	for i, b := range s.requests {
		if i < len(s.statuses) && s.statuses[i] == http.StatusOK {
			out = append(out, b.Updates...)
		}
	}
	return out
}

// batches returns a copy of every request received.
func (s *taskServer) batches() []api.TaskUpdates {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]api.TaskUpdates(nil), s.requests...)
}

// startBatcher runs b until the test ends.
func startBatcher(t *testing.T, b *updateBatcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("updateBatcher.run did not return after its context ended")
		}
	})
}

func newTestBatcher(t *testing.T, srv *taskServer) *updateBatcher {
	t.Helper()
	c := api.NewClient([]string{srv.URL}, "")
	t.Cleanup(c.Close)
	return newUpdateBatcher(c, "n1", discardLog())
}

// waitAccepted waits until the server has accepted n updates.
func waitAccepted(t *testing.T, srv *taskServer, n int) []api.TaskUpdate {
	t.Helper()
	var got []api.TaskUpdate
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		got = srv.accepted()
		return len(got) >= n, fmt.Sprintf("got %d updates accepted, want %d", len(got), n)
	})
	return got
}

// tBase is the start time reports carry.
var tBase = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func TestUpdateBatcherBatches(t *testing.T) {
	srv := newTaskServer(t, nil)
	b := newTestBatcher(t, srv)
	var want []api.TaskUpdate
	for i := range 5 {
		u := api.TaskUpdate{TaskID: fmt.Sprintf("train-1/g/%d", i), RunID: 40, State: api.TaskRunning, Started: tBase}
		want = append(want, u)
		b.send(u)
	}
	startBatcher(t, b)
	got := waitAccepted(t, srv, len(want))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("updates delivered (-want +got):\n%s", diff)
	}
	batches := srv.batches()
	if len(batches) != 1 {
		t.Fatalf("got %d requests, want 1", len(batches))
	}
	if batches[0].Node != "n1" {
		t.Errorf("got node %q in the body, want %q", batches[0].Node, "n1")
	}
	srv.mu.Lock()
	path := srv.paths[0]
	srv.mu.Unlock()
	if path != "/v1/nodes/n1/tasks" {
		t.Errorf("got path %q, want %q", path, "/v1/nodes/n1/tasks")
	}
}

// TestUpdateBatcherBatchesWhileSending checks that reports queued while a
// request is in flight all travel together in the next one.
func TestUpdateBatcherBatchesWhileSending(t *testing.T) {
	srv, inFlight, release := newHoldingServer(t)
	b := newTestBatcher(t, srv)
	startBatcher(t, b)
	first := api.TaskUpdate{TaskID: "train-1/g/0", RunID: 40, State: api.TaskRunning, Started: tBase}
	b.send(first)
	waitClosed(t, inFlight, "the first report was never sent")
	var later []api.TaskUpdate
	for i := 1; i < 6; i++ {
		u := api.TaskUpdate{TaskID: fmt.Sprintf("train-1/g/%d", i), RunID: 40, State: api.TaskRunning, Started: tBase}
		later = append(later, u)
		b.send(u)
	}
	release()
	got := waitAccepted(t, srv, 1+len(later))
	if diff := cmp.Diff(append([]api.TaskUpdate{first}, later...), got); diff != "" {
		t.Errorf("updates delivered (-want +got):\n%s", diff)
	}
	if n := len(srv.batches()); n != 2 {
		t.Errorf("got %d requests, want 2", n)
	}
}

func TestUpdateBatcherSupersedes(t *testing.T) {
	tEnd := tBase.Add(time.Minute)
	tests := []struct {
		name string
		sent []api.TaskUpdate
		want []api.TaskUpdate
	}{
		{"running then complete",
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tBase},
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Finished: tEnd},
			},
			// The final report keeps the start time of the one it replaced.
			[]api.TaskUpdate{{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Started: tBase, Finished: tEnd}}},
		{"complete then running",
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Started: tBase, Finished: tEnd},
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tBase},
			},
			[]api.TaskUpdate{{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Started: tBase, Finished: tEnd}}},
		{"failed then running",
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskFailed, ExitCode: 3, Started: tBase, Finished: tEnd},
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tEnd},
			},
			[]api.TaskUpdate{{TaskID: "j-1/g/0", RunID: 5, State: api.TaskFailed, ExitCode: 3, Started: tBase, Finished: tEnd}}},
		{"lost then running",
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskLost, Message: "agent restarted", Finished: tEnd},
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tEnd},
			},
			[]api.TaskUpdate{{TaskID: "j-1/g/0", RunID: 5, State: api.TaskLost, Message: "agent restarted", Finished: tEnd}}},
		{"other runs are separate",
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskFailed, ExitCode: 1, Started: tBase, Finished: tEnd},
				{TaskID: "j-1/g/0", RunID: 6, State: api.TaskRunning, Started: tEnd},
				{TaskID: "j-1/g/1", RunID: 5, State: api.TaskRunning, Started: tBase},
			},
			[]api.TaskUpdate{
				{TaskID: "j-1/g/0", RunID: 5, State: api.TaskFailed, ExitCode: 1, Started: tBase, Finished: tEnd},
				{TaskID: "j-1/g/0", RunID: 6, State: api.TaskRunning, Started: tEnd},
				{TaskID: "j-1/g/1", RunID: 5, State: api.TaskRunning, Started: tBase},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTaskServer(t, nil)
			b := newTestBatcher(t, srv)
			for _, u := range tt.sent {
				b.send(u)
			}
			startBatcher(t, b)
			got := waitAccepted(t, srv, len(tt.want))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("updates delivered (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUpdateBatcherRunningDuringFinal checks that a "running" that
// comes while the final report is in flight is not sent after it.
func TestUpdateBatcherRunningDuringFinal(t *testing.T) {
	srv, inFlight, release := newHoldingServer(t)
	b := newTestBatcher(t, srv)
	startBatcher(t, b)
	final := api.TaskUpdate{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Started: tBase, Finished: tBase}
	b.send(final)
	waitClosed(t, inFlight, "the final report was never sent")
	b.send(api.TaskUpdate{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tBase})
	release()
	// A report for another run, sent last, shows that nothing else was
	// queued once it arrives.
	marker := api.TaskUpdate{TaskID: "j-1/g/1", RunID: 5, State: api.TaskRunning, Started: tBase}
	b.send(marker)
	got := waitAccepted(t, srv, 2)
	if diff := cmp.Diff([]api.TaskUpdate{final, marker}, got); diff != "" {
		t.Errorf("updates delivered (-want +got):\n%s", diff)
	}
}

func TestUpdateBatcherRetries(t *testing.T) {
	// The first request fails, and while it is in flight the run ends:
	// the retry must carry the final report (with the start time of the
	// first) and the other report again.
	var b *updateBatcher
	final := api.TaskUpdate{TaskID: "j-1/g/0", RunID: 5, State: api.TaskComplete, Finished: tBase.Add(time.Second)}
	srv := newTaskServer(t, func(n int, _ api.TaskUpdates) int {
		switch n {
		case 1:
			b.send(final)
			return http.StatusInternalServerError
		case 2:
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	b = newTestBatcher(t, srv)
	running0 := api.TaskUpdate{TaskID: "j-1/g/0", RunID: 5, State: api.TaskRunning, Started: tBase}
	running1 := api.TaskUpdate{TaskID: "j-1/g/1", RunID: 5, State: api.TaskRunning, Started: tBase}
	b.send(running0)
	b.send(running1)
	startBatcher(t, b)

	completed := final
	completed.Started = tBase
	want := []api.TaskUpdate{completed, running1}
	got := waitAccepted(t, srv, len(want))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("updates delivered (-want +got):\n%s", diff)
	}
	batches := srv.batches()
	if len(batches) != 3 {
		t.Fatalf("got %d requests, want 3 (two refused, one accepted)", len(batches))
	}
	if diff := cmp.Diff([]api.TaskUpdate{running0, running1}, batches[0].Updates); diff != "" {
		t.Errorf("first request (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, batches[1].Updates); diff != "" {
		t.Errorf("second request (-want +got):\n%s", diff)
	}
}

// TestUpdateBatcherLastFlush checks that reports queued when the agent
// stops get one more attempt.
func TestUpdateBatcherLastFlush(t *testing.T) {
	srv := newTaskServer(t, nil)
	b := newTestBatcher(t, srv)
	u := api.TaskUpdate{TaskID: "j-1/g/0", RunID: 5, State: api.TaskLost, Finished: tBase}
	b.send(u)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { defer close(done); b.run(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	if diff := cmp.Diff([]api.TaskUpdate{u}, srv.accepted()); diff != "" {
		t.Errorf("updates delivered (-want +got):\n%s", diff)
	}
}

func TestUpdateBatcherConcurrentSend(t *testing.T) {
	const (
		senders = 16
		perGo   = 40
	)
	srv := newTaskServer(t, nil)
	b := newTestBatcher(t, srv)
	startBatcher(t, b)
	var wg sync.WaitGroup
	var sent atomic.Int64
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perGo {
				id := fmt.Sprintf("j-1/g%d/%d", g, i)
				b.send(api.TaskUpdate{TaskID: id, RunID: uint64(100 + i), State: api.TaskRunning, Started: tBase})
				b.send(api.TaskUpdate{TaskID: id, RunID: uint64(100 + i), State: api.TaskComplete, Finished: tBase})
				sent.Add(2)
			}
		}()
	}
	wg.Wait()

	// Every run must end up delivered as complete, whether or not its
	// "running" travelled first.
	type key struct {
		task string
		run  uint64
	}
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		last := map[key]string{}
		for _, u := range srv.accepted() {
			last[key{u.TaskID, u.RunID}] = u.State
		}
		complete := 0
		for _, s := range last {
			if s == api.TaskComplete {
				complete++
			}
		}
		return len(last) == senders*perGo && complete == senders*perGo,
			fmt.Sprintf("got %d distinct runs delivered, %d of them complete; want %d", len(last), complete, senders*perGo)
	})
	seenComplete := map[key]bool{}
	for _, u := range srv.accepted() {
		k := key{u.TaskID, u.RunID}
		if seenComplete[k] {
			t.Errorf("got %s for %v after its final report, want nothing", u.State, k)
		}
		if u.State == api.TaskComplete {
			seenComplete[k] = true
			if !u.Started.Equal(tBase) && !u.Started.IsZero() {
				t.Errorf("got start %v for %v, want %v or none", u.Started, k, tBase)
			}
		}
	}
	if got := sent.Load(); got != 2*senders*perGo {
		t.Errorf("got %d sends, want %d", got, 2*senders*perGo)
	}
}
