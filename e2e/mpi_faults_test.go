package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// These tests run the heat example (examples/heat) as a real Open MPI job
// through spawned shoal processes and break it: a node killed with -9, a
// rank that exits non-zero, the Raft leader killed while checkpoints are
// written. Each run's checksum is compared with a plain mpirun of the same
// program on this host.

var checksumRE = regexp.MustCompile(`(?m)^checksum ([0-9a-f]+)$`)

// localChecksum runs heat with plain mpirun on this host: the result an
// uninterrupted run must give.
func localChecksum(t *testing.T, dir string, ranks int, args ...string) string {
	t.Helper()
	cmd := exec.Command("mpirun", append([]string{"--oversubscribe", "-np", fmt.Sprint(ranks), "--mca", "btl", "tcp,self",
		filepath.Join(dir, "heat")}, args...)...)
	cmd.Env = testutil.LocalMPIEnv()
	out, err := cmd.CombinedOutput()
	m := checksumRE.FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("plain mpirun of heat: %v\n%s", err, out)
	}
	return string(m[1])
}

// heatJob is an mpi job file running heat with args on 6 ranks, 2 a node.
func heatJob(maxRestarts int, args ...string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`
name: heat
cluster: c1
type: mpi
mpi:
  ranks: 6
  slots_per_node: 2
  command: ["mpirun", "--mca", "btl", "tcp,self", "--mca", "mpi_yield_when_idle", "1", "./heat", %s]
  max_restarts: %d
  checkpoint: {keep: 2}
resources: {cpu: 1000, memory: 64}   # a core a rank: the cgroup quota would throttle MPI's polling
files: [heat]
`, strings.Join(quoted, ", "), maxRestarts)
}

// startHeatCluster starts an installation with a cluster c1 of 3 nodes in 3
// zones (and a spare node in the pool) and puts heat in its DFS root.
func startHeatCluster(t *testing.T, opts testutil.Options) (*testutil.Installation, string) {
	t.Helper()
	dir := testutil.MPIExamples(t)
	in := testutil.StartInstallation(t, opts)
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	mustShoal(t, in, "fs", "put", filepath.Join(dir, "heat"), "/clusters/c1/heat")
	return in, dir
}

// waitEpoch waits until the job's last complete epoch is at least n.
func waitEpoch(t *testing.T, in *testutil.Installation, id string, n int64) *api.Job {
	t.Helper()
	var job *api.Job
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		j, _, err := in.Client.JobSummary(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		job = j
		if j.State == api.JobComplete || j.State == api.JobFailed {
			t.Fatalf("job %s ended (%s) before epoch %d: %v", id, j.State, n, j.Events)
		}
		return j.MPIStatus != nil && j.MPIStatus.LastEpoch >= n, fmt.Sprintf("job %s status %+v", id, j.MPIStatus)
	})
	return job
}

// launcherLog is the launcher's output: mpirun's, with every rank's.
func launcherLog(t *testing.T, in *testutil.Installation, id string) string {
	t.Helper()
	return mustShoal(t, in, "job", "logs", id)
}

func checkChecksum(t *testing.T, log, want string) {
	t.Helper()
	m := checksumRE.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no checksum in the launcher's log:\n%s", log)
	}
	if m[1] != want {
		t.Errorf("checksum %s, want %s (a plain mpirun's)", m[1], want)
	}
}

var resumedRE = regexp.MustCompile(`resumed from epoch (\d+) at step (\d+)`)

// TestMPIResumesAfterNodeKill kills -9 the agent of a node hosting ranks
// mid-run: the whole gang stops, the cluster refills from the pool, the
// gang is placed again and resumes from its last complete epoch (not from
// zero), and the result equals an uninterrupted run's.
func TestMPIResumesAfterNodeKill(t *testing.T) {
	in, dir := startHeatCluster(t, testutil.Options{Agents: 4, Zones: 3})
	args := []string{"--steps", "1500", "--checkpoint-every", "100", "--sleep-ms-per-step", "4"}
	want := localChecksum(t, dir, 6, args...)
	id := submit(t, in, heatJob(3, args...))
	before := waitEpoch(t, in, id, 2)
	victim := before.MPIStatus.GangNodes[1]
	in.Agent(victim).Kill9()

	job := waitJobState(t, in, id, api.JobComplete, 120*time.Second)
	// At least one: on this 2-core machine a busy node can miss its
	// heartbeats too, which is another restart (see the closing note).
	if job.MPIStatus.Restarts < 1 {
		t.Errorf("restarts %d, want 1; events %v", job.MPIStatus.Restarts, job.Events)
	}
	if !hasEvent(job.Events, "gang-restart", "lost on "+victim) {
		t.Errorf("events %v record no gang restart for the loss of %s", job.Events, victim)
	}
	if !hasEvent(job.Events, "gang-restarted", "running again from epoch") {
		t.Errorf("events %v record no timed restart from an epoch", job.Events)
	}
	log := launcherLog(t, in, id)
	m := resumedRE.FindStringSubmatch(log)
	if m == nil || m[1] == "0" {
		t.Fatalf("the relaunched job did not resume from a checkpoint:\n%s", log)
	}
	if ep, _ := strconv.ParseInt(m[1], 10, 64); ep < before.MPIStatus.LastEpoch {
		t.Errorf("resumed from epoch %d, older than the %d complete before the kill", ep, before.MPIStatus.LastEpoch)
	}
	checkChecksum(t, log, want)
	for _, n := range job.MPIStatus.GangNodes {
		if n == victim {
			t.Errorf("the gang was placed again on the dead node %s", victim)
		}
	}
}

// TestMPIRankFailure: a rank that exits non-zero restarts the whole gang,
// which resumes and finishes with the right result; a job that fails every
// time uses up max_restarts and fails with the reason.
func TestMPIRankFailure(t *testing.T) {
	in, dir := startHeatCluster(t, testutil.Options{Agents: 3, Zones: 3})
	args := []string{"--steps", "600", "--checkpoint-every", "100"}
	want := localChecksum(t, dir, 6, args...)
	// heat fails at step 350 on rank 3 only when it starts from scratch.
	id := submit(t, in, heatJob(2, append(args, "--fail-at-step", "350", "--fail-rank", "3")...))
	job := waitJobState(t, in, id, api.JobComplete, 120*time.Second)
	if job.MPIStatus.Restarts < 1 || !hasEvent(job.Events, "gang-restart", "the launcher on") ||
		!hasEvent(job.Events, "gang-placed", "resuming from epoch 3") {
		t.Errorf("restarts %d events %v, want a restart after the launcher failed, resuming from epoch 3 (the last all ranks reached before step 350)",
			job.MPIStatus.Restarts, job.Events)
	}
	log := launcherLog(t, in, id)
	if m := resumedRE.FindStringSubmatch(log); m == nil {
		t.Errorf("the relaunched job did not resume from a checkpoint:\n%s", log)
	}
	checkChecksum(t, log, want)

	// Without checkpoints it fails every time: 1 restart, then failed.
	id = submit(t, in, heatJob(1, "--steps", "400", "--checkpoint-every", "0", "--fail-at-step", "50", "--fail-rank", "1"))
	job = waitJobState(t, in, id, api.JobFailed, 120*time.Second)
	if job.MPIStatus.Restarts != 1 || !hasEvent(job.Events, "gang-failed", "max_restarts (1) used up") {
		t.Errorf("restarts %d events %v, want a failure naming max_restarts", job.MPIStatus.Restarts, job.Events)
	}
	out := mustShoal(t, in, "job", "status", id)
	if !strings.Contains(out, "max_restarts (1) used up") {
		t.Errorf("job status does not say why the job failed:\n%s", out)
	}
}

// TestMPILeaderKillDuringCheckpoints kills -9 the Raft leader while the
// ranks checkpoint: no committed epoch is lost and the job finishes with
// the right result.
func TestMPILeaderKillDuringCheckpoints(t *testing.T) {
	in, dir := startHeatCluster(t, testutil.Options{Servers: 3, Agents: 3, Zones: 3})
	args := []string{"--steps", "1200", "--checkpoint-every", "50", "--sleep-ms-per-step", "4"}
	want := localChecksum(t, dir, 6, args...)
	id := submit(t, in, heatJob(3, args...))
	before := waitEpoch(t, in, id, 2)
	old := in.Leader()
	in.Servers[old].Kill9()
	job := waitJobState(t, in, id, api.JobComplete, 120*time.Second)
	if job.MPIStatus.LastEpoch < before.MPIStatus.LastEpoch {
		t.Errorf("last complete epoch went from %d to %d", before.MPIStatus.LastEpoch, job.MPIStatus.LastEpoch)
	}
	cps, err := in.Client.JobCheckpoints(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	complete := 0
	for _, c := range cps {
		if c.State == api.CheckpointComplete {
			complete++
			if c.Durable != c.Ranks {
				t.Errorf("epoch %d complete with %d of %d ranks", c.Epoch, c.Durable, c.Ranks)
			}
		}
		if c.Epoch == before.MPIStatus.LastEpoch && c.State == api.CheckpointPartial {
			t.Errorf("epoch %d was complete before the leader died and is partial now", c.Epoch)
		}
	}
	if complete != 2 {
		t.Errorf("%d complete epochs kept, want 2 (keep: 2): %+v", complete, cps)
	}
	checkChecksum(t, launcherLog(t, in, id), want)
}
