package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
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
)

const jobYAML = `# a job file
name: train
cluster: c1
groups:
  - name: workers
    count: 4
    command: [python3, train.py, "--epochs", 3]
    env:
      BATCH: 32
      MODE: fast
    resources:
      cpu: 500
      memory: 256
    timeout: 10m
  - name: eval
    count: 1
    command: ["true"]
    max_attempts: 1
    timeout: 90
`

const jobJSON = `{
  "name": "train",
  "cluster": "c1",
  "groups": [
    {"name": "workers", "count": 4, "command": ["python3", "train.py", "--epochs", "3"],
     "env": {"BATCH": "32", "MODE": "fast"}, "resources": {"cpu": 500, "memory": 256}, "timeout": "10m"},
    {"name": "eval", "count": 1, "command": ["true"], "max_attempts": 1, "timeout": 90}
  ]
}`

// wantJob is jobYAML and jobJSON as parsed and validated.
func wantJob() *api.JobSpec {
	return &api.JobSpec{
		Name: "train", Cluster: "c1", Type: api.JobBatch,
		Groups: []api.GroupSpec{
			{Name: "workers", Count: 4, Command: []string{"python3", "train.py", "--epochs", "3"},
				Env: map[string]string{"BATCH": "32", "MODE": "fast"}, Resources: api.Resources{CPU: 500, MemoryMB: 256},
				MaxAttempts: api.DefaultMaxTries, Timeout: api.Duration(10 * time.Minute)},
			{Name: "eval", Count: 1, Command: []string{"true"}, Resources: api.Resources{CPU: 100, MemoryMB: 64},
				MaxAttempts: 1, Timeout: api.Duration(90 * time.Second)},
		},
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadJobFile(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		content string
	}{
		{"YAML", "job.yaml", jobYAML},
		{"JSON", "job.json", jobJSON},
		{"JSON without extension", "job", jobJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.file, tt.content)
			got, err := readJobFile(p, strings.NewReader("not read"))
			if err != nil {
				t.Fatalf("readJobFile: %v", err)
			}
			if diff := cmp.Diff(wantJob(), got); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("stdin", func(t *testing.T) {
		got, err := readJobFile("-", strings.NewReader(jobYAML))
		if err != nil {
			t.Fatalf("readJobFile: %v", err)
		}
		if diff := cmp.Diff(wantJob(), got); diff != "" {
			t.Errorf("spec (-want +got):\n%s", diff)
		}
	})
}

func TestReadJobFileErrors(t *testing.T) {
	tests := []struct {
		name      string
		content   string
		wantInErr []string
		wantIs    error // when not nil, errors.Is must hold
	}{
		{"unknown top-level field", "name: j\ncluster: c1\ncolour: red\ngroups: [{name: g, count: 1, command: [x]}]\n",
			[]string{`unknown field "colour"`}, nil},
		{"unknown group field", "name: j\ncluster: c1\ngroups:\n  - name: g\n    count: 1\n    comand: [x]\n",
			[]string{`unknown field "comand"`}, nil},
		{"unknown field in JSON", `{"name":"j","cluster":"c1","groups":[{"name":"g","count":1,"command":["x"],"retries":2}]}`,
			[]string{`unknown field "retries"`}, nil},
		{"bad YAML", "name: [unclosed\ncluster: c1\n", []string{"yaml: line 1"}, nil},
		{"bad JSON", `{"name": "j",`, []string{"yaml: line 1"}, nil},
		{"wrong type", "name: j\ncluster: c1\ngroups:\n  - name: g\n    count: many\n    command: [x]\n",
			[]string{"count"}, nil},
		{"bad duration", "name: j\ncluster: c1\ngroups: [{name: g, count: 1, command: [x], timeout: soon}]\n",
			[]string{`invalid duration "soon"`}, nil},
		{"invalid spec", "name: j\ncluster: c1\ngroups: [{name: g, count: 0, command: [x]}]\n",
			[]string{"groups[0].count"}, api.ErrInvalid},
		{"SHOAL_ variable", "name: j\ncluster: c1\ngroups: [{name: g, count: 1, command: [x], env: {SHOAL_NODE: n}}]\n",
			[]string{"groups[0].env.SHOAL_NODE"}, api.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, "job.yaml", tt.content)
			_, err := readJobFile(p, nil)
			if err == nil {
				t.Fatal("got no error, want one")
			}
			// Every message names the file first.
			if want := "job file " + p + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("got %q, want it to start with %q", err, want)
			}
			for _, s := range tt.wantInErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("got %q, want it to contain %q", err, s)
				}
			}
			for _, noise := range []string{"error unmarshaling JSON", "while decoding JSON", "json: "} {
				if strings.Contains(err.Error(), noise) {
					t.Errorf("got %q, want it without the decoder's prefix %q", err, noise)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false, want true", err, tt.wantIs)
			}
		})
	}
}

func TestReadJobFileTooLarge(t *testing.T) {
	big := "name: j\n#" + strings.Repeat("x", api.MaxBodyBytes) + "\n"
	want := "larger than 8388608 bytes"
	t.Run("file", func(t *testing.T) {
		p := writeFile(t, "big.yaml", big)
		_, err := readJobFile(p, nil)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) {
			t.Errorf("got %v, want an error naming %s and containing %q", err, p, want)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		_, err := readJobFile("-", strings.NewReader(big))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an error containing %q", err, want)
		}
	})
	t.Run("exactly at the limit is parsed", func(t *testing.T) {
		// A document the parser refuses at its first byte keeps this cheap:
		// what matters is that the size check let it through.
		doc := "@" + strings.Repeat("x", api.MaxBodyBytes-1)
		_, err := readJobFile("-", strings.NewReader(doc))
		if err == nil || strings.Contains(err.Error(), "larger than") || !strings.Contains(err.Error(), "cannot start any token") {
			t.Errorf("got %v, want a parse error (not a size error) for %d bytes", err, len(doc))
		}
	})
}

func TestReadJobFileMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := readJobFile(p, nil)
	if err == nil || !strings.Contains(err.Error(), "reading job file") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a reading error that wraps os.ErrNotExist", err)
	}
}

// runCLI runs the CLI with args and returns its exit status and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// fakeServer is an httptest server that records the requests it gets and
// answers each with the status and body of its handler.
type fakeServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string // "METHOD /path?query"
	body [][]byte
}

func newFakeServer(t *testing.T, status int, body string) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI())
		f.body = append(f.body, b)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func TestRunUsageErrors(t *testing.T) {
	srv := newFakeServer(t, 200, `[]`)
	tests := []struct {
		name       string
		args       []string
		wantStderr []string
	}{
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`}},
		{"unknown subcommand flag", []string{"node", "list", "--colour"}, []string{"unknown flag: --colour"}},
		{"bad output format", []string{"node", "list", "-o", "yaml"}, []string{"--output", `"yaml"`}},
		{"bad output format, long flag", []string{"job", "list", "--output=wide"}, []string{"--output", `"wide"`}},
		{"cluster create without --nodes", []string{"cluster", "create", "c1"}, []string{`"nodes"`, "required"}},
		{"cluster create with more zones than nodes", []string{"cluster", "create", "c1", "--nodes", "2", "--zones", "3"},
			[]string{"zones:", "3 zones cannot be spanned by 2 nodes"}},
		{"cluster create with a bad name", []string{"cluster", "create", "c/1", "--nodes", "2"}, []string{"name:"}},
		{"job run without a file", []string{"job", "run"}, []string{"accepts 1 arg(s), received 0"}},
		{"job run with a missing file", []string{"job", "run", "/nonexistent/job.yaml"}, []string{"reading job file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append(tt.args, "--addr", srv.URL)...)
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
			// None of these may reach the server.
			if reqs := srv.requests(); len(reqs) != 0 {
				t.Errorf("got requests %v, want none", reqs)
			}
		})
	}
}

func TestRunServerError(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		status   int
		body     string
		wantReq  string
		wantErr  string // the whole of stderr
		wantHint string // when not empty, a substring of stderr instead
	}{
		{"job status of unknown job", []string{"job", "status", "nope-1"}, 404,
			`{"error":{"code":"not_found","message":"no job with ID \"nope-1\""}}`,
			"GET /v1/jobs/nope-1", "Error: no job with ID \"nope-1\"\n", ""},
		{"cluster create without capacity", []string{"cluster", "create", "c1", "--nodes", "5"}, 409,
			`{"error":{"code":"insufficient_capacity","message":"cluster c1 needs 5 nodes; 2 are idle"}}`,
			"POST /v1/clusters", "Error: cluster c1 needs 5 nodes; 2 are idle\n", ""},
		{"node list without a leader", []string{"node", "list"}, 503,
			`{"error":{"code":"no_leader","message":"no leader elected yet"}}`,
			"GET /v1/nodes", "Error: no leader elected yet\n", ""},
		{"non-JSON error", []string{"job", "cancel", "train-1"}, 502, `bad gateway`,
			"DELETE /v1/jobs/train-1", "", "bad gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t, tt.status, tt.body)
			code, stdout, stderr := runCLI(t, append(tt.args, "--addr", srv.URL)...)
			if code != 1 {
				t.Errorf("got exit status %d, want 1", code)
			}
			if tt.wantHint == "" && stderr != tt.wantErr {
				t.Errorf("got stderr %q, want %q", stderr, tt.wantErr)
			}
			if tt.wantHint != "" && (!strings.HasPrefix(stderr, "Error: ") || !strings.Contains(stderr, tt.wantHint)) {
				t.Errorf("got stderr %q, want \"Error: \" and %q", stderr, tt.wantHint)
			}
			if stdout != "" {
				t.Errorf("got stdout %q, want nothing", stdout)
			}
			if diff := cmp.Diff([]string{tt.wantReq}, srv.requests()); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunServerUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, _, stderr := runCLI(t, "job", "list", "--addr", addr)
	if code != 1 {
		t.Errorf("got exit status %d, want 1", code)
	}
	if want := "Error: cannot reach shoal server at http://" + addr; !strings.HasPrefix(stderr, want) {
		t.Errorf("got stderr %q, want it to start with %q", stderr, want)
	}
}

func TestRunJobListJSON(t *testing.T) {
	submitted := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	jobs := []*api.Job{
		{ID: "train-1", Name: "train", Cluster: "c1", Type: api.JobBatch, State: api.JobRunning,
			Groups: []api.GroupSpec{{Name: "g", Count: 3, Command: []string{"sleep", "1"}, Resources: api.Resources{CPU: 100, MemoryMB: 64},
				MaxAttempts: 3, Timeout: api.Duration(time.Minute)}},
			Counts: api.TaskCounts{Running: 2, Complete: 1}, Events: []api.Event{{Time: submitted, Type: "submitted", Message: "3 tasks"}},
			Submitted: submitted, CreateIndex: 10, ModifyIndex: 14},
		{ID: "eval-2", Name: "eval", Cluster: "c2", Type: api.JobBatch, State: api.JobComplete,
			Groups: []api.GroupSpec{{Name: "e", Count: 1, Command: []string{"true"}}}, Events: []api.Event{},
			Counts: api.TaskCounts{Complete: 1}, Submitted: submitted, Finished: submitted.Add(time.Second), CreateIndex: 11, ModifyIndex: 12},
	}
	body, err := json.Marshal(jobs)
	if err != nil {
		t.Fatal(err)
	}
	srv := newFakeServer(t, 200, string(body))

	tests := []struct {
		name    string
		args    []string
		wantReq string
	}{
		{"all jobs", []string{"job", "list", "-o", "json"}, "GET /v1/jobs"},
		{"one cluster", []string{"job", "list", "--cluster", "c1", "--output", "json"}, "GET /v1/jobs?cluster=c1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(srv.requests())
			code, stdout, stderr := runCLI(t, append(tt.args, "--addr", srv.URL)...)
			if code != 0 {
				t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
			}
			if stderr != "" {
				t.Errorf("got stderr %q, want nothing", stderr)
			}
			dec := json.NewDecoder(strings.NewReader(stdout))
			dec.DisallowUnknownFields()
			var got []*api.Job
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("stdout is not a JSON job list: %v\n%s", err, stdout)
			}
			if dec.More() {
				t.Errorf("got more than one JSON value on stdout:\n%s", stdout)
			}
			if diff := cmp.Diff(jobs, got); diff != "" {
				t.Errorf("jobs printed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{tt.wantReq}, srv.requests()[before:]); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunJobSubmit(t *testing.T) {
	srv := newFakeServer(t, 200, `{"id":"train-7","index":33}`)
	p := writeFile(t, "job.yaml", jobYAML)
	code, stdout, stderr := runCLI(t, "job", "run", p, "--addr", srv.URL)
	if code != 0 {
		t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
	}
	if want := "Job train-7 submitted.\n"; stdout != want {
		t.Errorf("got stdout %q, want %q", stdout, want)
	}
	if diff := cmp.Diff([]string{"POST /v1/jobs"}, srv.requests()); diff != "" {
		t.Fatalf("requests (-want +got):\n%s", diff)
	}
	var sent api.JobSpec
	srv.mu.Lock()
	err := json.Unmarshal(srv.body[0], &sent)
	srv.mu.Unlock()
	if err != nil {
		t.Fatalf("request body: %v", err)
	}
	if diff := cmp.Diff(wantJob(), &sent); diff != "" {
		t.Errorf("submitted spec (-want +got):\n%s", diff)
	}
}
