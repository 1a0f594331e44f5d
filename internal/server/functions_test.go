package server_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestFunctionRoutes checks that the functions' subsystem is wired into
// the server: its routes answer with the server's authentication, and a
// refused deploy leaves the state alone. (Deploys that store bundles need
// data nodes; package functions tests them with a fake DFS.)
func TestFunctionRoutes(t *testing.T) {
	g := testutil.StartServers(t, 1, longTTL)
	c := g.Client(0)
	addReadyNode(t, c, "n1", "a", 1000, 1024)
	addReadyNode(t, c, "n2", "a", 1000, 1024)
	a, err := c.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "a", Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "b", Nodes: 1}); err != nil {
		t.Fatal(err)
	}
	asA := g.NewClient([]string{g.HTTPAddr(0)}, a.Token)
	before := g.Server(0).Store().Snapshot().Index(state.TableFunctions, state.TableFS)

	status := func(err error) int {
		var ae *api.Error
		if errors.As(err, &ae) {
			return ae.Status
		}
		if err == nil {
			return http.StatusOK
		}
		return -1
	}
	for _, tt := range []struct {
		name   string
		client *api.Client
		method string
		path   string
		body   any
		want   int
		msg    string
	}{
		{"not a zip", c, "PUT", "/v1/clusters/a/functions/f", api.FunctionDeploy{Zip: []byte("x")}, 400, "not a zip"},
		{"memory", c, "PUT", "/v1/clusters/a/functions/f", api.FunctionDeploy{Config: api.FunctionConfig{MemoryMiB: 1}}, 400, "memory_mib"},
		{"another cluster", asA, "PUT", "/v1/clusters/b/functions/f", api.FunctionDeploy{Zip: []byte("x")}, 403, "may not act"},
		{"unknown cluster", c, "PUT", "/v1/clusters/z/functions/f", api.FunctionDeploy{Zip: []byte("x")}, 404, "no cluster"},
		{"missing function", asA, "GET", "/v1/clusters/a/functions/f", nil, 404, "function f"},
		{"delete missing", asA, "DELETE", "/v1/clusters/a/functions/f", nil, 404, "function f"},
		{"list", asA, "GET", "/v1/functions", nil, 200, ""},
		{"no queue", c, "GET", "/v1/clusters/a/functions/f/dlq", nil, 404, "function f"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out any
			_, err := tt.client.Do(reqCtx(t), tt.method, tt.path, nil, tt.body, &out)
			if status(err) != tt.want || (err != nil && !strings.Contains(err.Error(), tt.msg)) {
				t.Errorf("got %v (status %d), want %d mentioning %q", err, status(err), tt.want, tt.msg)
			}
		})
	}
	if after := g.Server(0).Store().Snapshot().Index(state.TableFunctions, state.TableFS); after != before {
		t.Errorf("refused requests moved the functions' and files' index from %d to %d", before, after)
	}
}
