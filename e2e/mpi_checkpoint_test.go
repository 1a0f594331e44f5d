package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// checkpointScript is the launcher of TestMPICheckpoints: no MPI, a shell
// script that plays both ranks of a 2-rank job on one node by setting
// OMPI_COMM_WORLD_RANK itself. Its first run commits epochs 1 to 3 for both
// ranks and epoch 4 for rank 0 only, tries two commits that must be
// refused, waits for the test's go-ahead (the DFS file "go") and fails, so
// that the gang restarts. Its second run prints the restart epoch and the
// state restored for rank 0, and succeeds.
const checkpointScript = `
SHOAL=%q
echo "restart_epoch=${SHOAL_RESTART_EPOCH:-none}"
if [ -n "$SHOAL_RESTART_EPOCH" ]; then
  echo "restored: $(cat "$SHOAL_CHECKPOINT_DIR/0/state")"
  exit 0
fi
for e in 1 2 3; do
  for r in 0 1; do
    mkdir -p "$SHOAL_CHECKPOINT_DIR/$r"
    head -c 100000 /dev/urandom > "$SHOAL_CHECKPOINT_DIR/$r/blob"
    echo "rank $r epoch $e" > "$SHOAL_CHECKPOINT_DIR/$r/state"
    OMPI_COMM_WORLD_RANK=$r "$SHOAL" checkpoint commit $e || { echo "commit $e of rank $r failed"; exit 1; }
  done
done
echo "rank 0 epoch 4" > "$SHOAL_CHECKPOINT_DIR/0/state"
OMPI_COMM_WORLD_RANK=0 "$SHOAL" checkpoint commit 4 || { echo "commit 4 of rank 0 failed"; exit 1; }
until "$SHOAL" job checkpoints "$SHOAL_JOB_ID" -o json | tr -d ' \n' | grep -q '"epoch":3,"state":"complete"'; do
  sleep 0.1
done
SHOAL_RUN_SECRET=not-the-secret OMPI_COMM_WORLD_RANK=0 "$SHOAL" checkpoint commit 5 2>&1
echo "wrong-secret-exit=$?"
OMPI_COMM_WORLD_RANK=1 "$SHOAL" checkpoint commit 2 2>&1
echo "low-epoch-exit=$?"
echo "waiting for go"
until "$SHOAL" fs stat go >/dev/null 2>&1; do sleep 0.2; done
exit 3
`

// checkpoints reads `shoal job checkpoints JOB -o json`, by epoch.
func checkpoints(t *testing.T, in *testutil.Installation, id string) map[int64]*api.Checkpoint {
	t.Helper()
	var list []*api.Checkpoint
	if err := json.Unmarshal([]byte(mustShoal(t, in, "job", "checkpoints", id, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[int64]*api.Checkpoint{}
	for _, c := range list {
		out[c.Epoch] = c
	}
	return out
}

// TestMPICheckpoints runs an mpi job whose launcher commits checkpoints
// through `shoal checkpoint commit`: epochs are complete only once every
// rank committed them, an epoch one rank never committed stays partial and
// is not used for the restart, keep: 2 deletes older epochs from the DFS,
// and bad commits are refused with a clear message.
func TestMPICheckpoints(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, Zones: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2", "--zones", "2")
	id := submit(t, in, fmt.Sprintf(`
name: ckpt
cluster: c1
type: mpi
mpi:
  ranks: 2
  slots_per_node: 2
  command: ["/bin/sh", "-c", %q]
  max_restarts: 1
  checkpoint: {keep: 2}
resources: {cpu: 100, memory: 64}
`, fmt.Sprintf(checkpointScript, testutil.Binary(t))))

	// Epochs 1-3 complete, 4 partial with rank 0's files only.
	var cps map[int64]*api.Checkpoint
	testutil.WaitFor(t, time.Minute, func() (bool, string) {
		cps = checkpoints(t, in, id)
		c3, c4 := cps[3], cps[4]
		ok := c3 != nil && c3.State == api.CheckpointComplete && c4 != nil && c4.Durable == 1
		return ok, fmt.Sprintf("checkpoints %s, want epoch 3 complete and epoch 4 durable for one rank", describe(cps))
	})
	for epoch, want := range map[int64]string{1: api.CheckpointDeleted, 2: api.CheckpointComplete, 3: api.CheckpointComplete, 4: api.CheckpointPartial} {
		c := cps[epoch]
		if c == nil || c.State != want {
			t.Errorf("epoch %d: got %+v, want state %s", epoch, c, want)
			continue
		}
		wantDurable := 2
		if epoch == 4 {
			wantDurable = 1
		}
		if c.Ranks != 2 || c.Durable != wantDurable {
			t.Errorf("epoch %d: durable %d/%d, want %d/2", epoch, c.Durable, c.Ranks, wantDurable)
		}
		if epoch <= 3 && c.Bytes < 2*100000 {
			t.Errorf("epoch %d: %d bytes, want at least both ranks' blobs", epoch, c.Bytes)
		}
	}
	table := mustShoal(t, in, "job", "checkpoints", id)
	for _, want := range []string{"EPOCH", "DURABLE", "complete  2/2", "partial   1/2"} {
		if !strings.Contains(table, want) {
			t.Errorf("job checkpoints table lacks %q:\n%s", want, table)
		}
	}
	// keep: 2 removed epoch 1's files from the DFS; 2 and 3 have both ranks'.
	ctx := context.Background()
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		_, err := in.Client.FSStat(ctx, api.CheckpointDir("c1", id, 1))
		return api.IsNotFound(err), fmt.Sprintf("epoch 1's directory: stat says %v, want not found", err)
	})
	for _, epoch := range []int64{2, 3} {
		for _, rank := range []string{"0", "1"} {
			p := api.CheckpointDir("c1", id, epoch) + "/" + rank + "/state"
			if fi, err := in.Client.FSStat(ctx, p); err != nil || fi.State != api.FileClosed {
				t.Errorf("%s: %v %+v, want a closed file", p, err, fi)
			}
		}
	}

	// The refused commits, as the launcher saw them.
	var logs string
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		logs, _, _ = in.Shoal("job", "logs", id)
		return strings.Contains(logs, "waiting for go"), "launcher output so far:\n" + logs
	})
	for _, want := range []string{
		"the run secret matches no MPI run", "wrong-secret-exit=1",
		"rank 1 already committed epoch 3 in this run", "low-epoch-exit=1",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("launcher output lacks %q:\n%s", want, logs)
		}
	}
	status := mustShoal(t, in, "job", "status", id)
	for _, want := range []string{"MPI: 2 ranks on 1 node", "last complete checkpoint epoch: 3"} {
		if !strings.Contains(status, want) {
			t.Errorf("job status lacks %q:\n%s", want, status)
		}
	}

	// Fail the first run: the gang restarts from epoch 3, not the partial 4.
	mustShoal(t, in, "fs", "put", writeFile(t, "go", "go"), api.ClusterRoot("c1")+"/go")
	job := waitJobState(t, in, id, api.JobComplete, time.Minute)
	if job.MPIStatus == nil || job.MPIStatus.Restarts != 1 || job.MPIStatus.LastEpoch != 3 {
		t.Errorf("mpi status %+v, want 1 restart and last epoch 3", job.MPIStatus)
	}
	logs = mustShoal(t, in, "job", "logs", id)
	for _, want := range []string{"restart_epoch=3", "restored: rank 0 epoch 3"} {
		if !strings.Contains(logs, want) {
			t.Errorf("second run's output lacks %q:\n%s", want, logs)
		}
	}
	if c := checkpoints(t, in, id)[4]; c == nil || c.State != api.CheckpointPartial {
		t.Errorf("epoch 4 after the restart: %+v, want still partial", c)
	}
}

func describe(cps map[int64]*api.Checkpoint) string {
	var b strings.Builder
	for e := int64(1); e <= 5; e++ {
		if c := cps[e]; c != nil {
			fmt.Fprintf(&b, "[%d %s %d/%d] ", e, c.State, c.Durable, c.Ranks)
		}
	}
	return b.String()
}

// TestMPICheckpointRequests: with checkpoint.interval, the agent asks the
// ranks for a checkpoint by writing the epoch it suggests to
// $SHOAL_CHECKPOINT_DIR/request; a rank that answers it commits that epoch.
func TestMPICheckpointRequests(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1, Zones: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	script := fmt.Sprintf(`
SHOAL=%q
D="$SHOAL_CHECKPOINT_DIR"
until [ -f "$D/request" ]; do sleep 0.1; done
e=$(cat "$D/request")
echo "asked for epoch $e"
echo "state at $e" > "$D/0/state"
OMPI_COMM_WORLD_RANK=0 "$SHOAL" checkpoint commit "$e" || exit 1
until "$SHOAL" job checkpoints "$SHOAL_JOB_ID" -o json | tr -d ' \n' | grep -q "\"epoch\":$e,\"state\":\"complete\""; do sleep 0.1; done
`, testutil.Binary(t))
	id := submit(t, in, fmt.Sprintf(`
name: asked
cluster: c1
type: mpi
mpi:
  ranks: 1
  slots_per_node: 1
  command: ["/bin/sh", "-c", %q]
  checkpoint: {interval: 1s}
resources: {cpu: 100, memory: 64}
`, script))
	job := waitJobState(t, in, id, api.JobComplete, time.Minute)
	if job.MPIStatus == nil || job.MPIStatus.LastEpoch != 1 {
		t.Errorf("mpi status %+v, want epoch 1 complete", job.MPIStatus)
	}
	if logs := mustShoal(t, in, "job", "logs", id); !strings.Contains(logs, "asked for epoch 1") {
		t.Errorf("the rank was not asked for epoch 1:\n%s", logs)
	}
}
