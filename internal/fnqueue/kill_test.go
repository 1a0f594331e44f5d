package fnqueue

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestEnqueuedSurvivesKill9: every event whose Enqueue returned in a
// process killed with SIGKILL while enqueueing is in the store when the
// data directory is opened again, and runs.
func TestEnqueuedSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FNQUEUE_KILL9_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(stored) < 300 {
		if id, ok := strings.CutPrefix(sc.Text(), "stored "); ok {
			stored[id] = true
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if len(stored) < 300 {
		t.Fatalf("the child stored %d events before it ended; want 300 (%v)", len(stored), sc.Err())
	}

	q := open(t, testConfig(t, dir))
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	waitFor(t, "every stored event to run", 30*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for id := range stored {
			if !r.done[id] {
				return false
			}
		}
		return true
	})
}

// TestKill9Child is the process TestEnqueuedSurvivesKill9 kills: it
// enqueues events without end, printing each ID once Enqueue returned.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv("FNQUEUE_KILL9_DIR")
	if dir == "" {
		t.Skip("run by TestEnqueuedSurvivesKill9")
	}
	q := open(t, testConfig(t, dir))
	for i := 0; ; i++ {
		id := fmt.Sprintf("k%d", i)
		if err := q.Enqueue(context.Background(), ev(id, "f", 0)); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("stored %s\n", id)
	}
}

// TestClusterSurvivesKill9: three servers, one of them a child process that
// takes events and never finishes them; after SIGKILL of that process the
// two others store and run every event, those it held included. The log
// says which servers led the meta group and the streams when it died.
func TestClusterSurvivesKill9(t *testing.T) {
	tlsDir := t.TempDir()
	if _, err := tlsfiles.MakeSet(tlsDir); err != nil {
		t.Fatal(err)
	}
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9ClusterChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FNQUEUE_KILL9_CLUSTER="+tlsDir+"|"+strings.Join(addrs, ",")+"|"+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// The two servers here run few events at once, and finish none before
	// the child holds one, so that it does.
	held, childHolds := make(chan string, 100), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for n := 0; sc.Scan(); {
			if id, ok := strings.CutPrefix(sc.Text(), "held "); ok {
				if n++; n == 1 {
					close(childHolds)
				}
				held <- id
			}
		}
	}()
	var qs []*Queue
	for i := range 2 {
		cfg := clusterConfig(t, tlsDir, addrs, i, t.TempDir())
		cfg.Workers = 4
		q, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		qs = append(qs, q)
	}
	for _, q := range qs {
		waitReady(t, q)
	}
	r := newRecorder()
	for _, q := range qs {
		q.Run(gated(childHolds, r.handler(func(*Event, int) error { return nil })))
	}
	var ids []string
	for i := range 30 {
		id := "a" + strconv.Itoa(i)
		ids = append(ids, id)
		enqueueRetrying(t, qs[i%2], ev(id, "f", 2))
	}
	var heldByChild string
	select {
	case heldByChild = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the child server took no event within 30s")
	}
	t.Logf("leaders before SIGKILL of s3: %s", leaders(qs))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	for i := range 30 {
		id := "b" + strconv.Itoa(i)
		ids = append(ids, id)
		enqueueRetrying(t, qs[i%2], ev(id, "f", 2))
	}
	waitFor(t, "every event done on the surviving servers", 45*time.Second, func() bool { return r.doneCount() == len(ids) })
	if calls := r.callsOf(heldByChild); len(calls) == 0 || calls[len(calls)-1].Attempt < 2 {
		t.Errorf("event %s, held by the killed server, ran on the others as %+v; want attempt 2 or more", heldByChild, calls)
	}
	t.Logf("leaders after: %s", leaders(qs))
}

// leaders names the servers that lead the meta group, the streams and the
// consumer, as qs[0] sees them.
func leaders(qs []*Queue) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := qs[0]
	s := "meta: another server"
	for _, q := range qs {
		if q.ns.JetStreamIsLeader() {
			s = "meta " + q.cfg.Name
		}
	}
	for _, name := range []string{EventStream, DeadStream} {
		if st, err := q.js.Stream(ctx, name); err == nil && st.CachedInfo().Cluster != nil {
			s += ", " + name + " " + st.CachedInfo().Cluster.Leader
		}
	}
	if c, err := q.js.Consumer(ctx, EventStream, WorkerConsumer); err == nil && c.CachedInfo().Cluster != nil {
		s += ", consumer " + c.CachedInfo().Cluster.Leader
	}
	return s
}

// TestKill9ClusterChild is the server TestClusterSurvivesKill9 kills: s3,
// which prints the ID of every event it takes and never finishes one.
func TestKill9ClusterChild(t *testing.T) {
	env := os.Getenv("FNQUEUE_KILL9_CLUSTER")
	if env == "" {
		t.Skip("run by TestClusterSurvivesKill9")
	}
	parts := strings.Split(env, "|")
	q := open(t, clusterConfig(t, parts[0], strings.Split(parts[1], ","), 2, parts[2]))
	q.Run(func(ctx context.Context, ev *Event) error {
		fmt.Printf("held %s\n", ev.ID)
		<-ctx.Done()
		return ctx.Err()
	})
	select {}
}
