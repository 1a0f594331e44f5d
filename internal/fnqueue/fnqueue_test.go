package fnqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/shoal-dev/shoal/api"
)

var testNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func testLog(t testing.TB) *slog.Logger {
	if os.Getenv("FNQUEUE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is a standalone queue's configuration with short waits.
func testConfig(t testing.TB, dir string) Config {
	return Config{Name: "s1", DataDir: dir, Log: testLog(t), Now: func() time.Time { return testNow },
		Backoff: func(int) time.Duration { return 10 * time.Millisecond }, ackWait: 3 * time.Second, Drain: 200 * time.Millisecond}
}

// open opens a queue, closed at the end of the test, and waits until it is
// ready.
func open(t testing.TB, cfg Config) *Queue {
	t.Helper()
	q, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	waitReady(t, q)
	return q
}

func waitReady(t testing.TB, q *Queue) {
	t.Helper()
	select {
	case <-q.ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("the queue %s was not ready within 30s", q.cfg.Name)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// recorder is a Handler's record of the calls it got.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]Event // by event ID
	done  map[string]bool
}

func newRecorder() *recorder {
	return &recorder{calls: map[string][]Event{}, done: map[string]bool{}}
}

// handler records each call and returns what result says.
func (r *recorder) handler(result func(ev *Event, calls int) error) Handler {
	return func(ctx context.Context, ev *Event) error {
		r.mu.Lock()
		r.calls[ev.ID] = append(r.calls[ev.ID], *ev)
		n := len(r.calls[ev.ID])
		r.mu.Unlock()
		err := result(ev, n)
		if err == nil {
			r.mu.Lock()
			r.done[ev.ID] = true
			r.mu.Unlock()
		}
		return err
	}
}

func (r *recorder) doneCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.done)
}

func (r *recorder) callsOf(id string) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.calls[id]...)
}

func ev(id, function string, retries int) *Event {
	return &Event{ID: id, Cluster: "c1", Function: function, Version: 2, Payload: []byte(`{"n":"` + id + `"}`), Retries: retries}
}

func enqueue(t testing.TB, q *Queue, evs ...*Event) {
	t.Helper()
	for _, e := range evs {
		if err := q.Enqueue(context.Background(), e); err != nil {
			t.Fatalf("Enqueue %s: %v", e.ID, err)
		}
	}
}

func depth(t testing.TB, q *Queue, function string) (queued, dead uint64) {
	t.Helper()
	queued, dead, err := q.Depth(context.Background(), "c1", function)
	if err != nil {
		t.Fatalf("Depth: %v", err)
	}
	return queued, dead
}

func TestEnqueueRunAck(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	var want []string
	for i := range 20 {
		id := "ev-" + strconv.Itoa(i)
		want = append(want, id)
		enqueue(t, q, ev(id, "f", 2))
	}
	// A second Enqueue of an ID is de-duplicated.
	enqueue(t, q, ev("ev-0", "f", 2))
	if n, _ := depth(t, q, "f"); n != 20 {
		t.Fatalf("queued = %d before Run, want 20", n)
	}
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	waitFor(t, "20 events done", 20*time.Second, func() bool { return r.doneCount() == 20 })
	waitFor(t, "an empty queue", 10*time.Second, func() bool { n, _ := depth(t, q, "f"); return n == 0 })
	for _, id := range want {
		calls := r.callsOf(id)
		if len(calls) != 1 {
			t.Fatalf("%s ran %d times, want 1", id, len(calls))
		}
		got := calls[0]
		wantEv := *ev(id, "f", 2)
		wantEv.Attempt, wantEv.Enqueued = 1, testNow
		if diff := cmp.Diff(wantEv, got, cmpopts.IgnoreUnexported(Event{})); diff != "" {
			t.Errorf("event %s (-want +got):\n%s", id, diff)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	file := t.TempDir() + "/file"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no name", Config{DataDir: t.TempDir()}},
		{"no data directory", Config{Name: "s1"}},
		{"data directory is a file", Config{Name: "s1", DataDir: file}},
		{"routes without listen", Config{Name: "s1", DataDir: t.TempDir(), Routes: []string{"127.0.0.1:1"}}},
		{"bad route", Config{Name: "s1", DataDir: t.TempDir(), Listen: freeAddr(t), Routes: []string{"nowhere"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := Open(tc.cfg)
			if err == nil {
				q.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("Open: %v", err)
		})
	}
}

func TestEnqueueInvalid(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	for _, tc := range []struct {
		name string
		ev   *Event
	}{
		{"dot in function", &Event{ID: "a", Cluster: "c1", Function: "f.g"}},
		{"wildcard cluster", &Event{ID: "a", Cluster: "*", Function: "f"}},
		{"empty ID", &Event{ID: "", Cluster: "c1", Function: "f"}},
		{"space in ID", &Event{ID: "a b", Cluster: "c1", Function: "f"}},
		{"negative retries", &Event{ID: "a", Cluster: "c1", Function: "f", Retries: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := q.Enqueue(context.Background(), tc.ev); !errors.Is(err, ErrInvalid) {
				t.Errorf("Enqueue = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestRetriesThenDeadLetter(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	r := newRecorder()
	q.Run(r.handler(func(ev *Event, n int) error {
		return &Failure{Type: "Unhandled", Message: fmt.Sprintf("boom %d", ev.Attempt)}
	}))
	for _, retries := range []int{0, 1, 2} {
		t.Run("retries="+strconv.Itoa(retries), func(t *testing.T) {
			id := "r" + strconv.Itoa(retries)
			function := "f" + strconv.Itoa(retries)
			enqueue(t, q, ev(id, function, retries))
			var dl *api.DeadLetter
			waitFor(t, "a dead letter", 20*time.Second, func() bool {
				var err error
				dl, err = q.DeadLetter(context.Background(), "c1", function, id)
				return err == nil
			})
			want := &api.DeadLetter{ID: id, Function: function, Cluster: "c1", Version: 2, Payload: ev(id, function, 0).Payload,
				ErrorType: "Unhandled", ErrorMessage: fmt.Sprintf("boom %d", retries+1), Attempts: retries + 1,
				Enqueued: testNow, Failed: testNow}
			if diff := cmp.Diff(want, dl); diff != "" {
				t.Errorf("dead letter (-want +got):\n%s", diff)
			}
			calls := r.callsOf(id)
			if len(calls) != retries+1 {
				t.Fatalf("ran %d times, want %d", len(calls), retries+1)
			}
			for i, c := range calls {
				if c.Attempt != i+1 {
					t.Errorf("call %d: attempt %d, want %d", i, c.Attempt, i+1)
				}
			}
			waitFor(t, "the event to leave the queue", 10*time.Second, func() bool {
				queued, dead := depth(t, q, function)
				return queued == 0 && dead == 1
			})
		})
	}
}

func TestDeadLetterListShowRedrive(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	var mu sync.Mutex
	fixed := false
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error {
		mu.Lock()
		defer mu.Unlock()
		if !fixed {
			return &Failure{Type: "Sandbox.Timedout", Message: "timed out after 3s"}
		}
		return nil
	}))
	ids := []string{"d1", "d2", "d3"}
	for _, id := range ids {
		enqueue(t, q, ev(id, "f", 0))
	}
	enqueue(t, q, ev("other", "g", 0)) // another function's dead letter
	ctx := context.Background()
	waitFor(t, "4 dead letters", 20*time.Second, func() bool {
		_, dead := depth(t, q, "f")
		_, deadG := depth(t, q, "g")
		return dead == 3 && deadG == 1
	})
	dls, err := q.DeadLetters(ctx, "c1", "f")
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	var got []string
	for _, dl := range dls {
		got = append(got, dl.ID)
		if dl.ErrorType != "Sandbox.Timedout" || dl.Attempts != 1 {
			t.Errorf("dead letter %s: %s after %d attempts, want Sandbox.Timedout after 1", dl.ID, dl.ErrorType, dl.Attempts)
		}
	}
	sort.Strings(got)
	if diff := cmp.Diff(ids, got); diff != "" {
		t.Fatalf("dead letters (-want +got):\n%s", diff)
	}
	if _, err := q.DeadLetter(ctx, "c1", "f", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeadLetter(nope) = %v, want ErrNotFound", err)
	}
	if _, err := q.Redrive(ctx, "c1", "f", []string{"d1", "nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Redrive(d1, nope) = %v, want ErrNotFound", err)
	}
	if _, dead := depth(t, q, "f"); dead != 3 {
		t.Errorf("a failed Redrive left %d dead letters, want 3", dead)
	}

	mu.Lock()
	fixed = true
	mu.Unlock()
	redriven, err := q.Redrive(ctx, "c1", "f", []string{"d2"})
	if err != nil || !cmp.Equal(redriven, []string{"d2"}) {
		t.Fatalf("Redrive(d2) = %v, %v; want [d2]", redriven, err)
	}
	waitFor(t, "d2 to run again and succeed", 20*time.Second, func() bool { return r.doneCount() == 1 })
	if calls := r.callsOf("d2"); len(calls) != 2 || calls[1].Attempt != 1 {
		t.Errorf("d2's calls: %+v; want 2, the second attempt 1", calls)
	}
	redriven, err = q.Redrive(ctx, "c1", "f", nil)
	sort.Strings(redriven)
	if err != nil || !cmp.Equal(redriven, []string{"d1", "d3"}) {
		t.Fatalf("Redrive(all) = %v, %v; want [d1 d3]", redriven, err)
	}
	waitFor(t, "every redriven event to succeed", 20*time.Second, func() bool { return r.doneCount() == 3 })
	waitFor(t, "an empty dead-letter queue", 10*time.Second, func() bool {
		queued, dead := depth(t, q, "f")
		return queued == 0 && dead == 0
	})
	if _, deadG := depth(t, q, "g"); deadG != 1 {
		t.Errorf("function g has %d dead letters, want 1 (a redrive of f must not touch it)", deadG)
	}
}

func TestErrorsThatAreNotAttempts(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	r := newRecorder()
	q.Run(r.handler(func(ev *Event, n int) error {
		switch {
		case ev.ID == "panics" && n == 1:
			panic("handler bug")
		case ev.ID == "no-agent" && n <= 3:
			return errors.New("no agent of the cluster is ready")
		}
		return nil
	}))
	// Retries 0: any counted attempt before success would dead-letter it.
	enqueue(t, q, ev("panics", "f", 0), ev("no-agent", "f", 0))
	waitFor(t, "both events done", 20*time.Second, func() bool { return r.doneCount() == 2 })
	for id, n := range map[string]int{"panics": 2, "no-agent": 4} {
		calls := r.callsOf(id)
		if len(calls) != n {
			t.Errorf("%s ran %d times, want %d", id, len(calls), n)
		}
		for i, c := range calls {
			if c.Attempt != 1 {
				t.Errorf("%s call %d: attempt %d, want 1", id, i, c.Attempt)
			}
		}
	}
	if _, dead := depth(t, q, "f"); dead != 0 {
		t.Errorf("%d dead letters, want 0", dead)
	}
}

// TestWaitingEventsLetOthersRun: events that could not run give their
// worker back while they wait, so that other functions' events run.
func TestWaitingEventsLetOthersRun(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Workers = 1
	cfg.Backoff = func(int) time.Duration { return time.Hour }
	q := open(t, cfg)
	r := newRecorder()
	q.Run(r.handler(func(ev *Event, _ int) error {
		if ev.Function == "stuck" {
			return errors.New("no agent")
		}
		return nil
	}))
	enqueue(t, q, ev("s1", "stuck", 0), ev("s2", "stuck", 0), ev("s3", "stuck", 0))
	waitFor(t, "the stuck events to be taken", 20*time.Second, func() bool {
		return len(r.callsOf("s1")) > 0 && len(r.callsOf("s2")) > 0 && len(r.callsOf("s3")) > 0
	})
	enqueue(t, q, ev("ok1", "fine", 0), ev("ok2", "fine", 0))
	waitFor(t, "the other function's events done", 20*time.Second, func() bool { return r.doneCount() == 2 })
}

func TestEventsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	q, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, q)
	for i := range 5 {
		enqueue(t, q, ev("e"+strconv.Itoa(i), "f", 1))
	}
	// A dead letter survives too.
	q.Run(func(ctx context.Context, ev *Event) error {
		if ev.ID == "dead" {
			return &Failure{Type: "Unhandled", Message: "no"}
		}
		<-ctx.Done() // the others are still running at Close
		return ctx.Err()
	})
	enqueue(t, q, ev("dead", "g", 0))
	waitFor(t, "a dead letter", 20*time.Second, func() bool { _, dead := depth(t, q, "g"); return dead == 1 })
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q = open(t, cfg)
	if n, _ := depth(t, q, "f"); n != 5 {
		t.Fatalf("queued after reopening = %d, want 5", n)
	}
	if _, err := q.DeadLetter(context.Background(), "c1", "g", "dead"); err != nil {
		t.Fatalf("the dead letter after reopening: %v", err)
	}
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	waitFor(t, "5 events done", 20*time.Second, func() bool {
		if dls, _ := q.DeadLetters(context.Background(), "c1", "f"); len(dls) > 0 {
			t.Fatalf("dead letter after reopening: %+v", dls[0])
		}
		return r.doneCount() == 5
	})
}

// TestInterruptedLastAttempt: an event whose only attempt was cut short
// by its server's death is dead-lettered when delivered again, not run a
// second time.
func TestInterruptedLastAttempt(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	q := open(t, cfg)
	started := make(chan struct{})
	q.Run(func(ctx context.Context, ev *Event) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	enqueue(t, q, ev("once", "f", 0))
	<-started
	q.crash()

	q = open(t, cfg)
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	var dl *api.DeadLetter
	waitFor(t, "a dead letter", 20*time.Second, func() bool {
		var err error
		dl, err = q.DeadLetter(context.Background(), "c1", "f", "once")
		return err == nil
	})
	if dl.ErrorType != ErrorTypeInterrupted || dl.Attempts != 1 {
		t.Errorf("dead letter: %s after %d attempts; want %s after 1", dl.ErrorType, dl.Attempts, ErrorTypeInterrupted)
	}
	if n := len(r.callsOf("once")); n != 0 {
		t.Errorf("the event ran %d more times, want 0", n)
	}
}

func TestPurge(t *testing.T) {
	q := open(t, testConfig(t, t.TempDir()))
	enqueue(t, q, ev("a1", "a", 0), ev("a2", "a", 0), ev("b1", "b", 0))
	q.Run(func(ctx context.Context, ev *Event) error {
		if ev.ID == "dead-a" {
			return &Failure{Type: "Unhandled", Message: "no"}
		}
		<-ctx.Done() // the others stay running, hence queued
		return ctx.Err()
	})
	enqueue(t, q, ev("dead-a", "a", 0))
	waitFor(t, "a dead letter", 20*time.Second, func() bool { _, dead := depth(t, q, "a"); return dead == 1 })
	if err := q.Purge(context.Background(), "c1", "a"); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if queued, dead := depth(t, q, "a"); queued != 0 || dead != 0 {
		t.Errorf("function a after Purge: %d queued, %d dead; want none", queued, dead)
	}
	if queued, _ := depth(t, q, "b"); queued != 1 {
		t.Errorf("function b after purging a: %d queued, want 1", queued)
	}
}

// BenchmarkEnqueue measures Enqueue, which returns once the event is
// stored: on a standalone queue and on three clustered servers (streams of
// three replicas), with SyncAlways (fsync before the acknowledgement, as
// Open sets it) and, to show its cost, without. It reports the median and
// the 99th percentile besides the mean.
func BenchmarkEnqueue(b *testing.B) {
	for _, bc := range []struct {
		name    string
		servers int
		noSync  bool
	}{
		{"standalone/sync", 1, false},
		{"standalone/nosync", 1, true},
		{"cluster3/sync", 3, false},
		{"cluster3/nosync", 3, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var q *Queue
			if bc.servers == 1 {
				cfg := testConfig(b, b.TempDir())
				cfg.noSync = bc.noSync
				q = open(b, cfg)
			} else {
				q = openCluster(b, bc.servers, func(_ int, cfg *Config) { cfg.noSync = bc.noSync })[0]
			}
			payload := make([]byte, 1024)
			var durs []time.Duration
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				err := q.Enqueue(ctx, &Event{ID: "b" + strconv.Itoa(i), Cluster: "c1", Function: "f", Payload: payload})
				durs = append(durs, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
			}
			sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
			b.ReportMetric(float64(durs[len(durs)/2].Microseconds()), "median-µs")
			b.ReportMetric(float64(durs[len(durs)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// TestClosingWhileWaitingSpendsNoAttempt: an event waiting for an agent
// (an error that is not a Failure) when its server closes is given back
// unrun, and its next delivery is still its first attempt, even with no
// retries left to spend.
func TestClosingWhileWaitingSpendsNoAttempt(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Backoff = func(int) time.Duration { return time.Hour } // waiting at Close
	q := open(t, cfg)
	called := make(chan struct{}, 1)
	q.Run(func(ctx context.Context, ev *Event) error {
		select {
		case called <- struct{}{}:
		default:
		}
		return errors.New("no agent can run it now")
	})
	enqueue(t, q, ev("waiting", "f", 0))
	<-called
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	cfg.Backoff = func(int) time.Duration { return 10 * time.Millisecond }
	q = open(t, cfg)
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	waitFor(t, "the event to run", 20*time.Second, func() bool {
		if dls, _ := q.DeadLetters(context.Background(), "c1", "f"); len(dls) > 0 {
			t.Fatalf("dead-lettered: %+v", dls[0])
		}
		return r.doneCount() == 1
	})
	if calls := r.callsOf("waiting"); len(calls) != 1 || calls[0].Attempt != 1 {
		t.Errorf("calls after reopening: %+v, want one, attempt 1", calls)
	}
}

// TestCloseLetsRunningEventsFinish: a server closing lets the event it
// runs finish and acknowledges it, so that it does not run again
// elsewhere; one that outlasts the drain is cancelled and delivered again.
func TestCloseLetsRunningEventsFinish(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Drain = 10 * time.Second
	q := open(t, cfg)
	started := make(chan string, 2)
	var mu sync.Mutex
	outcome := map[string]error{}
	q.Run(func(ctx context.Context, ev *Event) error {
		started <- ev.ID
		d := 300 * time.Millisecond
		if ev.ID == "long" {
			d = time.Hour
		}
		var err error
		select {
		case <-time.After(d):
		case <-ctx.Done():
			err = ctx.Err()
		}
		mu.Lock()
		outcome[ev.ID] = err
		mu.Unlock()
		return err
	})
	enqueue(t, q, ev("short", "f", 0))
	<-started
	t0 := time.Now()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err, ok := outcome["short"]; !ok || err != nil {
		t.Errorf("the running event: finished %v, error %v; want finished without an error", ok, err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Close took %s; want it back once the event finished", d)
	}

	cfg.Drain = 300 * time.Millisecond
	q = open(t, cfg)
	if n, _ := depth(t, q, "f"); n != 0 {
		t.Errorf("%d events queued after reopening; want 0 (the finished one acknowledged)", n)
	}
	q.Run(func(ctx context.Context, ev *Event) error {
		started <- ev.ID
		<-ctx.Done()
		return ctx.Err()
	})
	enqueue(t, q, ev("long", "f", 1))
	<-started
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open(t, cfg)
	if n, _ := depth(t, q, "f"); n != 1 {
		t.Errorf("%d events queued after a close cut one short; want 1", n)
	}
}
