package state_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

func mpiSpec(name, cluster string, ranks, slots, maxRestarts int) api.JobSpec {
	return api.JobSpec{Name: name, Cluster: cluster, Type: api.JobMPI,
		MPI:       &api.MPISpec{Ranks: ranks, SlotsPerNode: slots, Command: []string{"mpirun", "./heat"}, MaxRestarts: maxRestarts},
		Resources: api.Resources{CPU: 500, MemoryMB: 256}}
}

// mpiFixture has cluster c of 4 nodes in 2 zones and an mpi job of 6
// ranks at 2 per node (3 tasks), max_restarts 2, placed on n1..n3.
func mpiFixture(t *testing.T) (*fixture, *api.Job) {
	f := newFixture(t)
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		f.addNode(n, "z"+string(n[1]))
	}
	f.createCluster("c", 4, 2)
	spec := mpiSpec("heat", "c", 6, 2, 2)
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: spec, Now: f.now})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	f.placeGang(j.ID, "n1", "n2", "n3")
	return f, j
}

// placeGang applies a gang plan of the job's tasks on nodes and returns
// the result.
func (f *fixture) tryGang(job string, nodes ...string) *state.PlanResult {
	f.t.Helper()
	g := state.GangPlacement{Job: job}
	for i, n := range nodes {
		id := state.TaskID(job, api.MPIGroup, i)
		g.Placements = append(g.Placements, state.Placement{TaskID: id, Node: n, TaskModifyIndex: f.task(id).ModifyIndex})
	}
	res, err := f.s.ApplyPlan(f.next(), &state.PlanRequest{Gangs: []state.GangPlacement{g}, Now: f.now})
	if err != nil {
		f.t.Fatalf("ApplyPlan: %v", err)
	}
	return res
}

func (f *fixture) placeGang(job string, nodes ...string) {
	f.t.Helper()
	if res := f.tryGang(job, nodes...); res.Placed != len(nodes) {
		f.t.Fatalf("placing gang %s on %v: %+v", job, nodes, res)
	}
}

func mpiTask(job string, i int) string { return state.TaskID(job, api.MPIGroup, i) }

func TestMPISubmitMakesOneTaskPerNode(t *testing.T) {
	f, j := mpiFixture(t)
	if got := j.Groups[0]; got.Count != 3 || got.Resources != (api.Resources{CPU: 1000, MemoryMB: 512}) {
		t.Errorf("group: count %d resources %+v, want 3 tasks of 1000m/512MiB", got.Count, got.Resources)
	}
	for i, want := range []string{"n1", "n2", "n3"} {
		tk := f.task(mpiTask(j.ID, i))
		if tk.Node != want || tk.MPI == nil || tk.MPI.Ranks != 6 || tk.MPI.SlotsPerNode != 2 {
			t.Fatalf("task %d: node %q mpi %+v", i, tk.Node, tk.MPI)
		}
		if diff := cmp.Diff([]string{"n1", "n2", "n3"}, tk.MPI.Nodes); diff != "" {
			t.Errorf("task %d hostfile nodes (-want +got):\n%s", i, diff)
		}
		if tk.RunID != f.task(mpiTask(j.ID, 0)).RunID {
			t.Errorf("task %d has run %d, not the gang's", i, tk.RunID)
		}
	}
	if got := f.job(j.ID).MPIStatus.GangNodes; len(got) != 3 {
		t.Errorf("gang nodes %v", got)
	}
}

func TestMPIBadInput(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "z1")
	f.addNode("n2", "z2")
	f.createCluster("c", 2, 1)
	tests := []struct {
		name string
		edit func(s *api.JobSpec)
		want string
	}{
		{"ranks < 1", func(s *api.JobSpec) { s.MPI.Ranks = 0 }, "mpi.ranks"},
		{"slots < 1", func(s *api.JobSpec) { s.MPI.SlotsPerNode = 0 }, "mpi.slots_per_node"},
		{"more nodes than the cluster", func(s *api.JobSpec) { s.MPI.Ranks = 6 }, "need 6 nodes, but cluster \"c\" has 2"},
		{"slots more than a node holds", func(s *api.JobSpec) { s.MPI.Ranks, s.MPI.SlotsPerNode = 20, 10 }, "mpi.slots_per_node"},
		{"no mpi section", func(s *api.JobSpec) { s.MPI = nil }, "needs an mpi section"},
		{"mpi section on a batch job", func(s *api.JobSpec) {
			s.Type = api.JobBatch
			s.Groups = []api.GroupSpec{{Name: "g", Count: 1, Command: []string{"true"}}}
		}, "only mpi jobs have an mpi section"},
		{"empty command", func(s *api.JobSpec) { s.MPI.Command = nil }, "mpi.command"},
		{"max_restarts < 0", func(s *api.JobSpec) { s.MPI.MaxRestarts = -1 }, "mpi.max_restarts"},
		{"groups on an mpi job", func(s *api.JobSpec) { s.Groups = []api.GroupSpec{{Name: "g"}} }, "an mpi job has no groups"},
		{"file outside the cluster", func(s *api.JobSpec) { s.Files = []string{"/clusters/other/x"} }, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := mpiSpec("j", "c", 2, 1, 0)
			tt.edit(&spec)
			before := dump(t, f.s)
			_, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: spec, Now: f.now})
			if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an invalid-argument error mentioning %q", err, tt.want)
			}
			checkUnchanged(t, f.s, before)
		})
	}
}

func TestGangPlanAllOrNothing(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.addNode(n, "z1")
	}
	f.createCluster("c", 3, 1)
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: mpiSpec("g", "c", 3, 1, 0), Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	for _, nodes := range [][]string{{"n1", "n1", "n2"}, {"n1", "n2", "nope"}, {"n1", "n2"}} {
		before := dump(t, f.s)
		if res := f.tryGang(j.ID, nodes...); res.Placed != 0 {
			t.Fatalf("gang on %v: %+v, want nothing placed", nodes, res)
		}
		checkUnchanged(t, f.s, before)
	}
	// A batch-style placement of one gang task is refused too.
	if res := f.plan(state.Placement{TaskID: mpiTask(j.ID, 0), Node: "n1", TaskModifyIndex: f.task(mpiTask(j.ID, 0)).ModifyIndex}); res.Placed != 0 {
		t.Fatalf("one task of a gang placed alone: %+v", res)
	}
}

func TestGangRestartsWholeAndGivesUp(t *testing.T) {
	f, j := mpiFixture(t)
	// Rank host 2 fails: every task of the gang is stopped and waits.
	f.report(mpiTask(j.ID, 1), api.TaskRunning, 0)
	f.report(mpiTask(j.ID, 2), api.TaskFailed, 3)
	for i := range 3 {
		tk := f.task(mpiTask(j.ID, i))
		if tk.State != api.TaskPending || tk.Node != "" {
			t.Fatalf("after a failure task %d is %s on %q, want pending, unplaced", i, tk.State, tk.Node)
		}
	}
	jj := f.job(j.ID)
	if jj.MPIStatus.Restarts != 1 || jj.State == api.JobFailed || !strings.Contains(lastEvent(jj.Events), "restart 1 of 2") {
		t.Fatalf("restarts %d state %s event %q", jj.MPIStatus.Restarts, jj.State, lastEvent(jj.Events))
	}
	// Node n4 takes a failed node's place; the gang runs again and the
	// restart is timed when all its tasks run.
	f.placeGang(j.ID, "n4", "n2", "n3")
	for i := range 3 {
		f.report(mpiTask(j.ID, i), api.TaskRunning, 0)
	}
	if ev := lastEvent(f.job(j.ID).Events); !strings.Contains(ev, "running again from scratch") {
		t.Errorf("last event %q, want the restart's duration", ev)
	}
	// The node of the launcher goes down: restart 2.
	f.setState("n4", api.NodeDown)
	if got := f.job(j.ID).MPIStatus.Restarts; got != 2 {
		t.Fatalf("restarts after node down: %d, want 2", got)
	}
	f.placeGang(j.ID, "n1", "n2", "n3")
	// The launcher fails: max_restarts (2) is used up.
	f.report(mpiTask(j.ID, 0), api.TaskFailed, 1)
	jj = f.job(j.ID)
	if jj.State != api.JobFailed || !strings.Contains(lastEvent(jj.Events), "max_restarts (2) used up") {
		t.Fatalf("state %s, last event %q; want failed with the reason", jj.State, lastEvent(jj.Events))
	}
	for i := range 3 {
		if tk := f.task(mpiTask(j.ID, i)); tk.State != api.TaskFailed || tk.Node != "" {
			t.Errorf("task %d: %s on %q", i, tk.State, tk.Node)
		}
	}
}

func TestGangCompletesWithLauncher(t *testing.T) {
	f, j := mpiFixture(t)
	for i := range 3 {
		f.report(mpiTask(j.ID, i), api.TaskRunning, 0)
	}
	f.report(mpiTask(j.ID, 0), api.TaskComplete, 0)
	if jj := f.job(j.ID); jj.State != api.JobComplete || jj.Counts.Complete != 3 {
		t.Fatalf("job %s counts %+v, want complete with 3 tasks", jj.State, jj.Counts)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if nd := f.node(n); nd.Tasks != 0 || nd.Used.CPU != 0 {
			t.Errorf("node %s still holds %d tasks", n, nd.Tasks)
		}
	}
}

func (f *fixture) ckpt(j *api.Job, task int, epoch int64, rank int) error {
	tk := f.task(mpiTask(j.ID, task))
	return f.s.ReportCheckpoint(f.next(), &state.CheckpointReportRequest{Node: tk.Node, Now: f.now,
		Report: api.CheckpointReport{Job: j.ID, Task: tk.ID, RunID: tk.RunID, Epoch: epoch, Rank: rank, Bytes: 10}})
}

func TestCheckpointEpochs(t *testing.T) {
	f, j := mpiFixture(t)
	commit := func(epoch int64, ranks ...int) {
		t.Helper()
		for _, r := range ranks {
			if err := f.ckpt(j, r/2, epoch, r); err != nil {
				t.Fatalf("epoch %d rank %d: %v", epoch, r, err)
			}
		}
	}
	states := func() map[int64]string {
		out := map[int64]string{}
		for _, c := range f.snap().Checkpoints(nil, j.ID) {
			out[c.Epoch] = c.State
		}
		return out
	}
	commit(1, 0, 1, 2, 3, 4)
	if got := f.job(j.ID).MPIStatus.LastEpoch; got != 0 {
		t.Fatalf("epoch 1 complete with 5 of 6 ranks: last epoch %d", got)
	}
	commit(1, 5)
	commit(2, 0, 1, 2, 3, 4, 5)
	commit(3, 0, 1, 2) // rank 3..5 never commit epoch 3
	commit(4, 0, 1, 2, 3, 4, 5)
	if got := f.job(j.ID).MPIStatus.LastEpoch; got != 4 {
		t.Fatalf("last epoch %d, want 4", got)
	}
	want := map[int64]string{1: api.CheckpointDeleted, 2: api.CheckpointComplete, 3: api.CheckpointDeleted, 4: api.CheckpointComplete}
	if diff := cmp.Diff(want, states()); diff != "" {
		t.Errorf("epochs (-want +got):\n%s", diff)
	}
	// Refused, changing nothing: an epoch not after the last complete,
	// a rank out of range or not hosted by the reporting task. A report
	// repeated (its answer lost) changes nothing either, without error.
	before := dump(t, f.s)
	for _, c := range []struct {
		task  int
		epoch int64
		rank  int
		want  error
	}{{1, 3, 3, state.ErrInvalid}, {0, 5, 6, state.ErrInvalid}, {0, 5, -1, state.ErrInvalid}, {0, 5, 2, state.ErrInvalid},
		{0, 4, 0, nil}, {2, 2, 5, nil}} {
		if err := f.ckpt(j, c.task, c.epoch, c.rank); !errors.Is(err, c.want) {
			t.Errorf("task %d epoch %d rank %d: got %v, want %v", c.task, c.epoch, c.rank, err, c.want)
		}
	}
	checkUnchanged(t, f.s, before)
	// After a restart, the gang resumes from epoch 4; reports of the old
	// run are stale.
	old := f.task(mpiTask(j.ID, 0))
	f.report(mpiTask(j.ID, 1), api.TaskFailed, 1)
	f.placeGang(j.ID, "n1", "n2", "n4")
	if tk := f.task(mpiTask(j.ID, 2)); tk.MPI.RestartEpoch != 4 {
		t.Fatalf("restart epoch %d, want 4", tk.MPI.RestartEpoch)
	}
	err := f.s.ReportCheckpoint(f.next(), &state.CheckpointReportRequest{Node: old.Node, Now: f.now,
		Report: api.CheckpointReport{Job: j.ID, Task: old.ID, RunID: old.RunID, Epoch: 5, Rank: 0}})
	if !errors.Is(err, state.ErrConflict) {
		t.Fatalf("report from the old run: %v, want a conflict", err)
	}
}

// TestMPIStatePersists: checkpoints and a cluster's CA survive a snapshot
// and its restore, and a restored store completes an epoch as the
// original would.
func TestMPIStatePersists(t *testing.T) {
	f, j := mpiFixture(t)
	if err := f.s.SetClusterCA(f.next(), &state.ClusterCARequest{CA: state.ClusterCA{Cluster: "c", CertPEM: []byte("cert"), KeyPEM: []byte("key")}}); err != nil {
		t.Fatal(err)
	}
	for r := range 5 {
		if err := f.ckpt(j, r/2, 1, r); err != nil {
			t.Fatal(err)
		}
	}
	before := dump(t, f.s)
	restored, err := state.Restore(bytes.NewReader(before))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(before), string(dump(t, restored))); diff != "" {
		t.Fatalf("restored store differs (-want +got):\n%s", diff)
	}
	if ca := restored.Snapshot().ClusterCA(nil, "c"); ca == nil || string(ca.KeyPEM) != "key" {
		t.Fatalf("restored CA %+v", ca)
	}
	f.s = restored
	if err := f.ckpt(j, 2, 1, 5); err != nil {
		t.Fatal(err)
	}
	if got := f.job(j.ID).MPIStatus.LastEpoch; got != 1 {
		t.Errorf("last epoch after the restored store saw the last rank: %d, want 1", got)
	}
}
