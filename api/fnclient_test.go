package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

// recordedRequest is what a fake server saw of one request.
type recordedRequest struct {
	Method  string
	URI     string
	Body    string
	Headers map[string]string // only those named in the test
}

// answer is what a fake server answers.
type answer struct {
	status  int
	headers map[string]string
	body    string
}

// recordingServer answers every request with a and records it, keeping
// the headers named in keep.
func recordingServer(t *testing.T, a answer, keep []string) (*httptest.Server, *[]recordedRequest) {
	t.Helper()
	var reqs []recordedRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rr := recordedRequest{Method: r.Method, URI: r.URL.RequestURI(), Body: string(b)}
		for _, h := range keep {
			if rr.Headers == nil {
				rr.Headers = map[string]string{}
			}
			rr.Headers[h] = r.Header.Get(h)
		}
		reqs = append(reqs, rr)
		for k, v := range a.headers {
			w.Header().Set(k, v)
		}
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(srv.Close)
	return srv, &reqs
}

func TestFunctionClient(t *testing.T) {
	created := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	fn := &api.Function{Name: "hello", Cluster: "c1", Latest: 2, Created: created, Updated: created,
		Versions: []*api.FunctionVersion{{Version: 2, Bundle: "/fn/hello/2.zip", SHA256: "ab", Size: 10,
			Config: api.FunctionConfig{MemoryMiB: 256}, Created: created}}}
	fnJSON := mustJSON(t, fn)
	retries := 1
	dl := &api.DeadLetter{ID: "r1", Function: "hello", Cluster: "c1", Payload: []byte(`{"a":1}`),
		ErrorType: "Runtime.ExitError", ErrorMessage: "exit 2", Attempts: 3, Enqueued: created, Failed: created}
	rec := &api.FunctionLogRecord{RequestID: "r1", Function: "hello", Version: 2, Node: "n1", Sandbox: "s1",
		Start: created, End: created.Add(time.Second), Outcome: "ok", Log: "hi\n"}

	tests := []struct {
		name string
		call func(ctx context.Context, c *api.Client) (any, error)
		ans  answer
		want recordedRequest
		got  any // the call's result
	}{
		{"deploy",
			func(ctx context.Context, c *api.Client) (any, error) {
				return c.DeployFunction(ctx, "c1", "hello", &api.FunctionDeploy{Zip: []byte("PK"),
					Config: api.FunctionConfig{MemoryMiB: 256, Retries: &retries}, Update: true, KeepConfig: true})
			},
			answer{200, nil, fnJSON},
			recordedRequest{Method: "PUT", URI: "/v1/clusters/c1/functions/hello",
				Body: `{"cluster":"c1","zip":"UEs=","config":{"memory_mib":256,"retries":1},"update":true,"keep_config":true}`},
			fn},
		{"list all",
			func(ctx context.Context, c *api.Client) (any, error) { return c.Functions(ctx, "", "") },
			answer{200, nil, "[" + fnJSON + "]"},
			recordedRequest{Method: "GET", URI: "/v1/functions"},
			[]*api.Function{fn}},
		{"list by cluster and name",
			func(ctx context.Context, c *api.Client) (any, error) { return c.Functions(ctx, "c 1", "hello") },
			answer{200, nil, "[]"},
			recordedRequest{Method: "GET", URI: "/v1/functions?cluster=c+1&name=hello"},
			[]*api.Function{}},
		{"get, escaped",
			func(ctx context.Context, c *api.Client) (any, error) { return c.Function(ctx, "c/1", "he?llo") },
			answer{200, nil, fnJSON},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c%2F1/functions/he%3Fllo"},
			fn},
		{"status",
			func(ctx context.Context, c *api.Client) (any, error) { return c.FunctionStatus(ctx, "c1", "hello") },
			answer{200, nil, `{"function":` + fnJSON + `,"provisioned_target":2,"sandboxes":[{"id":"s1","node":"n1","state":"idle"}],"invocations":4,"warm_hits":3,"cold_starts":1,"warm_hit_rate":0.75}`},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c1/functions/hello/status"},
			&api.FunctionStatus{Function: fn, ProvisionedTarget: 2, Sandboxes: []*api.SandboxInfo{{ID: "s1", Node: "n1", State: "idle"}},
				Invocations: 4, WarmHits: 3, ColdStarts: 1, WarmHitRate: 0.75}},
		{"delete",
			func(ctx context.Context, c *api.Client) (any, error) {
				return nil, c.DeleteFunction(ctx, "c1", "hello")
			},
			answer{200, nil, `{"index":7}`},
			recordedRequest{Method: "DELETE", URI: "/v1/clusters/c1/functions/hello"},
			nil},
		{"logs, all",
			func(ctx context.Context, c *api.Client) (any, error) {
				return c.FunctionLogs(ctx, "c1", "hello", time.Time{}, "")
			},
			answer{200, nil, "[" + mustJSON(t, rec) + "]"},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c1/functions/hello/logs"},
			[]*api.FunctionLogRecord{rec}},
		{"logs since, one request",
			func(ctx context.Context, c *api.Client) (any, error) {
				return c.FunctionLogs(ctx, "c1", "hello", created.Add(1500*time.Microsecond).In(time.FixedZone("x", 3600)), "r1")
			},
			answer{200, nil, "[]"},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c1/functions/hello/logs?request_id=r1&since=2026-11-30T12%3A00%3A00.0015Z"},
			[]*api.FunctionLogRecord{}},
		{"dead letters",
			func(ctx context.Context, c *api.Client) (any, error) { return c.DeadLetters(ctx, "c1", "hello") },
			answer{200, nil, "[" + mustJSON(t, dl) + "]"},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c1/functions/hello/dlq"},
			[]*api.DeadLetter{dl}},
		{"one dead letter",
			func(ctx context.Context, c *api.Client) (any, error) { return c.DeadLetter(ctx, "c1", "hello", "r/1") },
			answer{200, nil, mustJSON(t, dl)},
			recordedRequest{Method: "GET", URI: "/v1/clusters/c1/functions/hello/dlq/r%2F1"},
			dl},
		{"redrive all",
			func(ctx context.Context, c *api.Client) (any, error) {
				return c.RedriveDeadLetters(ctx, "c1", "hello", nil)
			},
			answer{200, nil, `{"redriven":["r1","r2"]}`},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/dlq/redrive", Body: `{}`},
			&api.RedriveResult{Redriven: []string{"r1", "r2"}}},
		{"redrive some",
			func(ctx context.Context, c *api.Client) (any, error) {
				return c.RedriveDeadLetters(ctx, "c1", "hello", []string{"r2"})
			},
			answer{200, nil, `{"redriven":["r2"]}`},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/dlq/redrive", Body: `{"ids":["r2"]}`},
			&api.RedriveResult{Redriven: []string{"r2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recordingServer(t, tt.ans, nil)
			c := newTestClient(t, "tok", srv.URL)
			got, err := tt.call(testCtx(t), c)
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if diff := cmp.Diff([]recordedRequest{tt.want}, *reqs); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if tt.got == nil {
				return
			}
			if diff := cmp.Diff(tt.got, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInvokeFunction(t *testing.T) {
	keep := []string{"Authorization", "Content-Type", api.InvocationTypeHeader, api.LogTypeHeader}
	tail := "START RequestId: r1\nhello\nEND RequestId: r1\n"
	tests := []struct {
		name string
		opts *api.InvokeOptions
		ans  answer
		want recordedRequest
		res  *api.FunctionResult
	}{
		{"request-response", &api.InvokeOptions{Payload: []byte(`{"name": "x"}`)},
			answer{200, map[string]string{api.RequestIDHeader: "r1", api.ExecutedVersionHeader: "3"}, `{"greeting":"Hello, x"}`},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/invocations", Body: `{"name": "x"}`,
				Headers: map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json",
					api.InvocationTypeHeader: "RequestResponse", api.LogTypeHeader: "None"}},
			&api.FunctionResult{RequestID: "r1", StatusCode: 200, Version: "3", Payload: []byte(`{"greeting":"Hello, x"}`)}},
		{"function error with tail, one version", &api.InvokeOptions{Version: 2, Tail: true, Payload: []byte(`{}`)},
			answer{200, map[string]string{api.RequestIDHeader: "r1", api.ExecutedVersionHeader: "2", api.FunctionErrorHeader: "Unhandled",
				api.LogResultHeader: base64.StdEncoding.EncodeToString([]byte(tail))}, `{"errorMessage":"boom","errorType":"errorString"}`},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/invocations?version=2", Body: `{}`,
				Headers: map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json",
					api.InvocationTypeHeader: "RequestResponse", api.LogTypeHeader: "Tail"}},
			&api.FunctionResult{RequestID: "r1", StatusCode: 200, Version: "2", FunctionError: "Unhandled", LogTail: tail,
				Payload: []byte(`{"errorMessage":"boom","errorType":"errorString"}`)}},
		{"event", &api.InvokeOptions{Type: api.InvokeEvent, Payload: []byte(`[1]`)},
			answer{202, map[string]string{api.RequestIDHeader: "r2"}, ``},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/invocations", Body: `[1]`,
				Headers: map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json",
					api.InvocationTypeHeader: "Event", api.LogTypeHeader: "None"}},
			&api.FunctionResult{RequestID: "r2", StatusCode: 202, Payload: []byte{}}},
		{"dry run", &api.InvokeOptions{Type: api.InvokeDryRun},
			answer{204, map[string]string{api.RequestIDHeader: "r3"}, ``},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/invocations",
				Headers: map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json",
					api.InvocationTypeHeader: "DryRun", api.LogTypeHeader: "None"}},
			&api.FunctionResult{RequestID: "r3", StatusCode: 204, Payload: []byte{}}},
		{"no options", nil,
			answer{204, nil, ``},
			recordedRequest{Method: "POST", URI: "/v1/clusters/c1/functions/hello/invocations",
				Headers: map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json",
					api.InvocationTypeHeader: "RequestResponse", api.LogTypeHeader: "None"}},
			&api.FunctionResult{StatusCode: 204, Payload: []byte{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recordingServer(t, tt.ans, keep)
			c := newTestClient(t, "tok", srv.URL)
			got, err := c.InvokeFunction(testCtx(t), "c1", "hello", tt.opts)
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if diff := cmp.Diff([]recordedRequest{tt.want}, *reqs); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.res, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFunctionClientErrors(t *testing.T) {
	tests := []struct {
		name string
		call func(ctx context.Context, c *api.Client) error
		ans  answer
		want string // in the error
		code string // the api.Error's code, when it is one
	}{
		{"no such function",
			func(ctx context.Context, c *api.Client) error { _, err := c.Function(ctx, "c1", "nope"); return err },
			answer{404, nil, `{"error":{"code":"not_found","message":"no function nope in cluster c1"}}`},
			"no function nope in cluster c1", api.CodeNotFound},
		{"invoke throttled",
			func(ctx context.Context, c *api.Client) error {
				_, err := c.InvokeFunction(ctx, "c1", "hello", &api.InvokeOptions{})
				return err
			},
			answer{429, nil, `{"error":{"code":"too_many_requests","message":"function hello is at its concurrency limit"}}`},
			"concurrency limit", "too_many_requests"},
		{"bad log result",
			func(ctx context.Context, c *api.Client) error {
				_, err := c.InvokeFunction(ctx, "c1", "hello", &api.InvokeOptions{Tail: true})
				return err
			},
			answer{200, map[string]string{api.LogResultHeader: "not base64!"}, `{}`},
			"X-Amz-Log-Result header is not base64", ""},
		{"payload too large",
			func(ctx context.Context, c *api.Client) error {
				_, err := c.InvokeFunction(ctx, "c1", "hello", nil)
				return err
			},
			answer{200, nil, `"` + strings.Repeat("x", api.MaxInvokePayload) + `"`},
			"more than 6291456 bytes", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := recordingServer(t, tt.ans, nil)
			c := newTestClient(t, "", srv.URL)
			err := tt.call(testCtx(t), c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %v, want one containing %q", err, tt.want)
			}
			if tt.code != "" {
				var ae *api.Error
				if !errors.As(err, &ae) || ae.Code != tt.code {
					t.Errorf("got %#v, want an *api.Error with code %q", err, tt.code)
				}
			}
		})
	}
}

// TestInvokeNotSentTwice: an invocation whose connection breaks after it
// was sent is not sent to the next server (the function may have run);
// one whose server cannot be dialled is.
func TestInvokeNotSentTwice(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	count := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			calls[name]++
			mu.Unlock()
			if name == "broken" {
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close() // served, then the answer is lost
				return
			}
			w.Write([]byte(`{}`))
		}
	}
	broken, good := httptest.NewServer(count("broken")), httptest.NewServer(count("good"))
	defer broken.Close()
	defer good.Close()
	c := api.NewClient([]string{broken.URL, good.URL}, "")
	defer c.Close()
	if _, err := c.InvokeFunction(context.Background(), "c1", "f", nil); err == nil {
		t.Errorf("an invocation whose answer was lost succeeded")
	}
	if calls["broken"] != 1 || calls["good"] != 0 {
		t.Errorf("calls %v, want the broken server once and the other never", calls)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	c2 := api.NewClient([]string{dead, good.URL}, "")
	defer c2.Close()
	if _, err := c2.InvokeFunction(context.Background(), "c1", "f", nil); err != nil || calls["good"] != 1 {
		t.Errorf("with the first server down: %v, calls %v; want the invocation sent to the other", err, calls)
	}
}
