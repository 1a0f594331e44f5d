package server

import (
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
// nodes directly.
func (s *Server) fsRoutes(mux *http.ServeMux, write func(string, http.HandlerFunc)) {
	fsTables := []string{state.TableFS, state.TableChunks, state.TableNodes}
	mux.HandleFunc("GET /v1/fs/stat", s.pathQuery(fsTables, func(snap *state.Snapshot, ws memdb.WatchSet, p string) (any, error) {
		return snap.FSStat(ws, p)
	}))
	mux.HandleFunc("GET /v1/fs/list", s.pathQuery(fsTables, func(snap *state.Snapshot, ws memdb.WatchSet, p string) (any, error) {
		return snap.FSList(ws, p)
	}))
	mux.HandleFunc("GET /v1/fs/snapshots", func(w http.ResponseWriter, r *http.Request) {
		dir := r.URL.Query().Get("dir")
		if dir != "" {
			var err error
			if dir, err = api.CleanPath("dir", dir); err != nil {
				writeErr(w, err)
				return
			}
		}
		s.query(w, r, []string{state.TableFS}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
			return snap.FSSnapshots(ws, dir), nil
		})
	})
	mux.HandleFunc("GET /v1/fs/status", func(w http.ResponseWriter, r *http.Request) {
		s.query(w, r, fsTables, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
			return s.fsStatus(snap, ws), nil
		})
	})
	mux.HandleFunc("PUT /v1/fs/data", s.handleUpload)
	mux.HandleFunc("GET /v1/fs/data", s.handleDownload)

	fsWrite := func(pattern string, t fsm.MessageType, newReq func(now time.Time) (req any, body any)) {
		write(pattern, func(w http.ResponseWriter, r *http.Request) {
			req, body := newReq(s.now())
			if !decodeBody(w, r, body) {
				return
			}
			s.write(w, t, req)
		})
	}
	fsWrite("POST /v1/fs/mkdir", fsm.FSMkdir, func(now time.Time) (any, any) {
		r := &state.FSMkdirRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/create", fsm.FSCreate, func(now time.Time) (any, any) {
		r := &state.FSCreateRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/allocate", fsm.FSAllocate, func(now time.Time) (any, any) {
		r := &state.FSAllocateRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/commit", fsm.FSCommit, func(now time.Time) (any, any) {
		r := &state.FSCommitRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/close", fsm.FSClose, func(now time.Time) (any, any) {
		r := &state.FSCloseRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/abort", fsm.FSAbort, func(now time.Time) (any, any) {
		r := &state.FSAbortRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/remove", fsm.FSRemove, func(now time.Time) (any, any) {
		r := &state.FSRemoveRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/rename", fsm.FSRename, func(now time.Time) (any, any) {
		r := &state.FSRenameRequest{Now: now}
		return r, &r.Req
	})
	fsWrite("POST /v1/fs/snapshots", fsm.FSSnapshot, func(now time.Time) (any, any) {
		r := &state.FSSnapshotRequest{Now: now}
		return r, &r.Req
	})
	write("DELETE /v1/fs/snapshots", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		s.write(w, fsm.FSSnapshot, &state.FSSnapshotRequest{Delete: true, Now: s.now(),
			Req: api.SnapshotRequest{Dir: q.Get("dir"), Name: q.Get("name")}})
	})
	write("POST /v1/fs/corrupt", s.handleCorrupt)
	write("PUT /v1/nodes/{name}/chunks", s.handleChunkReport)
}

// pathQuery serves a blocking read of the DFS path named by ?path=.
func (s *Server) pathQuery(tables []string, fn func(*state.Snapshot, memdb.WatchSet, string) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := api.CleanPath("path", r.URL.Query().Get("path"))
		if err != nil {
			writeErr(w, err)
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
	o := dfs.WriteOptions{Size: r.ContentLength, Overwrite: q.Get("overwrite") == "true"}
	for name, dst := range map[string]*int64{"chunk_size": &o.ChunkSize} {
		if v := q.Get(name); v != "" {
			if *dst, err = strconv.ParseInt(v, 10, 64); err != nil {
				writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("%s: %q is not an integer", name, v))
				return
			}
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
	fi, err := s.store.Snapshot().FSFile(nil, p)
	if err != nil {
		writeErr(w, err)
		return
	}
	rd := dfs.NewReader(r.Context(), s.chunkClient, fi, dfs.ReadOptions{}, s.log)
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
