// Package sandbox runs task processes in isolation on an agent's node.
//
// A [Driver] starts a process from a [Spec], waits for it, signals or stops
// it, and after an agent restart cleans up what a previous agent left
// behind. The agent drives tasks only through this interface so that other
// drivers (for example a VM driver) can be added later.
package sandbox

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned for a handle the driver does not know.
var ErrNotFound = errors.New("sandbox: task not found")

// Spec is everything a driver needs to start one task run.
type Spec struct {
	// ID names the run uniquely on this node; it is used for cgroup names.
	// It contains only letters, digits, '-', '_' and '.'.
	ID string
	// Dir is the task's working directory; it exists before Start.
	Dir     string
	Command []string
	Env     []string // "K=V"
	// Stdout and Stderr are file paths the process output is written to.
	Stdout, Stderr string
	CPU            int64 // millicores; 0 means unlimited
	MemoryMB       int64 // 0 means unlimited
	// NetNS is the path of a network namespace file (a bind mount, such
	// as clusternet's TaskNet.NetNS) the process starts in. Empty: the
	// agent's network namespace.
	NetNS string
}

// ExitResult is how a run ended.
type ExitResult struct {
	ExitCode int
	// Signal is the signal that killed the process, 0 if it exited.
	Signal   int
	OOMKill  bool
	Started  time.Time
	Finished time.Time
	// Err is set when the process could not be started or waited for.
	Err error
}

// Handle is a started run.
type Handle interface {
	// PID of the process the driver started.
	PID() int
	// Wait blocks until the run ends and returns how it ended. It may be
	// called from several goroutines; all get the same result.
	Wait() *ExitResult
	// Signal sends sig to every process of the run.
	Signal(sig int) error
	// Stop asks every process of the run to end (SIGTERM), and kills them
	// all (SIGKILL) after grace. It returns when no process of the run is
	// left. Stopping a finished run is a no-op.
	Stop(grace time.Duration) error
}

// Driver starts runs.
type Driver interface {
	// Name of the driver ("exec").
	Name() string
	// Isolated reports whether runs get namespaces and cgroups.
	Isolated() bool
	// Start starts a run. An error means nothing is left running.
	Start(ctx context.Context, spec *Spec) (Handle, error)
	// Cleanup kills any process left from runs of an earlier agent
	// incarnation whose IDs are given and removes their cgroups.
	Cleanup(ids []string) error
}
