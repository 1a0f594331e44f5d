package agent

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/agent/logs", a.handleLogs)
	mux.HandleFunc("POST /v1/local/launch", a.handleLocalLaunch)
	mux.HandleFunc("POST /v1/local/checkpoint", a.handleCheckpointCommit)
	chunks := a.chunks.Handler(chunkstore.HandlerOptions{OnCorrupt: a.reportCorrupt,
		ReplicateRate: max(a.cfg.RepairRate, 0), Log: a.log, Client: a.chunkClient.HTTP, Authorize: a.authorize})
	mux.Handle("/v1/chunks", chunks)
	mux.Handle("/v1/chunks/", chunks)
	a.functionRoutes(mux)
	mux.Handle("GET /metrics", a.metrics.handler())
	mux.HandleFunc("GET /v1/agent/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"node": a.cfg.Name, "isolated": a.driver.Isolated()})
	})
	if a.cfg.EnableDebug {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func logError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

// handleLogs serves one run's stdout or stderr; with follow=true it keeps
// streaming until the run has ended and everything is sent. The request
// needs a logs capability for the task, which the servers give to callers
// allowed to see its job.
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := a.authorize(r, capability.OpLogs, q.Get("task")); err != nil {
		status, code := capabilityStatus(err)
		logError(w, status, code, err.Error())
		return
	}
	parts := strings.Split(q.Get("task"), "/")
	runID, err := strconv.ParseUint(q.Get("run"), 10, 64)
	stream := q.Get("stream")
	if len(parts) != 3 || err != nil || (stream != "stdout" && stream != "stderr") {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "task must be job/group/index, run a number and stream stdout or stderr")
		return
	}
	index, err := strconv.Atoi(parts[2])
	if err != nil || api.ValidateName("job", parts[0]) != nil || api.ValidateName("group", parts[1]) != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "malformed task id")
		return
	}
	matches, _ := filepath.Glob(filepath.Join(allocRoot(a.cfg.DataDir), "*", parts[0],
		parts[1]+"-"+strconv.Itoa(index)+"-"+strconv.FormatUint(runID, 10), stream))
	if len(matches) == 0 {
		logError(w, http.StatusNotFound, api.CodeNotFound, "no output for task "+q.Get("task")+" on node "+a.cfg.Name+" (its data may have been wiped)")
		return
	}
	f, err := os.Open(matches[0])
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, fs.ErrNotExist) {
			code = http.StatusNotFound
		}
		logError(w, code, api.CodeNotFound, err.Error())
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if q.Get("follow") != "true" {
		io.Copy(w, f)
		return
	}
	a.mu.Lock()
	rn := a.runs[runKey{q.Get("task"), runID}]
	a.mu.Unlock()
	fl, _ := w.(http.Flusher)
	for {
		io.Copy(w, f)
		if fl != nil {
			fl.Flush()
		}
		if rn == nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-rn.done:
			io.Copy(w, f)
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
