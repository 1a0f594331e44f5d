package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newTestClient returns a client for addrs, closed when the test ends.
func newTestClient(t *testing.T, token string, addrs ...string) *api.Client {
	t.Helper()
	c := api.NewClient(addrs, token)
	t.Cleanup(c.Close)
	return c
}

// deadAddr returns the address of a listener that has been closed, so that
// connecting to it is refused.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// countingServer answers every request with status and body, counting hits.
func countingServer(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		contentType string
		body        string
		want        api.Error
		wantInMsg   []string // substrings of the message when it is not exact
	}{
		{"JSON error", 404, "application/json", `{"error":{"code":"not_found","message":"no node named \"n9\""}}`,
			api.Error{Status: 404, Code: api.CodeNotFound, Message: `no node named "n9"`}, nil},
		{"JSON conflict", 409, "application/json", `{"error":{"code":"insufficient_capacity","message":"needs 5 nodes"}}`,
			api.Error{Status: 409, Code: api.CodeNoCapacity, Message: "needs 5 nodes"}, nil},
		{"plain text", 502, "text/plain", "upstream went away\n",
			api.Error{Status: 502, Code: api.CodeInternal}, []string{"502", "upstream went away"}},
		{"HTML", 503, "text/html", "<html><body>Service Unavailable</body></html>",
			api.Error{Status: 503, Code: api.CodeInternal}, []string{"503", "Service Unavailable"}},
		{"JSON without a message", 500, "application/json", `{"error":{"code":"internal"}}`,
			api.Error{Status: 500, Code: api.CodeInternal}, []string{"500", `{"error":{"code":"internal"}}`}},
		{"empty body", 500, "text/plain", "",
			api.Error{Status: 500, Code: api.CodeInternal}, []string{"500 Internal Server Error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			c := newTestClient(t, "", srv.URL)
			_, err := c.Node(testCtx(t), "n9")
			var got *api.Error
			if !errors.As(err, &got) {
				t.Fatalf("got error %T (%v), want a *api.Error", err, err)
			}
			if tt.wantInMsg == nil {
				if diff := cmp.Diff(tt.want, *got); diff != "" {
					t.Errorf("error (-want +got):\n%s", diff)
				}
				return
			}
			if got.Status != tt.want.Status || got.Code != tt.want.Code {
				t.Errorf("got status %d code %q, want %d %q", got.Status, got.Code, tt.want.Status, tt.want.Code)
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(got.Message, s) {
					t.Errorf("got message %q, want it to contain %q", got.Message, s)
				}
			}
			if got.Error() != got.Message {
				t.Errorf("got Error() %q, want the message %q", got.Error(), got.Message)
			}
		})
	}
}

func TestClientIsNotFound(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"not found", &api.Error{Status: 404, Code: api.CodeNotFound}, true},
		{"wrapped not found", errors.Join(errors.New("context"), &api.Error{Status: 404, Code: api.CodeNotFound}), true},
		{"other code", &api.Error{Status: 409, Code: api.CodeConflict}, false},
		{"not an api error", errors.New("not_found"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := api.IsNotFound(tt.err); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestClientIndexHeader(t *testing.T) {
	tests := []struct {
		name   string
		header string
		want   uint64
	}{
		{"set", "42", 42},
		{"large", "18446744073709551615", 18446744073709551615},
		{"missing", "", 0},
		{"garbage", "soon", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.header != "" {
					w.Header().Set(api.IndexHeader, tt.header)
				}
				w.Write([]byte(`[{"name":"n1","zone":"z1","state":"ready"}]`))
			}))
			defer srv.Close()
			c := newTestClient(t, "", srv.URL)
			nodes, idx, err := c.Nodes(testCtx(t), nil)
			if err != nil {
				t.Fatalf("Nodes: %v", err)
			}
			if idx != tt.want {
				t.Errorf("got index %d, want %d", idx, tt.want)
			}
			if len(nodes) != 1 || nodes[0].Name != "n1" {
				t.Errorf("got nodes %+v, want one node n1", nodes)
			}
		})
	}
}

func TestClientQueryOptions(t *testing.T) {
	var mu sync.Mutex
	var got *url.URL
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.URL
		mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	c := newTestClient(t, "", srv.URL)

	tests := []struct {
		name      string
		call      func(ctx context.Context) error
		wantPath  string // as sent, escaped
		wantQuery url.Values
	}{
		{"index and wait", func(ctx context.Context) error {
			_, _, err := c.Pool(ctx, &api.QueryOptions{Index: 7, Wait: 30 * time.Second})
			return err
		}, "/v1/pool", url.Values{"index": {"7"}, "wait": {"30s"}}},
		{"index only", func(ctx context.Context) error {
			_, _, err := c.Pool(ctx, &api.QueryOptions{Index: 7})
			return err
		}, "/v1/pool", url.Values{"index": {"7"}}},
		{"nil options", func(ctx context.Context) error {
			_, _, err := c.Pool(ctx, nil)
			return err
		}, "/v1/pool", url.Values{}},
		{"merged with the call's own", func(ctx context.Context) error {
			_, _, err := c.NodeWork(ctx, "n1", 5, &api.QueryOptions{Index: 9, Wait: 1500 * time.Millisecond})
			return err
		}, "/v1/nodes/n1/work", url.Values{"since": {"5"}, "index": {"9"}, "wait": {"1.5s"}}},
		{"summary", func(ctx context.Context) error {
			_, _, err := c.JobSummary(ctx, "train-1", &api.QueryOptions{Index: 3, Wait: time.Minute})
			return err
		}, "/v1/jobs/train-1", url.Values{"index": {"3"}, "wait": {"1m0s"}}},
		{"task page", func(ctx context.Context) error {
			_, _, err := c.JobTasks(ctx, "train-1", &api.TaskFilter{State: "failed", Group: "g", Limit: 20, Offset: 40}, nil)
			return err
		}, "/v1/jobs/train-1/tasks", url.Values{"state": {"failed"}, "group": {"g"}, "limit": {"20"}, "offset": {"40"}}},
		{"first task page", func(ctx context.Context) error {
			_, _, err := c.JobTasks(ctx, "train-1", nil, nil)
			return err
		}, "/v1/jobs/train-1/tasks", url.Values{}},
		{"path is escaped", func(ctx context.Context) error {
			_, err := c.Node(ctx, "a/b?c")
			return err
		}, "/v1/nodes/a%2Fb%3Fc", url.Values{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(testCtx(t)); err != nil {
				t.Fatalf("call: %v", err)
			}
			mu.Lock()
			u := got
			mu.Unlock()
			if u.EscapedPath() != tt.wantPath {
				t.Errorf("got path %q, want %q", u.EscapedPath(), tt.wantPath)
			}
			if diff := cmp.Diff(tt.wantQuery, u.Query()); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClientFailover(t *testing.T) {
	srv, hits := countingServer(t, 200, `[]`)
	dead := deadAddr(t)
	c := newTestClient(t, "", dead, srv.URL)
	if got, want := c.Addr(), "http://"+dead; got != want {
		t.Fatalf("got first address %q, want %q", got, want)
	}
	if _, _, err := c.Nodes(testCtx(t), nil); err != nil {
		t.Fatalf("Nodes with the first server down: %v", err)
	}
	if got := hits.Load(); got != 1 {
		t.Errorf("got %d hits on the second server, want 1", got)
	}
	if got := c.Addr(); got != srv.URL {
		t.Errorf("got address in use %q, want %q", got, srv.URL)
	}
	// The client stays on the server that answered.
	if _, _, err := c.Nodes(testCtx(t), nil); err != nil {
		t.Fatalf("second Nodes: %v", err)
	}
	if got := hits.Load(); got != 2 {
		t.Errorf("got %d hits on the second server, want 2", got)
	}
}

func TestClientAllServersDown(t *testing.T) {
	dead1, dead2 := deadAddr(t), deadAddr(t)
	c := newTestClient(t, "", dead1, dead2)
	_, _, err := c.Nodes(testCtx(t), nil)
	if err == nil {
		t.Fatal("got no error, want one")
	}
	var apiErr *api.Error
	if errors.As(err, &apiErr) {
		t.Errorf("got *api.Error %v, want a connection error", err)
	}
	if !strings.Contains(err.Error(), "cannot reach shoal server") {
		t.Errorf("got %q, want it to say the server cannot be reached", err)
	}
}

func TestClientNoAddress(t *testing.T) {
	c := newTestClient(t, "", " ", "")
	if got := c.Addr(); got != "" {
		t.Errorf("got address %q, want none", got)
	}
	if _, _, err := c.Nodes(testCtx(t), nil); err == nil || !strings.Contains(err.Error(), "no server address") {
		t.Errorf("got %v, want an error about the missing address", err)
	}
}

// TestClientAnswerNotRetried checks that an error answered by a server is
// returned as is and not sent again to another server: the request may
// have had an effect.
func TestClientAnswerNotRetried(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		code   string
	}{
		{"bad request", 400, `{"error":{"code":"invalid_argument","message":"nodes: must be between 1 and 10000, got 0"}}`, api.CodeInvalid},
		{"unavailable", 503, `{"error":{"code":"no_leader","message":"no leader"}}`, api.CodeNoLeader},
		{"internal", 500, `oops`, api.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, firstHits := countingServer(t, tt.status, tt.body)
			second, secondHits := countingServer(t, 200, `{"name":"c1"}`)
			c := newTestClient(t, "", first.URL, second.URL)
			_, err := c.CreateCluster(testCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 1})
			var apiErr *api.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("got error %v, want a *api.Error", err)
			}
			if apiErr.Status != tt.status || apiErr.Code != tt.code {
				t.Errorf("got status %d code %q, want %d %q", apiErr.Status, apiErr.Code, tt.status, tt.code)
			}
			if got := firstHits.Load(); got != 1 {
				t.Errorf("got %d hits on the first server, want 1", got)
			}
			if got := secondHits.Load(); got != 0 {
				t.Errorf("got %d hits on the second server, want 0", got)
			}
			if got := c.Addr(); got != first.URL {
				t.Errorf("got address in use %q, want %q", got, first.URL)
			}
		})
	}
}

func TestClientToken(t *testing.T) {
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"token", "s3cret", "Bearer s3cret"},
		{"no token", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var auth []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				auth = append(auth, r.Header.Get("Authorization"))
				mu.Unlock()
				w.Write([]byte(`{}`))
			}))
			defer srv.Close()
			c := newTestClient(t, tt.token, srv.URL)
			ctx := testCtx(t)
			// A read and a write: both carry the token.
			if _, err := c.Node(ctx, "n1"); err != nil {
				t.Fatalf("Node: %v", err)
			}
			if err := c.DrainNode(ctx, "n1", &api.DrainRequest{}); err != nil {
				t.Fatalf("DrainNode: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff([]string{tt.want, tt.want}, auth); diff != "" {
				t.Errorf("Authorization headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClientSendsJSONBody(t *testing.T) {
	var mu sync.Mutex
	var method, ctype string
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		method, ctype = r.Method, r.Header.Get("Content-Type")
		body, _ = io.ReadAll(r.Body)
		w.Write([]byte(`{"id":"train-1","index":12}`))
	}))
	defer srv.Close()
	c := newTestClient(t, "", srv.URL)
	res, err := c.SubmitJob(testCtx(t), &api.JobSpec{Name: "train", Cluster: "c1", Type: api.JobBatch,
		Groups: []api.GroupSpec{{Name: "g", Count: 1, Command: []string{"true"}, Timeout: api.Duration(time.Minute)}}})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	if diff := cmp.Diff(&api.JobSubmitResponse{ID: "train-1", Index: 12}, res); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if method != "POST" || ctype != "application/json" {
		t.Errorf("got %s with Content-Type %q, want POST with %q", method, ctype, "application/json")
	}
	want := `{"name":"train","cluster":"c1","type":"batch","groups":[{"name":"g","count":1,"command":["true"],` +
		`"resources":{"cpu":0,"memory":0},"timeout":"1m0s"}]}`
	if string(body) != want {
		t.Errorf("got body %s, want %s", body, want)
	}
}
