package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/lambdart"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// Functions. The agent hosts the sandboxes of its cluster's functions
// (package lambdart) and serves the servers, which route invocations to
// it, on its HTTP port:
//
//	POST /v1/agent/functions/invoke       SandboxInvocation -> 200 SandboxResult,
//	                                      409 SandboxResult{Declined} when no sandbox is idle,
//	                                      or {Declined, AtShare} at the function's share
//	                                      (framed bodies, payloads raw: see api.WriteFramed)
//	PUT  /v1/agent/functions/provisioned  ProvisionedSet -> 204
//	GET  /v1/agent/functions              -> 200 SandboxReport
//	GET  /v1/agent/functions/logs?cluster=C&function=F&since=RFC3339Nano&request_id=ID
//	                                      -> 200 []FunctionLogRecord
//
// With TLS, only callers holding a server certificate may use them (403
// otherwise). A function must be of the node's current cluster (409
// otherwise). Sandboxes get a network namespace on the cluster network
// when tasks do, and their bundles come from the DFS.

// functionsDir holds the agent's function bundles, sandboxes and logs.
func functionsDir(dataDir string) string { return filepath.Join(dataDir, "functions") }

// startFunctions makes the function sandbox pool and its metrics; fetch
// gets bundles (a.fetchBundle, from the DFS).
func (a *Agent) startFunctions(fetch lambdart.FetchFunc) error {
	cfg := lambdart.Config{Node: a.cfg.Name, Dir: functionsDir(a.cfg.DataDir), Driver: a.driver,
		Fetch: fetch, Log: a.log, IdleTimeout: a.cfg.FunctionIdleTimeout, Room: a.sandboxRoom}
	if a.net != nil && a.net.mgr != nil {
		cfg.Network = functionNetwork{a}
	}
	pool, err := lambdart.New(cfg)
	if err != nil {
		return fmt.Errorf("agent: functions: %w", err)
	}
	m := a.metrics
	pool.SetHooks(lambdart.Hooks{
		Invoked: func(fn, outcome string) {
			if outcome == lambdart.OutcomeDeclined {
				m.fnDeclines.Inc()
				return
			}
			m.fnInvocations.WithLabelValues(fn, outcome).Inc()
		},
		ColdStart: func(string) { m.fnColdStarts.Inc() },
		WarmHit:   func(string) { m.fnWarmHits.Inc() },
	})
	for _, state := range []string{api.SandboxStarting, api.SandboxIdle, api.SandboxBusy} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_agent_fn_sandboxes", Help: "Function sandboxes on this node, by state.",
			ConstLabels: prometheus.Labels{"state": state}},
			func() float64 {
				n := 0
				for _, s := range pool.Report().Sandboxes {
					if s.State == state {
						n++
					}
				}
				return float64(n)
			}))
	}
	a.fns = pool
	return nil
}

// fnMetrics are the agent's function counters, part of agentMetrics.
type fnMetrics struct {
	fnInvocations *prometheus.CounterVec
	fnColdStarts  prometheus.Counter
	fnWarmHits    prometheus.Counter
	fnDeclines    prometheus.Counter
}

func newFnMetrics(reg *prometheus.Registry) fnMetrics {
	m := fnMetrics{
		fnInvocations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_agent_fn_invocations_total",
			Help: "Function invocations run on this node, by function and outcome (ok, error, timeout, oom, crash)."},
			[]string{"function", "outcome"}),
		fnColdStarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_agent_fn_cold_starts_total",
			Help: "Function invocations that started a sandbox on this node."}),
		fnWarmHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_agent_fn_warm_hits_total",
			Help: "Function invocations served by an idle sandbox on this node."}),
		fnDeclines: prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_agent_fn_declines_total",
			Help: "Function invocations this node declined: no idle sandbox and no cold start asked for, or the function at its share of its concurrency."}),
	}
	reg.MustRegister(m.fnInvocations, m.fnColdStarts, m.fnWarmHits, m.fnDeclines)
	return m
}

// closeFunctions stops every function sandbox.
func (a *Agent) closeFunctions() {
	if a.fns != nil {
		a.fns.Close()
	}
}

// functionNetwork gives function sandboxes namespaces on the cluster
// network, as runs get (see attachRun).
type functionNetwork struct{ a *Agent }

// Attach gives sandbox id a namespace when the node holds cluster's
// network; none (the host's network) otherwise.
func (n functionNetwork) Attach(cluster, id string) (string, string, error) {
	if n.a.endpointAddr(cluster) == "" {
		return "", "", nil
	}
	tn, err := n.a.net.mgr.AddTask(id)
	if err != nil {
		return "", "", err
	}
	return tn.NetNS, tn.Addr.String(), nil
}

// Detach frees sandbox id's namespace.
func (n functionNetwork) Detach(id string) {
	if err := n.a.net.mgr.RemoveTask(id); err != nil {
		n.a.log.Warn("removing a function sandbox's network namespace", "sandbox", id, "err", err)
	}
}

// fetchBundle reads a version's bundle from the DFS.
func (a *Agent) fetchBundle(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error {
	root := api.ClusterRoot(cluster)
	if !api.WithinDir(v.Bundle, root) {
		return fmt.Errorf("bundle %s is outside the cluster's directory %s", v.Bundle, root)
	}
	fi, err := a.client.FSStat(ctx, v.Bundle)
	if err != nil {
		return err
	}
	if fi.Dir || fi.State != api.FileClosed {
		return fmt.Errorf("bundle %s is not a closed file", v.Bundle)
	}
	path := fi.Path
	refresh := func(ctx context.Context) (*api.FileInfo, error) { return a.client.FSStat(ctx, path) }
	rd := dfs.NewReader(ctx, a.chunkClient, fi, dfs.ReadOptions{Node: a.cfg.Name, Zone: a.cfg.Zone, Refresh: refresh}, a.log)
	defer rd.Close()
	_, err = io.Copy(w, rd)
	return err
}

// functionRoutes adds the function routes to mux.
func (a *Agent) functionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/agent/functions/invoke", a.serversOnly(a.handleFnInvoke))
	mux.HandleFunc("PUT /v1/agent/functions/provisioned", a.serversOnly(a.handleFnProvisioned))
	mux.HandleFunc("GET /v1/agent/functions", a.serversOnly(a.handleFnReport))
	mux.HandleFunc("GET /v1/agent/functions/logs", a.serversOnly(a.handleFnLogs))
}

// serversOnly refuses, when the agent serves TLS, callers without a
// server certificate.
func (a *Agent) serversOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.cfg.TLS != nil && !tlsfiles.PeerHasRole(r.TLS, tlsfiles.RoleServer) {
			a.metrics.refused.WithLabelValues("role", "functions", "not a server").Inc()
			logError(w, http.StatusForbidden, api.CodeForbidden,
				"only servers may call the function routes of an agent (a certificate naming "+tlsfiles.RoleName(tlsfiles.RoleServer)+" is required)")
			return
		}
		if a.fns == nil {
			logError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the agent's functions are not running")
			return
		}
		h(w, r)
	}
}

// checkFnCluster answers 409 and reports false when cluster is not the
// node's cluster.
func (a *Agent) checkFnCluster(w http.ResponseWriter, cluster string) bool {
	a.mu.Lock()
	mine := a.cluster
	a.mu.Unlock()
	if cluster == "" || cluster != mine {
		msg := fmt.Sprintf("node %s is not a member of cluster %q", a.cfg.Name, cluster)
		if mine != "" {
			msg += " (it serves cluster " + mine + ")"
		}
		logError(w, http.StatusConflict, api.CodeConflict, msg)
		return false
	}
	return true
}

func (a *Agent) handleFnInvoke(w http.ResponseWriter, r *http.Request) {
	var inv api.SandboxInvocation
	payload, err := api.ReadFramed(r.Header, r.Body, api.MaxInvokePayload, &inv)
	if err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "reading the invocation: "+err.Error())
		return
	}
	inv.Payload = payload
	if err := api.ValidateFunctionName("function", inv.Function); err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
		return
	}
	if inv.Version == nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "the invocation names no version")
		return
	}
	if !a.checkFnCluster(w, inv.Cluster) {
		return
	}
	res, err := a.fns.Invoke(r.Context(), &inv)
	if err != nil {
		status, code := http.StatusServiceUnavailable, api.CodeUnavailable
		switch {
		case errors.Is(err, lambdart.ErrInvalid):
			status, code = http.StatusBadRequest, api.CodeInvalid
		case errors.Is(err, lambdart.ErrBadBundle):
			status, code = http.StatusInternalServerError, api.CodeInternal
		}
		a.log.Warn("function invocation not run", "function", inv.Function, "request", inv.RequestID, "err", err)
		logError(w, status, code, err.Error())
		return
	}
	status := http.StatusOK
	if res.Declined {
		status = http.StatusConflict
	}
	api.WriteFramed(w, status, res, res.Payload)
}

func (a *Agent) handleFnProvisioned(w http.ResponseWriter, r *http.Request) {
	var set api.ProvisionedSet
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<20)).Decode(&set); err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "decoding the provisioned set: "+err.Error())
		return
	}
	a.mu.Lock()
	mine := a.cluster
	a.mu.Unlock()
	kept := &api.ProvisionedSet{}
	for _, f := range set.Functions {
		if f == nil {
			continue
		}
		if err := api.ValidateFunctionName("function", f.Function); err != nil {
			logError(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
			return
		}
		if f.Cluster != mine {
			// The servers' view of the node's cluster is ahead of or
			// behind the agent's; the next set will agree.
			a.log.Warn("ignoring provisioned sandboxes of another cluster", "function", f.Function, "cluster", f.Cluster, "node_cluster", mine)
			continue
		}
		kept.Functions = append(kept.Functions, f)
	}
	if err := a.fns.SetProvisioned(kept); err != nil {
		status, code := http.StatusServiceUnavailable, api.CodeUnavailable
		if errors.Is(err, lambdart.ErrInvalid) {
			status, code = http.StatusBadRequest, api.CodeInvalid
		}
		logError(w, status, code, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) handleFnReport(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.fns.Report())
}

func (a *Agent) handleFnLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := api.ValidateFunctionName("function", q.Get("function")); err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
		return
	}
	var since time.Time
	if s := q.Get("since"); s != "" {
		var err error
		if since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			logError(w, http.StatusBadRequest, api.CodeInvalid, "since must be an RFC 3339 time: "+err.Error())
			return
		}
	}
	if !a.checkFnCluster(w, q.Get("cluster")) {
		return
	}
	writeJSON(w, http.StatusOK, a.fns.Logs(q.Get("cluster"), q.Get("function"), since, q.Get("request_id")))
}

// sandboxRoom is the memory (MiB) function sandboxes may take: the node's,
// less what the tasks running on it reserve. (The servers' placement of
// tasks does not count sandboxes: a node full of sandboxes may still be
// given tasks, which then share its memory.)
func (a *Agent) sandboxRoom() int64 {
	if a.cfg.MemoryMB <= 0 {
		return math.MaxInt64 // not known: no limit
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	room := a.cfg.MemoryMB
	for _, r := range a.runs {
		room -= r.task.Resources.MemoryMB
	}
	return room
}
