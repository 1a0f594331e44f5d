package functions

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// handleList serves GET /v1/functions?cluster=C&name=N: the functions the
// caller may see (a cluster's token sees its own cluster's only; naming
// another cluster is refused with 403), optionally of one cluster and
// one name.
func (s *Service) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cluster, name := q.Get("cluster"), q.Get("name")
	if p, _ := httpapi.PrincipalOf(r); !p.Operator() {
		if cluster != "" && !allowCluster(w, r, cluster) {
			return
		}
		cluster = p.Cluster
	}
	s.query(w, r, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		out := []*api.Function{}
		for _, f := range snap.Functions(ws, cluster) {
			if name == "" || f.Name == name {
				out = append(out, f)
			}
		}
		return out, nil
	})
}

// handleGet serves GET /v1/clusters/{cluster}/functions/{name}.
func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) {
	cluster, name := r.PathValue("cluster"), r.PathValue("name")
	if !allowCluster(w, r, cluster) {
		return
	}
	s.query(w, r, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		f := snap.Function(ws, cluster, name)
		if f == nil {
			return nil, fmt.Errorf("%w: function %s in cluster %s", state.ErrNotFound, name, cluster)
		}
		return f, nil
	})
}

// handleStatus serves GET /v1/clusters/{cluster}/functions/{name}/status:
// the function with what the cluster's ready agents report of its
// sandboxes and invocations (agents that do not answer within
// agentTimeout are listed in Unreachable), its queue's depth and its
// provisioned target, computed as the provisioner computes it.
func (s *Service) handleStatus(w http.ResponseWriter, r *http.Request) {
	f, ok := s.function(w, r)
	if !ok {
		return
	}
	st := &api.FunctionStatus{Function: f, Sandboxes: []*api.SandboxInfo{}}
	reports, missing := gather[api.SandboxReport](r.Context(), s, readyAgents(s.cfg.Store.Snapshot(), f.Cluster), "/v1/agent/functions")
	st.Unreachable = missing
	var counters []*api.FunctionCounters
	for _, rep := range sortedReports(reports) {
		for _, sb := range rep.Sandboxes {
			if sb.Cluster == f.Cluster && sb.Function == f.Name {
				st.Sandboxes = append(st.Sandboxes, sb)
			}
		}
		for _, c := range rep.Functions {
			if c.Cluster == f.Cluster && c.Function == f.Name {
				st.Invocations += c.Invocations
				st.WarmHits += c.WarmHits
				st.ColdStarts += c.ColdStarts
				counters = append(counters, c)
			}
		}
	}
	if st.Invocations > 0 {
		st.WarmHitRate = float64(st.WarmHits) / float64(st.Invocations)
	}
	st.ProvisionedTarget = Target(f.Version(0).Config, counters)
	if q := s.cfg.Queue; q != nil {
		ctx, cancel := context.WithTimeout(r.Context(), agentTimeout)
		queued, dead, err := q.Depth(ctx, f.Cluster, f.Name)
		cancel()
		if err != nil {
			s.log.Warn("reading a function's queue depth", "cluster", f.Cluster, "function", f.Name, "err", err)
		} else {
			st.Queued, st.DeadLetters = queued, dead
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, st)
}

// sortedReports returns the reports in node order, so that answers are
// stable.
func sortedReports(m map[string]*api.SandboxReport) []*api.SandboxReport {
	nodes := make([]string, 0, len(m))
	for n := range m {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	out := make([]*api.SandboxReport, len(nodes))
	for i, n := range nodes {
		out[i] = m[n]
	}
	return out
}

// handleDelete serves DELETE /v1/clusters/{cluster}/functions/{name}:
// the function goes from the state through Raft; then, best effort, its
// queue is purged and its bundles removed.
func (s *Service) handleDelete(w http.ResponseWriter, r *http.Request) {
	cluster, name := r.PathValue("cluster"), r.PathValue("name")
	if !allowCluster(w, r, cluster) {
		return
	}
	out, idx, err := s.cfg.Apply(fsm.FunctionDelete, &state.FunctionDeleteRequest{Cluster: cluster, Name: name})
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	s.log.Info("function deleted", "cluster", cluster, "function", name)
	ctx := context.WithoutCancel(r.Context())
	if q := s.cfg.Queue; q != nil {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := q.Purge(qctx, cluster, name); err != nil {
			s.log.Warn("purging a deleted function's queue", "cluster", cluster, "function", name, "err", err)
		}
		cancel()
	}
	if f, ok := out.(*api.Function); ok {
		// A function deployed again under the same name since the delete
		// keeps the bundles it uses (and so their directory).
		again := s.cfg.Store.Snapshot().Function(nil, cluster, name)
		var paths []string
		seen := map[string]bool{}
		for _, v := range f.Versions {
			if !seen[v.Bundle] && !hasBundle(again, v.SHA256) {
				seen[v.Bundle] = true
				paths = append(paths, v.Bundle)
			}
		}
		if again == nil {
			// The directory goes last, once empty.
			paths = append(paths, bundleDir(cluster, name))
		}
		s.removeBundles(ctx, paths...)
	}
	w.Header().Set(api.IndexHeader, strconv.FormatUint(idx, 10))
	httpapi.WriteJSON(w, http.StatusOK, api.WriteResponse{Index: idx})
}

// handleLogs serves GET /v1/clusters/{cluster}/functions/{name}/logs
// ?since=RFC3339Nano&request_id=ID: the invocation logs that the
// cluster's ready agents hold, merged and sorted by start. Agents that
// do not answer within agentTimeout are left out.
func (s *Service) handleLogs(w http.ResponseWriter, r *http.Request) {
	f, ok := s.function(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	v := url.Values{"cluster": {f.Cluster}, "function": {f.Name}}
	if since := q.Get("since"); since != "" {
		if _, err := time.Parse(time.RFC3339Nano, since); err != nil {
			httpapi.WriteErr(w, fmt.Errorf("%w: since: %q is not a time such as 2006-01-02T15:04:05Z", api.ErrInvalid, since))
			return
		}
		v.Set("since", since)
	}
	if id := q.Get("request_id"); id != "" {
		v.Set("request_id", id)
	}
	answers, missing := gather[[]*api.FunctionLogRecord](r.Context(), s, readyAgents(s.cfg.Store.Snapshot(), f.Cluster),
		"/v1/agent/functions/logs?"+v.Encode())
	if len(missing) > 0 {
		s.log.Info("function logs incomplete: agents did not answer", "cluster", f.Cluster, "function", f.Name, "nodes", missing)
	}
	out := []*api.FunctionLogRecord{}
	for _, recs := range answers {
		out = append(out, *recs...)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].RequestID < out[j].RequestID
	})
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// handleDeadLetters serves GET .../dlq: the function's dead letters.
func (s *Service) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	f, q, ok := s.deadLetters(w, r)
	if !ok {
		return
	}
	dls, err := q.DeadLetters(r.Context(), f.Cluster, f.Name)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	if dls == nil {
		dls = []*api.DeadLetter{}
	}
	httpapi.WriteJSON(w, http.StatusOK, dls)
}

// handleDeadLetter serves GET .../dlq/{id}: one dead letter (404 when
// there is no such letter).
func (s *Service) handleDeadLetter(w http.ResponseWriter, r *http.Request) {
	f, q, ok := s.deadLetters(w, r)
	if !ok {
		return
	}
	dl, err := q.DeadLetter(r.Context(), f.Cluster, f.Name, r.PathValue("id"))
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, dl)
}

// handleRedrive serves POST .../dlq/redrive with an api.Redrive body (an
// empty body redrives every dead letter) and answers api.RedriveResult.
func (s *Service) handleRedrive(w http.ResponseWriter, r *http.Request) {
	f, q, ok := s.deadLetters(w, r)
	if !ok {
		return
	}
	var req api.Redrive
	if r.ContentLength != 0 && !httpapi.DecodeBody(w, r, &req, api.MaxBodyBytes) {
		return
	}
	ids, err := q.Redrive(r.Context(), f.Cluster, f.Name, req.IDs)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	if ids == nil {
		ids = []string{}
	}
	httpapi.WriteJSON(w, http.StatusOK, api.RedriveResult{Redriven: ids})
}
