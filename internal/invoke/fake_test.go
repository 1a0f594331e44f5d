package invoke

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// fakeAgent implements the agents' invoke contract: it runs an invocation
// when it has an idle sandbox of the version, declines (409) without
// Start, and on Start "starts" one. A payload {"fail":...} makes the
// function fail; a payload {"block":true} blocks until release is closed.
type fakeAgent struct {
	node string
	srv  *httptest.Server

	mu        sync.Mutex
	warm      map[int]int // version -> idle sandboxes
	load      int
	calls     int // requests received
	starts    int // requests with Start
	running   int
	noRoom    bool // answer Start with 503
	refuseAll bool // answer everything with 503 (a draining agent)
	// dieAfterDecline closes the agent's listener once it has declined.
	dieAfterDecline bool
	release         chan struct{}
	lastBody        api.SandboxInvocation
}

func newFakeAgent(t testing.TB, node string, load int, warmVersions ...int) *fakeAgent {
	a := &fakeAgent{node: node, load: load, warm: map[int]int{}, release: make(chan struct{})}
	for _, v := range warmVersions {
		a.warm[v]++
	}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeAgent) agent() Agent {
	return Agent{Node: a.node, Addr: strings.TrimPrefix(a.srv.URL, "http://"), Zone: "z1"}
}

func (a *fakeAgent) counts() (calls, starts, running int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls, a.starts, a.running
}

func (a *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != agentInvokePath {
		http.Error(w, "wrong endpoint "+r.URL.Path, http.StatusNotFound)
		return
	}
	var inv api.SandboxInvocation
	payload, err := api.ReadFramed(r.Header, r.Body, api.MaxInvokePayload, &inv)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	inv.Payload = payload
	a.mu.Lock()
	a.calls++
	if a.refuseAll {
		a.mu.Unlock()
		httpapi.WriteError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "draining")
		return
	}
	a.lastBody = inv
	v := inv.Version.Version
	res := api.SandboxResult{Node: a.node, Load: a.load}
	if inv.Share > 0 && a.running >= inv.Share {
		a.mu.Unlock()
		res.Declined, res.AtShare = true, true
		api.WriteFramed(w, http.StatusConflict, res, nil)
		return
	}
	if inv.Start {
		a.starts++
	}
	switch {
	case a.warm[v] > 0:
		a.warm[v]--
	case !inv.Start:
		die := a.dieAfterDecline
		a.mu.Unlock()
		res.Declined = true
		if die {
			w.Header().Set("Connection", "close")
			a.srv.Listener.Close()
		}
		api.WriteFramed(w, http.StatusConflict, res, nil)
		return
	case a.noRoom:
		a.mu.Unlock()
		httpapi.WriteError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "no room for a sandbox")
		return
	default:
		res.Cold = true
	}
	a.running++
	a.mu.Unlock()

	var p map[string]any
	json.Unmarshal(inv.Payload, &p)
	if p["block"] == true {
		select {
		case <-a.release:
		case <-r.Context().Done():
		}
	}
	res.Sandbox = fmt.Sprintf("%s-sb", a.node)
	if msg, ok := p["fail"].(string); ok {
		res.FunctionError = "Unhandled"
		res.ErrorType = "Runtime.ExitError"
		res.Payload, _ = json.Marshal(map[string]string{"errorMessage": msg, "errorType": "Runtime.ExitError"})
	} else {
		res.Payload, _ = json.Marshal(map[string]any{"node": a.node, "version": v, "echo": json.RawMessage(inv.Payload)})
	}
	if inv.Tail {
		res.LogTail = append(bytes.Repeat([]byte("x"), 5000), "END"...)
	}
	a.mu.Lock()
	a.running--
	a.warm[v]++ // the sandbox is idle again
	a.mu.Unlock()
	api.WriteFramed(w, http.StatusOK, res, res.Payload)
}

// fakeCatalog is a Catalog over fixed data.
type fakeCatalog struct {
	mu      sync.Mutex
	fns     []*api.Function
	agents  map[string][]Agent
	secrets map[string]string // access key -> secret
}

func (c *fakeCatalog) Function(cluster, name string) (*api.Function, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.fns {
		if f.Cluster == cluster && f.Name == name {
			return f, nil
		}
	}
	return nil, fmt.Errorf("%w: function %s of cluster %s", state.ErrNotFound, name, cluster)
}

func (c *fakeCatalog) FunctionsNamed(name string) []*api.Function {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*api.Function
	for _, f := range c.fns {
		if f.Name == name {
			out = append(out, f)
		}
	}
	return out
}

func (c *fakeCatalog) Agents(cluster string) []Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agents[cluster]
}

func (c *fakeCatalog) SigningSecret(key string) (string, httpapi.Principal, bool) {
	s, ok := c.secrets[key]
	if !ok {
		return "", httpapi.Principal{}, false
	}
	if key == "operator" {
		return s, httpapi.Principal{}, true
	}
	return s, httpapi.Principal{Cluster: key}, true
}

// testFunction returns a function with versions 1..n.
func testFunction(cluster, name string, n int, conf api.FunctionConfig) *api.Function {
	f := &api.Function{Name: name, Cluster: cluster, Latest: n}
	for v := 1; v <= n; v++ {
		f.Versions = append(f.Versions, &api.FunctionVersion{Version: v, Bundle: fmt.Sprintf("/clusters/%s/fn/%s/%d.zip", cluster, name, v), Config: conf.Resolved()})
	}
	return f
}

// fakeQueue records Event invocations.
type fakeQueue struct {
	mu     sync.Mutex
	events []*Event
}

func (q *fakeQueue) Enqueue(_ context.Context, ev *Event) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.events = append(q.events, ev)
	return nil
}

// testRand returns a deterministic Config.Rand.
func testRand() func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(1, 2))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

// testEnv is an Invoker behind an httptest server whose routes
// authenticate as the server does: a signed request gets no principal, a
// "Bearer cluster:NAME" token is cluster NAME, anything else an operator.
type testEnv struct {
	v   *Invoker
	cat *fakeCatalog
	reg *prometheus.Registry
	srv *httptest.Server
	now time.Time

	mu      sync.Mutex
	refused []string
}

func (e *testEnv) refusedList() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.refused...)
}

func newTestEnv(t testing.TB, cat *fakeCatalog, q Queue, open bool) *testEnv {
	e := &testEnv{cat: cat, reg: prometheus.NewRegistry(), now: time.Now()}
	cfg := Config{Catalog: cat, Queue: q, OpenInstallation: open, Now: func() time.Time { return e.now },
		Rand: testRand(), Metrics: e.reg,
		Refused: func(what, reason string) {
			e.mu.Lock()
			e.refused = append(e.refused, what+"/"+reason)
			e.mu.Unlock()
		}}
	if q == nil {
		cfg.Queue = nil // not a typed nil
	}
	e.v = New(cfg)
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.Header.Get("Authorization"), sigV4Algorithm+" ") {
				h(w, r)
				return
			}
			p := httpapi.Principal{}
			if c, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer cluster:"); ok {
				p.Cluster = c
			}
			h(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
		}
	}
	reg := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, auth(h)) }
	e.v.Routes(&httpapi.Router{Read: reg, Write: reg, TenantRead: reg, TenantWrite: reg, Signed: reg})
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() { e.v.Close() })
	return e
}

// deadAddr returns an address nothing listens on.
func deadAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// post sends a POST to the test server.
func (e *testEnv) post(t testing.TB, path string, hdr map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
