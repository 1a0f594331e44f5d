package state

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Tasks of a job exist in two forms. A task that was ever placed (or that
// has its own inputs) is a row of the tasks table. A group's tasks of index
// GroupStatus.Materialized and above have never been placed: they have no
// row and are pending (cancelled once their job is), so that a job of a
// million tasks costs one job row until the scheduler places its tasks.
// ApplyPlan creates rows in index order as it places them
// (materializeUpTo). Every read below sees both forms alike.

// maxFailing is how many troubled tasks a job summary shows.
const maxFailing = 5

// troubled reports whether a task belongs in a summary's failing list.
func troubled(t *api.Task) bool {
	return t.State == api.TaskFailed || t.State == api.TaskLost || t.Attempt > 1
}

// taskKeyIndex indexes tasks by a key made of NUL-terminated strings and
// a big-endian number, so that keys sort by their parts and the strings
// form prefixes: "JOB\0GROUP\0<index>" orders a job's tasks by group then
// index. Lookups go through the _prefix form with leading strings only.
type taskKeyIndex struct {
	key func(t *api.Task) (ok bool, parts []string, n uint64)
}

func (x taskKeyIndex) FromObject(obj any) (bool, []byte, error) {
	ok, parts, n := x.key(obj.(*api.Task))
	if !ok {
		return false, nil, nil
	}
	var b []byte
	for _, p := range parts {
		b = append(append(b, p...), 0)
	}
	return true, binary.BigEndian.AppendUint64(b, n), nil
}

// FromArgs builds a key from leading strings and, optionally, a final
// uint64: a LowerBound with the number starts at that index.
func (x taskKeyIndex) FromArgs(args ...any) ([]byte, error) {
	var b []byte
	for i, a := range args {
		switch v := a.(type) {
		case string:
			b = append(append(b, v...), 0)
		case uint64:
			if i != len(args)-1 {
				return nil, fmt.Errorf("state: task index number %d is not the last argument", v)
			}
			b = binary.BigEndian.AppendUint64(b, v)
		default:
			return nil, fmt.Errorf("state: task index argument %v is not a string", a)
		}
	}
	return b, nil
}

func (x taskKeyIndex) PrefixFromArgs(args ...any) ([]byte, error) { return x.FromArgs(args...) }

// Task indexes beyond "id": by job and group ("group"), by job, state and
// group ("state"), and the troubled tasks of a job by last change
// ("failing").
var (
	taskGroupIndex = taskKeyIndex{key: func(t *api.Task) (bool, []string, uint64) {
		return true, []string{t.JobID, t.Group}, uint64(t.Index)
	}}
	taskStateIndex = taskKeyIndex{key: func(t *api.Task) (bool, []string, uint64) {
		return true, []string{t.JobID, t.State, t.Group}, uint64(t.Index)
	}}
	taskFailingIndex = taskKeyIndex{key: func(t *api.Task) (bool, []string, uint64) {
		return troubled(t), []string{t.JobID}, t.ModifyIndex
	}}
)

// parseTaskID splits "JOB/GROUP/INDEX"; names never contain a slash.
func parseTaskID(id string) (job, group string, index int, ok bool) {
	job, rest, ok1 := strings.Cut(id, "/")
	group, num, ok2 := strings.Cut(rest, "/")
	i, err := strconv.Atoi(num)
	if !ok1 || !ok2 || err != nil || i < 0 || strconv.Itoa(i) != num {
		return "", "", 0, false
	}
	return job, group, i, true
}

// groupIndex returns the position of group name in j, or -1.
func groupIndex(j *api.Job, name string) int {
	return slices.IndexFunc(j.Groups, func(g api.GroupSpec) bool { return g.Name == name })
}

// newTask builds task index of group gi of j as submitted: pending, first
// attempt, the group's command and resources. inputs are the group's
// resolved DFS files (nil for a group without inputs).
func newTask(j *api.Job, gi, index int, inputs []string) *api.Task {
	g := &j.Groups[gi]
	t := &api.Task{ID: TaskID(j.ID, g.Name, index), JobID: j.ID, Cluster: j.Cluster, Group: g.Name, Index: index,
		State: api.TaskPending, Attempt: 1, Command: g.Command, Env: g.Env, Resources: g.Resources,
		MaxAttempts: g.MaxAttempts, Timeout: g.Timeout, Count: g.Count,
		Inputs: inputs, Outputs: g.Outputs, CreateIndex: j.CreateIndex, ModifyIndex: j.CreateIndex}
	if g.SplitInputs && len(inputs) > 0 {
		t.Inputs = inputs[index : index+1]
	}
	if m := j.MPI; m != nil {
		t.MPI = &api.TaskMPI{Ranks: m.Ranks, SlotsPerNode: m.SlotsPerNode, CheckpointInterval: m.Checkpoint.Interval}
	}
	return t
}

// unplacedTask returns the task of a group's unmaterialized range as reads
// show it.
func unplacedTask(j *api.Job, gi, index int) *api.Task {
	t := newTask(j, gi, index, nil)
	if j.State == api.JobCancelled {
		t.State, t.Finished, t.Message = api.TaskCancelled, j.Finished, "cancelled before it was placed"
	}
	return t
}

// unplacedState is the state of j's unmaterialized tasks.
func unplacedState(j *api.Job) string {
	if j.State == api.JobCancelled {
		return api.TaskCancelled
	}
	return api.TaskPending
}

// Task returns one task, or nil.
func (s *Snapshot) Task(ws memdb.WatchSet, id string) *api.Task {
	if t := first[*api.Task](s.txn, ws, tableTasks, id); t != nil {
		return t
	}
	job, group, index, ok := parseTaskID(id)
	if !ok {
		return nil
	}
	j := s.Job(ws, job)
	if j == nil {
		return nil
	}
	gi := groupIndex(j, group)
	if gi < 0 || index < j.GroupStatus[gi].Materialized || index >= j.Groups[gi].Count {
		return nil
	}
	return unplacedTask(j, gi, index)
}

// JobTasks returns all of a job's tasks ordered by group name then index.
// It costs O(job); views of large jobs use [Snapshot.TaskPage].
func (s *Snapshot) JobTasks(ws memdb.WatchSet, job string) []*api.Task {
	j := s.Job(ws, job)
	if j == nil {
		return nil
	}
	p, err := s.taskPage(ws, j, &api.TaskFilter{}, j.Counts.Total())
	if err != nil {
		return nil
	}
	return p.Tasks
}

// TaskPage returns the tasks of a job that match f, ordered by group name
// then index, or nil if there is no such job. Whole groups are skipped by
// their counts and unplaced tasks are computed, and an unfiltered page
// starts at its first row through the index, so a page costs O(limit)
// (with a state filter, plus the offset inside the matching rows of one
// group), never O(job). A group the job does not have is an [ErrInvalid] error.
func (s *Snapshot) TaskPage(ws memdb.WatchSet, job string, f *api.TaskFilter) (*api.TaskPage, error) {
	j := s.Job(ws, job)
	if j == nil {
		return nil, nil
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	limit := f.Limit
	if limit == 0 {
		limit = api.DefaultTaskLimit
	}
	return s.taskPage(ws, j, f, limit)
}

func (s *Snapshot) taskPage(ws memdb.WatchSet, j *api.Job, f *api.TaskFilter, limit int) (*api.TaskPage, error) {
	order := make([]int, 0, len(j.Groups))
	for gi := range j.Groups {
		if f.Group == "" || j.Groups[gi].Name == f.Group {
			order = append(order, gi)
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("%w: group: job %s has no group %q", ErrInvalid, j.ID, f.Group)
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(j.Groups[a].Name, j.Groups[b].Name) })
	matching := func(gi int) int {
		c := j.GroupStatus[gi].Counts
		if f.State == "" {
			return c.Total()
		}
		return c.Get(f.State)
	}
	page := &api.TaskPage{Tasks: []*api.Task{}}
	for _, gi := range order {
		page.Total += matching(gi)
	}
	skip := f.Offset
	for _, gi := range order {
		if len(page.Tasks) >= limit {
			break
		}
		m := matching(gi)
		if skip >= m {
			skip -= m
			continue
		}
		g, st := &j.Groups[gi], j.GroupStatus[gi]
		unplaced := 0
		if f.State == "" || f.State == unplacedState(j) {
			unplaced = g.Count - st.Materialized
		}
		if rows := m - unplaced; skip < rows {
			var it memdb.ResultIterator
			var err error
			if f.State == "" {
				// A group's rows are its indexes 0..Materialized-1, so the
				// page starts at index skip, found in the tree, not walked to.
				it, err = s.txn.LowerBound(tableTasks, "group", j.ID, g.Name, uint64(skip))
				skip = 0
			} else {
				it, err = s.txn.Get(tableTasks, "state_prefix", j.ID, f.State, g.Name)
			}
			if err != nil {
				return nil, err
			}
			if ws != nil {
				ws.Add(it.WatchCh())
			}
			for raw := it.Next(); raw != nil && len(page.Tasks) < limit; raw = it.Next() {
				t := raw.(*api.Task)
				if t.JobID != j.ID || t.Group != g.Name {
					break // LowerBound runs on past the group
				}
				if skip > 0 {
					skip--
					continue
				}
				page.Tasks = append(page.Tasks, t)
			}
			skip = 0
		} else {
			skip -= rows
		}
		for i := st.Materialized + skip; i < g.Count && unplaced > 0 && len(page.Tasks) < limit; i++ {
			page.Tasks = append(page.Tasks, unplacedTask(j, gi, i))
		}
		skip = 0
	}
	if next := f.Offset + len(page.Tasks); next < page.Total && len(page.Tasks) > 0 {
		page.NextOffset = next
	}
	return page, nil
}

// FailingTasks returns up to n of a job's tasks that failed, were lost or
// are on a retry, most recently changed first.
func (s *Snapshot) FailingTasks(ws memdb.WatchSet, job string, n int) []*api.Task {
	it, err := s.txn.GetReverse(tableTasks, "failing_prefix", job)
	if err != nil {
		return nil
	}
	if ws != nil {
		ws.Add(it.WatchCh())
	}
	var out []*api.Task
	for raw := it.Next(); raw != nil && len(out) < n; raw = it.Next() {
		out = append(out, raw.(*api.Task))
	}
	return out
}

// JobSummary returns a job as its status shows it: the job with its
// counts, at most the last nEvents events and its troubled tasks; nil if
// there is no such job. It reads no more than a few rows.
func (s *Snapshot) JobSummary(ws memdb.WatchSet, id string, nEvents int) *api.Job {
	j := s.Job(ws, id)
	if j == nil {
		return nil
	}
	out := *j
	if len(out.Events) > nEvents {
		out.Events = out.Events[len(out.Events)-nEvents:]
	}
	out.Failing = s.FailingTasks(ws, id, maxFailing)
	return &out
}

// UnplacedJobs returns the jobs that have tasks never placed, oldest first.
func (s *Snapshot) UnplacedJobs(ws memdb.WatchSet) []*api.Job {
	jobs := collect[*api.Job](s.txn, ws, tableJobs, "unplaced", true)
	slices.SortFunc(jobs, func(a, b *api.Job) int { return cmpUint(a.CreateIndex, b.CreateIndex) })
	return jobs
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// hasUnplaced reports whether j has tasks without a row that the scheduler
// must place.
func hasUnplaced(j *api.Job) bool {
	if j.State == api.JobCancelled {
		return false
	}
	for gi, st := range j.GroupStatus {
		if st.Materialized < j.Groups[gi].Count {
			return true
		}
	}
	return false
}

// unplacedTask returns the task of id if it is one of its group's unplaced
// tasks (no row) of a job that still runs, else nil.
func (tx *writeTxn) unplacedTask(id string) *api.Task {
	job, group, index, ok := parseTaskID(id)
	if !ok {
		return nil
	}
	j := tx.job(job)
	if j == nil || j.State == api.JobCancelled {
		return nil
	}
	gi := groupIndex(j, group)
	if gi < 0 || index < j.GroupStatus[gi].Materialized || index >= j.Groups[gi].Count {
		return nil
	}
	return newTask(j, gi, index, nil)
}

// materialize takes u, an unplaced task from [writeTxn.unplacedTask], out
// of its group's range: it creates the rows of the group's unplaced tasks
// before u and moves the range past u. The caller writes u's row (through
// updateTask, so that it is inserted once).
func (tx *writeTxn) materialize(u *api.Task) error {
	j := tx.jobForWrite(u.JobID)
	gi := groupIndex(j, u.Group)
	for i := j.GroupStatus[gi].Materialized; i < u.Index; i++ {
		// The rows are the tasks as they were: ModifyIndex stays the
		// job's CreateIndex until a task really changes.
		if err := tx.put(tableTasks, newTask(j, gi, i, nil)); err != nil {
			return err
		}
	}
	j.GroupStatus[gi].Materialized = u.Index + 1
	return nil
}

// countGroup moves one task of group from state from to state to in j's
// per-group counts.
func countGroup(j *api.Job, group, from, to string) {
	if gi := groupIndex(j, group); gi >= 0 {
		j.GroupStatus[gi].Counts.Add(from, -1)
		j.GroupStatus[gi].Counts.Add(to, 1)
	}
}
