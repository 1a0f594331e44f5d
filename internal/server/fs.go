package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// fsRoutes adds the file system endpoints. Namespace writes go through
// Raft on the leader; data streams (upload and download) are served by
// whichever server receives them, which writes metadata through its own
// API (and so through the leader) and moves the bytes to and from the data
// nodes directly. Every tenant route checks that a cluster's token names
// only paths inside its cluster's directory.
func (s *Server) fsRoutes(read, write, tenantRead, tenantWrite func(string, http.HandlerFunc)) {
	fsTables := []string{state.TableFS, state.TableChunks, state.TableNodes}
	tenantRead("GET /v1/fs/stat", func(w http.ResponseWriter, r *http.Request) {
		s.pathQuery(fsTables, func(snap *state.Snapshot, ws memdb.WatchSet, p string) (any, error) {
			fi, err := snap.FSStat(ws, p)
			if err != nil {
				return nil, err
			}
			return s.grantReads(r, fi), nil
		})(w, r)
	})
	tenantRead("GET /v1/fs/list", s.pathQuery(fsTables, func(snap *state.Snapshot, ws memdb.WatchSet, p string) (any, error) {
		return snap.FSList(ws, p)
	}))
	tenantRead("GET /v1/fs/snapshots", func(w http.ResponseWriter, r *http.Request) {
		dir := r.URL.Query().Get("dir")
		if p := principalOf(r); dir == "" && !p.Operator() {
			dir = api.ClusterRoot(p.Cluster)
		}
		if dir != "" {
			var err error
			if dir, err = api.CleanPath("dir", dir); err != nil {
				writeErr(w, err)
				return
			}
		}
		if !allowPaths(w, r, dir) {
			return
		}
		s.query(w, r, []string{state.TableFS}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
			return snap.FSSnapshots(ws, dir), nil
		})
	})
	read("GET /v1/fs/status", func(w http.ResponseWriter, r *http.Request) {
		s.query(w, r, fsTables, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
			return s.fsStatus(snap, ws), nil
		})
	})
	tenantRead("PUT /v1/fs/data", s.handleUpload)
	tenantRead("GET /v1/fs/data", s.handleDownload)

	tenantWrite("POST /v1/fs/mkdir", fsWrite(s, fsm.FSMkdir, func(b api.Mkdir, now time.Time) any {
		return &state.FSMkdirRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/create", fsWrite(s, fsm.FSCreate, func(b api.FileCreate, now time.Time) any {
		return &state.FSCreateRequest{Req: b, Now: now, LeaseSeconds: int(s.cfg.OpenFileLease / time.Second)}
	}))
	tenantWrite("POST /v1/fs/allocate", s.handleAllocate)
	tenantWrite("POST /v1/fs/commit", fsWrite(s, fsm.FSCommit, func(b api.ChunkCommit, now time.Time) any {
		return &state.FSCommitRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/close", fsWrite(s, fsm.FSClose, func(b api.FileClose, now time.Time) any {
		return &state.FSCloseRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/abort", fsWrite(s, fsm.FSAbort, func(b api.FileAbort, now time.Time) any {
		return &state.FSAbortRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/renew", fsWrite(s, fsm.FSRenew, func(b api.FileRenew, now time.Time) any {
		return &state.FSRenewRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/remove", fsWrite(s, fsm.FSRemove, func(b api.Remove, now time.Time) any {
		return &state.FSRemoveRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/rename", fsWrite(s, fsm.FSRename, func(b api.Rename, now time.Time) any {
		return &state.FSRenameRequest{Req: b, Now: now}
	}))
	tenantWrite("POST /v1/fs/snapshots", fsWrite(s, fsm.FSSnapshot, func(b api.SnapshotRequest, now time.Time) any {
		return &state.FSSnapshotRequest{Req: b, Now: now}
	}))
	tenantWrite("DELETE /v1/fs/snapshots", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if !allowPaths(w, r, q.Get("dir")) {
			return
		}
		s.write(w, fsm.FSSnapshot, &state.FSSnapshotRequest{Delete: true, Now: s.now(),
			Req: api.SnapshotRequest{Dir: q.Get("dir"), Name: q.Get("name")}})
	})
	write("POST /v1/fs/corrupt", s.handleCorrupt)
	write("PUT /v1/nodes/{name}/chunks", s.handleChunkReport)
}

// fsWrite serves a namespace write: it decodes the JSON body strictly into
// a B, checks that the caller may use the paths it names, and applies the
// Raft entry that wrap makes of it, stamped with now.
func fsWrite[B any](s *Server, t fsm.MessageType, wrap func(b B, now time.Time) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var b B
		if !decodeBody(w, r, &b) || !allowPaths(w, r, fsPaths(&b)...) {
			return
		}
		s.write(w, t, wrap(b, s.now()))
	}
}

// pathQuery serves a blocking read of the DFS path named by ?path=.
func (s *Server) pathQuery(tables []string, fn func(*state.Snapshot, memdb.WatchSet, string) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := api.CleanPath("path", r.URL.Query().Get("path"))
		if err != nil {
			writeErr(w, err)
			return
		}
		if !allowPaths(w, r, p) {
			return
		}
		s.query(w, r, tables, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
			return fn(snap, ws, p)
		})
	}
}

func (s *Server) fsStatus(snap *state.Snapshot, ws memdb.WatchSet) *api.FSStatus {
	st := snap.FSStatus(ws)
	if m := s.replication(); m != nil {
		st.RepairedBytes, st.RepairsRunning = m.RepairedBytes(), int(m.Running())
		st.MovedBytes, st.MovesRunning = m.MovedBytes(), int(m.Moving())
	}
	return st
}

// handleUpload streams the request body into a new file. The body is
// never held in memory beyond one buffer per replica.
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, err := api.CleanPath("path", q.Get("path"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if !allowPaths(w, r, p) {
		return
	}
	o := dfs.WriteOptions{Size: r.ContentLength, Overwrite: q.Get("overwrite") == "true"}
	if v := q.Get("chunk_size"); v != "" {
		if o.ChunkSize, err = strconv.ParseInt(v, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("chunk_size: %q is not an integer", v))
			return
		}
	}
	if v := q.Get("replication"); v != "" {
		if o.Replication, err = strconv.Atoi(v); err != nil {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("replication: %q is not an integer", v))
			return
		}
	}
	fi, err := s.dfsWriter().Write(r.Context(), p, r.Body, o)
	if err != nil {
		var ae *api.Error
		switch {
		case errors.As(err, &ae):
			writeError(w, ae.Status, ae.Code, ae.Message)
		case errors.Is(err, dfs.ErrShortBody) || errors.Is(err, io.ErrUnexpectedEOF) || r.Context().Err() != nil:
			writeError(w, http.StatusBadRequest, api.CodeInvalid, "upload of "+p+" ended early; nothing was written: "+err.Error())
		default:
			writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, err.Error())
		}
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// handleDownload streams a closed file. If no replica can serve part of it
// after the headers went out, the connection is cut so that the client
// sees a short body, never wrong bytes.
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	p, err := api.CleanPath("path", r.URL.Query().Get("path"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if !allowPaths(w, r, p) {
		return
	}
	fi, err := s.store.Snapshot().FSFile(nil, p)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.grantReads(r, fi)
	refresh := func(context.Context) (*api.FileInfo, error) {
		fi, err := s.store.Snapshot().FSFile(nil, p)
		if err != nil {
			return nil, err
		}
		s.grantReads(r, fi)
		return fi, nil
	}
	rd := dfs.NewReader(r.Context(), s.chunkClient, fi, dfs.ReadOptions{Refresh: refresh}, s.log)
	defer rd.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
	if _, err := io.CopyBuffer(w, rd, make([]byte, 1<<20)); err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("download failed", "path", p, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// handleCorrupt drops a replica that failed its checksum; the replication
// manager then copies the chunk from a good replica.
func (s *Server) handleCorrupt(w http.ResponseWriter, r *http.Request) {
	var req api.CorruptChunk
	if !decodeBody(w, r, &req) {
		return
	}
	s.log.Warn("corrupt replica reported", "chunk", req.Chunk, "node", req.Node)
	s.write(w, fsm.FSReplicas, &state.FSReplicaRequest{Chunk: req.Chunk, Remove: []string{req.Node},
		Reason: "corrupt on " + req.Node, Now: s.now()})
}

// handleChunkReport reconciles a data node's inventory (leader only).
func (s *Server) handleChunkReport(w http.ResponseWriter, r *http.Request) {
	var req api.ChunkReport
	if !decodeBody(w, r, &req) {
		return
	}
	m := s.replication()
	if m == nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeNoLeader, "this server is not leading yet; retry")
		return
	}
	del, err := m.Reconcile(r.PathValue("name"), req.Chunks, 10*time.Second)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ChunkReportResponse{Delete: del})
}
