package dfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// FileSystem is the part of the server API a [Client] uses; *api.Client
// implements it.
type FileSystem interface {
	Namespace
	FSStat(ctx context.Context, path string) (*api.FileInfo, error)
}

// Errors of [Client.Open].
var (
	ErrIsDir   = errors.New("dfs: is a directory")
	ErrNotDone = errors.New("dfs: file is still being written")
)

// Client reads and writes DFS files for a program such as the CLI, the
// way HDFS clients do: it asks the servers for metadata only (create,
// allocate, commit, close, stat) and moves the bytes itself, straight to
// and from the data nodes, so that a byte crosses the network once on its
// way to each replica and once back, never through a server. The machine
// it runs on must reach the data nodes' advertised addresses. A Client is
// safe for concurrent use.
type Client struct {
	NS FileSystem
	// Chunks talks to the data nodes; nil means a default client.
	Chunks *chunkstore.Client
	// Log receives warnings about failed replicas, which the client
	// works around; nil discards them.
	Log *slog.Logger
	// Node and Zone say where the client runs when that is on a data
	// node: it then reads the nearest replicas first and writes the first
	// replica of each chunk to its own node.
	Node, Zone string
	// NoLocalSockets reads every replica over HTTP, even one whose data
	// node runs on this host (no short-circuit reads).
	NoLocalSockets bool
}

// NewClient returns a client that reaches the namespace through ns and
// logs to log (nil: nowhere).
func NewClient(ns FileSystem, log *slog.Logger) *Client {
	return &Client{NS: ns, Log: log}
}

func (c *Client) chunks() *chunkstore.Client {
	if c.Chunks != nil {
		return c.Chunks
	}
	return &chunkstore.Client{}
}

func (c *Client) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Upload writes r into a new file at path, as [Writer.Write] does. size is
// the number of bytes r must yield, or -1 when unknown. The file exists,
// closed, only if Upload returns nil: if r fails or ends early, or ctx
// ends, nothing is left behind (an overwritten file keeps its old
// contents).
func (c *Client) Upload(ctx context.Context, path string, r io.Reader, size int64, o api.UploadOptions) (*api.FileInfo, error) {
	w := &Writer{NS: c.NS, Chunks: c.chunks(), Log: c.log()}
	return w.Write(ctx, path, r, WriteOptions{Replication: o.Replication, ChunkSize: o.ChunkSize,
		Overwrite: o.Overwrite, Size: size, Writer: c.Node})
}

// Open returns a reader of the closed file at path (which may be in a
// snapshot), as [NewReader] makes, with the file's description. The
// reader's bytes end at fi.Size; it returns an error rather than end early
// when part of the file cannot be read. The caller must Close it.
func (c *Client) Open(ctx context.Context, path string) (io.ReadCloser, *api.FileInfo, error) {
	fi, err := c.NS.FSStat(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	rd, err := c.Reader(ctx, fi)
	if err != nil {
		return nil, nil, err
	}
	return rd, fi, nil
}

// Reader is Open for a file already described by FSStat.
func (c *Client) Reader(ctx context.Context, fi *api.FileInfo) (io.ReadCloser, error) {
	switch {
	case fi.Dir:
		return nil, fmt.Errorf("%w: %s", ErrIsDir, fi.Path)
	case fi.State != api.FileClosed:
		return nil, fmt.Errorf("%w: %s", ErrNotDone, fi.Path)
	}
	path := fi.Path
	refresh := func(ctx context.Context) (*api.FileInfo, error) { return c.NS.FSStat(ctx, path) }
	return NewReader(ctx, c.chunks(), fi, ReadOptions{Node: c.Node, Zone: c.Zone, NoLocalSockets: c.NoLocalSockets,
		Refresh: refresh}, c.log()), nil
}
