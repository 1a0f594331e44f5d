package state

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// gangKind is the mpi job type: its tasks, one per node of the gang, run
// together or not at all. Task 0 is the launcher (the user's mpirun); the
// job ends with it. Any other end of a run (a failure, a lost node, a
// host task exiting, a move) stops the whole gang and places it again,
// resuming from the last complete checkpoint epoch, at most max_restarts
// times; then the job fails with the reason.
type gangKind struct{}

func (gangKind) groups(spec *api.JobSpec) []api.GroupSpec {
	return []api.GroupSpec{spec.MPIGroupSpec()}
}

// Every task of a gang has a row from the start: a gang is placed (and
// restarted) as a whole, so the rows are all needed at once anyway.
func (gangKind) materializeAtSubmit(*api.JobSpec, int, []string) bool { return true }

// checkGangFits refuses an mpi job that cluster c could never run: more
// nodes than the cluster has, or more ranks per node than its largest
// node holds.
func checkGangFits(spec *api.JobSpec, c *api.Cluster, largest api.Resources) error {
	m := spec.MPI
	if m == nil {
		return nil
	}
	if n := m.Nodes(); n > c.Size {
		return fmt.Errorf("%w: mpi: %d ranks at %d per node need %d nodes, but cluster %q has %d (resize it or raise slots_per_node)",
			ErrInvalid, m.Ranks, m.SlotsPerNode, n, c.Name, c.Size)
	}
	g := spec.MPIGroupSpec()
	if g.Resources.CPU > largest.CPU || g.Resources.MemoryMB > largest.MemoryMB {
		return fmt.Errorf("%w: mpi.slots_per_node: %d ranks of %d millicores and %d MiB need %d millicores and %d MiB on one node; the largest node of cluster %q has %d and %d",
			ErrInvalid, m.SlotsPerNode, spec.Resources.CPU, spec.Resources.MemoryMB, g.Resources.CPU, g.Resources.MemoryMB,
			c.Name, largest.CPU, largest.MemoryMB)
	}
	return nil
}

// gangTasks returns the rows of an mpi job's tasks, by index.
func (tx *writeTxn) gangTasks(j *api.Job) []*api.Task {
	out := make([]*api.Task, 0, j.Groups[0].Count)
	for i := 0; i < j.Groups[0].Count; i++ {
		if t := tx.currentTask(TaskID(j.ID, api.MPIGroup, i)); t != nil {
			out = append(out, t)
		}
	}
	return out
}

func (gangKind) runStarted(tx *writeTxn, t *api.Task, now time.Time) error {
	j := tx.job(t.JobID)
	if j == nil || j.MPIStatus == nil || j.MPIStatus.RestartingSince.IsZero() {
		return nil
	}
	for _, g := range tx.gangTasks(j) {
		if g.State != api.TaskRunning {
			return nil
		}
	}
	jw := tx.jobForWrite(j.ID)
	ms := jw.MPIStatus
	from := "from scratch"
	if ms.RestartFrom > 0 {
		from = fmt.Sprintf("from epoch %d", ms.RestartFrom)
	}
	jw.Events = addEvent(jw.Events, now, "gang-restarted", fmt.Sprintf("all %d nodes running again %s, %s after the failure",
		ms.Nodes, from, now.Sub(ms.RestartingSince).Round(time.Millisecond)))
	ms.RestartingSince = time.Time{}
	return nil
}

func (gangKind) runEnded(tx *writeTxn, t *api.Task, e runEnd, now time.Time) error {
	j := tx.job(t.JobID)
	if j == nil || j.MPIStatus == nil {
		return batchKind{}.runEnded(tx, t, e, now)
	}
	if e.State == api.TaskComplete && t.Index == 0 {
		return tx.finishGang(j, t, e, now)
	}
	var cause string
	switch {
	case e.State == api.TaskComplete:
		cause = fmt.Sprintf("task %d on %s (an orted host) exited before the launcher", t.Index, t.Node)
	case e.State == api.TaskFailed:
		cause = fmt.Sprintf("task %d on %s failed: exit code %d", t.Index, t.Node, e.ExitCode)
		if e.Message != "" {
			cause += " (" + e.Message + ")"
		}
	default:
		verb := "lost"
		if e.State == api.TaskPending {
			verb = "moved"
		}
		cause = fmt.Sprintf("task %d %s on %s: %s", t.Index, verb, t.Node, e.Message)
	}
	if t.Index == 0 && e.State == api.TaskFailed {
		cause = fmt.Sprintf("the launcher on %s exited with code %d", t.Node, e.ExitCode)
		if e.Message != "" {
			cause += " (" + e.Message + ")"
		}
	}
	// Moves by the servers (a drain, a shrink) are not the job's failure:
	// they do not use up a restart.
	return tx.restartGang(j, t, e, cause, e.State != api.TaskPending, now)
}

// finishGang ends an mpi job whose launcher completed: the other tasks of
// the gang are complete too (their agents stop the orted hosts).
func (tx *writeTxn) finishGang(j *api.Job, launcher *api.Task, e runEnd, now time.Time) error {
	for _, t := range tx.gangTasks(j) {
		if api.TaskTerminal(t.State) {
			continue
		}
		nt := *t
		nt.State, nt.ExitCode, nt.Finished = api.TaskComplete, 0, now
		if t.Index == 0 {
			nt.Finished, nt.Message = e.Finished, e.Message
			if !e.Started.IsZero() {
				nt.Started = e.Started
			}
		} else {
			nt.Message = "the launcher finished"
		}
		if err := tx.updateTask(t, &nt, now); err != nil {
			return err
		}
	}
	jw := tx.jobForWrite(j.ID)
	jw.MPIStatus.RestartingSince = time.Time{}
	return nil
}

// restartGang stops every task of an mpi job because of failed's run end
// and queues the gang to be placed again, or fails the job when count and
// its restarts are used up.
func (tx *writeTxn) restartGang(j *api.Job, failed *api.Task, e runEnd, cause string, count bool, now time.Time) error {
	jw := tx.jobForWrite(j.ID)
	ms := jw.MPIStatus
	giveUp := count && ms.Restarts >= jw.MPI.MaxRestarts
	if count && !giveUp {
		ms.Restarts++
	}
	if ms.RestartingSince.IsZero() && !giveUp {
		ms.RestartingSince = now
	}
	ms.RestartFrom = ms.LastEpoch
	ms.GangNodes = []string{}
	for _, t := range tx.gangTasks(jw) {
		if api.TaskTerminal(t.State) {
			continue
		}
		nt := *t
		nt.Node, nt.NotBefore = "", time.Time{}
		if ms.Restarts >= 2 {
			// A first restart is immediate (a dead node is the usual
			// cause); repeated ones back off, so that a transient fault
			// cannot use up max_restarts in seconds.
			nt.NotBefore = now.Add(RetryDelay(ms.Restarts))
		}
		nt.Attempt = ms.Restarts + 1
		switch {
		case t.ID == failed.ID:
			nt.ExitCode, nt.Message, nt.Finished = e.ExitCode, e.Message, e.Finished
			if nt.Finished.IsZero() {
				nt.Finished = now // evicted: the servers ended it now
			}
		default:
			nt.ExitCode, nt.Message, nt.Finished = 0, "gang stopped: "+cause, now
		}
		if giveUp {
			nt.State = api.TaskFailed
		} else {
			nt.State = api.TaskPending
		}
		if err := tx.updateTask(t, &nt, now); err != nil {
			return err
		}
	}
	if giveUp {
		jw.Events = addEvent(jw.Events, now, "gang-failed", fmt.Sprintf("%s; max_restarts (%d) used up", cause, jw.MPI.MaxRestarts))
		return nil
	}
	from := "from scratch"
	if ms.LastEpoch > 0 {
		from = fmt.Sprintf("from epoch %d", ms.LastEpoch)
	}
	what := fmt.Sprintf("restart %d of %d", ms.Restarts, jw.MPI.MaxRestarts)
	if !count {
		what = "not counted as a restart"
	}
	jw.Events = addEvent(jw.Events, now, "gang-restart", fmt.Sprintf("%s; stopping the gang and placing it again %s (%s)", cause, from, what))
	return nil
}

// GangPlacement places every task of one gang (an mpi job) in one plan:
// Placements[i] is for task index i. The FSM applies all of them or none.
type GangPlacement struct {
	Job        string      `json:"job"`
	Placements []Placement `json:"placements"`
}

// placeGang applies a gang placement if every part of it is valid: each
// task unchanged since the scheduler saw it and waiting for a node, the
// nodes distinct, ready, members of the job's cluster and with room. It
// reports whether it placed the gang.
func (tx *writeTxn) placeGang(g *GangPlacement, index uint64, now time.Time) (bool, error) {
	j := tx.job(g.Job)
	if j == nil || j.MPIStatus == nil || j.State == api.JobCancelled || j.State == api.JobComplete || j.State == api.JobFailed ||
		len(g.Placements) != j.Groups[0].Count {
		return false, nil
	}
	tasks := make([]*api.Task, len(g.Placements))
	nodes := make([]string, len(g.Placements))
	for i, p := range g.Placements {
		t := tx.currentTask(p.TaskID)
		n := tx.node(p.Node)
		if t == nil || t.JobID != j.ID || t.Index != i || t.ModifyIndex != p.TaskModifyIndex || !needsPlacement(t) ||
			n == nil || !n.Schedulable() || n.Cluster != t.Cluster || !fits(n, t.Resources) || slices.Contains(nodes[:i], n.Name) {
			return false, nil
		}
		tasks[i], nodes[i] = t, n.Name
	}
	jw := tx.jobForWrite(j.ID)
	for _, t := range tasks {
		nt := *t
		m := *t.MPI
		m.Nodes, m.RestartEpoch = nodes, jw.MPIStatus.LastEpoch
		nt.MPI = &m
		nt.State, nt.Node, nt.RunID, nt.Message, nt.Addr = api.TaskPending, nodes[t.Index], index, "", ""
		nt.ExitCode, nt.Started, nt.Finished = 0, time.Time{}, time.Time{}
		if err := tx.updateTask(t, &nt, now); err != nil {
			return false, err
		}
	}
	jw.MPIStatus.GangNodes = slices.Clone(nodes)
	from := ""
	if jw.MPIStatus.LastEpoch > 0 {
		from = fmt.Sprintf(", resuming from epoch %d", jw.MPIStatus.LastEpoch)
	}
	jw.Events = addEvent(jw.Events, now, "gang-placed", fmt.Sprintf("%d ranks on %d nodes: %s (launcher on %s)%s",
		jw.MPIStatus.Ranks, len(nodes), strings.Join(nodes, ", "), nodes[0], from))
	return true, nil
}
