package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
)

// Moving checkpoints between a node's disk and the DFS: the agent's copy
// of a rank's files at commit, their upload and report, and the restore of
// an epoch before a run starts.

// retryMax bounds the delay between two upload attempts.
const retryMax = 5 * time.Second

// checkpointStore is what checkpoints need of the servers and the DFS.
// dfsCheckpointStore implements it with the agent's API client and DFS
// writer and reader; unit tests fake it.
type checkpointStore interface {
	// LastEpoch returns the job's last complete epoch (0: none).
	LastEpoch(ctx context.Context, job string) (int64, error)
	// Mkdir creates a DFS directory and its parents; it exists already is
	// no error.
	Mkdir(ctx context.Context, dir string) error
	// Put writes size bytes of r to a DFS file, replacing one of the same
	// path, with the cluster's default replication.
	Put(ctx context.Context, path string, r io.Reader, size int64) error
	// Report tells the servers that a rank's files for an epoch are durable.
	Report(ctx context.Context, r *api.CheckpointReport) error
	// List lists a DFS directory.
	List(ctx context.Context, dir string) ([]*api.FileInfo, error)
	// Get copies a closed DFS file into the local file local.
	Get(ctx context.Context, path, local string) error
	// RemoveAll removes a DFS directory tree; one that does not exist is
	// no error.
	RemoveAll(ctx context.Context, dir string) error
}

// dfsCheckpointStore is the agent's checkpointStore.
type dfsCheckpointStore struct{ a *Agent }

func (s dfsCheckpointStore) LastEpoch(ctx context.Context, job string) (int64, error) {
	j, _, err := s.a.client.JobSummary(ctx, job, nil)
	if err != nil {
		return 0, err
	}
	if j.MPIStatus == nil {
		return 0, nil
	}
	return j.MPIStatus.LastEpoch, nil
}

func (s dfsCheckpointStore) Mkdir(ctx context.Context, dir string) error {
	return s.a.client.FSMkdir(ctx, &api.Mkdir{Path: dir, Parents: true})
}

func (s dfsCheckpointStore) Put(ctx context.Context, p string, r io.Reader, size int64) error {
	w := &dfs.Writer{NS: s.a.client, Chunks: s.a.chunkClient, Log: s.a.log}
	_, err := w.Write(ctx, p, r, dfs.WriteOptions{Size: size, Writer: s.a.cfg.Name, Overwrite: true})
	return err
}

func (s dfsCheckpointStore) Report(ctx context.Context, r *api.CheckpointReport) error {
	return s.a.client.ReportCheckpoint(ctx, s.a.cfg.Name, r)
}

func (s dfsCheckpointStore) RemoveAll(ctx context.Context, dir string) error {
	err := s.a.client.FSRemove(ctx, &api.Remove{Path: dir, Recursive: true})
	if api.IsNotFound(err) {
		return nil
	}
	return err
}

func (s dfsCheckpointStore) List(ctx context.Context, dir string) ([]*api.FileInfo, error) {
	return s.a.client.FSList(ctx, dir)
}

func (s dfsCheckpointStore) Get(ctx context.Context, p, local string) error {
	fi, err := s.a.client.FSStat(ctx, p)
	if err != nil {
		return err
	}
	if fi.Dir || fi.State != api.FileClosed {
		return fmt.Errorf("%s is not a closed file", p)
	}
	return s.a.copyInput(ctx, fi, local)
}

// cloneFunc returns the function that clones a file: FICLONE unless a
// test replaced it.
func (c *checkpoints) cloneFunc() func(dst, src *os.File) error {
	if c.clone != nil {
		return c.clone
	}
	return ficlone
}

// ioctlFICLONE is Linux's FICLONE request, _IOW(0x94, 9, int).
const ioctlFICLONE = 0x40049409

// ficlone makes dst share src's blocks copy-on-write (Btrfs, XFS, ...).
func ficlone(dst, src *os.File) error {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, dst.Fd(), ioctlFICLONE, src.Fd())
	if errno != 0 {
		return errno
	}
	return nil
}

// copyTree copies every regular file under src, recursively, to the same
// relative path under dst (created afresh), and returns how many files and
// bytes it copied. Each file is a reflink clone when clone succeeds (the
// file system shares its blocks copy-on-write), else a real copy (which
// the kernel may still accelerate with copy_file_range). It never
// hard-links: the program may overwrite its files in place. Anything else
// than directories and regular files (symlinks, sockets) is refused.
func copyTree(src, dst string, clone func(dst, src *os.File) error) (files int, bytes int64, err error) {
	if err := os.RemoveAll(dst); err != nil {
		return 0, 0, err
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file (only files and directories are checkpointed)", rel)
		}
		n, err := cloneOrCopyFile(p, target, clone)
		files++
		bytes += n
		return err
	})
	return files, bytes, err
}

// cloneOrCopyFile copies one regular file, trying clone first.
func cloneOrCopyFile(src, dst string, clone func(dst, src *os.File) error) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return 0, err
	}
	n := st.Size()
	if cerr := clone(out, in); cerr != nil {
		// Not supported here (ext4, tmpfs, another file system): copy.
		if _, err := out.Seek(0, io.SeekStart); err == nil {
			err = out.Truncate(0)
		}
		if err == nil {
			n, err = io.Copy(out, in)
		}
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// enqueue queues a staged epoch for upload after the rank's earlier ones,
// starting the rank's upload worker if none runs. Uploads of one rank are
// sequential (epochs reach the servers in order); ranks upload
// concurrently. It reports false, queuing nothing, once the run is stopped.
func (rc *runCheckpoints) enqueue(a *Agent, s *stagedEpoch) bool {
	rc.mu.Lock()
	if rc.closed {
		rc.mu.Unlock()
		return false
	}
	rs := rc.ranks[s.rank]
	rs.queue = append(rs.queue, s)
	start := !rs.busy
	rs.busy = true
	if start {
		rc.wg.Add(1)
	}
	rc.mu.Unlock()
	if start {
		go rc.uploadWorker(a, rs)
	}
	return true
}

// uploadWorker uploads a rank's staged epochs in order until none is left
// or the run is stopped.
func (rc *runCheckpoints) uploadWorker(a *Agent, rs *rankState) {
	defer rc.wg.Done()
	for {
		rc.mu.Lock()
		if len(rs.queue) == 0 || rc.ctx.Err() != nil {
			rs.busy = false
			rc.mu.Unlock()
			return
		}
		s := rs.queue[0]
		rs.queue = rs.queue[1:]
		rc.mu.Unlock()
		a.ckpt.upload(rc.ctx, a, s)
	}
}

// upload makes one staged epoch durable: it writes its files under the
// epoch's DFS directory, reports them, then deletes the staged copy. It
// retries with backoff on anything but a 4xx answer (servers, leader or
// data nodes down); it gives up on a 4xx (a stale run, an epoch the job no
// longer wants), which it logs, or when ctx ends.
func (c *checkpoints) upload(ctx context.Context, a *Agent, s *stagedEpoch) {
	st := c.storeFor(a)
	log := a.log.With("job", s.job, "task", s.task, "run", s.runID, "rank", s.rank, "epoch", s.epoch)
	start := time.Now()
	dir := api.JoinPath(api.CheckpointDir(s.cluster, s.job, s.epoch), strconv.Itoa(s.rank))
	// An earlier run may have left files of this epoch and rank there
	// (it committed it, then the gang restarted from an older epoch):
	// the epoch is this run's files only.
	err := c.retry(ctx, log, "clearing the rank's DFS directory", func() error { return st.RemoveAll(ctx, dir) })
	if err == nil {
		err = c.retry(ctx, log, "creating the rank's DFS directory", func() error { return st.Mkdir(ctx, dir) })
	}
	if err == nil {
		err = filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(s.dir, p)
			if rel == "." {
				return nil
			}
			dst := api.JoinPath(dir, filepath.ToSlash(rel))
			if d.IsDir() {
				return c.retry(ctx, log, "creating "+dst, func() error { return st.Mkdir(ctx, dst) })
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			// A fresh reader per attempt: a failed write may still be
			// reading the one before.
			return c.retry(ctx, log, "writing "+dst, func() error {
				return st.Put(ctx, dst, io.NewSectionReader(f, 0, fi.Size()), fi.Size())
			})
		})
	}
	if err == nil {
		rep := &api.CheckpointReport{Job: s.job, Task: s.task, RunID: s.runID, Epoch: s.epoch, Rank: s.rank, Bytes: s.bytes}
		err = c.retry(ctx, log, "reporting the checkpoint", func() error { return st.Report(ctx, rep) })
	}
	switch {
	case err == nil:
		log.Info("checkpoint durable", "files", s.files, "bytes", s.bytes, "took", time.Since(start))
	case ctx.Err() != nil:
		log.Info("checkpoint upload cancelled: the run was stopped")
	default:
		log.Error("checkpoint upload abandoned", "err", err)
	}
	if err := os.RemoveAll(s.dir); err != nil {
		log.Warn("removing a staged checkpoint", "dir", s.dir, "err", err)
	}
	os.Remove(filepath.Dir(s.dir)) // the epoch's directory, once its last rank is gone
}

// retry calls fn until it succeeds, it fails with a permanent error, or
// ctx ends, waiting retryBase, twice that, ... at most retryMax between
// attempts.
func (c *checkpoints) retry(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	delay := c.retryBase
	if delay <= 0 {
		delay = 100 * time.Millisecond
	}
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || permanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("checkpoint upload: "+what+" failed; will retry", "attempt", attempt, "in", delay, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, retryMax)
	}
}

// permanent reports whether retrying err is pointless: a 4xx answer other
// than a timeout or rate limit, or a local file that is gone.
func permanent(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusRequestTimeout && ae.Status != http.StatusTooManyRequests
	}
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)
}

// restoreCheckpoint prepares dir for the ranks that gang task t hosts
// (t.MPI.RanksOn(t.Index)): dir/<rank>/ is emptied and created and, when
// t.MPI.RestartEpoch > 0, filled with that epoch's files of the rank from
// the DFS (api.CheckpointDir(t.Cluster, t.JobID, epoch)/<rank>/...). It is
// called before the run starts. A rank whose files are missing from the
// DFS is an error: restarting it from scratch would silently mix epochs.
func (a *Agent) restoreCheckpoint(ctx context.Context, t *api.Task, dir string) error {
	if t.MPI == nil {
		return fmt.Errorf("task %s is not a task of an mpi job", t.ID)
	}
	a.ckpt.noteEpoch(t.JobID, t.MPI.RestartEpoch)
	a.removeStaleStaged(dir)
	first, end := t.MPI.RanksOn(t.Index)
	st := a.ckpt.storeFor(a)
	var files int
	var bytes int64
	for rank := first; rank < end; rank++ {
		local := filepath.Join(dir, strconv.Itoa(rank))
		if err := os.RemoveAll(local); err != nil {
			return fmt.Errorf("emptying rank %d's checkpoint directory: %w", rank, err)
		}
		if err := os.MkdirAll(local, 0o755); err != nil {
			return fmt.Errorf("creating rank %d's checkpoint directory: %w", rank, err)
		}
		if t.MPI.RestartEpoch <= 0 {
			continue
		}
		remote := api.JoinPath(api.CheckpointDir(t.Cluster, t.JobID, t.MPI.RestartEpoch), strconv.Itoa(rank))
		n, b, err := restoreTree(ctx, st, remote, local)
		if err != nil {
			return fmt.Errorf("restoring rank %d from checkpoint epoch %d (%s): %w", rank, t.MPI.RestartEpoch, remote, err)
		}
		files, bytes = files+n, bytes+b
	}
	if t.MPI.RestartEpoch > 0 {
		a.log.Info("checkpoint restored", "job", t.JobID, "task", t.ID, "epoch", t.MPI.RestartEpoch,
			"ranks", end-first, "files", files, "bytes", bytes)
	}
	return nil
}

// restoreTree copies the DFS directory remote into the local directory.
func restoreTree(ctx context.Context, st checkpointStore, remote, local string) (files int, bytes int64, err error) {
	entries, err := st.List(ctx, remote)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		name := e.Name
		if name == "" {
			name = path.Base(e.Path)
		}
		if name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return files, bytes, fmt.Errorf("refusing the entry name %q", name)
		}
		p, l := api.JoinPath(remote, name), filepath.Join(local, name)
		if e.Dir {
			if err := os.MkdirAll(l, 0o755); err != nil {
				return files, bytes, err
			}
			n, b, err := restoreTree(ctx, st, p, l)
			files, bytes = files+n, bytes+b
			if err != nil {
				return files, bytes, err
			}
			continue
		}
		if err := st.Get(ctx, p, l); err != nil {
			return files, bytes, fmt.Errorf("%s: %w", p, err)
		}
		files, bytes = files+1, bytes+e.Size
	}
	return files, bytes, nil
}

// removeStaleStaged deletes staged copies under a job's checkpoint
// directory that belong to no live run: leftovers of an agent that died
// before uploading them (their run is gone, its reports would be refused).
func (a *Agent) removeStaleStaged(dir string) {
	root := filepath.Join(dir, stagedDirName)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	live := map[string]bool{}
	a.ckpt.mu.Lock()
	for k := range a.ckpt.runs {
		live[strconv.FormatUint(k.run, 10)] = true
	}
	a.ckpt.mu.Unlock()
	for _, e := range entries {
		if !live[e.Name()] {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}
