package state_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

const sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func version(memory int) api.FunctionVersion {
	return api.FunctionVersion{Bundle: "/clusters/c/.functions/f/" + sha + ".zip", SHA256: sha, Size: 100,
		Config: api.FunctionConfig{MemoryMiB: memory, Env: map[string]string{"A": "1"}}}
}

func (f *fixture) deploy(cluster, name string, v api.FunctionVersion, update bool) (*api.Function, error) {
	f.t.Helper()
	// version's bundle is in cluster c; move it to the cluster deployed to.
	v.Bundle = strings.Replace(v.Bundle, "/clusters/c/.functions/", "/clusters/"+cluster+"/.functions/", 1)
	return f.s.DeployFunction(f.next(), &state.FunctionDeployRequest{Cluster: cluster, Name: name, Version: v, Update: update, Now: f.now})
}

func TestDeployFunctionVersions(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "a")
	f.createCluster("c", 1, 1)
	ws := memdb.NewWatchSet()
	if got := f.snap().Function(ws, "c", "f"); got != nil {
		t.Fatalf("Function before deploy: got %+v, want nil", got)
	}
	fn, err := f.deploy("c", "f", version(256), false)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Watch(time.After(10 * time.Second)) {
		t.Error("the watch on a missing function did not fire when it was deployed")
	}
	created := f.index
	if fn.Latest != 1 || len(fn.Versions) != 1 || fn.Versions[0].Version != 1 || fn.CreateIndex != created {
		t.Fatalf("first deploy: got %+v, want version 1 created at %d", fn, created)
	}
	// The configuration is resolved and the creation time taken from the
	// request.
	if v := fn.Versions[0]; v.Config.Timeout.D() != api.DefaultFunctionTimeout || v.Config.Retries == nil || !v.Created.Equal(t0) {
		t.Errorf("version 1: got %+v, want the defaults filled in and created at %v", v, t0)
	}
	f.now = t0.Add(time.Minute)
	fn, err = f.deploy("c", "f", version(512), true)
	if err != nil {
		t.Fatal(err)
	}
	if fn.Latest != 2 || len(fn.Versions) != 2 || fn.Version(0).Config.MemoryMiB != 512 || fn.Version(1).Config.MemoryMiB != 256 ||
		fn.CreateIndex != created || fn.ModifyIndex != f.index || !fn.Updated.Equal(f.now) || !fn.Created.Equal(t0) {
		t.Fatalf("second deploy: got %+v, want versions 1 and 2", fn)
	}
	// Readers get copies: changing one changes nothing in the store.
	got := f.snap().Function(nil, "c", "f")
	got.Versions[0].Config.Env["A"] = "changed"
	got.Versions[1].Bundle = "changed"
	if again := f.snap().Function(nil, "c", "f"); !cmp.Equal(again, fn) {
		t.Errorf("the store changed through a returned copy: %s", cmp.Diff(fn, again))
	}
}

func TestDeployFunctionErrors(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "a")
	f.createCluster("c", 1, 1)
	bad := version(0)
	bad.Config.MemoryMiB = 64
	noSHA := version(0)
	noSHA.SHA256 = "abc"
	elsewhere := version(0)
	elsewhere.Bundle = "/clusters/other/f.zip"
	tests := []struct {
		name, cluster, fn string
		v                 api.FunctionVersion
		update            bool
		want              error
		msg               string
	}{
		{"unknown cluster", "nope", "f", version(0), false, state.ErrNotFound, `no cluster named "nope"`},
		{"update of a missing function", "c", "f", version(0), true, state.ErrNotFound, "does not exist"},
		{"bad name", "c", "a b", version(0), false, state.ErrInvalid, "name:"},
		{"name with a slash", "c", "a/b", version(0), false, state.ErrInvalid, "name:"},
		{"long name", "c", strings.Repeat("x", 65), version(0), false, state.ErrInvalid, "at most 64"},
		{"memory out of range", "c", "f", bad, false, state.ErrInvalid, "memory_mib"},
		{"bad digest", "c", "f", noSHA, false, state.ErrInvalid, "sha256"},
		{"bundle of another cluster", "c", "f", elsewhere, false, state.ErrInvalid, "bundle:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.snap().Index(state.TableFunctions)
			_, err := f.deploy(tt.cluster, tt.fn, tt.v, tt.update)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
			if got := f.snap().Functions(nil, ""); len(got) != 0 || f.snap().Index(state.TableFunctions) != before {
				t.Errorf("a refused deploy changed the table: %+v", got)
			}
		})
	}
}

func TestFunctionReadsDeleteAndCascade(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "a")
	f.addNode("n2", "a")
	f.createCluster("c1", 1, 1)
	f.createCluster("c2", 1, 1)
	for _, p := range [][2]string{{"c1", "g"}, {"c1", "f"}, {"c2", "f"}} {
		if _, err := f.deploy(p[0], p[1], version(0), false); err != nil {
			t.Fatal(err)
		}
	}
	names := func(fs []*api.Function) []string {
		var out []string
		for _, fn := range fs {
			out = append(out, fn.Cluster+"/"+fn.Name)
		}
		return out
	}
	if got, want := names(f.snap().Functions(nil, "")), []string{"c1/f", "c1/g", "c2/f"}; !cmp.Equal(got, want) {
		t.Errorf("Functions(all): got %v, want %v", got, want)
	}
	if got, want := names(f.snap().Functions(nil, "c2")), []string{"c2/f"}; !cmp.Equal(got, want) {
		t.Errorf("Functions(c2): got %v, want %v", got, want)
	}
	if got, want := names(f.snap().FunctionsNamed(nil, "f")), []string{"c1/f", "c2/f"}; !cmp.Equal(got, want) {
		t.Errorf("FunctionsNamed(f): got %v, want %v", got, want)
	}

	ws := memdb.NewWatchSet()
	f.snap().Functions(ws, "c1")
	old, err := f.s.DeleteFunction(f.next(), &state.FunctionDeleteRequest{Cluster: "c1", Name: "g"})
	if err != nil || old == nil || old.Name != "g" || len(old.Versions) != 1 {
		t.Fatalf("DeleteFunction: got %+v, %v; want the deleted function", old, err)
	}
	if ws.Watch(time.After(10 * time.Second)) {
		t.Error("the watch on c1's functions did not fire on a delete")
	}
	if _, err := f.s.DeleteFunction(f.next(), &state.FunctionDeleteRequest{Cluster: "c1", Name: "g"}); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("deleting again: got %v, want %v", err, state.ErrNotFound)
	}

	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "c1", Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got, want := names(f.snap().Functions(nil, "")), []string{"c2/f"}; !cmp.Equal(got, want) {
		t.Errorf("after deleting cluster c1: got %v, want %v", got, want)
	}
	// A cluster made again under the same name starts with no functions.
	f.createCluster("c1", 1, 1)
	if got := f.snap().Function(nil, "c1", "f"); got != nil {
		t.Errorf("a new cluster c1 inherited function %+v", got)
	}
}

func TestFunctionsSnapshotRoundTrip(t *testing.T) {
	f := newFixture(t)
	f.addNode("n1", "a")
	f.createCluster("c", 1, 1)
	for _, m := range []int{0, 1024} {
		if _, err := f.deploy("c", "f", version(m), false); err != nil {
			t.Fatal(err)
		}
	}
	want := f.snap().Functions(nil, "")
	var buf bytes.Buffer
	if err := f.snap().Persist(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := state.Restore(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Snapshot().Functions(nil, ""); !cmp.Equal(got, want) {
		t.Errorf("restored functions differ: %s", cmp.Diff(want, got))
	}
	if got := r.Snapshot().FunctionsNamed(nil, "f"); len(got) != 1 || got[0].Latest != 2 {
		t.Errorf("restored name index: got %+v, want f at version 2", got)
	}
	if got, want := r.Snapshot().Index(state.TableFunctions), f.snap().Index(state.TableFunctions); got != want {
		t.Errorf("restored index of functions: got %d, want %d", got, want)
	}
}
