package functions_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/functions"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestCatalog(t *testing.T) {
	e := newEnv(t, false)
	e.addNode("n1", "a")
	e.addNode("n2", "b")
	e.addNode("n3", "a")
	e.addNode("p1", "a")
	e.cluster("c", 2)
	e.cluster("d", 1)
	e.must(fsm.NodeState, &state.NodeStateRequest{Name: "p1", State: api.NodeDown, Now: t0}) // keep the pool empty
	e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1")})
	e.deploy(operatorToken, "d", "f", api.FunctionDeploy{Zip: bundle(t, "1")})
	cat := e.svc.Catalog()

	if f, err := cat.Function("c", "f"); err != nil || f.Cluster != "c" || f.Latest != 1 {
		t.Errorf("Function(c, f): got %+v, %v", f, err)
	}
	_, err := cat.Function("c", "nope")
	if !errors.Is(err, state.ErrNotFound) || !strings.Contains(err.Error(), "function nope in cluster c") {
		t.Errorf("Function(c, nope): got %v, want not found naming the function and cluster", err)
	}
	var clusters []string
	for _, f := range cat.FunctionsNamed("f") {
		clusters = append(clusters, f.Cluster)
	}
	if !cmp.Equal(clusters, []string{"c", "d"}) {
		t.Errorf("FunctionsNamed(f): clusters %v, want [c d]", clusters)
	}

	members := e.store.Snapshot().Cluster(nil, "c").Nodes
	want := []functions.Agent{}
	for _, n := range members {
		want = append(want, functions.Agent{Node: n, Addr: e.agents[n].addr(), Zone: e.store.Snapshot().Node(nil, n).Zone})
	}
	if got := cat.Agents("c"); !cmp.Equal(got, want) {
		t.Errorf("Agents(c): got %+v, want %+v", got, want)
	}
	// A member that goes down is no longer one of the cluster's agents.
	down := members[0]
	e.must(fsm.NodeState, &state.NodeStateRequest{Name: down, State: api.NodeDown, Now: t0})
	for _, a := range cat.Agents("c") {
		if a.Node == down {
			t.Errorf("Agents(c) lists %s, which is down", down)
		}
	}
	if got := cat.Agents("nope"); len(got) != 0 {
		t.Errorf("Agents(nope): got %v", got)
	}

	for _, tt := range []struct {
		key    string
		secret string
		p      httpapi.Principal
		ok     bool
	}{
		{functions.OperatorAccessKey, operatorToken, httpapi.Principal{}, true},
		{"c", "token-c", httpapi.Principal{Cluster: "c"}, true},
		{"d", "token-d", httpapi.Principal{Cluster: "d"}, true},
		{"nope", "", httpapi.Principal{}, false},
		{"", "", httpapi.Principal{}, false},
	} {
		secret, p, ok := cat.SigningSecret(tt.key)
		if secret != tt.secret || p != tt.p || ok != tt.ok {
			t.Errorf("SigningSecret(%q): got %q, %+v, %v; want %q, %+v, %v", tt.key, secret, p, ok, tt.secret, tt.p, tt.ok)
		}
	}
	// Without an operator token there is no operator secret.
	open := functions.New(functions.Config{Store: e.store})
	if _, _, ok := open.Catalog().SigningSecret(functions.OperatorAccessKey); ok {
		t.Error("SigningSecret(operator) without an operator token: got ok")
	}
}
