package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

func pathQuery(p string) url.Values { return url.Values{"path": {p}} }

// FSStat describes one file or directory; for a file it lists each chunk
// and its replicas.
func (c *Client) FSStat(ctx context.Context, path string) (*FileInfo, error) {
	var fi FileInfo
	_, err := c.Do(ctx, "GET", "/v1/fs/stat", pathQuery(path), nil, &fi)
	return &fi, err
}

// FSList lists a directory (or describes a single file).
func (c *Client) FSList(ctx context.Context, path string) ([]*FileInfo, error) {
	var out []*FileInfo
	_, err := c.Do(ctx, "GET", "/v1/fs/list", pathQuery(path), nil, &out)
	return out, err
}

// FSMkdir creates a directory.
func (c *Client) FSMkdir(ctx context.Context, r *Mkdir) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/mkdir", nil, r, nil)
	return err
}

// FSRename moves a file or directory tree atomically.
func (c *Client) FSRename(ctx context.Context, r *Rename) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/rename", nil, r, nil)
	return err
}

// FSRemove deletes a file or a directory.
func (c *Client) FSRemove(ctx context.Context, r *Remove) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/remove", nil, r, nil)
	return err
}

// FSCreate opens a new file for writing.
func (c *Client) FSCreate(ctx context.Context, r *FileCreate) (*FileInfo, error) {
	var fi FileInfo
	_, err := c.Do(ctx, "POST", "/v1/fs/create", nil, r, &fi)
	return &fi, err
}

// FSAllocate asks where to write the next chunk of an open file.
func (c *Client) FSAllocate(ctx context.Context, r *ChunkAllocate) (*ChunkAllocation, error) {
	var a ChunkAllocation
	_, err := c.Do(ctx, "POST", "/v1/fs/allocate", nil, r, &a)
	return &a, err
}

// FSCommit records a chunk that every listed replica has synced.
func (c *Client) FSCommit(ctx context.Context, r *ChunkCommit) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/commit", nil, r, nil)
	return err
}

// FSClose closes an open file.
func (c *Client) FSClose(ctx context.Context, r *FileClose) (*FileInfo, error) {
	var fi FileInfo
	_, err := c.Do(ctx, "POST", "/v1/fs/close", nil, r, &fi)
	return &fi, err
}

// FSAbort deletes a file that is still open.
func (c *Client) FSAbort(ctx context.Context, r *FileAbort) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/abort", nil, r, nil)
	return err
}

// FSRenew renews a writer's lease on an open file.
func (c *Client) FSRenew(ctx context.Context, r *FileRenew) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/renew", nil, r, nil)
	return err
}

// UploadOptions tune [Client.FSUpload].
type UploadOptions struct {
	Replication int
	ChunkSize   int64
	Overwrite   bool
}

// FSUpload streams body into a new DFS file at path through the server,
// which splits it into chunks and writes each to its replicas. size is the
// body's length, or -1 when unknown. The file exists, closed, only if this
// returns nil; a body that ends early leaves nothing behind. A streamed
// body cannot be resent, so unlike other calls this one does not fail over
// to another server.
func (c *Client) FSUpload(ctx context.Context, path string, body io.Reader, size int64, o UploadOptions) (*FileInfo, error) {
	q := pathQuery(path)
	if o.Replication > 0 {
		q.Set("replication", strconv.Itoa(o.Replication))
	}
	if o.ChunkSize > 0 {
		q.Set("chunk_size", strconv.FormatInt(o.ChunkSize, 10))
	}
	if o.Overwrite {
		q.Set("overwrite", "true")
	}
	req, err := http.NewRequestWithContext(ctx, "PUT", c.Addr()+"/v1/fs/data?"+q.Encode(), body)
	if err != nil {
		return nil, err
	}
	if size >= 0 {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("uploading %s: cannot reach shoal server at %s: %w", path, c.Addr(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, decodeError(resp)
	}
	var fi FileInfo
	if err := decodeJSON(resp.Body, &fi); err != nil {
		return nil, fmt.Errorf("decoding upload answer: %w", err)
	}
	return &fi, nil
}

// FSDownload streams a closed DFS file. The caller reads and closes the
// body; size is the file's length. A read error (rather than a short body
// without one) means the file could not be read in full.
func (c *Client) FSDownload(ctx context.Context, path string) (body io.ReadCloser, size int64, err error) {
	resp, err := c.send(ctx, "GET", "/v1/fs/data", pathQuery(path), nil)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// FSSnapshotCreate takes a point-in-time snapshot of a directory tree.
func (c *Client) FSSnapshotCreate(ctx context.Context, dir, name string) (*SnapshotInfo, error) {
	var s SnapshotInfo
	_, err := c.Do(ctx, "POST", "/v1/fs/snapshots", nil, &SnapshotRequest{Dir: dir, Name: name}, &s)
	return &s, err
}

// FSSnapshots lists the snapshots of a directory ("" or "/" for all).
func (c *Client) FSSnapshots(ctx context.Context, dir string) ([]*SnapshotInfo, error) {
	var out []*SnapshotInfo
	var q url.Values
	if dir != "" {
		q = url.Values{"dir": {dir}}
	}
	_, err := c.Do(ctx, "GET", "/v1/fs/snapshots", q, nil, &out)
	return out, err
}

// FSSnapshotDelete deletes a snapshot; what only it kept is freed.
func (c *Client) FSSnapshotDelete(ctx context.Context, dir, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/fs/snapshots", url.Values{"dir": {dir}, "name": {name}}, nil, nil)
	return err
}

// FSStatus summarises the file system.
func (c *Client) FSStatus(ctx context.Context) (*FSStatus, error) {
	var s FSStatus
	_, err := c.Do(ctx, "GET", "/v1/fs/status", nil, nil, &s)
	return &s, err
}

// ReportChunks sends a data node's chunk inventory and returns the chunks
// it must delete.
func (c *Client) ReportChunks(ctx context.Context, node string, r *ChunkReport) (*ChunkReportResponse, error) {
	var out ChunkReportResponse
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(node)+"/chunks", nil, r, &out)
	return &out, err
}

// ReportCorrupt reports a replica that failed its checksum.
func (c *Client) ReportCorrupt(ctx context.Context, r *CorruptChunk) error {
	_, err := c.Do(ctx, "POST", "/v1/fs/corrupt", nil, r, nil)
	return err
}

func decodeJSON(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
