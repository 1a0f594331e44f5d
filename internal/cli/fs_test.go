package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

// fsFake is a DFS API server for CLI tests. Each request goes to the
// handler registered for "METHOD /path"; others get a not_found error.
type fsFake struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string // "METHOD /path?query", the query decoded for legibility
}

func newFSFake(t *testing.T, handlers map[string]http.HandlerFunc) *fsFake {
	t.Helper()
	f := &fsFake{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, _ := url.QueryUnescape(r.URL.RawQuery)
		line := r.Method + " " + r.URL.Path
		if q != "" {
			line += "?" + q
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, line)
		f.mu.Unlock()
		h, ok := handlers[r.Method+" "+r.URL.Path]
		if !ok {
			h = fsError(404, api.CodeNotFound, "no such file or directory")
		}
		h(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fsFake) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func fsJSON(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
}

func fsError(status int, code, msg string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
	}
}

// byPath answers with the handler registered for the request's ?path=.
func byPath(m map[string]http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h, ok := m[r.URL.Query().Get("path")]
		if !ok {
			h = fsError(404, api.CodeNotFound, "no such file or directory")
		}
		h(w, r)
	}
}

// fsArgs prefixes args with "fs" and appends the fake's address.
func fsArgs(srv *fsFake, args ...string) []string {
	return append(append([]string{"fs"}, args...), "--addr", srv.URL)
}

func TestFSPathResolution(t *testing.T) {
	srv := newFSFake(t, map[string]http.HandlerFunc{
		"GET /v1/fs/list":      fsJSON([]*api.FileInfo{}),
		"GET /v1/fs/stat":      fsJSON(&api.FileInfo{}),
		"POST /v1/fs/remove":   fsJSON(struct{}{}),
		"POST /v1/fs/rename":   fsJSON(struct{}{}),
		"GET /v1/fs/snapshots": fsJSON([]*api.SnapshotInfo{}),
	})
	local := writeFile(t, "data.csv", "a,b\n")
	tests := []struct {
		name    string
		env     string // SHOAL_CLUSTER
		args    []string
		wantReq []string
		wantErr []string // substrings of stderr; when set, nothing may be sent
	}{
		{name: "relative with --cluster", args: []string{"ls", "-c", "c1", "data"},
			wantReq: []string{"GET /v1/fs/list?path=/clusters/c1/data"}},
		{name: "relative with --cluster before the subcommand", args: []string{"--cluster", "c1", "stat", "a/b.txt"},
			wantReq: []string{"GET /v1/fs/stat?path=/clusters/c1/a/b.txt"}},
		{name: "relative with SHOAL_CLUSTER", env: "c2", args: []string{"ls", "x"},
			wantReq: []string{"GET /v1/fs/list?path=/clusters/c2/x"}},
		{name: "--cluster wins over SHOAL_CLUSTER", env: "c2", args: []string{"ls", "-c", "c1", "x"},
			wantReq: []string{"GET /v1/fs/list?path=/clusters/c1/x"}},
		{name: "absolute path used as it is", env: "c2", args: []string{"stat", "/data/x"},
			wantReq: []string{"GET /v1/fs/stat?path=/data/x"}},
		{name: "trailing slash dropped", args: []string{"ls", "-c", "c1", "in/"},
			wantReq: []string{"GET /v1/fs/list?path=/clusters/c1/in"}},
		{name: "ls defaults to the cluster root", args: []string{"ls", "-c", "c1"},
			wantReq: []string{"GET /v1/fs/list?path=/clusters/c1"}},
		{name: "ls defaults to / without a cluster", args: []string{"ls"},
			wantReq: []string{"GET /v1/fs/list?path=/"}},
		{name: "snapshot list asks for all without DIR", args: []string{"snapshot", "list", "-c", "c1"},
			wantReq: []string{"GET /v1/fs/snapshots"}},
		{name: "snapshot list of one DIR", args: []string{"snapshot", "list", "-c", "c1", "d"},
			wantReq: []string{"GET /v1/fs/snapshots?dir=/clusters/c1/d"}},
		{name: "rm of several paths", args: []string{"rm", "-r", "-c", "c1", "a", "/b"},
			wantReq: []string{"POST /v1/fs/remove", "POST /v1/fs/remove"}},

		{name: "relative without a cluster", args: []string{"ls", "data"},
			wantErr: []string{"data: a relative DFS path needs a cluster", "--cluster", "SHOAL_CLUSTER"}},
		{name: "dot dot", args: []string{"ls", "-c", "c1", "../c2/secret"},
			wantErr: []string{"../c2/secret: ", `contains ".."`}},
		{name: "dot dot in an absolute path", args: []string{"stat", "/clusters/c1/../c2"},
			wantErr: []string{"/clusters/c1/../c2: ", `contains ".."`}},
		{name: "dot", args: []string{"rm", "-c", "c1", "-r", "."},
			wantErr: []string{`contains "."`}},
		{name: "empty path", args: []string{"stat", ""},
			wantErr: []string{`DFS path "": must not be empty`}},
		{name: "one bad path among several sends nothing", args: []string{"rm", "-c", "c1", "a", "../b"},
			wantErr: []string{"../b: "}},
		{name: "mv to a bad path", args: []string{"mv", "-c", "c1", "a", "/x//y"},
			wantErr: []string{"/x//y: ", "empty name"}},
		{name: "put to a bad path", args: []string{"put", "-c", "c1", local, "../x"},
			wantErr: []string{"../x: "}},
		{name: "get of a bad path", args: []string{"get", "-c", "c1", "a", "../x", t.TempDir()},
			wantErr: []string{"../x: "}},
		{name: "bad cluster name", args: []string{"ls", "-c", "c/1", "x"},
			wantErr: []string{"--cluster: "}},
		{name: "chunk size below the minimum", args: []string{"put", "-c", "c1", "--chunk-size", "1KiB", local, "x"},
			wantErr: []string{"--chunk-size", "1.0 KiB is not between 64.0 KiB and 1.0 GiB"}},
		{name: "ambiguous chunk size unit", args: []string{"put", "-c", "c1", "--chunk-size", "64MB", local, "x"},
			wantErr: []string{"--chunk-size", "write MiB"}},
		{name: "replication out of range", args: []string{"put", "-c", "c1", "--replication", "11", local, "x"},
			wantErr: []string{"--replication: 11 is not between 1 and 10"}},
		{name: "snapshot name with a slash", args: []string{"snapshot", "create", "-c", "c1", "d", "a/b"},
			wantErr: []string{`snapshot name "a/b"`}},
		{name: "missing local file", args: []string{"put", "-c", "c1", "/nonexistent/file", "x"},
			wantErr: []string{"/nonexistent/file", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SHOAL_CLUSTER", tt.env)
			before := len(srv.requests())
			code, stdout, stderr := runCLI(t, fsArgs(srv, tt.args...)...)
			got := srv.requests()[before:]
			if len(tt.wantErr) == 0 {
				if code != 0 {
					t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
				}
				if diff := cmp.Diff(tt.wantReq, got); diff != "" {
					t.Errorf("requests (-want +got):\n%s", diff)
				}
				return
			}
			if code != 1 || !strings.HasPrefix(stderr, "Error: ") {
				t.Errorf("got exit status %d and stderr %q, want 1 and an error", code, stderr)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(stderr, s) {
					t.Errorf("got stderr %q, want it to contain %q", stderr, s)
				}
			}
			if stdout != "" {
				t.Errorf("got stdout %q, want nothing", stdout)
			}
			if len(got) != 0 {
				t.Errorf("got requests %v, want none", got)
			}
		})
	}
}

func TestFSLs(t *testing.T) {
	mod := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	list := []*api.FileInfo{
		{Path: "/clusters/c1/out", Name: "out", Dir: true, Created: mod, Modified: mod, FileID: 7, ModifyIndex: 9},
		{Path: "/clusters/c1/data.csv", Name: "data.csv", Size: 3 << 19, State: api.FileClosed, Replication: 3,
			ChunkSize: api.DefaultChunkSize, Created: mod, Modified: mod, FileID: 12, ModifyIndex: 15},
	}
	srv := newFSFake(t, map[string]http.HandlerFunc{"GET /v1/fs/list": fsJSON(list)})

	t.Run("json", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, fsArgs(srv, "ls", "-c", "c1", "-o", "json")...)
		if code != 0 || stderr != "" {
			t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
		}
		dec := json.NewDecoder(strings.NewReader(stdout))
		dec.DisallowUnknownFields()
		var got []*api.FileInfo
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("stdout is not a JSON file list: %v\n%s", err, stdout)
		}
		if dec.More() {
			t.Errorf("got more than one JSON value on stdout:\n%s", stdout)
		}
		if diff := cmp.Diff(list, got); diff != "" {
			t.Errorf("files printed (-want +got):\n%s", diff)
		}
	})
	t.Run("table", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, fsArgs(srv, "ls", "/clusters/c1")...)
		if code != 0 || stderr != "" {
			t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		want := [][]string{
			{"TYPE", "SIZE", "REPL", "STATE", "MODIFIED", "NAME"},
			{"file", "1.5", "MiB", "3", "closed", "*", "*", "data.csv"},
			{"dir", "-", "-", "-", "*", "*", "out"},
		}
		if len(lines) != len(want) {
			t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), stdout)
		}
		for i, l := range lines {
			f := strings.Fields(l)
			for j := range f {
				if j < len(want[i]) && want[i][j] == "*" {
					f[j] = "*"
				}
			}
			if diff := cmp.Diff(want[i], f); diff != "" {
				t.Errorf("line %d (-want +got):\n%s", i, diff)
			}
		}
	})
}

func TestFSStat(t *testing.T) {
	fi := &api.FileInfo{Path: "/d/f", Name: "f", Size: 100, State: api.FileClosed, Replication: 2, ChunkSize: 64 << 20, FileID: 42,
		Chunks: []api.ChunkInfo{{ID: "c-1", Offset: 0, Length: 100, CRC: 0xdeadbeef, Replicas: []api.Replica{
			{Node: "n1", Zone: "z1", Addr: "10.0.0.1:7461", State: api.ReplicaOK},
			{Node: "n2", Zone: "z2", Addr: "10.0.0.2:7461", State: api.ReplicaDown},
		}}}}
	srv := newFSFake(t, map[string]http.HandlerFunc{"GET /v1/fs/stat": fsJSON(fi)})
	code, stdout, stderr := runCLI(t, fsArgs(srv, "stat", "/d/f")...)
	if code != 0 || stderr != "" {
		t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
	}
	for _, s := range []string{"/d/f", "100 B (100 bytes)", "closed", "64.0 MiB", "42", "c-1", "deadbeef", "n1@z1 (ok), n2@z2 (down)"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("got stdout\n%s\nwant it to contain %q", stdout, s)
		}
	}
	code, stdout, _ = runCLI(t, fsArgs(srv, "stat", "/d/f", "-o", "json")...)
	var got api.FileInfo
	if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil {
		t.Fatalf("got exit status %d and %v decoding %q", code, err, stdout)
	}
	if diff := cmp.Diff(fi, &got); diff != "" {
		t.Errorf("stat -o json (-want +got):\n%s", diff)
	}
}

func TestFSServerErrorNamesPath(t *testing.T) {
	tests := []struct {
		name, msg, want string
	}{
		{"message without the path", "directory not empty; use -r", "Error: /clusters/c1/out: directory not empty; use -r\n"},
		{"message naming the path", "/clusters/c1/out does not exist", "Error: /clusters/c1/out does not exist\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFSFake(t, map[string]http.HandlerFunc{"POST /v1/fs/remove": fsError(409, api.CodeConflict, tt.msg)})
			code, stdout, stderr := runCLI(t, fsArgs(srv, "rm", "-c", "c1", "out")...)
			if code != 1 || stderr != tt.want || stdout != "" {
				t.Errorf("got exit status %d, stdout %q, stderr %q; want 1, nothing and %q", code, stdout, stderr, tt.want)
			}
		})
	}
}

func TestFSSnapshotListWithinCluster(t *testing.T) {
	created := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	all := []*api.SnapshotInfo{
		{Dir: "/clusters/c1", Name: "root", Index: 3, Created: created},
		{Dir: "/clusters/c10/x", Name: "other", Index: 4, Created: created},
		{Dir: "/clusters/c1/in", Name: "s1", Index: 5, Created: created},
		{Dir: "/shared", Name: "s2", Index: 6, Created: created},
	}
	srv := newFSFake(t, map[string]http.HandlerFunc{"GET /v1/fs/snapshots": fsJSON(all)})
	tests := []struct {
		name string
		args []string
		want []*api.SnapshotInfo
	}{
		{"under the cluster's root", []string{"-c", "c1"}, []*api.SnapshotInfo{all[0], all[2]}},
		{"all without a cluster", nil, all},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SHOAL_CLUSTER", "")
			code, stdout, stderr := runCLI(t, fsArgs(srv, append([]string{"snapshot", "list", "-o", "json"}, tt.args...)...)...)
			if code != 0 || stderr != "" {
				t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
			}
			var got []*api.SnapshotInfo
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("stdout is not a JSON snapshot list: %v\n%s", err, stdout)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("snapshots (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHumanBytes(t *testing.T) {
	tests := map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 19: "1.5 MiB", 1 << 30: "1.0 GiB", 5 << 40: "5.0 TiB"}
	keys := make([]int64, 0, len(tests))
	for k := range tests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, n := range keys {
		if got := humanBytes(n); got != tests[n] {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, tests[n])
		}
	}
}
