package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/sandbox"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func TestTaskEnv(t *testing.T) {
	a := &Agent{cfg: Config{Name: "n1", Zone: "z1", Servers: []string{"s1:7460", "s2:7460"}},
		cluster: "c1", clusterToken: "token-c1"}
	shoal := map[string]string{
		"SHOAL_TOKEN":      "token-c1",
		"SHOAL_ADDR":       "s1:7460,s2:7460",
		"SHOAL_JOB_ID":     "train-7",
		"SHOAL_TASK_INDEX": "2",
		"SHOAL_TASK_COUNT": "4",
		"SHOAL_ATTEMPT":    "3",
		"SHOAL_CLUSTER":    "c1",
		"SHOAL_NODE":       "n1",
		"SHOAL_GROUP":      "workers",
		"SHOAL_TASK_ID":    "train-7/workers/2",
		"SHOAL_ZONE":       "z1",
		"SHOAL_CACERT":     "", // an agent without TLS
	}
	withShoal := func(m map[string]string) map[string]string {
		for k, v := range shoal {
			m[k] = v
		}
		return m
	}
	const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	tests := []struct {
		name string
		env  map[string]string
		want map[string]string
	}{
		{"no user env", nil,
			withShoal(map[string]string{"PATH": defaultPath, "HOME": "/data/work"})},
		{"user env", map[string]string{"BATCH": "32", "EMPTY": "", "WITH_EQUALS": "a=b"},
			withShoal(map[string]string{"PATH": defaultPath, "HOME": "/data/work", "BATCH": "32", "EMPTY": "", "WITH_EQUALS": "a=b"})},
		{"user PATH and HOME", map[string]string{"PATH": "/opt/bin", "HOME": "/home/u"},
			withShoal(map[string]string{"PATH": "/opt/bin", "HOME": "/home/u"})},
		{"user env cannot override SHOAL_ variables", map[string]string{
			"SHOAL_JOB_ID": "other-1", "SHOAL_NODE": "n9", "SHOAL_TASK_INDEX": "0", "SHOAL_ZONE": "", "X": "y",
			"SHOAL_TOKEN": "operator", "SHOAL_ADDR": "evil:1"},
			withShoal(map[string]string{"PATH": defaultPath, "HOME": "/data/work", "X": "y"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task := &api.Task{ID: "train-7/workers/2", JobID: "train-7", Cluster: "c1", Group: "workers", Index: 2,
				Count: 4, Attempt: 3, Env: tt.env}
			got := map[string]string{}
			for _, kv := range a.taskEnv(task, "/data/work") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Errorf("got entry %q, want K=V", kv)
					continue
				}
				if _, dup := got[k]; dup {
					t.Errorf("got %s twice, want it once", k)
				}
				got[k] = v
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("environment (-want +got):\n%s", diff)
			}
		})
	}

	// A task of a cluster the node has left never gets the new cluster's
	// token.
	stale := &api.Task{ID: "old-1/g/0", JobID: "old-1", Cluster: "c0", Group: "g"}
	if env := a.taskEnv(stale, "/data/work"); !slices.Contains(env, "SHOAL_TOKEN=") {
		t.Errorf("task of cluster c0 on a node of c1: environment %q, want an empty SHOAL_TOKEN", env)
	}
}

func TestRunDir(t *testing.T) {
	tests := []struct {
		name    string
		dataDir string
		cluster string
		job     string
		group   string
		index   int
		runID   uint64
		want    string
	}{
		{"plain", "/var/lib/shoal", "c1", "train-7", "workers", 2, 41, "/var/lib/shoal/alloc/c1/train-7/workers-2-41"},
		{"relative data dir", "data", "c1", "j-1", "g", 0, 1, "data/alloc/c1/j-1/g-0-1"},
		{"dotted names", "/d", "c.1", "j.x-3", "g_a.b", 10, 123456789, "/d/alloc/c.1/j.x-3/g_a.b-10-123456789"},
		{"another run of the same task", "/d", "c1", "j-1", "g", 0, 2, "/d/alloc/c1/j-1/g-0-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runDir(tt.dataDir, tt.cluster, tt.job, tt.group, tt.index, tt.runID); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// fakeDriver is a sandbox.Driver whose runs are fakeHandles the test ends.
type fakeDriver struct {
	startErr error // when set, Start fails

	mu      sync.Mutex
	specs   []*sandbox.Spec
	handles map[string]*fakeHandle // by spec ID
}

func (d *fakeDriver) Name() string               { return "fake" }
func (d *fakeDriver) Isolated() bool             { return false }
func (d *fakeDriver) Cleanup(ids []string) error { return nil }

func (d *fakeDriver) Start(ctx context.Context, spec *sandbox.Spec) (sandbox.Handle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.specs = append(d.specs, spec)
	if d.startErr != nil {
		return nil, d.startErr
	}
	if _, ok := d.handles[spec.ID]; ok {
		return nil, fmt.Errorf("fake: %s started twice", spec.ID)
	}
	h := &fakeHandle{exited: make(chan struct{})}
	if d.handles == nil {
		d.handles = map[string]*fakeHandle{}
	}
	d.handles[spec.ID] = h
	return h, nil
}

// started returns the IDs of the specs started so far, sorted.
func (d *fakeDriver) started() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for _, s := range d.specs {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

func (d *fakeDriver) handle(t *testing.T, id string) *fakeHandle {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.handles[id]
	if h == nil {
		t.Fatalf("no run %s was started", id)
	}
	return h
}

// fakeHandle is a run that ends when the test calls exit or the agent
// calls Stop.
type fakeHandle struct {
	once   sync.Once
	exited chan struct{}
	res    *sandbox.ExitResult

	mu    sync.Mutex
	stops int
}

func (h *fakeHandle) PID() int             { return 4242 }
func (h *fakeHandle) Signal(sig int) error { return nil }

func (h *fakeHandle) Wait() *sandbox.ExitResult {
	<-h.exited
	return h.res
}

func (h *fakeHandle) Stop(grace time.Duration) error {
	h.mu.Lock()
	h.stops++
	h.mu.Unlock()
	h.exit(&sandbox.ExitResult{Signal: 15, Started: tBase, Finished: tBase.Add(time.Second)})
	return nil
}

func (h *fakeHandle) stopCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stops
}

// exit ends the run with res; later calls do nothing.
func (h *fakeHandle) exit(res *sandbox.ExitResult) {
	h.once.Do(func() {
		h.res = res
		close(h.exited)
	})
}

// newTestAgent builds an agent by hand, with a fake driver and a server
// that accepts task reports. Its runs are stopped when the test ends.
func newTestAgent(t *testing.T, d *fakeDriver) (*Agent, *taskServer) {
	t.Helper()
	srv := newTaskServer(t, nil)
	c := api.NewClient([]string{srv.URL}, "")
	t.Cleanup(c.Close)
	a := &Agent{
		cfg:      Config{Name: "n1", Zone: "z1", DataDir: t.TempDir(), StopGrace: time.Second},
		log:      discardLog(),
		client:   c,
		driver:   d,
		runs:     map[runKey]*run{},
		lostRuns: map[runKey]bool{},
		cluster:  "c1",
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.updates = newUpdateBatcher(c, "n1", a.log)
	done := make(chan struct{})
	go func() { defer close(done); a.updates.run(a.ctx) }()
	t.Cleanup(func() {
		a.stopAll()
		a.cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("the update batcher did not stop")
		}
	})
	return a, srv
}

// testTask returns task index of group g of job train-7 on cluster c1.
func testTask(index int, runID uint64) *api.Task {
	return &api.Task{ID: fmt.Sprintf("train-7/g/%d", index), JobID: "train-7", Cluster: "c1", Group: "g", Index: index,
		State: api.TaskPending, Node: "n1", Attempt: 1, RunID: runID, Command: []string{"sleep", "60"},
		Env: map[string]string{"MODE": "fast"}, Resources: api.Resources{CPU: 250, MemoryMB: 128}, MaxAttempts: 3, Count: 3}
}

func sandboxID(t *api.Task) string {
	return fmt.Sprintf("%s.%s.%d.%d", t.JobID, t.Group, t.Index, t.RunID)
}

// work lists tasks as the node's runs; only those in full are sent whole.
func work(cluster string, listed []*api.Task, full ...*api.Task) *api.NodeWork {
	w := &api.NodeWork{Node: &api.Node{Name: "n1", Zone: "z1", State: api.NodeReady, Cluster: cluster},
		Runs: []api.RunRef{}, Tasks: full}
	for _, t := range listed {
		w.Runs = append(w.Runs, api.RunRef{Task: t.ID, RunID: t.RunID})
	}
	return w
}

// runKeys returns the runs the agent holds, sorted.
func runKeys(a *Agent) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for k := range a.runs {
		out = append(out, fmt.Sprintf("%s@%d", k.task, k.run))
	}
	slices.Sort(out)
	return out
}

// waitReport waits until the server has accepted a report in state for
// task's run and returns it.
func waitReport(t *testing.T, srv *taskServer, task *api.Task, state string) api.TaskUpdate {
	t.Helper()
	var found api.TaskUpdate
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		var states []string
		for _, u := range srv.accepted() {
			if u.TaskID == task.ID && u.RunID == task.RunID {
				states = append(states, u.State)
				if u.State == state {
					found = u
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("got reports %v for %s@%d, want one %s", states, task.ID, task.RunID, state)
	})
	return found
}

// reportsFor returns the states reported for task's run, in order.
func reportsFor(srv *taskServer, task *api.Task) []string {
	var states []string
	for _, u := range srv.accepted() {
		if u.TaskID == task.ID && u.RunID == task.RunID {
			states = append(states, u.State)
		}
	}
	return states
}

func TestReconcileStartsRunsOnce(t *testing.T) {
	d := &fakeDriver{}
	a, srv := newTestAgent(t, d)
	task0, task1 := testTask(0, 40), testTask(1, 40)

	if !a.reconcile(work("c1", []*api.Task{task0, task1}, task0, task1)) {
		t.Fatal("reconcile with every task in full: got false, want true")
	}
	wantIDs := []string{sandboxID(task0), sandboxID(task1)}
	if diff := cmp.Diff(wantIDs, d.started()); diff != "" {
		t.Fatalf("runs started (-want +got):\n%s", diff)
	}
	// What the driver got for task0.
	d.mu.Lock()
	var spec *sandbox.Spec
	for _, s := range d.specs {
		if s.ID == sandboxID(task0) {
			spec = s
		}
	}
	d.mu.Unlock()
	dir := runDir(a.cfg.DataDir, "c1", "train-7", "g", 0, 40)
	wantSpec := &sandbox.Spec{ID: "train-7.g.0.40", Dir: filepath.Join(dir, "work"), Command: []string{"sleep", "60"},
		Stdout: filepath.Join(dir, "stdout"), Stderr: filepath.Join(dir, "stderr"), CPU: 250, MemoryMB: 128}
	if diff := cmp.Diff(wantSpec, spec, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Env" }, cmp.Ignore())); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
		t.Errorf("working directory %s: got %v, want a directory", spec.Dir, err)
	}
	if !slices.Contains(spec.Env, "SHOAL_TASK_ID=train-7/g/0") || !slices.Contains(spec.Env, "MODE=fast") ||
		!slices.Contains(spec.Env, "HOME="+spec.Dir) {
		t.Errorf("got env %v, want the task's SHOAL_ variables, its own and HOME=%s", spec.Env, spec.Dir)
	}
	for _, task := range []*api.Task{task0, task1} {
		waitReport(t, srv, task, api.TaskRunning)
	}

	// The same runs again, in full or not: nothing new starts.
	for _, w := range []*api.NodeWork{work("c1", []*api.Task{task0, task1}), work("c1", []*api.Task{task0, task1}, task0, task1)} {
		if !a.reconcile(w) {
			t.Errorf("second reconcile: got false, want true")
		}
	}
	if diff := cmp.Diff(wantIDs, d.started()); diff != "" {
		t.Errorf("runs started after the second reconcile (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"train-7/g/0@40", "train-7/g/1@40"}, runKeys(a)); diff != "" {
		t.Errorf("runs held (-want +got):\n%s", diff)
	}
	for _, id := range wantIDs {
		if n := d.handle(t, id).stopCount(); n != 0 {
			t.Errorf("run %s: got %d stops, want 0", id, n)
		}
	}
}

func TestReconcileNewRunOfSameTask(t *testing.T) {
	d := &fakeDriver{}
	a, srv := newTestAgent(t, d)
	old, moved := testTask(0, 40), testTask(0, 55)
	a.reconcile(work("c1", []*api.Task{old}, old))
	// The servers placed the task again (say, after a timeout) here.
	if !a.reconcile(work("c1", []*api.Task{moved}, moved)) {
		t.Fatal("reconcile: got false, want true")
	}
	if diff := cmp.Diff([]string{sandboxID(old), sandboxID(moved)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
	h := d.handle(t, sandboxID(old))
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		return h.stopCount() == 1, fmt.Sprintf("old run stopped %d times, want 1", h.stopCount())
	})
	waitReport(t, srv, moved, api.TaskRunning)
}

func TestReconcileStopsUnlistedRuns(t *testing.T) {
	d := &fakeDriver{}
	a, srv := newTestAgent(t, d)
	task0, task1 := testTask(0, 40), testTask(1, 40)
	a.reconcile(work("c1", []*api.Task{task0, task1}, task0, task1))
	a.mu.Lock()
	r0 := a.runs[runKey{task0.ID, task0.RunID}]
	a.mu.Unlock()
	if r0 == nil {
		t.Fatalf("run of %s not held after reconcile", task0.ID)
	}

	if !a.reconcile(work("c1", []*api.Task{task1})) {
		t.Fatal("reconcile: got false, want true")
	}
	if diff := cmp.Diff([]string{"train-7/g/1@40"}, runKeys(a)); diff != "" {
		t.Errorf("runs held (-want +got):\n%s", diff)
	}
	select {
	case <-r0.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the unlisted run did not end")
	}
	h0, h1 := d.handle(t, sandboxID(task0)), d.handle(t, sandboxID(task1))
	if n := h0.stopCount(); n != 1 {
		t.Errorf("unlisted run: got %d stops, want 1", n)
	}
	if n := h1.stopCount(); n != 0 {
		t.Errorf("listed run: got %d stops, want 0", n)
	}

	// The listed run ends by itself. The stopped run must not have been
	// reported: the servers moved it, so the agent has nothing to say. A
	// report for it would have been queued as it ended, before this one,
	// so by the time this one is delivered it would (almost surely) be too.
	h1.exit(&sandbox.ExitResult{ExitCode: 0, Started: tBase, Finished: tBase.Add(time.Second)})
	got := waitReport(t, srv, task1, api.TaskComplete)
	want := api.TaskUpdate{TaskID: task1.ID, RunID: 40, State: api.TaskComplete, Started: tBase, Finished: tBase.Add(time.Second)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{api.TaskRunning}, reportsFor(srv, task0)); diff != "" {
		t.Errorf("reports for the stopped run (-want +got):\n%s", diff)
	}
	// A run that ended stays held while listed, and is not started again.
	a.reconcile(work("c1", []*api.Task{task1}, task1))
	if diff := cmp.Diff([]string{sandboxID(task0), sandboxID(task1)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
}

func TestReconcileSkipsLostRuns(t *testing.T) {
	d := &fakeDriver{}
	a, _ := newTestAgent(t, d)
	lost, fresh := testTask(0, 40), testTask(1, 41)
	a.lostRuns[runKey{lost.ID, lost.RunID}] = true

	if !a.reconcile(work("c1", []*api.Task{lost, fresh}, lost, fresh)) {
		t.Fatal("reconcile: got false, want true")
	}
	if diff := cmp.Diff([]string{sandboxID(fresh)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
	if !a.lostRuns[runKey{lost.ID, lost.RunID}] {
		t.Errorf("lost run forgotten while still listed")
	}
	// Once the servers stop listing it, it is forgotten.
	a.reconcile(work("c1", []*api.Task{fresh}))
	if len(a.lostRuns) != 0 {
		t.Errorf("got lost runs %v, want none", a.lostRuns)
	}
	if diff := cmp.Diff([]string{sandboxID(fresh)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
}

func TestReconcileMissingTask(t *testing.T) {
	d := &fakeDriver{}
	a, _ := newTestAgent(t, d)
	task0, task1 := testTask(0, 40), testTask(1, 40)

	// task1 is listed but not sent in full: the agent cannot start it.
	if a.reconcile(work("c1", []*api.Task{task0, task1}, task0)) {
		t.Fatal("reconcile with a listed run missing its task: got true, want false")
	}
	if diff := cmp.Diff([]string{sandboxID(task0)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
	// Asked again for everything, it gets task1 and starts only that.
	if !a.reconcile(work("c1", []*api.Task{task0, task1}, task0, task1)) {
		t.Fatal("reconcile with every task: got false, want true")
	}
	if diff := cmp.Diff([]string{sandboxID(task0), sandboxID(task1)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
	// A run already held needs no task.
	if !a.reconcile(work("c1", []*api.Task{task0, task1})) {
		t.Error("reconcile of held runs without tasks: got false, want true")
	}
}

func TestReconcileStartFailure(t *testing.T) {
	d := &fakeDriver{startErr: errors.New("clone: out of pids")}
	a, srv := newTestAgent(t, d)
	task := testTask(0, 40)
	if !a.reconcile(work("c1", []*api.Task{task}, task)) {
		t.Fatal("reconcile: got false, want true")
	}
	got := waitReport(t, srv, task, api.TaskFailed)
	if got.ExitCode != -1 || !strings.Contains(got.Message, "starting command") || !strings.Contains(got.Message, "out of pids") {
		t.Errorf("got exit code %d message %q, want -1 and the driver's error", got.ExitCode, got.Message)
	}
	// The failed run is not tried again while it is listed.
	a.reconcile(work("c1", []*api.Task{task}, task))
	if diff := cmp.Diff([]string{sandboxID(task)}, d.started()); diff != "" {
		t.Errorf("runs started (-want +got):\n%s", diff)
	}
}

func TestReconcileRefusesUnsafeNames(t *testing.T) {
	d := &fakeDriver{}
	a, srv := newTestAgent(t, d)
	task := testTask(0, 40)
	task.Cluster = "../../etc"
	a.mu.Lock()
	a.cluster = task.Cluster // no wipe: this test is about the run
	a.mu.Unlock()
	a.reconcile(work(task.Cluster, []*api.Task{task}, task))
	if got := d.started(); len(got) != 0 {
		t.Errorf("got runs started %v, want none", got)
	}
	// Where the run's directory would have gone: next to the data dir.
	escaped := filepath.Join(allocRoot(a.cfg.DataDir), task.Cluster)
	if _, err := os.Stat(escaped); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s: got %v, want it not to exist", escaped, err)
	}
	// The run is held (so it is not tried again on every watch) and
	// reported failed, which lets the servers retry or fail it.
	if got := runKeys(a); len(got) != 1 {
		t.Errorf("got runs held %v, want the refused one", got)
	}
	waitReport(t, srv, task, api.TaskFailed)
	a.reconcile(work(task.Cluster, []*api.Task{task}, task))
	if got := d.started(); len(got) != 0 {
		t.Errorf("second reconcile started %v, want nothing", got)
	}
}

func TestRunOutcomeReports(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		res     *sandbox.ExitResult // nil: the run never ends by itself
		want    api.TaskUpdate      // TaskID and RunID are filled in
	}{
		{"exit 0", 0, &sandbox.ExitResult{ExitCode: 0, Started: tBase, Finished: tBase.Add(time.Second)},
			api.TaskUpdate{State: api.TaskComplete, Started: tBase, Finished: tBase.Add(time.Second)}},
		{"exit 3", 0, &sandbox.ExitResult{ExitCode: 3, Started: tBase, Finished: tBase.Add(time.Second)},
			api.TaskUpdate{State: api.TaskFailed, ExitCode: 3, Started: tBase, Finished: tBase.Add(time.Second)}},
		{"killed", 0, &sandbox.ExitResult{ExitCode: -1, Signal: 9, OOMKill: true, Started: tBase, Finished: tBase},
			api.TaskUpdate{State: api.TaskFailed, ExitCode: -1, Message: "killed by signal 9 (out of memory)", Started: tBase, Finished: tBase}},
		{"wait error", 0, &sandbox.ExitResult{Err: errors.New("wait: no child"), Started: tBase, Finished: tBase},
			api.TaskUpdate{State: api.TaskFailed, ExitCode: -1, Message: "wait: no child", Started: tBase, Finished: tBase}},
		{"timeout", 20 * time.Millisecond, nil,
			// fakeHandle.Stop ends the run with SIGTERM.
			api.TaskUpdate{State: api.TaskFailed, Message: "timed out after 20ms", Started: tBase, Finished: tBase.Add(time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDriver{}
			a, srv := newTestAgent(t, d)
			task := testTask(0, 40)
			task.Timeout = api.Duration(tt.timeout)
			a.reconcile(work("c1", []*api.Task{task}, task))
			h := d.handle(t, sandboxID(task))
			if tt.res != nil {
				h.exit(tt.res)
			}
			want := tt.want
			want.TaskID, want.RunID = task.ID, task.RunID
			got := waitReport(t, srv, task, want.State)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("report (-want +got):\n%s", diff)
			}
			wantStops := 0
			if tt.res == nil {
				wantStops = 1
			}
			if n := h.stopCount(); n != wantStops {
				t.Errorf("got %d stops, want %d", n, wantStops)
			}
		})
	}
}

func TestReconcileLeavingClusterWipesData(t *testing.T) {
	d := &fakeDriver{}
	a, _ := newTestAgent(t, d)
	task := testTask(0, 40)
	a.reconcile(work("c1", []*api.Task{task}, task))
	clusterDir := filepath.Join(allocRoot(a.cfg.DataDir), "c1")
	if _, err := os.Stat(clusterDir); err != nil {
		t.Fatalf("cluster data: %v", err)
	}
	// The node is back in the pool: its run stops, then c1's data goes.
	a.reconcile(work("", nil))
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		_, err := os.Stat(clusterDir)
		return errors.Is(err, os.ErrNotExist), fmt.Sprintf("stat %s: got %v, want it gone", clusterDir, err)
	})
	if n := d.handle(t, sandboxID(task)).stopCount(); n != 1 {
		t.Errorf("got %d stops, want 1", n)
	}
}
