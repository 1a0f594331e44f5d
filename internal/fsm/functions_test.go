package fsm_test

import (
	"errors"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestFunctionEntries(t *testing.T) {
	// The values are written to disk; they must never change.
	if fsm.FunctionDeploy != 29 || fsm.FunctionDelete != 30 {
		t.Errorf("function message types: got %d and %d, want 29 and 30", fsm.FunctionDeploy, fsm.FunctionDelete)
	}
	for typ, want := range map[fsm.MessageType]string{fsm.FunctionDeploy: "function-deploy", fsm.FunctionDelete: "function-delete"} {
		if got := typ.String(); got != want {
			t.Errorf("%d.String(): got %q, want %q", byte(typ), got, want)
		}
	}

	a := newApplier(t)
	a.mustApply(fsm.NodeRegister, &state.NodeRegisterRequest{Reg: api.NodeRegistration{Name: "n1", Zone: "a", CPU: 1000, MemoryMB: 1024}, Now: t0})
	a.mustApply(fsm.NodeState, &state.NodeStateRequest{Name: "n1", State: api.NodeReady, Now: t0})
	a.mustApply(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: api.ClusterRequest{Name: "c", Nodes: 1}, Now: t0})
	v := api.FunctionVersion{Bundle: "/clusters/c/.functions/f/x.zip", Size: 10,
		SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
	for want := 1; want <= 2; want++ {
		res := a.mustApply(fsm.FunctionDeploy, &state.FunctionDeployRequest{Cluster: "c", Name: "f", Version: v, Now: t0})
		f, ok := res.Value.(*api.Function)
		if !ok || f.Latest != want || f.ModifyIndex != a.index {
			t.Fatalf("deploy %d: got %#v, want version %d at index %d", want, res.Value, want, a.index)
		}
	}
	if res := a.apply(fsm.FunctionDeploy, &state.FunctionDeployRequest{Cluster: "c", Name: "g", Version: v, Update: true, Now: t0}); !errors.Is(res.Err, state.ErrNotFound) {
		t.Errorf("update of a missing function: got %v, want %v", res.Err, state.ErrNotFound)
	}
	res := a.mustApply(fsm.FunctionDelete, &state.FunctionDeleteRequest{Cluster: "c", Name: "f"})
	if f, ok := res.Value.(*api.Function); !ok || len(f.Versions) != 2 {
		t.Errorf("delete: got %#v, want the deleted function with its 2 versions", res.Value)
	}
	if f := a.snap().Function(nil, "c", "f"); f != nil {
		t.Errorf("function still there after delete: %+v", f)
	}
}
