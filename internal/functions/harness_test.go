package functions_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/functions"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const operatorToken = "op-token"

// env is an in-process control plane: a state store written through the
// real FSM (Raft replaced by a counter of entries), a fake DFS, fake
// agents, a fake queue and the service's routes behind a bearer-token
// authenticator like the server's.
type env struct {
	t       *testing.T
	store   *state.Store
	fsm     *fsm.FSM
	svc     *functions.Service
	api     *httptest.Server
	mu      sync.Mutex
	index   uint64
	entries int               // entries applied through Apply
	files   map[string][]byte // the fake DFS
	writes  int
	removed []string
	agents  map[string]*fakeAgent
	queue   *fakeQueue
	reg     *prometheus.Registry
	clock   time.Time // the service's clock; t0 unless a test moves it
}

func newEnv(t *testing.T, withQueue bool) *env {
	t.Helper()
	e := &env{t: t, store: state.New(), files: map[string][]byte{}, agents: map[string]*fakeAgent{}, reg: prometheus.NewRegistry(), clock: t0}
	e.fsm = fsm.New(e.store, slog.New(slog.DiscardHandler))
	cfg := functions.Config{
		Store: e.store,
		Apply: func(typ fsm.MessageType, req any) (any, uint64, error) {
			e.mu.Lock()
			e.entries++
			e.mu.Unlock()
			res := e.raw(typ, req)
			return res.Value, e.index, res.Err
		},
		WriteBundle: func(_ context.Context, path string, data []byte) (*api.FileInfo, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.files[path] = bytes.Clone(data)
			e.writes++
			return &api.FileInfo{Path: path, Size: int64(len(data))}, nil
		},
		RemoveBundle: func(_ context.Context, path string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			delete(e.files, path)
			e.removed = append(e.removed, path)
			return nil
		},
		OperatorToken: operatorToken,
		Now: func() time.Time {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.clock
		},
		Metrics: e.reg,
	}
	if withQueue {
		e.queue = &fakeQueue{letters: map[string]*api.DeadLetter{}}
		cfg.Queue = e.queue
	}
	e.svc = functions.New(cfg)
	mux := http.NewServeMux()
	operatorOnly := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if p, _ := httpapi.PrincipalOf(r); !p.Operator() {
				httpapi.WriteErr(w, httpapi.ErrForbidden)
				return
			}
			h(w, r)
		}
	}
	reg := func(p string, h http.HandlerFunc) { mux.HandleFunc(p, h) }
	e.svc.Routes(&httpapi.Router{
		Read:         func(p string, h http.HandlerFunc) { reg(p, operatorOnly(h)) },
		Write:        func(p string, h http.HandlerFunc) { reg(p, operatorOnly(h)) },
		TenantRead:   reg,
		TenantWrite:  reg,
		TenantUpload: func(p string, _ int64, h http.HandlerFunc) { reg(p, h) },
		Signed:       reg,
	})
	e.api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		var p httpapi.Principal
		if tok != operatorToken {
			c := e.store.Snapshot().ClusterByToken(tok)
			if c == nil {
				httpapi.WriteErr(w, httpapi.ErrUnauthorized)
				return
			}
			p.Cluster = c.Name
		}
		mux.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	}))
	t.Cleanup(e.api.Close)
	return e
}

// raw applies an entry through the FSM.
func (e *env) raw(typ fsm.MessageType, req any) fsm.Result {
	e.t.Helper()
	data, err := fsm.Encode(typ, req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	e.index++
	idx := e.index
	e.mu.Unlock()
	return e.fsm.Apply(&raft.Log{Type: raft.LogCommand, Index: idx, Data: data}).(fsm.Result)
}

func (e *env) must(typ fsm.MessageType, req any) any {
	e.t.Helper()
	res := e.raw(typ, req)
	if res.Err != nil {
		e.t.Fatalf("%s: %v", typ, res.Err)
	}
	return res.Value
}

// addNode registers a ready pool node whose agent is a fake agent.
func (e *env) addNode(name, zone string) *fakeAgent {
	e.t.Helper()
	a := newFakeAgent(e.t, name)
	e.agents[name] = a
	e.must(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: name, Zone: zone, Addr: a.addr(), CPU: 1000, MemoryMB: 1024}, Now: t0})
	e.must(fsm.NodeState, &state.NodeStateRequest{Name: name, State: api.NodeReady, Now: t0})
	return a
}

// cluster creates a cluster of n pool nodes; its token is "token-NAME".
func (e *env) cluster(name string, n int) {
	e.t.Helper()
	e.must(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: name, Nodes: n}, Now: t0, Token: "token-" + name})
}

// do sends a request with token and decodes a 2xx answer into out; it
// returns the status and, for an error, the wire error's message.
func (e *env) do(token, method, path string, body, out any) (int, string) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.api.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		var eb api.ErrorBody
		json.Unmarshal(b, &eb)
		return resp.StatusCode, eb.Error.Message
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, ""
}

func (e *env) deploy(token, cluster, name string, d api.FunctionDeploy) (*api.Function, int, string) {
	e.t.Helper()
	var f api.Function
	st, msg := e.do(token, "PUT", "/v1/clusters/"+cluster+"/functions/"+name, d, &f)
	return &f, st, msg
}

// zipOf builds a zip of the given entries: a name ending in "/" is a
// directory, "->target" as content makes a symbolic link.
func zipOf(t *testing.T, entries map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range entries {
		h := &zip.FileHeader{Name: name, Method: zip.Deflate}
		switch {
		case strings.HasSuffix(name, "/"):
			h.SetMode(fs.ModeDir | 0o755)
		case strings.HasPrefix(content, "->"):
			h.SetMode(fs.ModeSymlink | 0o777)
			content = strings.TrimPrefix(content, "->")
		default:
			h.SetMode(0o755)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, content)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func bundle(t *testing.T, script string) []byte {
	return zipOf(t, map[string]string{"bootstrap": "#!/bin/sh\n" + script, "lib/x.txt": "x"})
}

// fakeAgent serves the agent's function endpoints from canned answers and
// records the provisioned sets it is sent.
type fakeAgent struct {
	node   string
	srv    *httptest.Server
	mu     sync.Mutex
	report api.SandboxReport
	logs   []*api.FunctionLogRecord
	fail   bool
	sets   []*api.ProvisionedSet
	query  string // the last logs query
}

func newFakeAgent(t *testing.T, node string) *fakeAgent {
	a := &fakeAgent{node: node, report: api.SandboxReport{Node: node}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.fail {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/agent/functions":
			httpapi.WriteJSON(w, http.StatusOK, a.report)
		case "GET /v1/agent/functions/logs":
			a.query = r.URL.RawQuery
			httpapi.WriteJSON(w, http.StatusOK, a.logs)
		case "PUT /v1/agent/functions/provisioned":
			var set api.ProvisionedSet
			if err := json.NewDecoder(r.Body).Decode(&set); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			a.sets = append(a.sets, &set)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeAgent) addr() string { return strings.TrimPrefix(a.srv.URL, "http://") }

// lastSet returns the last provisioned set the agent was sent, or nil.
func (a *fakeAgent) lastSet() *api.ProvisionedSet {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sets) == 0 {
		return nil
	}
	return a.sets[len(a.sets)-1]
}

// fakeQueue is a dead-letter queue in memory.
type fakeQueue struct {
	mu      sync.Mutex
	letters map[string]*api.DeadLetter
	purged  []string
}

func (q *fakeQueue) DeadLetters(_ context.Context, cluster, function string) ([]*api.DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*api.DeadLetter
	for _, d := range q.letters {
		if d.Cluster == cluster && d.Function == function {
			out = append(out, d)
		}
	}
	return out, nil
}

func (q *fakeQueue) DeadLetter(_ context.Context, cluster, function, id string) (*api.DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	d := q.letters[id]
	if d == nil || d.Cluster != cluster || d.Function != function {
		return nil, &notFound{id}
	}
	return d, nil
}

type notFound struct{ id string }

func (e *notFound) Error() string { return "no dead letter " + e.id }
func (e *notFound) Unwrap() error { return state.ErrNotFound }

func (q *fakeQueue) Redrive(_ context.Context, cluster, function string, ids []string) ([]string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []string
	for id, d := range q.letters {
		if d.Cluster == cluster && d.Function == function && (len(ids) == 0 || contains(ids, id)) {
			out = append(out, id)
			delete(q.letters, id)
		}
	}
	return out, nil
}

func (q *fakeQueue) Depth(_ context.Context, cluster, function string) (uint64, uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var dead uint64
	for _, d := range q.letters {
		if d.Cluster == cluster && d.Function == function {
			dead++
		}
	}
	return 7, dead, nil
}

func (q *fakeQueue) Purge(_ context.Context, cluster, function string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.purged = append(q.purged, cluster+"/"+function)
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// stateTables are the tables a refused request must leave alone.
var stateTables = []string{state.TableFunctions, state.TableFS, state.TableClusters}

// gauge returns the value of a gauge with labels cluster and function,
// or -1 when it has none.
func (e *env) gauge(name, cluster, function string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["cluster"] == cluster && labels["function"] == function {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// advance moves the service's clock.
func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock = e.clock.Add(d)
}

// puts returns how many provisioned sets the agent was sent.
func (a *fakeAgent) puts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sets)
}

func (a *fakeAgent) setFail(fail bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = fail
}
