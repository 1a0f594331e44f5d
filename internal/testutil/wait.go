// Package testutil starts Shoal servers and agents for tests: in-process
// (inproc.go) or as spawned processes of the real binary (spawn.go).
package testutil

import (
	"testing"
	"time"
)

// WaitFor polls cond every 50ms until it returns true, failing the test
// with cond's last message when timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
