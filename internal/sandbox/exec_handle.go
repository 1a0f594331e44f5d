package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"syscall"
	"time"
)

// stopKillTimeout bounds how long Stop waits for a run to end after it sent
// SIGKILL; only a process stuck in the kernel takes that long.
const stopKillTimeout = 10 * time.Second

// execHandle is a run started by [Exec].
//
// A run ends when its main process exits. With isolation, the kernel then
// kills every other process of the PID namespace, and the run's cgroup is
// removed. Without it, the processes left in the run's process group are
// sent SIGKILL, so that both modes leave nothing behind.
type execHandle struct {
	log  *slog.Logger
	id   string
	proc *os.Process
	pid  int
	// cg is the run's cgroup, nil when the run is not isolated. Its
	// fields belong to wait, which hands it back to tree when the run
	// ends; others use cgDir.
	cg   *runCgroup
	tree cgroupTree
	// cgDir is the run's cgroup directory that lists its processes (the
	// memory hierarchy on v1). It is named after the run, so it never
	// names another run's cgroup.
	cgDir   string
	started time.Time

	done chan struct{} // closed by wait once res is set
	res  *ExitResult
}

// PID returns the host PID of the run's main process (PID 1 of the run's
// PID namespace when the run is isolated).
func (h *execHandle) PID() int { return h.pid }

// Wait returns how the run ended. ExitCode is 128+Signal when a signal
// killed the process, as in a shell.
func (h *execHandle) Wait() *ExitResult {
	<-h.done
	return h.res
}

// wait reaps the main process, cleans up after the run and publishes the
// result. It runs once per run, in its own goroutine.
func (h *execHandle) wait() {
	state, err := h.proc.Wait()
	res := &ExitResult{Started: h.started, Finished: time.Now()}
	if err != nil {
		res.ExitCode = -1
		res.Err = fmt.Errorf("sandbox: run %s: wait: %w", h.id, err)
	} else if ws := state.Sys().(syscall.WaitStatus); ws.Signaled() {
		res.Signal = int(ws.Signal())
		res.ExitCode = 128 + res.Signal
	} else {
		res.ExitCode = ws.ExitStatus()
	}
	if h.cg != nil {
		if h.cg.oomFile != "" {
			// An unreadable counter says nothing, and must not become
			// the next run's base (a reused cgroup would then report an
			// OOM kill that did not happen).
			if n, ok := h.cg.oomKills(); ok {
				res.OOMKill = n > h.cg.oomBase
				h.cg.oomBase = n
			}
		}
		// Once released, the cgroup may serve (and be renamed for)
		// another run: from here on only cgDir, which no longer exists,
		// may be used.
		if err := h.tree.release(h.cg); err != nil {
			h.log.Warn("sandbox: cannot remove cgroup of ended run", "run", h.id, "err", err)
		}
	} else {
		_ = syscall.Kill(-h.pid, syscall.SIGKILL)
	}
	h.res = res
	close(h.done)
}

// ended reports whether the main process has been reaped.
func (h *execHandle) ended() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to every process of the run: those in its cgroup when
// it is isolated, else those in its process group. Signalling an ended run
// does nothing.
//
// The kernel does not deliver to the PID 1 of a namespace, which an
// isolated run's main process is, signals it has no handler for (except
// SIGKILL and SIGSTOP); [execHandle.Stop] makes up for that for SIGTERM.
func (h *execHandle) Signal(sig int) error {
	if h.ended() {
		return nil
	}
	s := syscall.Signal(sig)
	if h.cg != nil {
		err := signalCgroup(h.cgDir, s)
		if errors.Is(err, os.ErrNotExist) {
			return nil // the run ended and its cgroup is gone
		}
		if err != nil {
			return fmt.Errorf("sandbox: run %s: %w", h.id, err)
		}
		return nil
	}
	if err := syscall.Kill(-h.pid, s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("sandbox: run %s: signal process group %d: %w", h.id, h.pid, err)
	}
	return nil
}

// Stop sends SIGTERM to every process of the run and, if the run has not
// ended after grace, SIGKILL. A grace of 0 or less kills at once. Stop
// returns once no process of the run is left.
func (h *execHandle) Stop(grace time.Duration) error {
	if !h.ended() {
		if grace <= 0 || !h.terminate(grace) {
			h.kill()
		}
		select {
		case <-h.done:
		case <-time.After(stopKillTimeout):
			return fmt.Errorf("sandbox: run %s: still running %v after SIGKILL", h.id, stopKillTimeout)
		}
	}
	if h.cg != nil {
		return nil // wait emptied and removed the cgroup
	}
	return h.awaitGroupGone()
}

// terminate sends SIGTERM to the run and reports whether it ended within
// grace.
func (h *execHandle) terminate(grace time.Duration) bool {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	if err := h.Signal(int(syscall.SIGTERM)); err != nil {
		h.log.Warn("sandbox: cannot send SIGTERM", "run", h.id, "err", err)
		return false
	}
	if h.cg == nil || !defaultAction(h.pid, syscall.SIGTERM) {
		select {
		case <-h.done:
			return true
		case <-timer.C:
			return false
		}
	}
	// The main process is PID 1 of the run's namespace and takes the
	// default action for SIGTERM, so the kernel dropped the signal. Outside
	// a namespace it would have ended, so end it (and with it the
	// namespace) once it is the last process of the run: the others get
	// their grace period.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if pids, err := readPids(h.cgDir); err == nil && len(pids) == 1 && pids[0] == h.pid {
			_ = h.proc.Kill()
		}
		select {
		case <-h.done:
			return true
		case <-timer.C:
			return false
		case <-tick.C:
		}
	}
}

// kill sends SIGKILL to every process of the run.
func (h *execHandle) kill() {
	if h.cg != nil {
		// Killing PID 1 of a PID namespace kills every process in it.
		_ = h.proc.Kill()
		return
	}
	_ = syscall.Kill(-h.pid, syscall.SIGKILL)
}

// awaitGroupGone waits until no process is left running in the run's
// process group, which wait has sent SIGKILL. Zombies count as gone: they
// run no more, and their reaping is up to their parent or init.
func (h *execHandle) awaitGroupGone() error {
	deadline := time.Now().Add(stopKillTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := syscall.Kill(-h.pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if pids, err := liveGroupMembers(h.pid); err == nil && len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox: run %s: processes of group %d still running after SIGKILL", h.id, h.pid)
		}
		time.Sleep(delay)
	}
}

// liveGroupMembers returns the processes of group pgid that are not
// zombies, by scanning /proc.
func liveGroupMembers(pgid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	want := []byte(strconv.Itoa(pgid))
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// The fields after the command, which is in parentheses, start
		// with: state ppid pgrp.
		f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:])
		if len(f) > 2 && !bytes.Equal(f[0], []byte("Z")) && bytes.Equal(f[2], want) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// defaultAction reports whether process pid neither catches nor ignores
// sig, according to /proc/pid/status.
func defaultAction(pid int, sig syscall.Signal) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	bit := uint64(1) << (uint(sig) - 1)
	seen := 0
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.Equal(k, []byte("SigIgn")) && !bytes.Equal(k, []byte("SigCgt")) {
			continue
		}
		mask, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
		if err != nil || mask&bit != 0 {
			return false
		}
		if seen++; seen == 2 {
			return true
		}
	}
	return false
}
