package state_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

var small = api.Resources{CPU: 100, MemoryMB: 64}

// fixtureWithCluster has cluster "c" of nodes a1 (zone a) and b1 (zone b),
// 4000 millicores and 8192 MiB each, and b2 in the pool.
func fixtureWithCluster(t *testing.T) *fixture {
	t.Helper()
	f := fixtureWithPool(t, []poolNode{{"a1", "a"}, {"b1", "b"}})
	f.createCluster("c", 2, 2)
	f.addNode("b2", "b")
	return f
}

func TestSubmitJob(t *testing.T) {
	f := fixtureWithCluster(t)
	spec := api.JobSpec{Name: "sim", Cluster: "c", Groups: []api.GroupSpec{
		{Name: "workers", Count: 3, Command: []string{"/bin/work", "-n"}, Env: map[string]string{"K": "v"}},
		{Name: "leader", Count: 1, Command: []string{"/bin/lead"}, Resources: api.Resources{CPU: 4000, MemoryMB: 8192}, MaxAttempts: 5, Timeout: api.Duration(time.Minute)},
	}}
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: spec, Now: t0})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	idx := f.index
	if want := "sim-" + strconv.FormatUint(idx, 10); j.ID != want {
		t.Errorf("id: got %v, want %v", j.ID, want)
	}
	if j.State != api.JobPending || j.Type != api.JobBatch || j.Counts != (api.TaskCounts{Pending: 4}) {
		t.Errorf("job: got state %v type %v counts %+v, want pending batch 4 pending", j.State, j.Type, j.Counts)
	}
	if diff := cmp.Diff(j, f.job(j.ID)); diff != "" {
		t.Errorf("stored job differs from the returned one (-returned +stored):\n%s", diff)
	}
	tasks := f.snap().JobTasks(nil, j.ID)
	var ids []string
	for _, tk := range tasks {
		ids = append(ids, tk.ID)
	}
	wantIDs := []string{j.ID + "/leader/0", j.ID + "/workers/0", j.ID + "/workers/1", j.ID + "/workers/2"}
	if diff := cmp.Diff(wantIDs, ids); diff != "" {
		t.Errorf("task ids (-want +got):\n%s", diff)
	}
	want := &api.Task{ID: j.ID + "/workers/1", JobID: j.ID, Cluster: "c", Group: "workers", Index: 1, State: api.TaskPending,
		Attempt: 1, Command: []string{"/bin/work", "-n"}, Env: map[string]string{"K": "v"}, Resources: small,
		MaxAttempts: api.DefaultMaxTries, Count: 3, CreateIndex: idx, ModifyIndex: idx}
	if diff := cmp.Diff(want, tasks[2]); diff != "" {
		t.Errorf("task (-want +got):\n%s", diff)
	}
	if got := tasks[0]; got.MaxAttempts != 5 || got.Timeout != api.Duration(time.Minute) || got.Count != 1 {
		t.Errorf("leader task: got max attempts %v timeout %v count %v, want 5 1m 1", got.MaxAttempts, got.Timeout, got.Count)
	}
	// No task has a row before it is placed: the job is in the unplaced
	// index instead.
	if got := len(f.snap().PlaceableTasks(nil)); got != 0 {
		t.Errorf("placeable task rows: got %v, want 0", got)
	}
	if got := f.snap().UnplacedJobs(nil); len(got) != 1 || got[0].ID != j.ID {
		t.Errorf("unplaced jobs: got %v, want [%s]", got, j.ID)
	}
	if got := f.snap().Jobs(nil, "c"); len(got) != 1 || got[0].ID != j.ID {
		t.Errorf("jobs of cluster c: got %v, want [%s]", got, j.ID)
	}
	if got := f.snap().Jobs(nil, "other"); len(got) != 0 {
		t.Errorf("jobs of another cluster: got %v, want none", got)
	}
}

// TestSubmitJobRefused: a job that cannot run changes nothing.
func TestSubmitJobRefused(t *testing.T) {
	tests := []struct {
		name    string
		spec    api.JobSpec
		want    error
		wantMsg string
	}{
		{"unknown cluster", jobSpec("j", "nope", 1, small, 1), state.ErrNotFound, `no cluster named "nope"`},
		{"cpu bigger than any node", jobSpec("j", "c", 1, api.Resources{CPU: 4001, MemoryMB: 64}, 1), state.ErrInvalid,
			`groups[0].resources.cpu: 4001 millicores is more than any node of cluster "c" has (largest: 4000)`},
		{"memory bigger than any node", jobSpec("j", "c", 1, api.Resources{CPU: 100, MemoryMB: 8193}, 1), state.ErrInvalid,
			"groups[0].resources.memory: 8193 MiB"},
		{"count zero", jobSpec("j", "c", 0, small, 1), api.ErrInvalid, "groups[0].count: must be at least 1, got 0"},
		{"count negative", jobSpec("j", "c", -1, small, 1), state.ErrInvalid, "groups[0].count"},
		{"no groups", api.JobSpec{Name: "j", Cluster: "c"}, state.ErrInvalid, "groups"},
		{"bad type", api.JobSpec{Name: "j", Cluster: "c", Type: "service", Groups: jobSpec("j", "c", 1, small, 1).Groups}, state.ErrInvalid, "type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtureWithCluster(t)
			before := dump(t, f.s)
			j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: tt.spec, Now: t0})
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if j != nil {
				t.Errorf("got job %+v, want nil", j)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			checkUnchanged(t, f.s, before)
		})
	}
}

func TestTaskRunsToCompletion(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 1, small, 3)
	id := taskID(j.ID, 0)
	f.place(id, "a1")
	placed := f.task(id)
	if placed.State != api.TaskPending || placed.Node != "a1" || placed.RunID != f.index || placed.Attempt != 1 {
		t.Errorf("placed: got %v on %q run %v attempt %v, want pending on a1 run %v attempt 1", placed.State, placed.Node, placed.RunID, placed.Attempt, f.index)
	}
	if got := f.snap().NodeTasks(nil, "a1"); len(got) != 1 || got[0].ID != id {
		t.Errorf("a1 work: got %v, want [%s]", got, id)
	}
	if got := f.node("a1").Used; got != small {
		t.Errorf("a1 used: got %+v, want %+v", got, small)
	}

	started := t0.Add(time.Second)
	f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: placed.RunID, State: api.TaskRunning, Started: started})
	if tk := f.task(id); tk.State != api.TaskRunning || !tk.Started.Equal(started) {
		t.Errorf("running: got %v started %v, want running %v", tk.State, tk.Started, started)
	}
	if got := f.job(j.ID).State; got != api.JobRunning {
		t.Errorf("job: got %v, want running", got)
	}
	// A repeated running report writes nothing.
	before := dump(t, f.s)
	f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: placed.RunID, State: api.TaskRunning})
	checkUnchanged(t, f.s, before)

	finished := t0.Add(time.Minute)
	f.now = finished
	f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: placed.RunID, State: api.TaskComplete, Finished: finished, Message: "ok"})
	tk := f.task(id)
	if tk.State != api.TaskComplete || !tk.Finished.Equal(finished) || tk.Message != "ok" || tk.Placed() {
		t.Errorf("complete: got %v finished %v message %q placed %v, want complete %v ok false", tk.State, tk.Finished, tk.Message, tk.Placed(), finished)
	}
	job := f.job(j.ID)
	if job.State != api.JobComplete || !job.Finished.Equal(finished) || job.Counts != (api.TaskCounts{Complete: 1}) {
		t.Errorf("job: got %v finished %v counts %+v, want complete %v 1 complete", job.State, job.Finished, job.Counts, finished)
	}
	if n := f.node("a1"); n.Used != (api.Resources{}) || n.Tasks != 0 {
		t.Errorf("a1: got used %+v tasks %v, want nothing", n.Used, n.Tasks)
	}
	if got := f.snap().NodeTasks(nil, "a1"); len(got) != 0 {
		t.Errorf("a1 work: got %d tasks, want none", len(got))
	}
	// Reports after the end are stale.
	before = dump(t, f.s)
	f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: placed.RunID, State: api.TaskFailed, ExitCode: 1})
	checkUnchanged(t, f.s, before)
}

// TestTaskRetries: a failed run is retried after a growing delay until its
// attempts run out; then the task and its job fail.
func TestTaskRetries(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 1, small, 3)
	id := taskID(j.ID, 0)
	for attempt := 1; attempt <= 3; attempt++ {
		f.place(id, "a1")
		f.report(id, api.TaskRunning, 0)
		f.now = f.now.Add(time.Minute)
		f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: f.task(id).RunID, State: api.TaskFailed, ExitCode: 2, Message: "boom", Finished: f.now})
		tk := f.task(id)
		if attempt < 3 {
			want := f.now.Add(state.RetryDelay(attempt + 1))
			if tk.State != api.TaskPending || tk.Node != "" || tk.Attempt != attempt+1 || !tk.NotBefore.Equal(want) || tk.ExitCode != 2 {
				t.Errorf("after failure %d: got %v on %q attempt %v not before %v exit %v, want pending, unplaced, attempt %v, %v, 2",
					attempt, tk.State, tk.Node, tk.Attempt, tk.NotBefore, tk.ExitCode, attempt+1, want)
			}
			if got := f.job(j.ID).State; got == api.JobFailed || got == api.JobComplete {
				t.Errorf("job after failure %d: got %v, want not finished", attempt, got)
			}
			retry := "retrying in " + state.RetryDelay(attempt+1).String()
			if ev := failedEvent(f.job(j.ID).Events); !strings.Contains(ev, retry) {
				t.Errorf("last task-failed event %q does not contain %q", ev, retry)
			}
			continue
		}
		if tk.State != api.TaskFailed || tk.Attempt != 3 {
			t.Errorf("after the last failure: got %v attempt %v, want failed attempt 3", tk.State, tk.Attempt)
		}
	}
	job := f.job(j.ID)
	if job.State != api.JobFailed || job.Counts != (api.TaskCounts{Failed: 1}) || !job.Finished.Equal(f.now) {
		t.Errorf("job: got %v counts %+v finished %v, want failed, 1 failed, %v", job.State, job.Counts, job.Finished, f.now)
	}
	if n := f.node("a1"); n.Tasks != 0 {
		t.Errorf("a1 tasks: got %v, want 0", n.Tasks)
	}
}

// failedEvent returns the message of the newest task-failed event.
func failedEvent(evs []api.Event) string {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == "task-failed" {
			return evs[i].Message
		}
	}
	return ""
}

func TestRetryDelay(t *testing.T) {
	tests := []struct {
		attempt int
		want    time.Duration
	}{
		{2, time.Second},
		{3, 2 * time.Second},
		{4, 4 * time.Second},
		{7, 32 * time.Second},
		{8, time.Minute}, // 64s, capped
		{100, time.Minute},
	}
	for _, tt := range tests {
		if got := state.RetryDelay(tt.attempt); got != tt.want {
			t.Errorf("RetryDelay(%d): got %v, want %v", tt.attempt, got, tt.want)
		}
	}
}

// TestStaleReportsIgnored: reports for another run, from another node, or
// for an unknown task change nothing.
func TestStaleReportsIgnored(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 1, small, 3)
	id := taskID(j.ID, 0)
	f.place(id, "a1")
	oldRun := f.task(id).RunID
	f.report(id, api.TaskFailed, 1)
	f.place(id, "b1")
	f.report(id, api.TaskRunning, 0)
	cur := f.task(id)
	if cur.RunID == oldRun {
		t.Fatalf("run id did not change on re-placement: %v", cur.RunID)
	}
	tests := []struct {
		name string
		node string
		u    api.TaskUpdate
	}{
		{"old run from the old node", "a1", api.TaskUpdate{TaskID: id, RunID: oldRun, State: api.TaskComplete}},
		{"old run from the current node", "b1", api.TaskUpdate{TaskID: id, RunID: oldRun, State: api.TaskFailed, ExitCode: 3}},
		{"current run from another node", "a1", api.TaskUpdate{TaskID: id, RunID: cur.RunID, State: api.TaskComplete}},
		{"unknown task", "b1", api.TaskUpdate{TaskID: "nope/g/0", RunID: cur.RunID, State: api.TaskComplete}},
		{"unknown state", "b1", api.TaskUpdate{TaskID: id, RunID: cur.RunID, State: "paused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dump(t, f.s)
			f.reportRun(tt.node, tt.u)
			checkUnchanged(t, f.s, before)
		})
	}
}

// TestTaskLostReport: an agent that lost a run (for example after a
// restart) reports it lost; the task is placed again without using up an
// attempt.
func TestTaskLostReport(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 1, small, 1)
	id := taskID(j.ID, 0)
	f.place(id, "a1")
	f.report(id, api.TaskRunning, 0)
	f.reportRun("a1", api.TaskUpdate{TaskID: id, RunID: f.task(id).RunID, State: api.TaskLost, Message: "sandbox gone"})
	tk := f.task(id)
	if tk.State != api.TaskLost || tk.Node != "" || tk.Attempt != 1 || tk.Message != "sandbox gone" {
		t.Errorf("got %v on %q attempt %v message %q, want lost, unplaced, attempt 1, sandbox gone", tk.State, tk.Node, tk.Attempt, tk.Message)
	}
	if got := f.job(j.ID).Counts; got != (api.TaskCounts{Lost: 1}) {
		t.Errorf("counts: got %+v, want 1 lost", got)
	}
	f.place(id, "b1")
	f.report(id, api.TaskComplete, 0)
	if got := f.job(j.ID).State; got != api.JobComplete {
		t.Errorf("job: got %v, want complete", got)
	}
}

// TestJobState: a job's state follows its task counts.
func TestJobState(t *testing.T) {
	type step struct {
		task   int
		report string // "" places the task
	}
	tests := []struct {
		name       string
		steps      []step
		wantState  string
		wantCounts api.TaskCounts
	}{
		{"all pending", nil, api.JobPending, api.TaskCounts{Pending: 3}},
		{"placed is still pending", []step{{0, ""}}, api.JobPending, api.TaskCounts{Pending: 3}},
		{"one running", []step{{0, ""}, {0, api.TaskRunning}}, api.JobRunning, api.TaskCounts{Pending: 2, Running: 1}},
		{"one complete", []step{{0, ""}, {0, api.TaskComplete}}, api.JobRunning, api.TaskCounts{Pending: 2, Complete: 1}},
		{"all complete", []step{{0, ""}, {1, ""}, {2, ""}, {0, api.TaskComplete}, {1, api.TaskComplete}, {2, api.TaskComplete}},
			api.JobComplete, api.TaskCounts{Complete: 3}},
		{"one failed of three", []step{{0, ""}, {1, ""}, {2, ""}, {0, api.TaskComplete}, {1, api.TaskFailed}, {2, api.TaskComplete}},
			api.JobFailed, api.TaskCounts{Complete: 2, Failed: 1}},
		{"failed, others running", []step{{0, ""}, {1, ""}, {1, api.TaskRunning}, {0, api.TaskFailed}},
			api.JobRunning, api.TaskCounts{Pending: 1, Running: 1, Failed: 1}},
		{"lost", []step{{0, ""}, {0, api.TaskLost}}, api.JobPending, api.TaskCounts{Pending: 2, Lost: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtureWithCluster(t)
			j := f.submit("job", "c", 3, small, 1)
			for _, s := range tt.steps {
				if s.report == "" {
					f.place(taskID(j.ID, s.task), "a1")
				} else {
					f.report(taskID(j.ID, s.task), s.report, 1)
				}
			}
			got := f.job(j.ID)
			if got.State != tt.wantState {
				t.Errorf("state: got %v, want %v", got.State, tt.wantState)
			}
			if diff := cmp.Diff(tt.wantCounts, got.Counts); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			finished := got.State == api.JobComplete || got.State == api.JobFailed
			if finished == got.Finished.IsZero() {
				t.Errorf("finished time: got %v for a %v job", got.Finished, got.State)
			}
		})
	}
}

func TestCancelJob(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 4, small, 1)
	f.place(taskID(j.ID, 0), "a1")
	f.place(taskID(j.ID, 1), "b1")
	f.report(taskID(j.ID, 1), api.TaskRunning, 0)
	f.place(taskID(j.ID, 2), "b1")
	f.report(taskID(j.ID, 2), api.TaskComplete, 0)

	f.now = t0.Add(time.Hour)
	if err := f.s.CancelJob(f.next(), &state.JobCancelRequest{ID: j.ID, Now: f.now}); err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	job := f.job(j.ID)
	if job.State != api.JobCancelled || !job.Finished.Equal(f.now) {
		t.Errorf("job: got %v finished %v, want cancelled %v", job.State, job.Finished, f.now)
	}
	if diff := cmp.Diff(api.TaskCounts{Complete: 1, Cancelled: 3}, job.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if got := eventTypes(job.Events); !cmp.Equal(got, []string{"submitted", "job-running", "job-cancelled"}) {
		t.Errorf("events: got %v, want [submitted job-running job-cancelled]", got)
	}
	if got := f.task(taskID(j.ID, 2)).State; got != api.TaskComplete {
		t.Errorf("completed task: got %v, want complete", got)
	}
	if got := len(f.snap().PlaceableTasks(nil)); got != 0 {
		t.Errorf("placeable tasks: got %v, want 0", got)
	}
	// Cancelling again changes nothing; an unknown job is not found.
	before := dump(t, f.s)
	if err := f.s.CancelJob(f.next(), &state.JobCancelRequest{ID: j.ID, Now: f.now}); err != nil {
		t.Errorf("second cancel: %v", err)
	}
	if err := f.s.CancelJob(f.next(), &state.JobCancelRequest{ID: "nope", Now: f.now}); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("unknown job: got %v, want %v", err, state.ErrNotFound)
	}
	checkUnchanged(t, f.s, before)
}

// TestApplyPlanRejects: each placement that is no longer valid is refused
// on its own; the rest of the plan is applied.
func TestApplyPlanRejects(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the placement to try; the fixture has cluster "c"
		// (a1, b1), b2 in the pool, and job "job" of 4 tasks of 1500
		// millicores, none placed.
		setup func(f *fixture, job string) state.Placement
	}{
		{"stale task modify index", func(f *fixture, job string) state.Placement {
			tk := f.task(taskID(job, 0))
			return state.Placement{TaskID: tk.ID, Node: "a1", TaskModifyIndex: tk.ModifyIndex - 1}
		}},
		{"task changed since planned", func(f *fixture, job string) state.Placement {
			p := state.Placement{TaskID: taskID(job, 0), Node: "a1", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
			f.place(taskID(job, 0), "b1")
			return p
		}},
		{"task already placed", func(f *fixture, job string) state.Placement {
			f.place(taskID(job, 0), "b1")
			return state.Placement{TaskID: taskID(job, 0), Node: "a1", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"node of another cluster", func(f *fixture, job string) state.Placement {
			f.createCluster("other", 1, 1) // takes b2
			return state.Placement{TaskID: taskID(job, 0), Node: "b2", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"pool node", func(f *fixture, job string) state.Placement {
			return state.Placement{TaskID: taskID(job, 0), Node: "b2", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"node initializing", func(f *fixture, job string) state.Placement {
			f.register("a1", "a", 4000, 8192) // re-registration: back to initializing
			return state.Placement{TaskID: taskID(job, 0), Node: "a1", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"node down", func(f *fixture, job string) state.Placement {
			f.setState("a1", api.NodeDown)
			return state.Placement{TaskID: taskID(job, 0), Node: "a1", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"over capacity", func(f *fixture, job string) state.Placement {
			f.place(taskID(job, 0), "a1")
			f.place(taskID(job, 1), "a1")
			return state.Placement{TaskID: taskID(job, 2), Node: "a1", TaskModifyIndex: f.task(taskID(job, 2)).ModifyIndex}
		}},
		{"unknown node", func(f *fixture, job string) state.Placement {
			return state.Placement{TaskID: taskID(job, 0), Node: "zz", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
		{"unknown task", func(f *fixture, job string) state.Placement {
			return state.Placement{TaskID: "nope/g/0", Node: "a1", TaskModifyIndex: 1}
		}},
		{"finished task", func(f *fixture, job string) state.Placement {
			f.place(taskID(job, 0), "b1")
			f.report(taskID(job, 0), api.TaskComplete, 0)
			return state.Placement{TaskID: taskID(job, 0), Node: "a1", TaskModifyIndex: f.task(taskID(job, 0)).ModifyIndex}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtureWithCluster(t)
			j := f.submit("job", "c", 4, api.Resources{CPU: 1500, MemoryMB: 64}, 1)
			bad := tt.setup(f, j.ID)
			good := state.Placement{TaskID: taskID(j.ID, 3), Node: "b1", TaskModifyIndex: f.task(taskID(j.ID, 3)).ModifyIndex}
			before := f.snap().Task(nil, bad.TaskID)
			res := f.plan(bad, good)
			if diff := cmp.Diff(&state.PlanResult{Placed: 1, Rejected: 1}, res); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if after := f.snap().Task(nil, bad.TaskID); before != nil && after.ModifyIndex != before.ModifyIndex {
				t.Errorf("rejected task modified: got modify index %v, want %v", after.ModifyIndex, before.ModifyIndex)
			}
			if tk := f.task(good.TaskID); tk.Node != "b1" {
				t.Errorf("valid placement: got node %q, want b1", tk.Node)
			}
		})
	}
}

// TestApplyPlanCapacityWithinPlan: placements of one plan count against
// each other, and the same task cannot be placed twice.
func TestApplyPlanCapacityWithinPlan(t *testing.T) {
	f := fixtureWithCluster(t)
	j := f.submit("job", "c", 3, api.Resources{CPU: 1500, MemoryMB: 64}, 1)
	var ps []state.Placement
	for i := range 3 {
		tk := f.task(taskID(j.ID, i))
		ps = append(ps, state.Placement{TaskID: tk.ID, Node: "a1", TaskModifyIndex: tk.ModifyIndex})
	}
	// The same task twice: the second is refused, the task having changed.
	ps = append(ps, ps[0])
	ps[3].Node = "b1"
	res := f.plan(ps...)
	if diff := cmp.Diff(&state.PlanResult{Placed: 2, Rejected: 2}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if n := f.node("a1"); n.Used.CPU != 3000 || n.Tasks != 2 {
		t.Errorf("a1: got used %+v tasks %v, want 3000 millicores, 2 tasks", n.Used, n.Tasks)
	}
	if got := f.task(taskID(j.ID, 2)).Node; got != "" {
		t.Errorf("third task: got node %q, want unplaced", got)
	}
}
