package invoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// routeEnv builds a catalog with function c1/hello (versions 1 and 2)
// and the given agents in c1.
func routeEnv(t *testing.T, conf api.FunctionConfig, agents ...*fakeAgent) *testEnv {
	cat := &fakeCatalog{fns: []*api.Function{testFunction("c1", "hello", 2, conf)}, agents: map[string][]Agent{}}
	for _, a := range agents {
		cat.agents["c1"] = append(cat.agents["c1"], a.agent())
	}
	return newTestEnv(t, cat, nil, true)
}

func invokeHello(t *testing.T, e *testEnv) *api.SandboxResult {
	t.Helper()
	res, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{"n":1}`)})
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	return res
}

func TestWarmHitOnFirstProbe(t *testing.T) {
	a := newFakeAgent(t, "n1", 0, 2)
	e := routeEnv(t, api.FunctionConfig{}, a)
	res := invokeHello(t, e)
	if res.Node != "n1" || res.Cold || res.Declined {
		t.Errorf("got node %q cold %v declined %v, want a warm hit on n1", res.Node, res.Cold, res.Declined)
	}
	if calls, starts, _ := a.counts(); calls != 1 || starts != 0 {
		t.Errorf("agent got %d calls, %d starts; want 1, 0", calls, starts)
	}
	if got := testutil.ToFloat64(e.v.metrics.warmHits.WithLabelValues("c1/hello")); got != 1 {
		t.Errorf("warm hits = %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.v.metrics.coldStarts.WithLabelValues("c1/hello")); got != 0 {
		t.Errorf("cold starts = %v, want 0", got)
	}
}

func TestProbesUntilWarm(t *testing.T) {
	// Five agents, only one warm: with MaxProbes 5 every probe order
	// finds it, and no agent is asked twice or to start a sandbox.
	var agents []*fakeAgent
	for _, n := range []string{"n1", "n2", "n3", "n4", "n5"} {
		if n == "n4" {
			agents = append(agents, newFakeAgent(t, n, 0, 2))
		} else {
			agents = append(agents, newFakeAgent(t, n, 0))
		}
	}
	e := routeEnv(t, api.FunctionConfig{}, agents...)
	e.v.cfg.MaxProbes = 5
	res := invokeHello(t, e)
	if res.Node != "n4" || res.Cold {
		t.Fatalf("got node %q cold %v, want a warm hit on n4", res.Node, res.Cold)
	}
	for _, a := range agents {
		if calls, starts, _ := a.counts(); calls > 1 || starts != 0 {
			t.Errorf("%s got %d calls, %d starts; want at most 1 call and no start", a.node, calls, starts)
		}
	}
}

func TestColdStartOnLeastLoaded(t *testing.T) {
	a1, a2, a3 := newFakeAgent(t, "n1", 5), newFakeAgent(t, "n2", 1), newFakeAgent(t, "n3", 3)
	e := routeEnv(t, api.FunctionConfig{}, a1, a2, a3)
	res := invokeHello(t, e)
	if res.Node != "n2" || !res.Cold {
		t.Fatalf("got node %q cold %v, want a cold start on n2 (least loaded)", res.Node, res.Cold)
	}
	for _, a := range []*fakeAgent{a1, a2, a3} {
		calls, starts, _ := a.counts()
		wantStarts := 0
		if a == a2 {
			wantStarts = 1
		}
		if calls != 1+wantStarts || starts != wantStarts {
			t.Errorf("%s got %d calls, %d starts; want %d, %d", a.node, calls, starts, 1+wantStarts, wantStarts)
		}
	}
	if got := testutil.ToFloat64(e.v.metrics.coldStarts.WithLabelValues("c1/hello")); got != 1 {
		t.Errorf("cold starts = %v, want 1", got)
	}
	if n, sum := histogram(t, e, "shoal_server_fn_probes"); n != 1 || sum != 3 {
		t.Errorf("probes histogram: %v observations summing to %v, want 1 of 3", n, sum)
	}
	// The next invocation goes first to n2, where the sandbox now is.
	res = invokeHello(t, e)
	if res.Node != "n2" || res.Cold {
		t.Errorf("second invocation: got node %q cold %v, want a warm hit on n2", res.Node, res.Cold)
	}
	if n, sum := histogram(t, e, "shoal_server_fn_probes"); n != 2 || sum != 4 {
		t.Errorf("probes histogram: %v observations summing to %v, want 2 of 4", n, sum)
	}
}

func TestColdStartFallsBackWhenNoRoom(t *testing.T) {
	a1, a2 := newFakeAgent(t, "n1", 0), newFakeAgent(t, "n2", 4)
	a1.noRoom = true
	e := routeEnv(t, api.FunctionConfig{}, a1, a2)
	res := invokeHello(t, e)
	if res.Node != "n2" || !res.Cold {
		t.Fatalf("got node %q cold %v, want a cold start on n2 after n1 had no room", res.Node, res.Cold)
	}
}

func TestHintFirst(t *testing.T) {
	var agents []*fakeAgent
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		agents = append(agents, newFakeAgent(t, n, 0, 2))
	}
	e := routeEnv(t, api.FunctionConfig{}, agents...)
	first := invokeHello(t, e).Node
	for i := 0; i < 20; i++ {
		if got := invokeHello(t, e).Node; got != first {
			t.Fatalf("invocation %d went to %s, want %s (the hint)", i, got, first)
		}
	}
	if n, sum := histogram(t, e, "shoal_server_fn_probes"); sum != float64(n) {
		t.Errorf("probes: %v over %v invocations, want one each", sum, n)
	}
}

func TestUnreachableAgentSkipped(t *testing.T) {
	warm := newFakeAgent(t, "n2", 0, 2)
	cat := &fakeCatalog{fns: []*api.Function{testFunction("c1", "hello", 2, api.FunctionConfig{})},
		agents: map[string][]Agent{"c1": {{Node: "dead1", Addr: deadAddr(t)}, {Node: "dead2", Addr: deadAddr(t)}, warm.agent()}}}
	e := newTestEnv(t, cat, nil, true)
	e.v.cfg.MaxProbes = 1
	for i := 0; i < 10; i++ {
		if res := invokeHello(t, e); res.Node != "n2" {
			t.Fatalf("got node %q, want n2", res.Node)
		}
	}
	if got := testutil.ToFloat64(e.v.metrics.unreachable); got == 0 {
		t.Errorf("no unreachable agent counted in 10 invocations over 2 dead agents of 3")
	}
	// Only dead agents: 503 ServiceException.
	cat.agents["c1"] = cat.agents["c1"][:2]
	_, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{}`)})
	if !errors.Is(err, ErrNoAgent) || !errors.Is(err, httpapi.ErrUnavailable) {
		t.Errorf("with dead agents only: got %v, want ErrNoAgent", err)
	}
	cat.agents["c1"] = nil
	if _, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello"}); !errors.Is(err, ErrNoAgent) {
		t.Errorf("with no agents: got %v, want ErrNoAgent", err)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	a := newFakeAgent(t, "n1", 0, 2)
	e := routeEnv(t, api.FunctionConfig{Concurrency: 1}, a)
	done := make(chan error, 1)
	go func() {
		_, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{"block":true}`)})
		done <- err
	}()
	waitFor(t, "the first invocation to run", func() bool { _, _, running := a.counts(); return running == 1 })

	_, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{}`)})
	if !errors.Is(err, httpapi.ErrTooManyRequests) {
		t.Errorf("second invocation: got %v, want ErrTooManyRequests", err)
	}
	resp, body := e.post(t, "/2015-03-31/functions/hello/invocations", nil, `{}`)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("X-Amzn-ErrorType") != "TooManyRequestsException" {
		t.Errorf("over HTTP: got %d %s %s, want 429 TooManyRequestsException", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), body)
	}
	if got := testutil.ToFloat64(e.v.metrics.throttles.WithLabelValues("c1/hello")); got != 2 {
		t.Errorf("throttles = %v, want 2", got)
	}
	close(a.release)
	if err := <-done; err != nil {
		t.Fatalf("first invocation: %v", err)
	}
	invokeHello(t, e) // the slot is free again
}

// TestConcurrencyLimitAcrossServers: two servers routing to the same two
// agents hold the function to its limit together, each agent taking its
// share; the third invocation, on either server, is throttled, and one
// runs again once a slot frees.
func TestConcurrencyLimitAcrossServers(t *testing.T) {
	a1, a2 := newFakeAgent(t, "n1", 0), newFakeAgent(t, "n2", 0)
	cat := &fakeCatalog{fns: []*api.Function{testFunction("c1", "hello", 1, api.FunctionConfig{Concurrency: 2})},
		agents: map[string][]Agent{"c1": {a2.agent(), a1.agent()}}}
	s1, s2 := newTestEnv(t, cat, nil, true), newTestEnv(t, cat, nil, true)
	done := make(chan error, 2)
	for _, e := range []*testEnv{s1, s2} {
		go func() {
			_, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{"block":true}`)})
			done <- err
		}()
	}
	waitFor(t, "one invocation on each agent", func() bool {
		_, _, r1 := a1.counts()
		_, _, r2 := a2.counts()
		return r1 == 1 && r2 == 1
	})
	for i, e := range []*testEnv{s1, s2} {
		_, err := e.v.Invoke(context.Background(), &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{}`)})
		if !errors.Is(err, httpapi.ErrTooManyRequests) {
			t.Errorf("a third invocation through server %d: got %v, want ErrTooManyRequests", i+1, err)
		}
	}
	if a1.lastBody.Share != 1 || a2.lastBody.Share != 1 {
		t.Errorf("shares sent: n1 %d, n2 %d; want 1 each", a1.lastBody.Share, a2.lastBody.Share)
	}
	close(a1.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res := invokeHello(t, s2); res.Node != "n1" {
		t.Errorf("after n1's invocation ended: ran on %s, want n1 (n2 is at its share)", res.Node)
	}
	close(a2.release)
	<-done
}

// TestShareOut: a limit smaller than the agents leaves some out, the
// same way on every server whatever the order it lists them in.
func TestShareOut(t *testing.T) {
	agents := []Agent{{Node: "c"}, {Node: "a"}, {Node: "b"}}
	got, shares := shareOut(agents, 2, "c1/f")
	if len(got) != 2 || shares[got[0].Node]+shares[got[1].Node] != 2 {
		t.Fatalf("a limit of 2 over 3 agents: %v %v, want two agents with 1 each", got, shares)
	}
	again, _ := shareOut([]Agent{{Node: "b"}, {Node: "c"}, {Node: "a"}}, 2, "c1/f")
	if !slices.Equal(got, again) {
		t.Errorf("shares depend on the order of the agents: %v, then %v", got, again)
	}
	if agents[0].Node != "c" {
		t.Errorf("shareOut reordered its argument: %v", agents)
	}
	got, shares = shareOut(agents, 100, "c1/f")
	if len(got) != 3 || shares["a"]+shares["b"]+shares["c"] != 100 {
		t.Errorf("a limit of 100 over 3 agents: %v", shares)
	}
}

func TestClientCancelReachesAgent(t *testing.T) {
	a := newFakeAgent(t, "n1", 0, 2)
	e := routeEnv(t, api.FunctionConfig{}, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.v.Invoke(ctx, &Request{Cluster: "c1", Function: "hello", Payload: []byte(`{"block":true}`)})
		done <- err
	}()
	waitFor(t, "the invocation to run", func() bool { _, _, running := a.counts(); return running == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	waitFor(t, "the agent to see the cancellation", func() bool { _, _, running := a.counts(); return running == 0 })
}

func TestRunEvent(t *testing.T) {
	a := newFakeAgent(t, "n1", 0, 1, 2)
	e := routeEnv(t, api.FunctionConfig{}, a)
	ctx := context.Background()
	if err := e.v.RunEvent(ctx, &Event{ID: "ev1", Cluster: "c1", Function: "hello", Version: 1, Payload: []byte(`{}`)}); err != nil {
		t.Errorf("successful event: %v", err)
	}
	if a.lastBody.RequestID != "ev1" || a.lastBody.Version.Version != 1 {
		t.Errorf("agent got request %q version %d, want ev1 version 1", a.lastBody.RequestID, a.lastBody.Version.Version)
	}
	err := e.v.RunEvent(ctx, &Event{ID: "ev2", Cluster: "c1", Function: "hello", Payload: []byte(`{"fail":"boom"}`)})
	var ff *FunctionFailure
	if !errors.As(err, &ff) || ff.Type != "Runtime.ExitError" || ff.Message != "boom" {
		t.Errorf("failing event: got %v, want FunctionFailure Runtime.ExitError boom", err)
	}
	err = e.v.RunEvent(ctx, &Event{ID: "ev3", Cluster: "c1", Function: "gone"})
	if !errors.Is(err, state.ErrNotFound) || errors.As(err, &ff) {
		t.Errorf("event of a deleted function: got %v, want ErrNotFound", err)
	}
	err = e.v.RunEvent(ctx, &Event{ID: "ev4", Cluster: "c1", Function: "hello", Version: 7})
	if !errors.Is(err, state.ErrNotFound) {
		t.Errorf("event of a missing version: got %v, want ErrNotFound", err)
	}
}

// histogram returns the count and sum of an unlabelled histogram.
func histogram(t *testing.T, e *testEnv, name string) (count uint64, sum float64) {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0, 0
}

func TestEncodeInvocation(t *testing.T) {
	fn := testFunction("c1", "hello", 2, api.FunctionConfig{Env: map[string]string{"A": "b\"c"}})
	fn.Versions[0].Created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &fnState{hints: map[int]string{}}
	for _, tc := range []struct {
		fv   *api.FunctionVersion
		id   string
		tail bool
		cc   string
	}{
		{fn.Versions[0], "id-1", false, ""},
		{fn.Versions[1], "id \"2\"", true, `{"custom":{"q":"\"é\n"}}`},
		{fn.Versions[0], "", false, ""},
	} {
		got, err := st.encodeInvocation(fn, tc.fv, &Request{RequestID: tc.id, Tail: tc.tail, ClientContext: tc.cc})
		if err != nil {
			t.Fatal(err)
		}
		want := &api.SandboxInvocation{RequestID: tc.id, Function: "hello", Cluster: "c1", Version: tc.fv, Tail: tc.tail, ClientContext: tc.cc}
		var dec api.SandboxInvocation
		if err := json.Unmarshal(got, &dec); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		if diff := cmp.Diff(want, &dec, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("decoded (-want +got):\n%s", diff)
		}
		// What call splices in keeps it valid.
		a := newFakeAgent(t, "n1", 0)
		if _, err := New(Config{Catalog: &fakeCatalog{}}).call(context.Background(), a.agent(), got, []byte(`{}`), true, 3); err != nil {
			t.Fatal(err)
		}
		if in := a.lastBody; !in.Start || in.Share != 3 || in.RequestID != tc.id {
			t.Errorf("the agent got %+v, want start, share 3 and request id %q", in, tc.id)
		}
	}
}

func TestProbeOrder(t *testing.T) {
	e := routeEnv(t, api.FunctionConfig{})
	var agents []Agent
	for i := 0; i < 50; i++ {
		agents = append(agents, Agent{Node: fmt.Sprint("n", i), Addr: fmt.Sprint("10.0.0.1:", i)})
	}
	seconds := map[string]bool{}
	for i := 0; i < 200; i++ {
		order, first := e.v.probeOrder(agents, "10.0.0.1:17")
		if order[0].Node != "n17" || first != 1 {
			t.Fatalf("first probe %s (first %d), want the hinted n17", order[0].Node, first)
		}
		e.v.shuffle(order, 1, len(order))
		seconds[order[1].Node] = true
		seen := map[string]bool{}
		for _, a := range order {
			seen[a.Node] = true
		}
		if len(seen) != len(agents) {
			t.Fatalf("order has %d distinct agents, want %d", len(seen), len(agents))
		}
	}
	if len(seconds) < 20 {
		t.Errorf("the second probe went to only %d distinct agents of 49 in 200 orders", len(seconds))
	}
	if _, first := e.v.probeOrder(agents, "10.9.9.9:1"); first != 0 {
		t.Errorf("a hint that is no ready agent is used")
	}
}

func TestRefusingAgentSkipped(t *testing.T) {
	a1, a2 := newFakeAgent(t, "n1", 0, 2), newFakeAgent(t, "n2", 3)
	a1.refuseAll = true
	e := routeEnv(t, api.FunctionConfig{}, a1, a2)
	for i := 0; i < 5; i++ {
		if res := invokeHello(t, e); res.Node != "n2" {
			t.Fatalf("got node %q, want n2 (n1 refuses everything)", res.Node)
		}
	}
}
