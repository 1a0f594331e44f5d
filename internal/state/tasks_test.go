package state_test

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// pagesFixture submits job "p" with groups "b" (5 tasks, 1 attempt) and
// "a" (3 tasks), then places b/1 (which creates the rows of b/0 and b/1),
// fails it, and places and completes a/0. It returns the job id.
func pagesFixture(t *testing.T) (*fixture, string) {
	t.Helper()
	f := fixtureWithCluster(t)
	small := api.Resources{CPU: 100, MemoryMB: 64}
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Now: f.now, Spec: api.JobSpec{Name: "p", Cluster: "c",
		Groups: []api.GroupSpec{
			{Name: "b", Count: 5, Command: []string{"/bin/true"}, Resources: small, MaxAttempts: 1},
			{Name: "a", Count: 3, Command: []string{"/bin/true"}, Resources: small},
		}}})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	f.place(j.ID+"/b/1", "a1")
	f.report(j.ID+"/b/1", api.TaskFailed, 3)
	f.place(j.ID+"/a/0", "b1")
	f.report(j.ID+"/a/0", api.TaskComplete, 0)
	return f, j.ID
}

func ids(tasks []*api.Task) []string {
	out := []string{}
	for _, tk := range tasks {
		out = append(out, tk.ID)
	}
	return out
}

func TestTaskPage(t *testing.T) {
	f, id := pagesFixture(t)
	p := func(s ...string) []string {
		out := []string{}
		for _, x := range s {
			out = append(out, id+"/"+x)
		}
		return out
	}
	tests := []struct {
		name      string
		filter    api.TaskFilter
		wantIDs   []string
		wantTotal int
		wantNext  int
	}{
		{"all, by group name then index", api.TaskFilter{}, p("a/0", "a/1", "a/2", "b/0", "b/1", "b/2", "b/3", "b/4"), 8, 0},
		{"first page", api.TaskFilter{Limit: 3}, p("a/0", "a/1", "a/2"), 8, 3},
		{"page across groups", api.TaskFilter{Limit: 3, Offset: 2}, p("a/2", "b/0", "b/1"), 8, 5},
		{"page inside the unplaced range", api.TaskFilter{Limit: 2, Offset: 5}, p("b/2", "b/3"), 8, 7},
		{"last page", api.TaskFilter{Limit: 3, Offset: 6}, p("b/3", "b/4"), 8, 0},
		{"past the end", api.TaskFilter{Offset: 20}, p(), 8, 0},
		{"pending rows and unplaced tasks", api.TaskFilter{State: api.TaskPending}, p("a/1", "a/2", "b/0", "b/2", "b/3", "b/4"), 6, 0},
		{"pending from an offset in the range", api.TaskFilter{State: api.TaskPending, Offset: 3, Limit: 2}, p("b/2", "b/3"), 6, 5},
		{"pending of one group", api.TaskFilter{State: api.TaskPending, Group: "b"}, p("b/0", "b/2", "b/3", "b/4"), 4, 0},
		{"failed", api.TaskFilter{State: api.TaskFailed}, p("b/1"), 1, 0},
		{"complete", api.TaskFilter{State: api.TaskComplete}, p("a/0"), 1, 0},
		{"none running", api.TaskFilter{State: api.TaskRunning}, p(), 0, 0},
		{"one group", api.TaskFilter{Group: "a", Offset: 1}, p("a/1", "a/2"), 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := f.snap().TaskPage(nil, id, &tt.filter)
			if err != nil {
				t.Fatalf("TaskPage: %v", err)
			}
			if diff := cmp.Diff(tt.wantIDs, ids(got.Tasks)); diff != "" {
				t.Errorf("tasks (-want +got):\n%s", diff)
			}
			if got.Total != tt.wantTotal || got.NextOffset != tt.wantNext {
				t.Errorf("got total %d next offset %d, want %d and %d", got.Total, got.NextOffset, tt.wantTotal, tt.wantNext)
			}
		})
	}
}

func TestTaskPageBadFilter(t *testing.T) {
	f, id := pagesFixture(t)
	tests := []struct {
		name   string
		filter api.TaskFilter
		want   string
	}{
		{"unknown state", api.TaskFilter{State: "done"}, `state: "done" is not a task state`},
		{"negative limit", api.TaskFilter{Limit: -1}, "limit: -1 is out of range"},
		{"limit too large", api.TaskFilter{Limit: api.MaxTaskLimit + 1}, "limit: 10001 is out of range"},
		{"negative offset", api.TaskFilter{Offset: -5}, "offset: -5 is negative"},
		{"unknown group", api.TaskFilter{Group: "zz"}, `group: job ` + id + ` has no group "zz"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.snap().TaskPage(nil, id, &tt.filter)
			if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
	if p, err := f.snap().TaskPage(nil, "nope-1", &api.TaskFilter{}); p != nil || err != nil {
		t.Errorf("unknown job: got %v, %v, want nil, nil", p, err)
	}
}

func TestJobSummary(t *testing.T) {
	f, id := pagesFixture(t)
	j := f.snap().JobSummary(nil, id, 2)
	want := []api.GroupStatus{
		{Name: "b", Counts: api.TaskCounts{Pending: 4, Failed: 1}, Materialized: 2},
		{Name: "a", Counts: api.TaskCounts{Pending: 2, Complete: 1}, Materialized: 1},
	}
	if diff := cmp.Diff(want, j.GroupStatus); diff != "" {
		t.Errorf("group status (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{id + "/b/1"}, ids(j.Failing)); diff != "" {
		t.Errorf("failing tasks (-want +got):\n%s", diff)
	}
	if len(j.Events) != 2 || lastEvent(j.Events) != lastEvent(f.snap().Job(nil, id).Events) {
		t.Errorf("events: got %d ending %q, want the last 2", len(j.Events), lastEvent(j.Events))
	}
}

// TestCancelUnplaced: cancelling a job cancels its tasks without rows too.
func TestCancelUnplaced(t *testing.T) {
	f, id := pagesFixture(t)
	if err := f.s.CancelJob(f.next(), &state.JobCancelRequest{ID: id, Now: f.now}); err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	j := f.snap().Job(nil, id)
	if want := (api.TaskCounts{Complete: 1, Failed: 1, Cancelled: 6}); j.Counts != want {
		t.Errorf("counts: got %+v, want %+v", j.Counts, want)
	}
	if tk := f.task(id + "/b/4"); tk.State != api.TaskCancelled {
		t.Errorf("unplaced task b/4: got state %q, want cancelled", tk.State)
	}
	if got := f.snap().UnplacedJobs(nil); len(got) != 0 {
		t.Errorf("unplaced jobs after cancel: got %d, want 0", len(got))
	}
	// A plan made before the cancel places nothing.
	res := f.plan(state.Placement{TaskID: id + "/b/4", Node: "a1", TaskModifyIndex: j.CreateIndex})
	if res.Placed != 0 {
		t.Errorf("placing an unplaced task of a cancelled job: got %+v, want it rejected", res)
	}
}

// TestUnplacedTaskLookup: Task answers for any index of a group, with or
// without a row, and nothing outside the groups.
func TestUnplacedTaskLookup(t *testing.T) {
	f, id := pagesFixture(t)
	for _, tt := range []struct {
		id   string
		want bool
	}{
		{id + "/b/0", true}, {id + "/b/4", true}, {id + "/b/5", false}, {id + "/c/0", false},
		{id + "/b/-1", false}, {id + "/b/01", false}, {"nope-1/b/0", false}, {id, false},
	} {
		if got := f.snap().Task(nil, tt.id) != nil; got != tt.want {
			t.Errorf("Task(%s): got found %v, want %v", tt.id, got, tt.want)
		}
	}
}

// TestRestoreUpgradesJobs: a snapshot written before jobs had per-group
// status restores with every task materialized and the groups recounted.
func TestRestoreUpgradesJobs(t *testing.T) {
	f, id := pagesFixture(t)
	// Every task with a row, as the old code made them.
	f.place(id+"/b/4", "a1")
	f.place(id+"/a/2", "b1")
	var buf bytes.Buffer
	if err := f.snap().Persist(&buf); err != nil {
		t.Fatal(err)
	}
	old := regexp.MustCompile(`,"group_status":\[[^\]]*\]`).ReplaceAllString(buf.String(), "")
	if old == buf.String() {
		t.Fatal("the snapshot has no group_status to strip")
	}
	s, err := state.Restore(strings.NewReader(old))
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	j := s.Snapshot().Job(nil, id)
	want := []api.GroupStatus{
		{Name: "b", Counts: api.TaskCounts{Pending: 4, Failed: 1}, Materialized: 5},
		{Name: "a", Counts: api.TaskCounts{Pending: 2, Complete: 1}, Materialized: 3},
	}
	if diff := cmp.Diff(want, j.GroupStatus); diff != "" {
		t.Errorf("group status (-want +got):\n%s", diff)
	}
}
