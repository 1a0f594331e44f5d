package server

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// handleLogs streams a task's output from the agent of the node that ran
// its current (or last) attempt.
func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	q := r.URL.Query()
	snap := s.store.Snapshot()
	j := snap.Job(nil, id)
	if j == nil || !principalOf(r).Sees(j.Cluster) {
		writeErr(w, fmt.Errorf("%w: no job named %q", state.ErrNotFound, id))
		return
	}
	group := q.Get("group")
	if group == "" {
		group = j.Groups[0].Name
	}
	index := 0
	if v := q.Get("task"); v != "" {
		i, err := strconv.Atoi(v)
		if err != nil || i < 0 {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("task: %q is not a task index", v))
			return
		}
		index = i
	}
	stream := q.Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("stream: %q is not stdout or stderr", stream))
		return
	}
	t := snap.Task(nil, state.TaskID(id, group, index))
	if t == nil {
		writeErr(w, fmt.Errorf("%w: job %s has no task %s/%d", state.ErrNotFound, id, group, index))
		return
	}
	if t.Node == "" || t.RunID == 0 {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("task %s/%d has not been placed on a node yet (state %s)", group, index, t.State))
		return
	}
	n := snap.Node(nil, t.Node)
	if n == nil || n.Addr == "" {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, fmt.Sprintf("node %s, which ran task %s/%d, is unknown", t.Node, group, index))
		return
	}
	v := url.Values{}
	v.Set("task", t.ID)
	v.Set("run", strconv.FormatUint(t.RunID, 10))
	v.Set("stream", stream)
	v.Set("follow", q.Get("follow"))
	// The agent serves the file; a flushing proxy passes a followed log on
	// as the task writes it.
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: s.scheme(), Host: n.Addr, Path: "/v1/agent/logs", RawQuery: v.Encode()}
			pr.Out.Host = n.Addr
			// The agent needs a capability for this task's logs, which
			// the caller, allowed to see the job, gets from us; the
			// caller's own token stays here.
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Set(api.CapabilityHeader, s.capability(capability.OpLogs, t.ID, principalOf(r).Cluster))
		},
		FlushInterval: -1,
		Transport:     s.peerTransport(tlsfiles.RoleAgent),
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable,
				fmt.Sprintf("node %s (state %s), which ran task %s/%d, cannot be reached: %v", n.Name, n.State, group, index, err))
		},
	}
	proxy.ServeHTTP(w, r)
}
