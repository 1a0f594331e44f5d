package functions_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
)

func TestStatusAndLogs(t *testing.T) {
	e := newEnv(t, true)
	a1, a2, a3 := e.addNode("n1", "a"), e.addNode("n2", "a"), e.addNode("n3", "a")
	e.cluster("c", 3)
	e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1"), Config: api.FunctionConfig{Provisioned: "2"}})
	sb := func(id, fn string) *api.SandboxInfo {
		return &api.SandboxInfo{ID: id, Function: fn, Cluster: "c", Version: 1, State: api.SandboxIdle}
	}
	a1.report.Sandboxes = []*api.SandboxInfo{sb("s1", "f"), sb("s2", "other")}
	a1.report.Functions = []*api.FunctionCounters{{Function: "f", Cluster: "c", Invocations: 10, WarmHits: 8, ColdStarts: 2},
		{Function: "other", Cluster: "c", Invocations: 100}}
	a2.report.Sandboxes = []*api.SandboxInfo{sb("s3", "f")}
	a2.report.Functions = []*api.FunctionCounters{{Function: "f", Cluster: "c", Invocations: 10, WarmHits: 10}}
	a3.fail = true
	e.queue.letters["r1"] = &api.DeadLetter{ID: "r1", Function: "f", Cluster: "c"}

	var st api.FunctionStatus
	if status, msg := e.do("token-c", "GET", "/v1/clusters/c/functions/f/status", nil, &st); status != 200 {
		t.Fatalf("status: %d %s", status, msg)
	}
	var ids []string
	for _, s := range st.Sandboxes {
		ids = append(ids, s.ID)
	}
	if !cmp.Equal(ids, []string{"s1", "s3"}) || st.Invocations != 20 || st.WarmHits != 18 || st.ColdStarts != 2 ||
		st.WarmHitRate != 0.9 || st.ProvisionedTarget != 2 || st.Queued != 7 || st.DeadLetters != 1 ||
		!cmp.Equal(st.Unreachable, []string{"n3"}) || st.Function.Name != "f" {
		t.Errorf("status: got %+v (sandboxes %v)", st, ids)
	}

	a3.fail = false
	a1.logs = []*api.FunctionLogRecord{{RequestID: "b", Start: t0.Add(2 * time.Second)}, {RequestID: "d", Start: t0.Add(4 * time.Second)}}
	a3.logs = []*api.FunctionLogRecord{{RequestID: "a", Start: t0.Add(time.Second)}, {RequestID: "c", Start: t0.Add(3 * time.Second)}}
	var logs []*api.FunctionLogRecord
	since := t0.Format(time.RFC3339Nano)
	if status, msg := e.do(operatorToken, "GET", "/v1/clusters/c/functions/f/logs?since="+url.QueryEscape(since)+"&request_id=x", nil, &logs); status != 200 {
		t.Fatalf("logs: %d %s", status, msg)
	}
	var got []string
	for _, l := range logs {
		got = append(got, l.RequestID)
	}
	if !cmp.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("logs: got %v, want the agents' records merged by start", got)
	}
	q, _ := url.ParseQuery(a1.query)
	if q.Get("cluster") != "c" || q.Get("function") != "f" || q.Get("since") != since || q.Get("request_id") != "x" {
		t.Errorf("agent logs query: got %q", a1.query)
	}
	if status, msg := e.do(operatorToken, "GET", "/v1/clusters/c/functions/f/logs?since=yesterday", nil, nil); status != 400 || !strings.Contains(msg, "since") {
		t.Errorf("bad since: got %d %q, want 400 naming since", status, msg)
	}
	if status, _ := e.do("token-x", "GET", "/v1/clusters/c/functions/f/logs", nil, nil); status != 401 {
		t.Errorf("logs with an unknown token: got %d, want 401", status)
	}
}

func TestDeadLetterRoutes(t *testing.T) {
	e := newEnv(t, true)
	e.addNode("n1", "a")
	e.addNode("n2", "a")
	e.cluster("c", 1)
	e.cluster("d", 1)
	e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1")})
	for _, id := range []string{"r1", "r2", "r3"} {
		e.queue.letters[id] = &api.DeadLetter{ID: id, Function: "f", Cluster: "c", Attempts: 3}
	}
	var dls []*api.DeadLetter
	if status, msg := e.do("token-c", "GET", "/v1/clusters/c/functions/f/dlq", nil, &dls); status != 200 || len(dls) != 3 {
		t.Fatalf("dlq: %d %s, %d letters; want 3", status, msg, len(dls))
	}
	var dl api.DeadLetter
	if status, _ := e.do("token-c", "GET", "/v1/clusters/c/functions/f/dlq/r2", nil, &dl); status != 200 || dl.ID != "r2" {
		t.Errorf("dlq/r2: got %d %+v", status, dl)
	}
	if status, _ := e.do("token-c", "GET", "/v1/clusters/c/functions/f/dlq/nope", nil, nil); status != 404 {
		t.Errorf("unknown dead letter: got %d, want 404", status)
	}
	if status, _ := e.do("token-d", "GET", "/v1/clusters/c/functions/f/dlq", nil, nil); status != 403 {
		t.Errorf("another cluster's dlq: got %d, want 403", status)
	}
	if status, _ := e.do(operatorToken, "GET", "/v1/clusters/c/functions/nope/dlq", nil, nil); status != 404 {
		t.Errorf("dlq of a missing function: got %d, want 404", status)
	}
	var rr api.RedriveResult
	if status, msg := e.do("token-c", "POST", "/v1/clusters/c/functions/f/dlq/redrive", api.Redrive{IDs: []string{"r1"}}, &rr); status != 200 || !cmp.Equal(rr.Redriven, []string{"r1"}) {
		t.Errorf("redrive r1: got %d %s %+v", status, msg, rr)
	}
	if status, msg := e.do("token-c", "POST", "/v1/clusters/c/functions/f/dlq/redrive", nil, &rr); status != 200 || len(rr.Redriven) != 2 {
		t.Errorf("redrive all with no body: got %d %s %+v, want the 2 left", status, msg, rr)
	}

	// Without a queue the routes answer 503.
	e2 := newEnv(t, false)
	e2.addNode("n1", "a")
	e2.cluster("c", 1)
	e2.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1")})
	for _, r := range []struct{ method, path string }{{"GET", "/dlq"}, {"GET", "/dlq/x"}, {"POST", "/dlq/redrive"}} {
		if status, _ := e2.do(operatorToken, r.method, "/v1/clusters/c/functions/f"+r.path, nil, nil); status != 503 {
			t.Errorf("%s %s without a queue: got %d, want 503", r.method, r.path, status)
		}
	}
	var st api.FunctionStatus
	if status, _ := e2.do(operatorToken, "GET", "/v1/clusters/c/functions/f/status", nil, &st); status != 200 || st.Queued != 0 {
		t.Errorf("status without a queue: got %d %+v", status, st)
	}
}
