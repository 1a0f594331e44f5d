package fnqueue

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
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
