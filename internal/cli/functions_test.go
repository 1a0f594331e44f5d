package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

// fnFake is a fake server for the fn commands: it answers each
// "METHOD /path" with its route's answer (404 otherwise) and records the
// requests.
type fnFake struct {
	*httptest.Server
	mu     sync.Mutex
	routes map[string]fnAnswer
	reqs   []string // "METHOD /path?query"
	bodies [][]byte
}

type fnAnswer struct {
	status  int
	headers map[string]string
	body    string
}

func newFnFake(t *testing.T, routes map[string]fnAnswer) *fnFake {
	t.Helper()
	t.Setenv("SHOAL_CLUSTER", "")
	f := &fnFake{routes: routes}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI())
		f.bodies = append(f.bodies, b)
		a, ok := f.routes[r.Method+" "+r.URL.EscapedPath()]
		f.mu.Unlock()
		if !ok {
			a = fnAnswer{404, nil, `{"error":{"code":"not_found","message":"no route ` + r.Method + " " + r.URL.Path + `"}}`}
		}
		for k, v := range a.headers {
			w.Header().Set(k, v)
		}
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fnFake) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// run runs the CLI against the fake.
func (f *fnFake) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLI(t, append(args, "--addr", f.URL)...)
}

func testFunction(name, cluster string) *api.Function {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	retries := 2
	return &api.Function{Name: name, Cluster: cluster, Latest: 1, Created: at, Updated: at, CreateIndex: 5, ModifyIndex: 5,
		Versions: []*api.FunctionVersion{{Version: 1, Bundle: "/fn/" + name + "/1.zip", SHA256: strings.Repeat("ab", 32), Size: 2048,
			Config: api.FunctionConfig{MemoryMiB: 128, Timeout: api.Duration(3 * time.Second), Concurrency: 100, Provisioned: "0",
				Retries: &retries}, Created: at}}}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRunFnUsageErrors(t *testing.T) {
	zipOK := writeZip(t, bootstrapOK)
	notZip := writeFile(t, "bootstrap", "#!/bin/sh\n")
	noBootstrap := writeZip(t, testzip.File{Name: "main", Mode: 0o755, Data: "x"})
	notExec := writeZip(t, testzip.File{Name: "bootstrap", Mode: 0o644, Data: "x"})
	badJSON := writeFile(t, "event.json", `{"name":`)
	big := writeFile(t, "big.json", `"`+strings.Repeat("x", api.MaxInvokePayload)+`"`)
	tests := []struct {
		name       string
		args       []string
		wantStderr []string
	}{
		{"bad name", []string{"fn", "deploy", "he.llo", "--cluster", "c1", "--zip", zipOK}, []string{"name:", `"he.llo" may contain only`}},
		{"bad name on status", []string{"fn", "status", "a/b"}, []string{"name:", `"a/b"`}},
		{"name too long", []string{"fn", "invoke", strings.Repeat("f", 65)}, []string{"name:", "at most 64"}},
		{"deploy without --zip", []string{"fn", "deploy", "hello", "--cluster", "c1"}, []string{"--zip is required"}},
		{"deploy without a cluster", []string{"fn", "deploy", "hello", "--zip", zipOK}, []string{"--cluster is required", "SHOAL_CLUSTER"}},
		{"missing zip", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", "/nonexistent/b.zip"}, []string{"--zip:", "no such file"}},
		{"not a zip", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", notZip}, []string{"--zip: " + notZip + ": not a zip archive"}},
		{"no bootstrap", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", noBootstrap}, []string{"no bootstrap at the root"}},
		{"bootstrap not executable", []string{"fn", "update", "hello", "--zip", notExec}, []string{"bootstrap is not executable", "chmod +x"}},
		{"memory too small", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", zipOK, "--memory", "64"}, []string{"memory_mib:", "64 MiB is out of range"}},
		{"timeout not whole seconds", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", zipOK, "--timeout", "1500ms"}, []string{"timeout:", "whole number of seconds"}},
		{"timeout not a duration", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", zipOK, "--timeout", "soon"}, []string{"--timeout", `"soon"`}},
		{"bad provisioned", []string{"fn", "update", "hello", "--provisioned", "lots"}, []string{"provisioned:", `"lots"`}},
		{"too many retries", []string{"fn", "update", "hello", "--retries", "3"}, []string{"retries:", "3 is out of range"}},
		{"env without =", []string{"fn", "update", "hello", "--env", "DEBUG"}, []string{`--env: "DEBUG" is not KEY=VALUE`}},
		{"reserved env", []string{"fn", "update", "hello", "--env", "_HANDLER=x"}, []string{"env:", "_HANDLER is set by Shoal"}},
		{"update with nothing", []string{"fn", "update", "hello"}, []string{"nothing to update"}},
		{"update with zero memory", []string{"fn", "update", "hello", "--memory", "0"}, []string{"--memory:", "not an empty or zero one"}},
		{"update with an empty handler", []string{"fn", "update", "hello", "--handler", ""}, []string{"--handler:", "not an empty or zero one"}},
		{"async with --out", []string{"fn", "invoke", "hello", "--async", "--out", "x.json"}, []string{"not with --async or --dry-run"}},
		{"dry run with a client context", []string{"fn", "invoke", "hello", "--dry-run", "--client-context", "{}"}, []string{"not with --async or --dry-run"}},
		{"client context not an object", []string{"fn", "invoke", "hello", "--client-context", "[1]"}, []string{"--client-context:", "not a JSON object"}},
		{"bad payload", []string{"fn", "invoke", "hello", "--payload", "{name: x}"}, []string{"--payload: not valid JSON"}},
		{"bad payload file", []string{"fn", "invoke", "hello", "--payload", "@" + badJSON}, []string{"--payload (" + badJSON + "): not valid JSON"}},
		{"missing payload file", []string{"fn", "invoke", "hello", "--payload", "@/nonexistent/e.json"}, []string{"--payload:", "no such file"}},
		{"payload too large", []string{"fn", "invoke", "hello", "--payload", "@" + big}, []string{"larger than 6291456 bytes"}},
		{"async and dry run", []string{"fn", "invoke", "hello", "--async", "--dry-run"}, []string{"--async and --dry-run exclude each other"}},
		{"bad log type", []string{"fn", "invoke", "hello", "--log-type", "All"}, []string{`--log-type: "All" is not Tail or None`}},
		{"bad since", []string{"fn", "logs", "hello", "--since", "yesterday"}, []string{"--since:", `"yesterday"`}},
		{"dlq show without --id", []string{"fn", "dlq", "show", "hello"}, []string{`"id"`, "required"}},
		{"bad output", []string{"fn", "list", "-o", "yaml"}, []string{"--output", `"yaml"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFnFake(t, nil)
			code, stdout, stderr := srv.run(t, tt.args...)
			if code != 1 {
				t.Errorf("got exit status %d, want 1", code)
			}
			if !strings.HasPrefix(stderr, "Error: ") {
				t.Errorf("got stderr %q, want it to start with %q", stderr, "Error: ")
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("got stderr %q, want it to contain %q", stderr, s)
				}
			}
			if stdout != "" {
				t.Errorf("got stdout %q, want nothing", stdout)
			}
			if reqs := srv.requests(); len(reqs) != 0 {
				t.Errorf("got requests %v, want none", reqs)
			}
		})
	}
}

func TestRunFnDeploy(t *testing.T) {
	zipPath := writeZip(t, bootstrapOK)
	zipBytes, err := os.ReadFile(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	one, two := 1, 0
	fnJSON := jsonOf(t, testFunction("hello", "c1"))
	tests := []struct {
		name    string
		args    []string
		env     string // SHOAL_CLUSTER
		wantReq []string
		want    api.FunctionDeploy
	}{
		{"deploy, defaults", []string{"fn", "deploy", "hello", "--cluster", "c1", "--zip", zipPath},
			"", []string{"PUT /v1/clusters/c1/functions/hello"},
			api.FunctionDeploy{Cluster: "c1", Zip: zipBytes}},
		{"deploy, every flag, cluster from SHOAL_CLUSTER", []string{"fn", "deploy", "hello", "--zip", zipPath, "--handler", "main.handle",
			"--memory", "512", "--timeout", "5m", "--concurrency", "7", "--provisioned", "auto", "--retries", "1",
			"--env", "A=1", "--env", "B=x=y,z"},
			"c1", []string{"PUT /v1/clusters/c1/functions/hello"},
			api.FunctionDeploy{Cluster: "c1", Zip: zipBytes, Config: api.FunctionConfig{Handler: "main.handle", MemoryMiB: 512,
				Timeout: api.Duration(5 * time.Minute), Concurrency: 7, Provisioned: "auto", Retries: &one,
				Env: map[string]string{"A": "1", "B": "x=y,z"}}}},
		{"update one setting, cluster found", []string{"fn", "update", "hello", "--memory", "256"},
			"", []string{"GET /v1/functions?name=hello", "PUT /v1/clusters/c1/functions/hello"},
			api.FunctionDeploy{Cluster: "c1", Config: api.FunctionConfig{MemoryMiB: 256}, Update: true, KeepConfig: true}},
		{"update the bundle and retries 0", []string{"fn", "update", "hello", "--cluster", "c1", "--zip", zipPath, "--retries", "0"},
			"", []string{"PUT /v1/clusters/c1/functions/hello"},
			api.FunctionDeploy{Cluster: "c1", Zip: zipBytes, Config: api.FunctionConfig{Retries: &two}, Update: true, KeepConfig: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFnFake(t, map[string]fnAnswer{
				"GET /v1/functions":                   {200, nil, "[" + fnJSON + "]"},
				"PUT /v1/clusters/c1/functions/hello": {200, nil, fnJSON},
			})
			t.Setenv("SHOAL_CLUSTER", tt.env)
			code, stdout, stderr := srv.run(t, tt.args...)
			if code != 0 {
				t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
			}
			if want := "Function hello deployed to cluster c1: version 1 (2.0 KiB, sha256 abababababab), memory 128 MiB, timeout 3s, concurrency 100, provisioned 0, retries 2.\n"; stdout != want {
				t.Errorf("got stdout %q, want %q", stdout, want)
			}
			if diff := cmp.Diff(tt.wantReq, srv.requests()); diff != "" {
				t.Fatalf("requests (-want +got):\n%s", diff)
			}
			var got api.FunctionDeploy
			if err := json.Unmarshal(srv.bodies[len(srv.bodies)-1], &got); err != nil {
				t.Fatalf("deploy body: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("deploy body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunFnDeployDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bootstrap"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	srv := newFnFake(t, map[string]fnAnswer{"PUT /v1/clusters/c1/functions/hello": {200, nil, jsonOf(t, testFunction("hello", "c1"))}})
	code, _, stderr := srv.run(t, "fn", "deploy", "hello", "--cluster", "c1", "--zip", dir)
	if code != 0 {
		t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
	}
	var got api.FunctionDeploy
	if err := json.Unmarshal(srv.bodies[0], &got); err != nil {
		t.Fatal(err)
	}
	if err := checkBundle(got.Zip); err != nil {
		t.Errorf("the bundle sent for directory %s: %v", dir, err)
	}
}

func TestRunFnClusterResolution(t *testing.T) {
	tests := []struct {
		name      string
		found     []*api.Function
		wantCode  int
		wantOut   string
		wantErr   string
		wantReqs  []string
		extraArgs []string
	}{
		{"none", nil, 1, "", "Error: no function hello\n", []string{"GET /v1/functions?name=hello"}, nil},
		{"one", []*api.Function{testFunction("hello", "c2")}, 0, "Function hello deleted from cluster c2.\n", "",
			[]string{"GET /v1/functions?name=hello", "DELETE /v1/clusters/c2/functions/hello"}, nil},
		{"several", []*api.Function{testFunction("hello", "c3"), testFunction("hello", "c1")}, 1, "",
			"Error: function hello exists in clusters c1, c3: say which with --cluster (or SHOAL_CLUSTER)\n",
			[]string{"GET /v1/functions?name=hello"}, nil},
		{"several, --cluster given", []*api.Function{testFunction("hello", "c3"), testFunction("hello", "c1")}, 0,
			"Function hello deleted from cluster c3.\n", "", []string{"DELETE /v1/clusters/c3/functions/hello"}, []string{"--cluster", "c3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFnFake(t, map[string]fnAnswer{
				"GET /v1/functions":                      {200, nil, jsonOf(t, append([]*api.Function{}, tt.found...))},
				"DELETE /v1/clusters/c2/functions/hello": {200, nil, `{"index":9}`},
				"DELETE /v1/clusters/c3/functions/hello": {200, nil, `{"index":9}`},
			})
			code, stdout, stderr := srv.run(t, append([]string{"fn", "delete", "hello"}, tt.extraArgs...)...)
			if code != tt.wantCode || stdout != tt.wantOut || stderr != tt.wantErr {
				t.Errorf("got exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout, stderr, tt.wantCode, tt.wantOut, tt.wantErr)
			}
			if diff := cmp.Diff(tt.wantReqs, srv.requests()); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunFnJSONOutput(t *testing.T) {
	fns := []*api.Function{testFunction("hello", "c1"), testFunction("resize", "c2")}
	st := &api.FunctionStatus{Function: fns[0], ProvisionedTarget: 1, Invocations: 3, WarmHits: 2, ColdStarts: 1, WarmHitRate: 2.0 / 3,
		Sandboxes: []*api.SandboxInfo{{ID: "sb1", Node: "n1", Function: "hello", Cluster: "c1", Version: 1, State: api.SandboxIdle,
			Provisioned: true, Started: fns[0].Created, Invocations: 3}}}
	dls := []*api.DeadLetter{{ID: "r1", Function: "hello", Cluster: "c1", Payload: []byte(`{"a":1}`), ErrorType: "Runtime.ExitError",
		ErrorMessage: "exit status 2", Attempts: 3, Enqueued: fns[0].Created, Failed: fns[0].Created}}
	recs := []*api.FunctionLogRecord{{RequestID: "r1", Function: "hello", Version: 1, Node: "n1", Sandbox: "sb1",
		Start: fns[0].Created, End: fns[0].Created.Add(time.Second), Outcome: "ok", Log: "hi\n"}}
	srv := newFnFake(t, map[string]fnAnswer{
		"GET /v1/functions":                                {200, nil, jsonOf(t, fns)},
		"GET /v1/clusters/c1/functions/hello/status":       {200, nil, jsonOf(t, st)},
		"GET /v1/clusters/c1/functions/hello/dlq":          {200, nil, jsonOf(t, dls)},
		"GET /v1/clusters/c1/functions/hello/dlq/r1":       {200, nil, jsonOf(t, dls[0])},
		"GET /v1/clusters/c1/functions/hello/logs":         {200, nil, jsonOf(t, recs)},
		"POST /v1/clusters/c1/functions/hello/dlq/redrive": {200, nil, `{"redriven":["r1"]}`},
	})
	tests := []struct {
		name    string
		args    []string
		into    func() any // a pointer to decode stdout into
		want    any
		wantReq string
	}{
		{"list", []string{"fn", "list", "--cluster", "c1"}, func() any { return &[]*api.Function{} }, &fns, "GET /v1/functions?cluster=c1"},
		{"status", []string{"fn", "status", "hello", "--cluster", "c1"}, func() any { return &api.FunctionStatus{} }, st,
			"GET /v1/clusters/c1/functions/hello/status"},
		{"dlq list", []string{"fn", "dlq", "list", "hello", "--cluster", "c1"}, func() any { return &[]*api.DeadLetter{} }, &dls,
			"GET /v1/clusters/c1/functions/hello/dlq"},
		{"dlq show", []string{"fn", "dlq", "show", "hello", "--cluster", "c1", "--id", "r1"}, func() any { return &api.DeadLetter{} }, dls[0],
			"GET /v1/clusters/c1/functions/hello/dlq/r1"},
		{"dlq redrive", []string{"fn", "dlq", "redrive", "hello", "--cluster", "c1", "--id", "r1"}, func() any { return &api.RedriveResult{} },
			&api.RedriveResult{Redriven: []string{"r1"}}, "POST /v1/clusters/c1/functions/hello/dlq/redrive"},
		{"logs", []string{"fn", "logs", "hello", "--cluster", "c1"}, func() any { return &[]*api.FunctionLogRecord{} }, &recs,
			"GET /v1/clusters/c1/functions/hello/logs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(srv.requests())
			code, stdout, stderr := srv.run(t, append(tt.args, "-o", "json")...)
			if code != 0 || stderr != "" {
				t.Fatalf("got exit status %d, stderr %q; want 0 and nothing", code, stderr)
			}
			dec := json.NewDecoder(strings.NewReader(stdout))
			dec.DisallowUnknownFields()
			got := tt.into()
			if err := dec.Decode(got); err != nil {
				t.Fatalf("stdout is not the JSON expected: %v\n%s", err, stdout)
			}
			if dec.More() {
				t.Errorf("got more than one JSON value on stdout:\n%s", stdout)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("printed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{tt.wantReq}, srv.requests()[before:]); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunFnTables(t *testing.T) {
	fn := testFunction("hello", "c1")
	srv := newFnFake(t, map[string]fnAnswer{
		"GET /v1/functions": {200, nil, jsonOf(t, []*api.Function{fn})},
		"GET /v1/clusters/c1/functions/hello/logs": {200, nil, jsonOf(t, []*api.FunctionLogRecord{{RequestID: "r1", Version: 1,
			Node: "n1", Sandbox: "sb1", Start: fn.Created, End: fn.Created.Add(1500 * time.Millisecond), Outcome: "ok", Log: "one\ntwo\n"}})},
	})
	_, stdout, stderr := srv.run(t, "fn", "list")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME ") || !strings.Contains(lines[1], "hello") ||
		strings.Index(lines[0], "CLUSTER") != strings.Index(lines[1], "c1") {
		t.Errorf("fn list printed %q (stderr %q), want an aligned table with hello in c1", stdout, stderr)
	}
	_, stdout, stderr = srv.run(t, "fn", "logs", "hello", "--cluster", "c1", "--since", "2026-11-30T11:00:00Z", "--request-id", "r1")
	wantLines := []string{"[n1 sb1] r1 one", "[n1 sb1] r1 two", "[n1 sb1] r1 -> ok in 1.5s"}
	got := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(got) != len(wantLines) {
		t.Fatalf("fn logs printed %q (stderr %q), want %d lines", stdout, stderr, len(wantLines))
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("fn logs line %d: got %q, want it to start with %q", i, got[i], w)
		}
	}
	if want := "GET /v1/clusters/c1/functions/hello/logs?request_id=r1&since=2026-11-30T11%3A00%3A00Z"; srv.requests()[1] != want {
		t.Errorf("fn logs asked %q, want %q", srv.requests()[1], want)
	}
}

func TestRunFnInvoke(t *testing.T) {
	tail := "START RequestId: r1\nsaying hello\nEND RequestId: r1\n"
	ok := fnAnswer{200, map[string]string{api.RequestIDHeader: "r1", api.ExecutedVersionHeader: "1"}, `{"greeting":"Hello, x","calls":1}`}
	fnErr := fnAnswer{200, map[string]string{api.RequestIDHeader: "r2", api.FunctionErrorHeader: "Unhandled", api.ExecutedVersionHeader: "1"},
		`{"errorMessage":"name must not be error","errorType":"errorString"}`}
	event := fnAnswer{202, map[string]string{api.RequestIDHeader: "r3"}, ``}
	dry := fnAnswer{204, nil, ``}
	withTail := ok
	withTail.headers = map[string]string{api.RequestIDHeader: "r1", api.LogResultHeader: "U1RBUlQgUmVxdWVzdElkOiByMQpzYXlpbmcgaGVsbG8KRU5EIFJlcXVlc3RJZDogcjEK"}
	tests := []struct {
		name       string
		ans        fnAnswer
		args       []string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
		wantBody   string
		wantHeader map[string]string
	}{
		{"response", ok, []string{"--payload", `{"name": "x"}`}, "", 0, `{"greeting":"Hello, x","calls":1}` + "\n", "", `{"name": "x"}`,
			map[string]string{api.InvocationTypeHeader: "RequestResponse", api.LogTypeHeader: "None"}},
		{"no payload", ok, nil, "", 0, `{"greeting":"Hello, x","calls":1}` + "\n", "", `{}`, nil},
		{"function error", fnErr, []string{"--payload", `{"name":"error"}`}, "", 1, `{"errorMessage":"name must not be error","errorType":"errorString"}` + "\n",
			"Error: function hello failed (Unhandled error, request r2): errorString: name must not be error\n", `{"name":"error"}`, nil},
		{"log tail", withTail, []string{"--log-type", "Tail", "--version", "3"}, "", 0, `{"greeting":"Hello, x","calls":1}` + "\n", tail, `{}`,
			map[string]string{api.LogTypeHeader: "Tail"}},
		{"async", event, []string{"--async", "--payload", "[1,2]"}, "", 0, "Event r3 queued for function hello.\n", "", `[1,2]`,
			map[string]string{api.InvocationTypeHeader: "Event"}},
		{"dry run", dry, []string{"--dry-run"}, "", 0, "Dry run: function hello may be invoked.\n", "", `{}`,
			map[string]string{api.InvocationTypeHeader: "DryRun"}},
		{"payload from stdin", ok, []string{"--payload", "-"}, `{"name":"stdin"}`, 0, `{"greeting":"Hello, x","calls":1}` + "\n", "", `{"name":"stdin"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr http.Header
			var body []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/clusters/c1/functions/hello/invocations" {
					http.Error(w, "wrong path "+r.URL.Path, 500)
					return
				}
				hdr, body = r.Header.Clone(), must(io.ReadAll(r.Body))
				for k, v := range tt.ans.headers {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.ans.status)
				io.WriteString(w, tt.ans.body)
			}))
			defer srv.Close()
			var out, errOut bytes.Buffer
			root := newRoot(&out, &errOut)
			root.SetIn(strings.NewReader(tt.stdin))
			root.SetArgs(append([]string{"fn", "invoke", "hello", "--cluster", "c1", "--addr", srv.URL}, tt.args...))
			code := 0
			if err := root.Execute(); err != nil {
				code = 1
				errOut.WriteString("Error: " + err.Error() + "\n")
			}
			if code != tt.wantCode || out.String() != tt.wantStdout || errOut.String() != tt.wantStderr {
				t.Errorf("got exit %d, stdout %q, stderr %q;\nwant %d, %q, %q", code, out.String(), errOut.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if string(body) != tt.wantBody {
				t.Errorf("sent payload %q, want %q", body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if hdr.Get(k) != v {
					t.Errorf("sent %s: %q, want %q", k, hdr.Get(k), v)
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRunFnInvokeOut(t *testing.T) {
	srv := newFnFake(t, map[string]fnAnswer{
		"POST /v1/clusters/c1/functions/hello/invocations": {200, map[string]string{api.RequestIDHeader: "r1"}, `{"big":true}`},
	})
	out := filepath.Join(t.TempDir(), "out.json")
	code, stdout, stderr := srv.run(t, "fn", "invoke", "hello", "--cluster", "c1", "--out", out)
	if code != 0 || stdout != "" || stderr != "" {
		t.Errorf("got exit %d, stdout %q, stderr %q; want 0 and nothing printed", code, stdout, stderr)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != `{"big":true}` {
		t.Errorf("--out file holds %q (%v), want the payload", b, err)
	}
	code, stdout, _ = srv.run(t, "fn", "invoke", "hello", "--cluster", "c1", "-o", "json")
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil {
		t.Fatalf("fn invoke -o json: exit %d, stdout %q (%v)", code, stdout, err)
	}
	want := map[string]any{"request_id": "r1", "status_code": 200.0, "payload": map[string]any{"big": true}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fn invoke -o json (-want +got):\n%s", diff)
	}
}
