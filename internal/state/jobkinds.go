package state

import (
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// A job's type decides two things on the control plane, both chosen here
// by [kindOf]: what tasks its spec makes (groups), and its failure policy
// (what follows when one of its runs ends). Where its tasks are placed is
// the scheduler's side of the same choice (package scheduler, placers).
// Every path by which a placed run ends (an agent's report, a node going
// down, a drain or a shrink moving it) goes through runEnded.

// runEnd is how one placed run of a task ended.
type runEnd struct {
	// State is complete, failed or lost; pending means the servers moved
	// the task (drain deadline, cluster shrink).
	State    string
	ExitCode int
	Message  string
	Started  time.Time
	Finished time.Time
	// Node is where it ran; Evicted is set when the servers ended it
	// (node down, drain, shrink) rather than the agent reporting.
	Node    string
	Evicted bool
}

// jobKind is one job type's control-plane behaviour.
type jobKind interface {
	// groups returns the task groups of a validated spec.
	groups(spec *api.JobSpec) []api.GroupSpec
	// materializeAtSubmit reports whether every task of group gi gets a
	// row at submission (instead of a range of tasks never placed).
	materializeAtSubmit(spec *api.JobSpec, gi int, inputs []string) bool
	// runStarted follows a task's report that its run is running.
	runStarted(tx *writeTxn, t *api.Task, now time.Time) error
	// runEnded applies the end of placed task t's run: its failure policy.
	runEnded(tx *writeTxn, t *api.Task, e runEnd, now time.Time) error
}

var jobKinds = map[string]jobKind{
	api.JobBatch: batchKind{},
	api.JobMPI:   gangKind{},
}

// kindOf returns the kind of job j (batch for a job without a type, or
// a job already gone).
func kindOf(j *api.Job) jobKind {
	if j != nil {
		if k, ok := jobKinds[j.Type]; ok {
			return k
		}
	}
	return batchKind{}
}

// batchKind is the batch job type: independent tasks, each retried on its
// own (up to its group's max_attempts, with backoff) when its run fails,
// and placed again without using an attempt when its node is lost.
type batchKind struct{}

func (batchKind) groups(spec *api.JobSpec) []api.GroupSpec { return spec.Groups }

func (batchKind) materializeAtSubmit(_ *api.JobSpec, _ int, inputs []string) bool {
	// Tasks with inputs carry their own file list (at most MaxInputs).
	return len(inputs) > 0
}

func (batchKind) runStarted(*writeTxn, *api.Task, time.Time) error { return nil }

func (batchKind) runEnded(tx *writeTxn, t *api.Task, e runEnd, now time.Time) error {
	nt := *t
	if !e.Started.IsZero() {
		nt.Started = e.Started
	}
	name := fmt.Sprintf("task %s/%d", t.Group, t.Index)
	switch {
	case e.State == api.TaskComplete:
		nt.State, nt.ExitCode, nt.Finished, nt.Message = api.TaskComplete, 0, e.Finished, e.Message
	case e.State == api.TaskFailed:
		nt.ExitCode, nt.Finished, nt.Message = e.ExitCode, e.Finished, e.Message
		ev := fmt.Sprintf("%s attempt %d on %s failed: exit code %d", name, t.Attempt, t.Node, e.ExitCode)
		if e.Message != "" {
			ev += " (" + e.Message + ")"
		}
		if t.Attempt < t.MaxAttempts {
			nt.State, nt.Node = api.TaskPending, ""
			nt.Attempt++
			nt.NotBefore = now.Add(RetryDelay(nt.Attempt))
			ev += fmt.Sprintf("; retrying in %s", RetryDelay(nt.Attempt))
		} else {
			nt.State = api.TaskFailed
			ev += "; no attempts left"
		}
		tx.jobEvent(t.JobID, now, "task-failed", ev)
	case e.Evicted:
		nt.State, nt.Node, nt.Message = e.State, "", e.Message
		verb := "moved"
		if e.State == api.TaskLost {
			verb = "lost"
		}
		tx.jobEvent(t.JobID, now, "task-"+verb, fmt.Sprintf("%s %s: %s", name, verb, e.Message))
	case e.State == api.TaskLost:
		nt.State, nt.Node, nt.Message = api.TaskLost, "", e.Message
		tx.jobEvent(t.JobID, now, "task-lost", fmt.Sprintf("%s lost on %s: %s", name, t.Node, e.Message))
	default:
		return nil
	}
	return tx.updateTask(t, &nt, now)
}

// currentTask returns the task row of id as tx sees it, or nil.
func (tx *writeTxn) currentTask(id string) *api.Task {
	raw, _ := tx.First(tableTasks, "id", id)
	if raw == nil {
		return nil
	}
	return raw.(*api.Task)
}
