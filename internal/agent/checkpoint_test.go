package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

// fakeCheckpointStore is an in-memory DFS and server for checkpoint tests.
// Errors queued in putErrs, reportErrs and lastErr are returned by the
// next calls, one each.
type fakeCheckpointStore struct {
	mu         sync.Mutex
	files      map[string][]byte
	dirs       map[string]bool
	reports    []api.CheckpointReport
	puts       int
	putErrs    []error
	reportErrs []error
	lastEpoch  int64
	lastErr    error
	// putBlock, when set, makes Put wait for ctx to end.
	putBlock bool
}

func newFakeStore() *fakeCheckpointStore {
	return &fakeCheckpointStore{files: map[string][]byte{}, dirs: map[string]bool{}}
}

func (f *fakeCheckpointStore) LastEpoch(ctx context.Context, job string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastEpoch, f.lastErr
}

func (f *fakeCheckpointStore) RemoveAll(ctx context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.files {
		if strings.HasPrefix(p, dir+"/") {
			delete(f.files, p)
		}
	}
	return nil
}

func (f *fakeCheckpointStore) Mkdir(ctx context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dirs[dir] = true
	return nil
}

func (f *fakeCheckpointStore) Put(ctx context.Context, p string, r io.Reader, size int64) error {
	f.mu.Lock()
	f.puts++
	block := f.putBlock
	var err error
	if len(f.putErrs) > 0 {
		err, f.putErrs = f.putErrs[0], f.putErrs[1:]
	}
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	if err != nil {
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if int64(len(b)) != size {
		return fmt.Errorf("got %d bytes, want %d", len(b), size)
	}
	f.mu.Lock()
	f.files[p] = b
	f.mu.Unlock()
	return nil
}

func (f *fakeCheckpointStore) Report(ctx context.Context, r *api.CheckpointReport) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reportErrs) > 0 {
		err := f.reportErrs[0]
		f.reportErrs = f.reportErrs[1:]
		return err
	}
	f.reports = append(f.reports, *r)
	return nil
}

func (f *fakeCheckpointStore) List(ctx context.Context, dir string) ([]*api.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[string]*api.FileInfo{}
	for p, b := range f.files {
		rel, ok := strings.CutPrefix(p, dir+"/")
		if !ok {
			continue
		}
		name, rest, sub := strings.Cut(rel, "/")
		if sub && rest != "" {
			seen[name] = &api.FileInfo{Path: dir + "/" + name, Name: name, Dir: true}
		} else {
			seen[name] = &api.FileInfo{Path: p, Name: name, Size: int64(len(b))}
		}
	}
	if len(seen) == 0 && !f.dirs[dir] {
		return nil, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "no such directory " + dir}
	}
	var out []*api.FileInfo
	for _, fi := range seen {
		out = append(out, fi)
	}
	return out, nil
}

func (f *fakeCheckpointStore) Get(ctx context.Context, p, local string) error {
	f.mu.Lock()
	b, ok := f.files[p]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("no such file %s", p)
	}
	return os.WriteFile(local, b, 0o644)
}

func (f *fakeCheckpointStore) reported() []api.CheckpointReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.CheckpointReport(nil), f.reports...)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

const testSecret = "0123456789abcdef0123456789abcdef"

// newCheckpointAgent returns an agent with one running mpi run: task 0 of
// job heat-1 (4 ranks, 2 per node), its ranks' directories created.
func newCheckpointAgent(t *testing.T, st *fakeCheckpointStore) (*Agent, *run) {
	t.Helper()
	a := &Agent{cfg: Config{Name: "n1", DataDir: t.TempDir()}, log: discardLog(), runs: map[runKey]*run{}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	t.Cleanup(a.cancel)
	a.ckpt.store, a.ckpt.retryBase = st, time.Millisecond
	task := &api.Task{ID: "heat-1/mpi/0", JobID: "heat-1", Cluster: "c1", Group: api.MPIGroup, Index: 0, RunID: 7,
		MPI: &api.TaskMPI{Ranks: 4, SlotsPerNode: 2, Nodes: []string{"n1", "n2"}}}
	dir := filepath.Join(allocRoot(a.cfg.DataDir), "c1", "heat-1", "checkpoints")
	r := &run{key: runKey{task.ID, task.RunID}, task: task, stopped: make(chan struct{}), done: make(chan struct{}),
		secret: testSecret, ckptDir: dir}
	a.runs[r.key] = r
	if err := a.restoreCheckpoint(context.Background(), task, dir); err != nil {
		t.Fatal(err)
	}
	return a, r
}

// commit posts a commit to the agent's handler.
func commit(a *Agent, secret string, body string) (int, string) {
	req := httptest.NewRequest("POST", "/v1/local/checkpoint", strings.NewReader(body))
	if secret != "" {
		req.Header.Set(api.RunSecretHeader, secret)
	}
	w := httptest.NewRecorder()
	a.handleCheckpointCommit(w, req)
	return w.Code, w.Body.String()
}

func commitBody(epoch int64, rank int) string {
	return fmt.Sprintf(`{"epoch": %d, "rank": %d}`, epoch, rank)
}

func TestCheckpointCommitRefusals(t *testing.T) {
	st := newFakeStore()
	a, r := newCheckpointAgent(t, st)
	r.task.MPI.RestartEpoch = 3 // the gang resumed from epoch 3
	tests := []struct {
		name     string
		secret   string
		body     string
		status   int
		contains string
	}{
		{"no secret", "", commitBody(4, 0), http.StatusUnauthorized, "missing X-Shoal-Run-Secret"},
		{"wrong secret", "not-the-secret", commitBody(4, 0), http.StatusForbidden, "matches no MPI run"},
		{"secret differing in the last byte", testSecret[:len(testSecret)-1] + "0", commitBody(4, 0), http.StatusForbidden, "matches no MPI run"},
		{"malformed body", testSecret, `{"epoch": "four"}`, http.StatusBadRequest, "malformed commit"},
		{"unknown field", testSecret, `{"epoch": 4, "rank": 0, "ranks": 1}`, http.StatusBadRequest, "malformed commit"},
		{"negative rank", testSecret, commitBody(4, -1), http.StatusBadRequest, "rank -1 is outside [0, 4)"},
		{"rank too high", testSecret, commitBody(4, 4), http.StatusBadRequest, "rank 4 is outside [0, 4)"},
		{"epoch zero", testSecret, commitBody(0, 0), http.StatusBadRequest, "epoch must be at least 1"},
		{"epoch of the last complete", testSecret, commitBody(3, 0), http.StatusBadRequest, "not above job heat-1's last complete epoch 3"},
		{"epoch below the last complete", testSecret, commitBody(2, 1), http.StatusBadRequest, "last complete epoch 3"},
		{"rank of another node", testSecret, commitBody(4, 2), http.StatusBadRequest, "ranks 0-1 do"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := commit(a, tt.secret, tt.body)
			if status != tt.status || !strings.Contains(body, tt.contains) {
				t.Errorf("got %d %s, want %d with %q", status, body, tt.status, tt.contains)
			}
		})
	}
	if r := st.reported(); len(r) != 0 {
		t.Errorf("refused commits reported %v, want nothing", r)
	}
}

func TestCheckpointCommitMonotonicPerRank(t *testing.T) {
	st := newFakeStore()
	a, r := newCheckpointAgent(t, st)
	os.WriteFile(filepath.Join(r.ckptDir, "0", "state"), []byte("epoch-5"), 0o644)
	steps := []struct {
		epoch  int64
		rank   int
		status int
	}{
		{5, 0, http.StatusOK},
		{5, 0, http.StatusBadRequest}, // the same epoch again
		{4, 0, http.StatusBadRequest}, // lower
		{4, 1, http.StatusOK},         // another rank has its own sequence
		{6, 0, http.StatusOK},
	}
	for _, s := range steps {
		status, body := commit(a, testSecret, commitBody(s.epoch, s.rank))
		if status != s.status {
			t.Errorf("commit epoch %d rank %d: got %d %s, want %d", s.epoch, s.rank, status, body, s.status)
		}
	}
	waitFor(t, "three reports", func() bool { return len(st.reported()) == 3 })
	// Commits do not ask the servers: they go on while none answers.
	st.mu.Lock()
	st.lastErr = errors.New("cannot reach shoal server")
	st.mu.Unlock()
	if status, body := commit(a, testSecret, commitBody(7, 0)); status != http.StatusOK {
		t.Fatalf("commit epoch 7 with the servers down: got %d %s", status, body)
	}
	if status, body := commit(a, testSecret, commitBody(4, 1)); status != http.StatusBadRequest || !strings.Contains(body, "already committed epoch 4") {
		t.Errorf("commit epoch 4 of rank 1 again: got %d %s, want 400", status, body)
	}
}

func TestCheckpointCommitUploadsAndReports(t *testing.T) {
	st := newFakeStore()
	// Transient failures: a server answering 503, then a lost connection;
	// the report once with no leader.
	st.putErrs = []error{&api.Error{Status: 503, Code: api.CodeUnavailable, Message: "no leader"}, errors.New("connection refused")}
	st.reportErrs = []error{&api.Error{Status: 503, Code: api.CodeNoLeader, Message: "no leader"}}
	a, r := newCheckpointAgent(t, st)
	rankDir := filepath.Join(r.ckptDir, "1")
	os.MkdirAll(filepath.Join(rankDir, "sub"), 0o755)
	os.WriteFile(filepath.Join(rankDir, "a.bin"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(rankDir, "sub", "b.bin"), []byte("world!"), 0o644)
	status, body := commit(a, testSecret, commitBody(1, 1))
	if status != http.StatusOK {
		t.Fatalf("commit: got %d %s", status, body)
	}
	var resp api.CheckpointCommitResponse
	json.Unmarshal([]byte(body), &resp)
	if diff := cmp.Diff(api.CheckpointCommitResponse{Epoch: 1, Rank: 1, Files: 2, Bytes: 11}, resp); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	// The rank may overwrite its files at once: the agent has its copy.
	os.WriteFile(filepath.Join(rankDir, "a.bin"), []byte("HELLO"), 0o644)
	waitFor(t, "the report", func() bool { return len(st.reported()) == 1 })
	want := api.CheckpointReport{Job: "heat-1", Task: "heat-1/mpi/0", RunID: 7, Epoch: 1, Rank: 1, Bytes: 11}
	if diff := cmp.Diff(want, st.reported()[0]); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	dir := api.CheckpointDir("c1", "heat-1", 1) + "/1"
	st.mu.Lock()
	files := map[string]string{}
	for p, b := range st.files {
		files[p] = string(b)
	}
	st.mu.Unlock()
	if diff := cmp.Diff(map[string]string{dir + "/a.bin": "hello", dir + "/sub/b.bin": "world!"}, files); diff != "" {
		t.Errorf("DFS files (-want +got):\n%s", diff)
	}
	staged := filepath.Join(r.ckptDir, stagedDirName, "7", "1", "1")
	waitFor(t, "the staged copy to be deleted", func() bool { _, err := os.Stat(staged); return errors.Is(err, os.ErrNotExist) })
}

func TestCheckpointUploadGivesUpOn4xx(t *testing.T) {
	st := newFakeStore()
	st.reportErrs = []error{&api.Error{Status: 409, Code: api.CodeConflict, Message: "run 7 is not the current run"}}
	a, r := newCheckpointAgent(t, st)
	if status, body := commit(a, testSecret, commitBody(1, 0)); status != http.StatusOK {
		t.Fatalf("commit: got %d %s", status, body)
	}
	staged := filepath.Join(r.ckptDir, stagedDirName, "7", "1", "0")
	waitFor(t, "the staged copy to be deleted", func() bool { _, err := os.Stat(staged); return errors.Is(err, os.ErrNotExist) })
	st.mu.Lock()
	left := len(st.reportErrs)
	st.mu.Unlock()
	if left != 0 || len(st.reported()) != 0 {
		t.Errorf("got %d queued errors left and reports %v, want the one 409 consumed and no report", left, st.reported())
	}
}

func TestCheckpointStoppedRunCancelsUploads(t *testing.T) {
	st := newFakeStore()
	st.putBlock = true
	a, r := newCheckpointAgent(t, st)
	os.WriteFile(filepath.Join(r.ckptDir, "0", "state"), []byte("x"), 0o644)
	if status, body := commit(a, testSecret, commitBody(1, 0)); status != http.StatusOK {
		t.Fatalf("commit: got %d %s", status, body)
	}
	waitFor(t, "the upload to start", func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.puts == 1 })
	close(r.stopped)
	runStaged := filepath.Join(r.ckptDir, stagedDirName, "7")
	waitFor(t, "the run's staged copies to be deleted", func() bool {
		_, err := os.Stat(runStaged)
		return errors.Is(err, os.ErrNotExist)
	})
	waitFor(t, "the run's state to be dropped", func() bool {
		a.ckpt.mu.Lock()
		defer a.ckpt.mu.Unlock()
		return len(a.ckpt.runs) == 0
	})
	if len(st.reported()) != 0 {
		t.Errorf("a stopped run reported %v", st.reported())
	}
	if status, body := commit(a, testSecret, commitBody(2, 0)); status != http.StatusConflict {
		t.Errorf("commit after stop: got %d %s, want 409", status, body)
	}
}

func TestCopyTree(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d", "e"), 0o755)
	os.WriteFile(filepath.Join(src, "top"), bytes.Repeat([]byte("t"), 1<<20+3), 0o600)
	os.WriteFile(filepath.Join(src, "d", "e", "deep"), []byte("deep"), 0o644)
	os.WriteFile(filepath.Join(src, "empty"), nil, 0o644)
	failing := 0
	for _, tc := range []struct {
		name  string
		clone func(dst, src *os.File) error
	}{
		{"reflink unsupported", func(dst, src *os.File) error { failing++; return syscall.EOPNOTSUPP }},
		{"FICLONE or its fallback", ficlone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "staged")
			files, n, err := copyTree(src, dst, tc.clone)
			if err != nil {
				t.Fatal(err)
			}
			if files != 3 || n != 1<<20+3+4 {
				t.Errorf("got %d files %d bytes, want 3 files %d bytes", files, n, 1<<20+3+4)
			}
			for _, rel := range []string{"top", "d/e/deep", "empty"} {
				a, _ := os.ReadFile(filepath.Join(src, rel))
				b, err := os.ReadFile(filepath.Join(dst, rel))
				if err != nil || !bytes.Equal(a, b) {
					t.Errorf("%s: copy differs (%v)", rel, err)
				}
				si, _ := os.Stat(filepath.Join(src, rel))
				di, _ := os.Stat(filepath.Join(dst, rel))
				if os.SameFile(si, di) {
					t.Errorf("%s: the copy is the same inode (a hard link)", rel)
				}
				if si.Mode() != di.Mode() {
					t.Errorf("%s: mode %v, want %v", rel, di.Mode(), si.Mode())
				}
			}
			// Overwriting the source in place leaves the copy alone.
			f, _ := os.OpenFile(filepath.Join(src, "d", "e", "deep"), os.O_WRONLY, 0)
			f.WriteAt([]byte("DEEP"), 0)
			f.Close()
			if b, _ := os.ReadFile(filepath.Join(dst, "d", "e", "deep")); string(b) != "deep" {
				t.Errorf("copy changed with its source: %q", b)
			}
			os.WriteFile(filepath.Join(src, "d", "e", "deep"), []byte("deep"), 0o644)
		})
	}
	if failing != 3 {
		t.Errorf("the failing clone was tried %d times, want once per file (3)", failing)
	}
	os.Symlink("top", filepath.Join(src, "link"))
	if _, _, err := copyTree(src, filepath.Join(t.TempDir(), "x"), ficlone); err == nil || !strings.Contains(err.Error(), "link is not a regular file") {
		t.Errorf("copying a symlink: got %v, want a refusal naming it", err)
	}
}

func TestRestoreCheckpoint(t *testing.T) {
	st := newFakeStore()
	base := api.CheckpointDir("c1", "heat-1", 5)
	st.files[base+"/2/state"] = []byte("rank2")
	st.files[base+"/2/sub/more"] = []byte("rank2-more")
	st.files[base+"/3/state"] = []byte("rank3")
	st.files[base+"/0/state"] = []byte("rank0, on another node")
	a := &Agent{cfg: Config{Name: "n2"}, log: discardLog(), runs: map[runKey]*run{}}
	a.ckpt.store = st
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "2"), 0o755)
	os.WriteFile(filepath.Join(dir, "2", "stale"), []byte("from an older run"), 0o644)
	os.MkdirAll(filepath.Join(dir, stagedDirName, "3", "1", "2"), 0o755)
	task := &api.Task{ID: "heat-1/mpi/1", JobID: "heat-1", Cluster: "c1", Index: 1, RunID: 9,
		MPI: &api.TaskMPI{Ranks: 4, SlotsPerNode: 2, RestartEpoch: 5}}
	if err := a.restoreCheckpoint(context.Background(), task, dir); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			got[filepath.ToSlash(rel)] = string(b)
		}
		return nil
	})
	want := map[string]string{"2/state": "rank2", "2/sub/more": "rank2-more", "3/state": "rank3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("restored files (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, stagedDirName, "3")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staged copies of a dead run survived the restore: %v", err)
	}

	t.Run("no epoch: empty directories", func(t *testing.T) {
		fresh := *task
		fresh.MPI = &api.TaskMPI{Ranks: 4, SlotsPerNode: 2}
		if err := a.restoreCheckpoint(context.Background(), &fresh, dir); err != nil {
			t.Fatal(err)
		}
		for _, rank := range []string{"2", "3"} {
			if entries, err := os.ReadDir(filepath.Join(dir, rank)); err != nil || len(entries) != 0 {
				t.Errorf("rank %s: got %d entries (%v), want an empty directory", rank, len(entries), err)
			}
		}
	})
	t.Run("a rank missing from the epoch", func(t *testing.T) {
		missing := *task
		missing.MPI = &api.TaskMPI{Ranks: 6, SlotsPerNode: 2, RestartEpoch: 5}
		missing.Index = 2 // ranks 4 and 5, which epoch 5 lacks
		err := a.restoreCheckpoint(context.Background(), &missing, dir)
		if err == nil || !strings.Contains(err.Error(), "restoring rank 4 from checkpoint epoch 5") {
			t.Errorf("got %v, want an error naming rank 4 and epoch 5", err)
		}
	})
}

func TestRequestCheckpoints(t *testing.T) {
	st := newFakeStore()
	st.lastEpoch = 3
	a, r := newCheckpointAgent(t, st)
	r.task.MPI.CheckpointInterval = api.Duration(5 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.requestCheckpoints(ctx, r.task, r.ckptDir) }()
	req := filepath.Join(r.ckptDir, "request")
	read := func() string { b, _ := os.ReadFile(req); return string(b) }
	waitFor(t, "a request for epoch 4", func() bool { return read() == "4\n" })
	if status, body := commit(a, testSecret, commitBody(9, 0)); status != http.StatusOK {
		t.Fatalf("commit: got %d %s", status, body)
	}
	waitFor(t, "a request for epoch 10", func() bool { return read() == "10\n" })
	cancel()
	<-done
	if m, _ := filepath.Glob(filepath.Join(r.ckptDir, ".request.tmp*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// TestCheckpointCommitRefusesNamesTheDFSCannotHold: a commit the agent
// acknowledges must be uploadable, so a file the DFS would refuse fails
// the commit itself, naming it, and nothing is queued.
func TestCheckpointCommitRefusesNamesTheDFSCannotHold(t *testing.T) {
	st := newFakeStore()
	a, r := newCheckpointAgent(t, st)
	if err := os.WriteFile(filepath.Join(r.ckptDir, "0", "bad\x01name"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	status, body := commit(a, testSecret, commitBody(1, 0))
	if status != http.StatusBadRequest || !strings.Contains(body, "cannot be checkpointed") {
		t.Fatalf("got %d %s, want 400 naming the file", status, body)
	}
	if status, _ := commit(a, testSecret, commitBody(1, 1)); status != http.StatusOK {
		t.Errorf("rank 1's commit of epoch 1 (good names): got %d", status)
	}
	waitFor(t, "rank 1's report", func() bool { return len(st.reported()) == 1 })
	if r := st.reported(); r[0].Rank != 1 {
		t.Errorf("reported %+v, want rank 1 only", r)
	}
}
