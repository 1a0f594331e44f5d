package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/sandbox"
)

// startWorkers is how many runs the agent starts at once.
const startWorkers = 4

// runKey names one placement of a task.
type runKey struct {
	task string
	run  uint64
}

// run is one placement of a task on this node. It stays in Agent.runs
// until the servers stop listing it, so that it is never started twice.
type run struct {
	key     runKey
	task    *api.Task
	dir     string
	sandbox string // sandbox spec ID
	// secret authenticates the run's processes to this agent's local API
	// (SHOAL_RUN_SECRET: rsh launches, checkpoint commits) and names its
	// MPI wrapper's socket; ckptDir (SHOAL_CHECKPOINT_DIR) is
	// its job's local checkpoint directory. Both are set for mpi tasks
	// only, before the run is listed in Agent.runs, and never change.
	secret  string
	ckptDir string
	// addr is the run's address on its cluster network and netns the
	// path of its network namespace; zero when it shares the host's
	// network.
	addr  netip.Addr
	netns string

	stopOnce sync.Once
	stopped  chan struct{} // closed to ask the run to stop
	done     chan struct{} // closed when the process has ended
}

// runDir is where a run keeps its output and working directory.
func runDir(dataDir, cluster, job, group string, index int, runID uint64) string {
	return filepath.Join(allocRoot(dataDir), cluster, job, fmt.Sprintf("%s-%d-%d", group, index, runID))
}

// reconcile starts the runs the servers list and stops those they no
// longer list. It also wipes the data of a cluster the node has left. It
// reports false if a run to start came without its task, in which case
// the caller asks for every task again.
func (a *Agent) reconcile(work *api.NodeWork) bool {
	full := map[runKey]*api.Task{}
	for _, t := range work.Tasks {
		full[runKey{t.ID, t.RunID}] = t
	}
	want := map[runKey]bool{}
	for _, r := range work.Runs {
		want[runKey{r.Task, r.RunID}] = true
	}
	complete := true
	a.mu.Lock()
	var toStop []*run
	for k, r := range a.runs {
		if _, ok := want[k]; !ok {
			delete(a.runs, k)
			if a.stopping == nil {
				a.stopping = map[runKey]*run{}
			}
			a.stopping[k] = r
			toStop = append(toStop, r)
		}
	}
	var toStart []*api.Task
	for k := range want {
		if _, ok := a.runs[k]; ok || a.lostRuns[k] {
			continue
		}
		if t := full[k]; t != nil {
			toStart = append(toStart, t)
		} else {
			complete = false
		}
	}
	for k := range a.lostRuns {
		if !want[k] {
			delete(a.lostRuns, k)
		}
	}
	oldCluster := a.cluster
	a.setClusterLocked(work.Node.Cluster)
	a.clusterToken = work.ClusterToken
	a.mu.Unlock()
	a.syncNetwork(work.Network)

	for _, r := range toStop {
		go func() {
			r.stop()
			a.mu.Lock()
			delete(a.stopping, r.key)
			a.mu.Unlock()
		}()
	}
	if oldCluster != work.Node.Cluster {
		go a.wipeClusters(work.Node.Cluster, toStop)
		if a.fns != nil {
			a.fns.RetainCluster(work.Node.Cluster)
		}
	}
	// Starting a run is mostly system calls (directories, files, cgroups,
	// clone); a few at a time keep both the kernel and the agent busy.
	var wg sync.WaitGroup
	next := make(chan *api.Task)
	for w := 0; w < min(startWorkers, len(toStart)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range next {
				if err := a.startRun(t); err != nil {
					a.log.Error("starting task", "task", t.ID, "err", err)
				}
			}
		}()
	}
	for _, t := range toStart {
		next <- t
	}
	close(next)
	wg.Wait()
	return complete
}

// makeRunDir creates a run's directory and its working directory work. A
// job's directory exists after its first run, so two mkdirs usually do;
// MkdirAll would first stat every level.
func makeRunDir(dir, work string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil || errors.Is(err, fs.ErrExist) {
		err = os.Mkdir(work, 0o755)
	}
	if errors.Is(err, fs.ErrExist) {
		return nil // as MkdirAll: a directory left from before is used
	}
	return err
}

// wipeClusters removes the data of every cluster but keep, after the
// given runs have stopped.
func (a *Agent) wipeClusters(keep string, stopping []*run) {
	for _, r := range stopping {
		<-r.done
	}
	entries, _ := os.ReadDir(allocRoot(a.cfg.DataDir))
	for _, e := range entries {
		if e.Name() == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(allocRoot(a.cfg.DataDir), e.Name())); err != nil {
			a.log.Warn("wiping cluster data", "cluster", e.Name(), "err", err)
		} else {
			a.log.Info("wiped data of cluster the node left", "cluster", e.Name())
		}
	}
}

func (a *Agent) startRun(t *api.Task) error {
	r := &run{key: runKey{t.ID, t.RunID}, task: t, stopped: make(chan struct{}), done: make(chan struct{}),
		dir:     runDir(a.cfg.DataDir, t.Cluster, t.JobID, t.Group, t.Index, t.RunID),
		sandbox: fmt.Sprintf("%s.%s.%d.%d", t.JobID, t.Group, t.Index, t.RunID)}
	var secretErr error
	if t.MPI != nil {
		r.secret, secretErr = newRunSecret()
		r.ckptDir = checkpointDir(a.cfg.DataDir, t)
	}
	// The run's network is set before the run is listed: like its
	// secret, it never changes after.
	netns, netErr := a.attachRun(r)
	a.mu.Lock()
	a.runs[r.key] = r
	a.mu.Unlock()

	fail := func(msg string, err error) error {
		close(r.done)
		now := time.Now()
		a.updates.send(api.TaskUpdate{TaskID: t.ID, RunID: t.RunID, State: api.TaskFailed, ExitCode: -1,
			Message: fmt.Sprintf("%s: %v", msg, err), Started: now, Finished: now})
		return err
	}
	if secretErr != nil {
		return fail("starting mpi task", secretErr)
	}
	for _, n := range []string{t.Cluster, t.JobID, t.Group} {
		if err := api.ValidateName("task", n); err != nil {
			return fail("refusing a name that could escape the data dir", err)
		}
	}
	work := filepath.Join(r.dir, "work")
	if err := makeRunDir(r.dir, work); err != nil {
		return fail("creating working directory", err)
	}
	if netErr != nil {
		return fail("giving the task its network", netErr)
	}
	spec := &sandbox.Spec{ID: r.sandbox, Dir: work, Command: t.Command, Env: a.taskEnv(t, work),
		Stdout: filepath.Join(r.dir, "stdout"), Stderr: filepath.Join(r.dir, "stderr"),
		CPU: t.Resources.CPU, MemoryMB: t.Resources.MemoryMB, NetNS: netns}
	if t.MPI != nil {
		// Staging files and restoring a checkpoint may take long: not on
		// a start worker.
		go a.startMPI(r, spec, fail)
		return nil
	}
	if len(t.Inputs) > 0 || t.Outputs != "" {
		// Fetching inputs may take long: not on a start worker.
		go a.startWithData(r, spec, fail)
		return nil
	}
	return a.launch(r, spec, fail)
}

// launch starts a run's process and waits for it in the background.
func (a *Agent) launch(r *run, spec *sandbox.Spec, fail func(string, error) error) error {
	if r.addr.IsValid() {
		spec.Env = append(spec.Env, "SHOAL_TASK_ADDR="+r.addr.String())
	}
	h, err := a.driver.Start(a.ctx, spec)
	if err != nil {
		return fail("starting command", err)
	}
	u := api.TaskUpdate{TaskID: r.task.ID, RunID: r.task.RunID, State: api.TaskRunning, Started: time.Now()}
	if r.addr.IsValid() {
		u.Addr = r.addr.String()
	}
	a.updates.send(u)
	go a.waitRun(r, h)
	return nil
}

// startWithData fetches a run's inputs into DIR/inputs and creates its
// DIR/outputs, sets SHOAL_INPUTS (the local input paths, one a line),
// SHOAL_INPUT_DIR and SHOAL_OUTPUT_DIR, and launches it.
func (a *Agent) startWithData(r *run, spec *sandbox.Spec, fail func(string, error) error) {
	t := r.task
	ctx, cancel := r.context(a.ctx)
	defer cancel()
	if len(t.Inputs) > 0 {
		dir := filepath.Join(r.dir, "inputs")
		paths, err := a.fetchInputs(ctx, t, dir)
		if err != nil {
			if r.isStopped() {
				close(r.done)
				return
			}
			fail("fetching inputs", err)
			return
		}
		spec.Env = append(spec.Env, "SHOAL_INPUTS="+strings.Join(paths, "\n"), "SHOAL_INPUT_DIR="+dir)
	}
	if t.Outputs != "" {
		dir := filepath.Join(r.dir, "outputs")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fail("creating the output directory", err)
			return
		}
		spec.Env = append(spec.Env, "SHOAL_OUTPUT_DIR="+dir)
	}
	if r.isStopped() {
		close(r.done)
		return
	}
	if err := a.launch(r, spec, fail); err != nil {
		a.log.Error("starting task", "task", t.ID, "err", err)
	}
}

// context returns a context that ends when the run is asked to stop.
func (r *run) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-r.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (r *run) isStopped() bool {
	select {
	case <-r.stopped:
		return true
	default:
		return false
	}
}

// waitRun waits for a run to end, enforcing its timeout and stop requests,
// and reports how it ended.
func (a *Agent) waitRun(r *run, h sandbox.Handle) {
	t := r.task
	exited := make(chan *sandbox.ExitResult, 1)
	go func() { exited <- h.Wait() }()
	var timeout <-chan time.Time
	if t.Timeout > 0 {
		timer := time.NewTimer(t.Timeout.D())
		defer timer.Stop()
		timeout = timer.C
	}
	var res *sandbox.ExitResult
	msg, stoppedByUs := "", false
	select {
	case res = <-exited:
	case <-timeout:
		msg = "timed out after " + t.Timeout.D().String()
		h.Stop(a.cfg.StopGrace)
		res = <-exited
	case <-r.stopped:
		stoppedByUs = true
		h.Stop(a.cfg.StopGrace)
		res = <-exited
	}
	if stoppedByUs {
		close(r.done)
		return // the servers moved or cancelled it, or the agent stops
	}
	u := api.TaskUpdate{TaskID: t.ID, RunID: t.RunID, ExitCode: res.ExitCode, Started: res.Started, Finished: res.Finished}
	switch {
	case res.Err != nil:
		u.State, u.ExitCode, u.Message = api.TaskFailed, -1, res.Err.Error()
	case res.ExitCode == 0 && res.Signal == 0 && msg == "":
		u.State = api.TaskComplete
	default:
		u.State, u.Message = api.TaskFailed, msg
		if res.Signal != 0 && msg == "" {
			u.Message = "killed by signal " + strconv.Itoa(res.Signal)
			if res.OOMKill {
				u.Message += " (out of memory)"
			}
		}
	}
	if u.State == api.TaskComplete && t.Outputs != "" {
		ctx, cancel := r.context(a.ctx)
		err := a.publishOutputs(ctx, t, filepath.Join(r.dir, "outputs"))
		cancel()
		if r.isStopped() {
			close(r.done)
			return
		}
		if err != nil {
			u.State, u.Message = api.TaskFailed, "publishing outputs: "+err.Error()
		}
	}
	close(r.done)
	a.updates.send(u)
}

func (r *run) stop() {
	r.stopOnce.Do(func() { close(r.stopped) })
	<-r.done
}

// stopAll stops every run when the agent shuts down.
func (a *Agent) stopAll() {
	a.mu.Lock()
	runs := a.runs
	a.runs = map[runKey]*run{}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stop()
		}()
	}
	wg.Wait()
}

func (a *Agent) taskEnv(t *api.Task, work string) []string {
	return envList(a.taskEnvMap(t, work))
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// taskEnvMap is a task's environment: its own variables, with DATA/bin
// (where shoal is) first on its PATH, and Shoal's.
func (a *Agent) taskEnvMap(t *api.Task, work string) map[string]string {
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": work,
	}
	for k, v := range t.Env {
		env[k] = v
	}
	if a.binDir != "" {
		env["PATH"] = a.binDir + ":" + env["PATH"]
	}
	// A task acts as its cluster. On a cluster network it reaches the
	// servers through the node's endpoint, which adds the cluster's token:
	// the task holds no credential. Otherwise it gets the cluster's token,
	// never the agent's, so the servers confine it to the cluster's jobs
	// and files.
	addr, token := a.endpointAddr(t.Cluster), ""
	if addr != "" {
		env["SHOAL_FS_DATA"] = "servers" // the data nodes are out of reach
	} else {
		addr = strings.Join(a.cfg.Servers, ",")
		a.mu.Lock()
		if a.cluster == t.Cluster {
			token = a.clusterToken
		}
		a.mu.Unlock()
	}
	for k, v := range map[string]string{
		"SHOAL_TOKEN": token, "SHOAL_ADDR": addr,
		"SHOAL_JOB_ID": t.JobID, "SHOAL_TASK_INDEX": strconv.Itoa(t.Index), "SHOAL_TASK_COUNT": strconv.Itoa(t.Count),
		"SHOAL_ATTEMPT": strconv.Itoa(t.Attempt), "SHOAL_CLUSTER": t.Cluster, "SHOAL_NODE": a.cfg.Name,
		"SHOAL_GROUP": t.Group, "SHOAL_TASK_ID": t.ID, "SHOAL_ZONE": a.cfg.Zone,
		"SHOAL_CACERT": a.caCertFile(),
	} {
		env[k] = v
	}
	return env
}

// recoverRuns handles what an earlier agent on this data dir left when it
// crashed. Its runs died with it (the driver kills tasks whose agent dies,
// and sweeps their cgroups when it starts), so every run the servers still
// list for this node is reported lost, which makes them place it again
// without using up an attempt. It runs right after registration, while the
// node is initializing and so receives no new placements.
func (a *Agent) recoverRuns() {
	for delay := 100 * time.Millisecond; a.ctx.Err() == nil; delay = min(delay*2, 2*time.Second) {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		work, _, err := a.client.NodeWork(ctx, a.cfg.Name, 0, nil)
		cancel()
		if err != nil {
			a.log.Warn("reading work left by an earlier agent; will retry", "err", err)
			sleepCtx(a.ctx, delay)
			continue
		}
		for _, r := range work.Runs {
			a.lostRuns[runKey{r.Task, r.RunID}] = true
			a.updates.send(api.TaskUpdate{TaskID: r.Task, RunID: r.RunID, State: api.TaskLost,
				Message: "agent restarted while the task ran", Finished: time.Now()})
		}
		if len(work.Runs) > 0 {
			a.log.Info("reported runs of the previous agent as lost", "runs", len(work.Runs))
		}
		return
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
