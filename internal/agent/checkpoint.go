package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Coordinated checkpoints of MPI jobs, the agent's part (issue 9). A rank
// writes its files for epoch N into $SHOAL_CHECKPOINT_DIR/<rank>/ and
// commits them (POST /v1/local/checkpoint, or `shoal checkpoint commit N`).
// The agent then copies them, synchronously, into a staging directory of
// its own outside the rank's (a reflink where the file system has them, a
// real copy otherwise; never hard links, since programs may overwrite a
// file in place), answers, and uploads the staged copy into the DFS in the
// background (checkpointupload.go): the rank is blocked for a local copy,
// not for the DFS. Once a rank's files are in the DFS the agent reports
// them to the servers, which make the epoch complete when every rank has.
//
// Staged copies live in <ckptDir>/.staged/<run>/<epoch>/<rank>/ until the
// servers acknowledge the report, so nothing the agent acknowledged to a
// rank is lost while servers or a leader are down.
//
// Lock ordering: Agent.mu, then checkpoints.mu, then runCheckpoints.mu; a
// rank's commit lock (rankState.commit) is taken before any of them and
// never while one is held.

// stagedDirName is the directory under a job's checkpoint directory where
// the agent keeps its own copies of committed files until they are durable.
const stagedDirName = ".staged"

// maxCommitBody bounds the body of a commit request.
const maxCommitBody = 4 << 10

// Errors of the local checkpoint API, mapped to statuses in one place
// (commitStatus).
var (
	errNoSecret      = errors.New("agent: no run secret")
	errUnknownSecret = errors.New("agent: unknown run secret")
	errBadCommit     = errors.New("agent: bad checkpoint commit")
	errRunStopped    = errors.New("agent: run stopped")
)

// commitError is a refused commit: its message, for the rank, and its
// kind, one of the sentinels above.
type commitError struct {
	kind error
	msg  string
}

func (e *commitError) Error() string { return e.msg }
func (e *commitError) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &commitError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// checkpoints is the agent's checkpoint state: the runs whose ranks have
// committed, and what the agent last knew of each job's last complete
// epoch. Its zero value is ready to use.
type checkpoints struct {
	// store reaches the servers and the DFS; nil means the agent's own
	// (dfsCheckpointStore). Tests set a fake.
	store checkpointStore
	// clone makes dst a copy-on-write clone of src; nil means FICLONE.
	// Tests set one that fails, to exercise the fallback copy.
	clone func(dst, src *os.File) error
	// retryBase is the first delay between upload attempts (default
	// 100 ms, doubling up to retryMax).
	retryBase time.Duration

	mu        sync.Mutex
	runs      map[runKey]*runCheckpoints
	lastEpoch map[string]int64 // job ID -> last complete epoch known
}

// runCheckpoints is the checkpoint state of one run: what each of its
// ranks committed and the uploads still to do. It lives from the run's
// first commit until the run is stopped.
type runCheckpoints struct {
	r      *run
	ctx    context.Context // ends when the run is stopped: cancels uploads
	cancel context.CancelFunc
	wg     sync.WaitGroup // upload workers

	mu    sync.Mutex
	ranks map[int]*rankState
	// closed is set once the run is stopped: no upload may start after
	// dropWhenStopped has begun to wait for the workers.
	closed bool
}

// rankState is one rank's commits in a run.
type rankState struct {
	commit    sync.Mutex // serialises the rank's commits (check, copy, queue)
	committed int64      // highest epoch acknowledged (guarded by commit)

	// Guarded by runCheckpoints.mu: staged epochs waiting for upload, in
	// commit order, and whether a worker is uploading them.
	queue []*stagedEpoch
	busy  bool
}

// stagedEpoch is one rank's files for one epoch, copied by the agent.
type stagedEpoch struct {
	job, task, cluster string
	runID              uint64
	epoch              int64
	rank               int
	dir                string // the staged copy
	files              int
	bytes              int64
}

// storeFor returns the store checkpoints use: the test's fake or the agent's.
func (c *checkpoints) storeFor(a *Agent) checkpointStore {
	if c.store != nil {
		return c.store
	}
	return dfsCheckpointStore{a}
}

// runBySecret returns the run whose secret is secret, or nil. Secrets are
// compared in constant time; runs without a secret (not MPI) never match.
func (a *Agent) runBySecret(secret string) *run {
	if secret == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var found *run
	for _, r := range a.runs {
		if r.secret != "" && subtle.ConstantTimeCompare([]byte(r.secret), []byte(secret)) == 1 {
			found = r
		}
	}
	return found
}

// handleCheckpointCommit serves POST /v1/local/checkpoint: a rank commits
// its files for an epoch (see the package comment above).
func (a *Agent) handleCheckpointCommit(w http.ResponseWriter, req *http.Request) {
	var cc api.CheckpointCommit
	dec := json.NewDecoder(io.LimitReader(req.Body, maxCommitBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cc); err != nil {
		status, code := commitStatus(errBadCommit)
		logError(w, status, code, "malformed commit: want JSON {\"epoch\": N, \"rank\": R}: "+err.Error())
		return
	}
	resp, err := a.commitCheckpoint(req.Context(), req.Header.Get(api.RunSecretHeader), cc)
	if err != nil {
		status, code := commitStatus(err)
		logError(w, status, code, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// commitStatus maps a commit error to its HTTP status and error code.
func commitStatus(err error) (int, string) {
	switch {
	case errors.Is(err, errNoSecret):
		return http.StatusUnauthorized, api.CodeUnauthorized
	case errors.Is(err, errUnknownSecret):
		return http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, errBadCommit):
		return http.StatusBadRequest, api.CodeInvalid
	case errors.Is(err, errRunStopped):
		return http.StatusConflict, api.CodeConflict
	default:
		return http.StatusInternalServerError, api.CodeInternal
	}
}

// commitCheckpoint checks a commit, takes the agent's copy of the rank's
// files and queues their upload. The error wraps one of the sentinels
// above, or is an I/O error of the copy.
func (a *Agent) commitCheckpoint(ctx context.Context, secret string, cc api.CheckpointCommit) (*api.CheckpointCommitResponse, error) {
	if secret == "" {
		return nil, refuse(errNoSecret, "missing %s header: only a rank of an MPI job (which has SHOAL_RUN_SECRET) can commit checkpoints", api.RunSecretHeader)
	}
	r := a.runBySecret(secret)
	if r == nil || r.task.MPI == nil || r.ckptDir == "" {
		return nil, refuse(errUnknownSecret, "the run secret matches no MPI run on node %s: only a rank of a running MPI job can commit its checkpoints", a.cfg.Name)
	}
	t := r.task
	if cc.Rank < 0 || cc.Rank >= t.MPI.Ranks {
		return nil, refuse(errBadCommit, "rank %d is outside [0, %d) of job %s", cc.Rank, t.MPI.Ranks, t.JobID)
	}
	if cc.Epoch < 1 {
		return nil, refuse(errBadCommit, "epoch must be at least 1, got %d", cc.Epoch)
	}
	rc, err := a.ckpt.forRun(a, r)
	if err != nil {
		return nil, err
	}
	rs := rc.rank(cc.Rank)
	rs.commit.Lock()
	defer rs.commit.Unlock()
	if last := a.ckpt.knownComplete(t); cc.Epoch <= last {
		return nil, refuse(errBadCommit, "epoch %d is not above job %s's last complete epoch %d", cc.Epoch, t.JobID, last)
	}
	if rs.committed >= cc.Epoch {
		return nil, refuse(errBadCommit, "rank %d already committed epoch %d in this run; epochs must increase", cc.Rank, rs.committed)
	}
	if first, end := t.MPI.RanksOn(t.Index); cc.Rank < first || cc.Rank >= end {
		return nil, refuse(errBadCommit, "rank %d does not run on node %s (ranks %s do): Shoal places ranks by slot, in hostfile order (mpirun's default mapping), and restores each rank's files there",
			cc.Rank, a.cfg.Name, ranksHere(t))
	}
	src := filepath.Join(r.ckptDir, strconv.Itoa(cc.Rank))
	if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
		return nil, refuse(errBadCommit, "rank %d has no checkpoint directory %s on node %s (ranks %s are here)", cc.Rank, src, a.cfg.Name, ranksHere(t))
	}
	dst := filepath.Join(r.ckptDir, stagedDirName, strconv.FormatUint(t.RunID, 10), strconv.FormatInt(cc.Epoch, 10), strconv.Itoa(cc.Rank))
	start := time.Now()
	files, n, err := copyTree(src, dst, a.ckpt.cloneFunc())
	if err == nil {
		err = checkDFSNames(dst, api.JoinPath(api.CheckpointDir(t.Cluster, t.JobID, cc.Epoch), strconv.Itoa(cc.Rank)))
	}
	if err != nil {
		os.RemoveAll(dst)
		if errors.Is(err, api.ErrInvalid) {
			return nil, refuse(errBadCommit, "rank %d's files for epoch %d cannot be checkpointed: %v", cc.Rank, cc.Epoch, err)
		}
		return nil, fmt.Errorf("copying rank %d's files for epoch %d: %w", cc.Rank, cc.Epoch, err)
	}
	if !rc.enqueue(a, &stagedEpoch{job: t.JobID, task: t.ID, cluster: t.Cluster, runID: t.RunID, epoch: cc.Epoch,
		rank: cc.Rank, dir: dst, files: files, bytes: n}) {
		os.RemoveAll(dst)
		return nil, refuse(errRunStopped, "run %d of task %s was stopped during the commit; its commits are refused", r.key.run, r.key.task)
	}
	rs.committed = cc.Epoch
	a.log.Debug("checkpoint staged", "job", t.JobID, "rank", cc.Rank, "epoch", cc.Epoch, "files", files, "bytes", n, "took", time.Since(start))
	return &api.CheckpointCommitResponse{Epoch: cc.Epoch, Rank: cc.Rank, Files: files, Bytes: n}, nil
}

func ranksHere(t *api.Task) string {
	first, end := t.MPI.RanksOn(t.Index)
	if first >= end {
		return "none"
	}
	return fmt.Sprintf("%d-%d", first, end-1)
}

// forRun returns r's checkpoint state, creating it (and the goroutine
// that drops it when r is stopped) on r's first commit.
func (c *checkpoints) forRun(a *Agent, r *run) (*runCheckpoints, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.isStopped() {
		return nil, refuse(errRunStopped, "run %d of task %s is being stopped; its commits are refused", r.key.run, r.key.task)
	}
	if rc := c.runs[r.key]; rc != nil {
		return rc, nil
	}
	if c.runs == nil {
		c.runs = map[runKey]*runCheckpoints{}
	}
	rc := &runCheckpoints{r: r, ranks: map[int]*rankState{}}
	rc.ctx, rc.cancel = r.context(a.ctx)
	c.runs[r.key] = rc
	go c.dropWhenStopped(a, rc)
	return rc, nil
}

// dropWhenStopped waits for the run to be stopped, cancels its uploads
// and removes what they had not sent: a stopped run's reports would be
// refused as stale anyway.
func (c *checkpoints) dropWhenStopped(a *Agent, rc *runCheckpoints) {
	<-rc.ctx.Done()
	rc.mu.Lock()
	rc.closed = true
	rc.mu.Unlock()
	rc.wg.Wait()
	c.mu.Lock()
	delete(c.runs, rc.r.key)
	c.mu.Unlock()
	dir := filepath.Join(rc.r.ckptDir, stagedDirName, strconv.FormatUint(rc.r.key.run, 10))
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("removing staged checkpoints of a stopped run", "task", rc.r.key.task, "run", rc.r.key.run, "err", err)
	}
}

// rank returns the state of one rank, creating it.
func (rc *runCheckpoints) rank(rank int) *rankState {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rs := rc.ranks[rank]
	if rs == nil {
		rs = &rankState{}
		rc.ranks[rank] = rs
	}
	return rs
}

// knownComplete returns the highest epoch of t's job the agent knows to be
// complete, without asking the servers, so that a commit never waits for
// them (a leader election, say). It is enough to refuse every commit at or
// below the job's last complete epoch L: an epoch completes only with
// every rank's files from the gang's current run, so L is the run's
// restart epoch or an epoch this rank already committed in this run, and
// commits of a rank must increase.
func (c *checkpoints) knownComplete(t *api.Task) int64 {
	c.noteEpoch(t.JobID, t.MPI.RestartEpoch)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastEpoch[t.JobID]
}

// lastComplete returns the job's last complete epoch: the servers' answer
// when they can be reached within a second, else the highest the agent
// knew (from earlier answers and the run's restart epoch).
func (c *checkpoints) lastComplete(ctx context.Context, a *Agent, t *api.Task) int64 {
	c.noteEpoch(t.JobID, t.MPI.RestartEpoch)
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	last, err := c.storeFor(a).LastEpoch(qctx, t.JobID)
	cancel()
	if err != nil {
		a.log.Warn("reading the job's last complete epoch; using the last known", "job", t.JobID, "err", err)
	} else {
		c.noteEpoch(t.JobID, last)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastEpoch[t.JobID]
}

// noteEpoch records that epoch is complete for job (it only grows).
func (c *checkpoints) noteEpoch(job string, epoch int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastEpoch == nil {
		c.lastEpoch = map[string]int64{}
	}
	if epoch > c.lastEpoch[job] {
		c.lastEpoch[job] = epoch
	}
}

// highestCommitted returns the highest epoch any rank of r committed.
func (c *checkpoints) highestCommitted(r *run) int64 {
	c.mu.Lock()
	rc := c.runs[r.key]
	c.mu.Unlock()
	if rc == nil {
		return 0
	}
	rc.mu.Lock()
	ranks := make([]*rankState, 0, len(rc.ranks))
	for _, rs := range rc.ranks {
		ranks = append(ranks, rs)
	}
	rc.mu.Unlock()
	var high int64
	for _, rs := range ranks {
		rs.commit.Lock()
		high = max(high, rs.committed)
		rs.commit.Unlock()
	}
	return high
}

// requestCheckpoints, when t.MPI.CheckpointInterval > 0, asks the ranks
// for a checkpoint every interval until ctx ends: it writes dir/request
// atomically (a temporary file renamed over it) containing the next epoch
// number it suggests, one above both the job's last complete epoch and
// the highest epoch a rank of this run committed here. Programs poll the
// file (its modification time or its number changes).
func (a *Agent) requestCheckpoints(ctx context.Context, t *api.Task, dir string) {
	if t.MPI == nil || t.MPI.CheckpointInterval <= 0 {
		return
	}
	tick := time.NewTicker(t.MPI.CheckpointInterval.D())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		next := a.ckpt.lastComplete(ctx, a, t)
		a.mu.Lock()
		r := a.runs[runKey{t.ID, t.RunID}]
		a.mu.Unlock()
		if r != nil {
			next = max(next, a.ckpt.highestCommitted(r))
		}
		next++
		if err := writeFileAtomic(filepath.Join(dir, "request"), []byte(strconv.FormatInt(next, 10)+"\n")); err != nil {
			a.log.Warn("asking the ranks for a checkpoint", "job", t.JobID, "epoch", next, "err", err)
			continue
		}
		a.log.Debug("asked the ranks for a checkpoint", "job", t.JobID, "epoch", next)
	}
}

// writeFileAtomic replaces path with data: readers see the old file or the
// new one, never a part.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// checkDFSNames checks that every file under dir has a name the DFS takes
// under dfsDir, so that a commit the agent acknowledges can be uploaded.
func checkDFSNames(dir, dfsDir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		_, err = api.CleanPath(rel, api.JoinPath(dfsDir, filepath.ToSlash(rel)))
		return err
	})
}
