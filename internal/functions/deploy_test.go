package functions_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/functions"
)

func TestDeployValidation(t *testing.T) {
	e := newEnv(t, false)
	e.addNode("n1", "a")
	e.addNode("n2", "a")
	e.cluster("c", 1)
	e.cluster("other", 1)
	good := bundle(t, "echo hi")
	dir := zipOf(t, map[string]string{"bootstrap/": "", "bootstrap/x": "y"})
	tests := []struct {
		name    string
		token   string
		cluster string
		fn      string
		body    api.FunctionDeploy
		status  int
		msg     string
	}{
		{"not a zip", operatorToken, "c", "f", api.FunctionDeploy{Zip: []byte("hello")}, 400, "not a zip"},
		{"no bootstrap", operatorToken, "c", "f", api.FunctionDeploy{Zip: zipOf(t, map[string]string{"main": "x"})}, 400, `no "bootstrap"`},
		{"bootstrap in a subdirectory", operatorToken, "c", "f", api.FunctionDeploy{Zip: zipOf(t, map[string]string{"bin/bootstrap": "x"})}, 400, `no "bootstrap"`},
		{"bootstrap is a directory", operatorToken, "c", "f", api.FunctionDeploy{Zip: dir}, 400, "is a directory"},
		{"bootstrap is a symlink", operatorToken, "c", "f", api.FunctionDeploy{Zip: zipOf(t, map[string]string{"bootstrap": "->/bin/sh"})}, 400, "symbolic link"},
		{"no zip", operatorToken, "c", "f", api.FunctionDeploy{}, 400, "needs a bundle"},
		{"bad name", operatorToken, "c", "a.b", api.FunctionDeploy{Zip: good}, 400, "name:"},
		{"name with a slash", operatorToken, "c", "a%2Fb", api.FunctionDeploy{Zip: good}, 400, "name:"},
		{"name too long", operatorToken, "c", strings.Repeat("f", 65), api.FunctionDeploy{Zip: good}, 400, "at most 64"},
		{"memory out of range", operatorToken, "c", "f", api.FunctionDeploy{Zip: good, Config: api.FunctionConfig{MemoryMiB: 64}}, 400, "memory_mib"},
		{"timeout out of range", operatorToken, "c", "f", api.FunctionDeploy{Zip: good, Config: api.FunctionConfig{Timeout: api.Duration(901 * time.Second)}}, 400, "timeout"},
		{"bad provisioned", operatorToken, "c", "f", api.FunctionDeploy{Zip: good, Config: api.FunctionConfig{Provisioned: "lots"}}, 400, "provisioned"},
		{"body names another cluster", operatorToken, "c", "f", api.FunctionDeploy{Cluster: "other", Zip: good}, 400, "cluster:"},
		{"unknown cluster", operatorToken, "nope", "f", api.FunctionDeploy{Zip: good}, 404, `no cluster named "nope"`},
		{"update of a missing function", operatorToken, "c", "f", api.FunctionDeploy{Zip: good, Update: true}, 404, "does not exist"},
		{"cluster token into another cluster", "token-other", "c", "f", api.FunctionDeploy{Zip: good}, 403, `may not act on cluster "c"`},
		{"cluster token into an unknown cluster", "token-other", "nope", "f", api.FunctionDeploy{Zip: good}, 403, "may not act"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.store.Snapshot().Index(stateTables...)
			_, status, msg := e.deploy(tt.token, tt.cluster, tt.fn, tt.body)
			if status != tt.status || !strings.Contains(msg, tt.msg) {
				t.Errorf("got %d %q, want %d mentioning %q", status, msg, tt.status, tt.msg)
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.entries != 0 || len(e.files) != 0 || e.writes != 0 {
				t.Errorf("a refused deploy changed something: %d Raft entries, files %v", e.entries, e.files)
			}
			if after := e.store.Snapshot().Index(stateTables...); after != before {
				t.Errorf("the state's index moved from %d to %d", before, after)
			}
		})
	}
}

func TestBundleTooLarge(t *testing.T) {
	e := newEnv(t, false)
	e.addNode("n1", "a")
	e.cluster("c", 1)
	big := make([]byte, api.MaxBundleBytes+1)
	_, status, msg := e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: big})
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "at most") {
		t.Errorf("got %d %q, want 413 naming the limit", status, msg)
	}
	if e.entries != 0 || e.writes != 0 {
		t.Errorf("a refused deploy changed something: %d entries, %d writes", e.entries, e.writes)
	}
}

func TestDeployVersionsAndReads(t *testing.T) {
	e := newEnv(t, false)
	e.addNode("n1", "a")
	e.addNode("n2", "a")
	e.cluster("c", 1)
	e.cluster("d", 1)
	zb := bundle(t, "echo one")
	f, status, msg := e.deploy("token-c", "c", "f", api.FunctionDeploy{Zip: zb, Config: api.FunctionConfig{MemoryMiB: 256, Env: map[string]string{"A": "1"}}})
	if status != 200 {
		t.Fatalf("deploy: %d %s", status, msg)
	}
	v1 := f.Version(0)
	if f.Latest != 1 || v1.Size != int64(len(zb)) || v1.Config.Timeout.D() != api.DefaultFunctionTimeout ||
		v1.Bundle != functions.BundlePath("c", "f", v1.SHA256) || !v1.Created.Equal(t0) {
		t.Fatalf("first deploy: got %+v (version %+v)", f, v1)
	}
	if got := e.files[v1.Bundle]; string(got) != string(zb) {
		t.Fatalf("bundle at %s: got %d bytes, want the %d deployed", v1.Bundle, len(got), len(zb))
	}
	// The same bundle again: a new version, the file not written again.
	f, status, _ = e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: zb})
	if status != 200 || f.Latest != 2 || e.writes != 1 || f.Version(2).Config.MemoryMiB != api.DefaultFunctionMemoryMiB {
		t.Fatalf("second deploy: got %d, %+v, %d writes; want version 2 with the default config and 1 write", status, f, e.writes)
	}
	// An update without a bundle keeps the latest one; KeepConfig changes
	// only what it sets.
	f, status, msg = e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Update: true, KeepConfig: true, Config: api.FunctionConfig{Timeout: api.Duration(5 * time.Second)}})
	if status != 200 {
		t.Fatalf("update: %d %s", status, msg)
	}
	v3 := f.Version(3)
	if v3 == nil || v3.SHA256 != v1.SHA256 || v3.Bundle != v1.Bundle || v3.Config.Timeout.D() != 5*time.Second || v3.Config.MemoryMiB != api.DefaultFunctionMemoryMiB {
		t.Fatalf("update: got version %+v, want v2's bundle and config with a 5s timeout", v3)
	}
	f, _, _ = e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Update: true, KeepConfig: true, Config: api.FunctionConfig{MemoryMiB: 1024}})
	if v := f.Version(4); v.Config.Timeout.D() != 5*time.Second || v.Config.MemoryMiB != 1024 {
		t.Errorf("second update: got %+v, want memory 1024 and the 5s timeout kept", v.Config)
	}
	if _, status, _ := e.deploy(operatorToken, "d", "g", api.FunctionDeploy{Zip: zb}); status != 200 {
		t.Fatalf("deploy into d: %d", status)
	}

	var got api.Function
	if status, msg := e.do("token-c", "GET", "/v1/clusters/c/functions/f", nil, &got); status != 200 || !cmp.Equal(&got, f) {
		t.Errorf("get: %d %s, %s", status, msg, cmp.Diff(f, &got))
	}
	if status, _ := e.do("token-d", "GET", "/v1/clusters/c/functions/f", nil, nil); status != 403 {
		t.Errorf("get with another cluster's token: got %d, want 403", status)
	}
	if status, _ := e.do(operatorToken, "GET", "/v1/clusters/c/functions/nope", nil, nil); status != 404 {
		t.Errorf("get of a missing function: got %d, want 404", status)
	}
	names := func(token, query string) []string {
		var fs []*api.Function
		if status, msg := e.do(token, "GET", "/v1/functions"+query, nil, &fs); status != 200 {
			t.Fatalf("list %s: %d %s", query, status, msg)
		}
		out := []string{}
		for _, f := range fs {
			out = append(out, f.Cluster+"/"+f.Name)
		}
		return out
	}
	for _, tt := range []struct {
		token, query string
		want         []string
	}{
		{operatorToken, "", []string{"c/f", "d/g"}},
		{operatorToken, "?cluster=d", []string{"d/g"}},
		{operatorToken, "?name=f", []string{"c/f"}},
		{"token-c", "", []string{"c/f"}},
		{"token-d", "?name=f", []string{}},
	} {
		if got := names(tt.token, tt.query); !cmp.Equal(got, tt.want) {
			t.Errorf("list %s as %s: got %v, want %v", tt.query, tt.token, got, tt.want)
		}
	}
	if status, _ := e.do("token-d", "GET", "/v1/functions?cluster=c", nil, nil); status != 403 {
		t.Errorf("list of another cluster: got %d, want 403", status)
	}
}

func TestDeleteFunction(t *testing.T) {
	e := newEnv(t, true)
	e.addNode("n1", "a")
	e.cluster("c", 1)
	e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1")})
	e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "2")})
	if len(e.files) != 2 {
		t.Fatalf("files: %v, want two bundles", e.files)
	}
	if status, _ := e.do("token-x", "DELETE", "/v1/clusters/c/functions/f", nil, nil); status != 401 {
		t.Errorf("delete with an unknown token: got %d, want 401", status)
	}
	var wr api.WriteResponse
	if status, msg := e.do("token-c", "DELETE", "/v1/clusters/c/functions/f", nil, &wr); status != 200 || wr.Index == 0 {
		t.Fatalf("delete: %d %s %+v", status, msg, wr)
	}
	if f := e.store.Snapshot().Function(nil, "c", "f"); f != nil {
		t.Errorf("function still in the state: %+v", f)
	}
	if len(e.files) != 0 || !contains(e.removed, "/clusters/c/.functions/f") {
		t.Errorf("after delete: files %v, removed %v; want every bundle and the directory removed", e.files, e.removed)
	}
	if !cmp.Equal(e.queue.purged, []string{"c/f"}) {
		t.Errorf("purged queues: got %v, want [c/f]", e.queue.purged)
	}
	if status, _ := e.do(operatorToken, "DELETE", "/v1/clusters/c/functions/f", nil, nil); status != 404 {
		t.Errorf("deleting again: got %d, want 404", status)
	}
}
