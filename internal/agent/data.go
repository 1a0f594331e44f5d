package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
)

// The agent as a data node: it stores chunks in DATA/chunks and serves them
// on its HTTP address (see package chunkstore), reports its inventory so
// that the servers can reconcile it, fetches a task's DFS inputs before the
// task starts and publishes its outputs when it succeeds.

// chunkReportLoop sends the chunk inventory at start and then every
// interval, and deletes what the servers say this node must not keep.
func (a *Agent) chunkReportLoop() {
	for delay := time.Duration(0); ; delay = a.cfg.ChunkReportInterval {
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(delay):
		}
		if err := a.reportChunks(); err != nil && a.ctx.Err() == nil {
			a.log.Warn("reporting chunks failed; will retry", "err", err)
		}
	}
}

func (a *Agent) reportChunks() error {
	inv, err := a.chunks.List()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
	defer cancel()
	resp, err := a.client.ReportChunks(ctx, a.cfg.Name, &api.ChunkReport{Chunks: inv})
	if err != nil {
		return err
	}
	for _, id := range resp.Delete {
		if err := a.chunks.Delete(id); err != nil {
			a.log.Warn("deleting a chunk the servers disowned", "chunk", id, "err", err)
		}
	}
	if len(resp.Delete) > 0 {
		a.log.Info("deleted chunks the namespace does not count here", "chunks", len(resp.Delete))
	}
	return nil
}

// reportCorrupt tells the servers a replica here failed its checksum; the
// chunk store has already dropped it.
func (a *Agent) reportCorrupt(id string) {
	go func() {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		defer cancel()
		if err := a.client.ReportCorrupt(ctx, &api.CorruptChunk{Node: a.cfg.Name, Chunk: id}); err != nil {
			a.log.Warn("reporting a corrupt chunk failed; the next inventory report catches it", "chunk", id, "err", err)
		}
	}()
}

// fetchInputs makes a task's input files available under dir, mirroring
// their paths below the cluster root, and returns the local paths. A file
// whose single chunk has a replica here is hard-linked from the chunk
// store after its checksums are verified (no copy); anything else is read
// from the nearest replicas.
func (a *Agent) fetchInputs(ctx context.Context, t *api.Task, dir string) ([]string, error) {
	root := api.ClusterRoot(t.Cluster)
	var out []string
	for _, p := range t.Inputs {
		rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if !api.WithinDir(p, root) || rel == "" {
			return nil, fmt.Errorf("input %s is outside the cluster's directory %s", p, root)
		}
		local := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
			return nil, err
		}
		fi, err := a.client.FSStat(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", p, err)
		}
		if fi.Dir || fi.State != api.FileClosed {
			return nil, fmt.Errorf("input %s is not a closed file", p)
		}
		if !a.linkLocal(fi, local) {
			if err := a.copyInput(ctx, fi, local); err != nil {
				return nil, fmt.Errorf("input %s: %w", p, err)
			}
		}
		out = append(out, local)
	}
	return out, nil
}

// linkLocal hard-links a one-chunk file's local replica to local.
func (a *Agent) linkLocal(fi *api.FileInfo, local string) bool {
	if len(fi.Chunks) != 1 {
		return false
	}
	c := fi.Chunks[0]
	here := false
	for _, r := range c.Replicas {
		here = here || r.Node == a.cfg.Name
	}
	if !here {
		return false
	}
	sc, err := a.chunks.Stat(c.ID)
	if err != nil || sc.Length != c.Length || sc.CRC != c.CRC {
		return false
	}
	if err := a.chunks.Verify(c.ID); err != nil {
		a.reportCorrupt(c.ID)
		return false
	}
	os.Remove(local)
	return os.Link(a.chunks.Path(c.ID), local) == nil
}

func (a *Agent) copyInput(ctx context.Context, fi *api.FileInfo, local string) error {
	path := fi.Path
	refresh := func(ctx context.Context) (*api.FileInfo, error) { return a.client.FSStat(ctx, path) }
	rd := dfs.NewReader(ctx, a.chunkClient, fi, dfs.ReadOptions{Node: a.cfg.Name, Zone: a.cfg.Zone, Refresh: refresh}, a.log)
	defer rd.Close()
	f, err := os.Create(local)
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(f, rd, make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != fi.Size {
		err = fmt.Errorf("read %d of %d bytes", n, fi.Size)
	}
	return err
}

// publishOutputs uploads every file under dir into the run's staging
// directory; the servers move them into the task's output directory when
// they accept the run's success.
func (a *Agent) publishOutputs(ctx context.Context, t *api.Task, dir string) error {
	staging := api.StagingDir(t)
	w := &dfs.Writer{NS: a.client, Chunks: a.chunkClient, Log: a.log}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == "." {
			return nil
		}
		dst := api.JoinPath(staging, filepath.ToSlash(rel))
		if d.IsDir() {
			return a.client.FSMkdir(ctx, &api.Mkdir{Path: dst, Parents: true})
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("output %s is not a regular file", rel)
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		_, err = w.Write(ctx, dst, f, dfs.WriteOptions{Size: st.Size(), Writer: a.cfg.Name})
		var ae *api.Error
		if errors.As(err, &ae) {
			return fmt.Errorf("output %s: %s", rel, ae.Message)
		}
		return err
	})
}
