// Package functions holds no code: its tests check that the example
// functions build and speak the Lambda Runtime API as a Shoal agent (or
// AWS Lambda) drives them.
package functions

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/internal/testutil"
)

// runtimeResult is what a function posted for one invocation.
type runtimeResult struct {
	ID   string
	Kind string // "response", "error", or "init" for an init error
	Body string
}

// runtimeAPI is a minimal Lambda Runtime API: /next hands out the events
// sent to events, one at a time; the responses and errors posted come out
// of results.
type runtimeAPI struct {
	*httptest.Server
	events  chan [2]string // request id, payload
	results chan runtimeResult
	closed  chan struct{} // closed at cleanup: a waiting /next returns
}

func newRuntimeAPI(t *testing.T) *runtimeAPI {
	t.Helper()
	rt := &runtimeAPI{events: make(chan [2]string), results: make(chan runtimeResult, 16), closed: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /2018-06-01/runtime/invocation/next", func(w http.ResponseWriter, r *http.Request) {
		select {
		case ev := <-rt.events:
			h := w.Header()
			h.Set("Lambda-Runtime-Aws-Request-Id", ev[0])
			h.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(time.Now().Add(30*time.Second).UnixMilli(), 10))
			h.Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:hello")
			h.Set("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
			h.Set("Content-Type", "application/json")
			io.WriteString(w, ev[1])
		case <-r.Context().Done():
		case <-rt.closed:
			w.WriteHeader(http.StatusGone)
		}
	})
	post := func(kind string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			select {
			case rt.results <- runtimeResult{ID: r.PathValue("id"), Kind: kind, Body: string(b)}:
			case <-rt.closed:
			}
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"status":"OK"}`)
		}
	}
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/response", post("response"))
	mux.HandleFunc("POST /2018-06-01/runtime/invocation/{id}/error", post("error"))
	mux.HandleFunc("POST /2018-06-01/runtime/init/error", post("init"))
	rt.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		close(rt.closed)
		rt.Close()
	})
	return rt
}

// invoke hands the function one event and returns what it posted.
func (rt *runtimeAPI) invoke(t *testing.T, id, payload string) runtimeResult {
	t.Helper()
	select {
	case rt.events <- [2]string{id, payload}:
	case <-time.After(30 * time.Second):
		t.Fatalf("the function did not ask for event %s within 30s", id)
	}
	select {
	case r := <-rt.results:
		return r
	case <-time.After(30 * time.Second):
		t.Fatalf("the function did not answer event %s within 30s", id)
	}
	return runtimeResult{}
}

// startFunction runs the bootstrap at path against rt until the test
// ends; its output is logged if the test fails. The bootstrap runs in a
// process group of its own, killed whole at the end: a shell bootstrap's
// curl, waiting on /next, would otherwise outlive it and hold its output
// pipe (and the test) open.
func startFunction(t *testing.T, rt *runtimeAPI, path string) {
	t.Helper()
	cmd := exec.Command(path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "AWS_LAMBDA_RUNTIME_API="+strings.TrimPrefix(rt.URL, "http://"),
		"AWS_LAMBDA_FUNCTION_NAME=hello", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128", "AWS_LAMBDA_FUNCTION_VERSION=1")
	var out testutil.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("output of %s:\n%s", path, out.String())
		}
	})
}

func TestHelloGo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bootstrap")
	build := exec.Command("go", "build", "-o", bin, "./hello-go")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./hello-go: %v\n%s", err, out)
	}
	rt := newRuntimeAPI(t)
	startFunction(t, rt, bin)

	tests := []struct {
		payload  string
		wantKind string
		want     map[string]any
	}{
		{`{"name":"x"}`, "response", map[string]any{"greeting": "Hello, x", "calls": 1.0}},
		{`{"name":"y","sleep_ms":10,"alloc_mib":8}`, "response", map[string]any{"greeting": "Hello, y", "calls": 2.0}},
		{`{}`, "response", map[string]any{"greeting": "Hello, world", "calls": 3.0}},
		{`{"name":"error"}`, "error", map[string]any{"errorType": "BadNameError",
			"errorMessage": `hello refuses the name "error", as asked`}},
		{`{"name":"z"}`, "response", map[string]any{"greeting": "Hello, z", "calls": 5.0}}, // the process lives on
	}
	for i, tt := range tests {
		id := fmt.Sprintf("req-%d", i)
		r := rt.invoke(t, id, tt.payload)
		if r.ID != id || r.Kind != tt.wantKind {
			t.Errorf("event %s: got a %s for %s, want a %s for %s", tt.payload, r.Kind, r.ID, tt.wantKind, id)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(r.Body), &got); err != nil {
			t.Fatalf("event %s: the answer %q is not JSON: %v", tt.payload, r.Body, err)
		}
		delete(got, "stackTrace")
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("event %s: answer (-want +got):\n%s", tt.payload, diff)
		}
	}
}

func TestHelloSh(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("hello-sh needs curl, which is not installed")
	}
	rt := newRuntimeAPI(t)
	startFunction(t, rt, "./hello-sh/bootstrap")
	for i, payload := range []string{`{"name":"x"}`, `[1, "two", {"3": null}]`, `"100%s"`} {
		id := fmt.Sprintf("req-%d", i)
		r := rt.invoke(t, id, payload)
		want := runtimeResult{ID: id, Kind: "response", Body: `{"echo":` + payload + `}`}
		if r != want {
			t.Errorf("event %s: got %+v, want %+v", payload, r, want)
		}
	}
}

// TestHelloShExecutable checks that the bootstrap is executable in the
// checkout and recorded so in git: a bundle zipped from it must be.
func TestHelloShExecutable(t *testing.T) {
	const p = "hello-sh/bootstrap"
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("%s has mode %s; want it executable", p, fi.Mode())
	}
	out, err := exec.Command("git", "ls-files", "--stage", p).Output()
	if err != nil || len(out) == 0 {
		t.Skipf("git ls-files --stage %s: %v (not a git checkout?)", p, err)
	}
	if mode := strings.Fields(string(out))[0]; mode != "100755" {
		t.Errorf("git records %s with mode %s; want 100755 (git update-index --chmod=+x %s)", p, mode, p)
	}
}
