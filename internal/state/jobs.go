package state

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Retry backoff: the first retry waits retryBase, each next one twice as
// long, at most retryMax.
const (
	retryBase = time.Second
	retryMax  = time.Minute
)

// RetryDelay is how long a task waits before attempt number attempt (2 or
// more).
func RetryDelay(attempt int) time.Duration {
	d := retryBase
	for i := 2; i < attempt && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// TaskID names task index of group in job.
func TaskID(job, group string, index int) string {
	return job + "/" + group + "/" + strconv.Itoa(index)
}

// Job returns a job (without its tasks), or nil.
func (s *Snapshot) Job(ws memdb.WatchSet, id string) *api.Job {
	return first[*api.Job](s.txn, ws, tableJobs, id)
}

// Jobs returns all jobs, or those of one cluster, in id order.
func (s *Snapshot) Jobs(ws memdb.WatchSet, cluster string) []*api.Job {
	if cluster != "" {
		return collect[*api.Job](s.txn, ws, tableJobs, "cluster", cluster)
	}
	return collect[*api.Job](s.txn, ws, tableJobs, "id")
}

// PlaceableTasks returns the task rows waiting for a node, in id order:
// tasks that were placed before (lost, retried, moved) or have inputs.
// Tasks never placed have no row; see [Snapshot.UnplacedJobs].
func (s *Snapshot) PlaceableTasks(ws memdb.WatchSet) []*api.Task {
	return collect[*api.Task](s.txn, ws, tableTasks, "placeable", true)
}

// jobForWrite returns a copy of the job that tx writes at commit.
func (tx *writeTxn) jobForWrite(id string) *api.Job {
	if j, ok := tx.jobs[id]; ok {
		return j
	}
	raw, _ := tx.First(tableJobs, "id", id)
	if raw == nil {
		return nil
	}
	j := *raw.(*api.Job)
	j.Events = slices.Clone(j.Events)
	j.GroupStatus = slices.Clone(j.GroupStatus)
	if j.MPIStatus != nil {
		ms := *j.MPIStatus
		ms.GangNodes = slices.Clone(ms.GangNodes)
		j.MPIStatus = &ms
	}
	tx.jobs[id] = &j
	return &j
}

// job returns a job as tx sees it, for reading only; nil if there is none.
func (tx *writeTxn) job(id string) *api.Job {
	if j, ok := tx.jobs[id]; ok {
		return j
	}
	raw, _ := tx.First(tableJobs, "id", id)
	if raw == nil {
		return nil
	}
	return raw.(*api.Job)
}

func (tx *writeTxn) jobEvent(id string, now time.Time, typ, msg string) {
	if j := tx.jobForWrite(id); j != nil {
		j.Events = addEvent(j.Events, now, typ, msg)
	}
}

// updateTask writes nt in place of t, keeping node usage and job counts
// and state in step. It is the only way a task changes.
func (tx *writeTxn) updateTask(t, nt *api.Task, now time.Time) error {
	nt.ModifyIndex = tx.index
	if t.Placed() && (!nt.Placed() || nt.RunID != t.RunID) {
		// The run ended: drop whatever it staged but did not publish.
		if _, err := tx.endRun(t, false, now); err != nil {
			return err
		}
	}
	if t.Placed() && (!nt.Placed() || nt.Node != t.Node) {
		if n, err := tx.nodeForWrite(t.Node); err == nil {
			n.Used.CPU -= t.Resources.CPU
			n.Used.MemoryMB -= t.Resources.MemoryMB
			n.Tasks--
			tx.releaseIfIdle(n)
			if err := tx.respreadOnIdle(n, now); err != nil {
				return err
			}
		}
	}
	if nt.Placed() && (!t.Placed() || nt.Node != t.Node) {
		n, err := tx.nodeForWrite(nt.Node)
		if err != nil {
			return err
		}
		n.Used.CPU += nt.Resources.CPU
		n.Used.MemoryMB += nt.Resources.MemoryMB
		n.Tasks++
	}
	if t.State != nt.State {
		j := tx.jobForWrite(t.JobID)
		if j != nil {
			j.Counts.Add(t.State, -1)
			j.Counts.Add(nt.State, 1)
			countGroup(j, t.Group, t.State, nt.State)
			tx.refreshJobState(j, now)
		}
	}
	return tx.put(tableTasks, nt)
}

// refreshJobState derives a job's state from its task counts.
func (tx *writeTxn) refreshJobState(j *api.Job, now time.Time) {
	if j.State == api.JobCancelled {
		return
	}
	c := j.Counts
	old := j.State
	switch {
	case c.Complete+c.Failed+c.Cancelled == c.Total():
		j.State = api.JobComplete
		if c.Failed > 0 || c.Cancelled > 0 {
			j.State = api.JobFailed
		}
		j.Finished = now
	case c.Running+c.Complete+c.Failed > 0 || old == api.JobRunning:
		j.State = api.JobRunning // once started, a job stays running until it ends
	default:
		j.State = api.JobPending
	}
	if j.State != old {
		msg := fmt.Sprintf("job %s (%d complete, %d failed of %d)", j.State, c.Complete, c.Failed, c.Total())
		j.Events = addEvent(j.Events, now, "job-"+j.State, msg)
	}
}

// SubmitJob validates a spec, checks it against its cluster and creates
// the job and its tasks. The job id is the name and the Raft index.
func (s *Store) SubmitJob(index uint64, req *JobSubmitRequest) (*api.Job, error) {
	spec := req.Spec
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var out *api.Job
	err := s.write(index, func(tx *writeTxn) error {
		c := tx.cluster(spec.Cluster)
		if c == nil {
			return fmt.Errorf("%w: cluster: no cluster named %q", ErrNotFound, spec.Cluster)
		}
		var largest api.Resources
		for _, name := range c.Nodes {
			if n := tx.node(name); n != nil {
				largest.CPU = max(largest.CPU, n.CPU)
				largest.MemoryMB = max(largest.MemoryMB, n.MemoryMB)
			}
		}
		kind := jobKinds[spec.Type]
		if err := checkGangFits(&spec, c, largest); err != nil {
			return err
		}
		groups := kind.groups(&spec)
		for i, g := range groups {
			if g.Resources.CPU > largest.CPU {
				return fmt.Errorf("%w: groups[%d].resources.cpu: %d millicores is more than any node of cluster %q has (largest: %d)",
					ErrInvalid, i, g.Resources.CPU, c.Name, largest.CPU)
			}
			if g.Resources.MemoryMB > largest.MemoryMB {
				return fmt.Errorf("%w: groups[%d].resources.memory: %d MiB is more than any node of cluster %q has (largest: %d)",
					ErrInvalid, i, g.Resources.MemoryMB, c.Name, largest.MemoryMB)
			}
		}
		inputs, err := tx.groupData(groups, req.Now)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("%s-%d", spec.Name, index)
		j := &api.Job{ID: id, Name: spec.Name, Cluster: spec.Cluster, Type: spec.Type, State: api.JobPending,
			Groups: groups, MPI: spec.MPI, Submitted: req.Now, CreateIndex: index}
		if spec.MPI != nil {
			j.MPIStatus = &api.MPIStatus{Ranks: spec.MPI.Ranks, Nodes: spec.MPI.Nodes(), GangNodes: []string{}}
		}
		j.GroupStatus = make([]api.GroupStatus, len(groups))
		for gi, g := range groups {
			j.GroupStatus[gi] = api.GroupStatus{Name: g.Name, Counts: api.TaskCounts{Pending: g.Count}}
			j.Counts.Pending += g.Count
			if !kind.materializeAtSubmit(&spec, gi, inputs[gi]) {
				continue // no rows until the scheduler places them (tasks.go)
			}
			for i := 0; i < g.Count; i++ {
				if err := tx.put(tableTasks, newTask(j, gi, i, inputs[gi])); err != nil {
					return err
				}
			}
			j.GroupStatus[gi].Materialized = g.Count
		}
		j.Events = addEvent(nil, req.Now, "submitted", fmt.Sprintf("%d tasks in %d groups", j.Counts.Total(), len(j.Groups)))
		tx.jobs[id] = j
		out = j
		return nil
	})
	return out, err
}

// CancelJob cancels every task of a job that has not ended.
func (s *Store) CancelJob(index uint64, req *JobCancelRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		return tx.cancelJob(req.ID, "cancelled by user", req.Now)
	})
}

func (tx *writeTxn) cancelJob(id, reason string, now time.Time) error {
	// Read before jobForWrite: cancelling a finished job must not bump its
	// ModifyIndex.
	cur := tx.job(id)
	if cur == nil {
		return fmt.Errorf("%w: no job named %q", ErrNotFound, id)
	}
	if cur.State == api.JobComplete || cur.State == api.JobFailed || cur.State == api.JobCancelled {
		return nil
	}
	j := tx.jobForWrite(id)
	// Cancelled first, so that refreshJobState leaves the state alone while
	// the tasks are cancelled one by one (no passing "job-failed" event).
	j.State, j.Finished = api.JobCancelled, now
	// Unplaced tasks (no rows) become cancelled with the job's state.
	for gi := range j.GroupStatus {
		st := &j.GroupStatus[gi]
		n := j.Groups[gi].Count - st.Materialized
		st.Counts.Pending -= n
		st.Counts.Cancelled += n
		j.Counts.Pending -= n
		j.Counts.Cancelled += n
	}
	// Only the rows still live are read, through the state index: a job
	// that has mostly run costs its live tasks to cancel, not its history.
	for _, st := range api.TaskStates {
		if api.TaskTerminal(st) {
			continue
		}
		for _, t := range collect[*api.Task](tx.Txn, nil, tableTasks, "state_prefix", id, st) {
			nt := *t
			nt.State, nt.Node, nt.Message, nt.Finished = api.TaskCancelled, "", reason, now
			if err := tx.updateTask(t, &nt, now); err != nil {
				return err
			}
		}
	}
	j.Events = addEvent(j.Events, now, "job-cancelled", reason)
	return nil
}

// UpdateTasks applies an agent's reports. A report for another run than the
// task's current one, or for a task that has ended, is stale and ignored.
func (s *Store) UpdateTasks(index uint64, req *TaskUpdateRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		for _, u := range req.Updates.Updates {
			raw, _ := tx.First(tableTasks, "id", u.TaskID)
			if raw == nil {
				continue
			}
			t := raw.(*api.Task)
			if t.RunID != u.RunID || t.Node != req.Updates.Node || !t.Placed() {
				continue
			}
			if err := tx.applyTaskUpdate(t, &u, req.Now); err != nil {
				return err
			}
		}
		return nil
	})
}

func (tx *writeTxn) applyTaskUpdate(t *api.Task, u *api.TaskUpdate, now time.Time) error {
	if u.State == api.TaskComplete && t.Outputs != "" {
		problem, err := tx.endRun(t, true, now)
		if err != nil {
			return err
		}
		if problem != "" {
			failed := *u
			failed.State, failed.Message = api.TaskFailed, problem
			u = &failed
		}
	}
	kind := kindOf(tx.job(t.JobID))
	switch u.State {
	case api.TaskRunning:
		if t.State == api.TaskRunning {
			return nil
		}
		nt := *t
		nt.State, nt.Addr = api.TaskRunning, u.Addr
		if !u.Started.IsZero() {
			nt.Started = u.Started
		}
		if err := tx.updateTask(t, &nt, now); err != nil {
			return err
		}
		return kind.runStarted(tx, &nt, now)
	case api.TaskComplete, api.TaskFailed, api.TaskLost:
		return kind.runEnded(tx, t, runEnd{State: u.State, ExitCode: u.ExitCode, Message: u.Message,
			Started: u.Started, Finished: u.Finished, Node: t.Node}, now)
	}
	return nil // unknown states from a newer agent are ignored
}

// ApplyPlan applies a scheduler's placements that are still valid: the
// task unchanged since the scheduler saw it, the node ready, in the task's
// cluster and with room. The rest are rejected and planned again.
func (s *Store) ApplyPlan(index uint64, req *PlanRequest) (*PlanResult, error) {
	res := &PlanResult{}
	err := s.write(index, func(tx *writeTxn) error {
		for _, p := range req.Placements {
			n := tx.node(p.Node)
			if n == nil {
				res.Rejected++
				continue
			}
			var t *api.Task
			raw, _ := tx.First(tableTasks, "id", p.TaskID)
			if raw != nil {
				t = raw.(*api.Task)
			} else {
				t = tx.unplacedTask(p.TaskID)
			}
			// A ready node attached to a cluster is always one of its members
			// (only draining nodes stay attached outside the member list).
			// A gang's task is placed only with its gang (placeGang).
			if t == nil || t.MPI != nil || t.ModifyIndex != p.TaskModifyIndex || !needsPlacement(t) || !n.Schedulable() ||
				n.Cluster != t.Cluster || !fits(n, t.Resources) {
				res.Rejected++
				continue
			}
			if raw == nil {
				// A task never placed: its row (written by updateTask
				// below), and those of its group's unplaced tasks before
				// it, are created now.
				if err := tx.materialize(t); err != nil {
					return err
				}
			}
			nt := *t
			nt.State, nt.Node, nt.RunID, nt.Message, nt.Addr = api.TaskPending, n.Name, index, "", ""
			nt.ExitCode, nt.Started, nt.Finished = 0, time.Time{}, time.Time{}
			if err := tx.updateTask(t, &nt, req.Now); err != nil {
				return err
			}
			res.Placed++
		}
		for i := range req.Gangs {
			g := &req.Gangs[i]
			ok, err := tx.placeGang(g, index, req.Now)
			if err != nil {
				return err
			}
			if ok {
				res.Placed += len(g.Placements)
			} else {
				res.Rejected += len(g.Placements)
			}
		}
		return nil
	})
	return res, err
}

// UpsertServer records a control-plane server.
func (s *Store) UpsertServer(index uint64, req *ServerUpsertRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		srv := req.Server
		srv.Leader = false
		return tx.put(tableServers, &srv)
	})
}
