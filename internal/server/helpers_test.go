package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/state"
)

// allTables names every table whose index a write can move.
var allTables = []string{state.TableNodes, state.TableClusters, state.TableJobs, state.TableTasks, state.TableServers}

// longTTL keeps nodes that heartbeated once ready for the whole test, for
// tests that are not about node health.
func longTTL(_ int, c *server.Config) { c.HeartbeatTTL = time.Hour }

// reqCtx returns a context for one API call that ends with the test or
// after a generous timeout, so that a hung call fails instead of hanging.
func reqCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// addReadyNode registers a node through c and heartbeats it ready.
func addReadyNode(t *testing.T, c *api.Client, name, zone string, cpu, mem int64) {
	t.Helper()
	reg := &api.NodeRegistration{Name: name, Zone: zone, Addr: name + ":4647", CPU: cpu, MemoryMB: mem}
	if err := c.RegisterNode(reqCtx(t), reg); err != nil {
		t.Fatalf("RegisterNode(%s): %v", name, err)
	}
	if _, err := c.Heartbeat(reqCtx(t), name, &api.Heartbeat{Ready: true}); err != nil {
		t.Fatalf("Heartbeat(%s): %v", name, err)
	}
}

// stateDump is everything a server's state store holds, for comparing two
// servers or one server before and after a restart.
type stateDump struct {
	Index    uint64
	Nodes    []*api.Node
	Clusters []*api.Cluster
	Jobs     []*api.Job
	Tasks    []*api.Task
	Servers  []*api.ServerInfo
}

func dumpState(s *server.Server) stateDump {
	snap := s.Store().Snapshot()
	d := stateDump{
		Index:    snap.Index(allTables...),
		Nodes:    snap.Nodes(nil),
		Clusters: snap.Clusters(nil),
		Jobs:     snap.Jobs(nil, ""),
		Servers:  snap.Servers(nil),
	}
	for _, j := range d.Jobs {
		d.Tasks = append(d.Tasks, snap.JobTasks(nil, j.ID)...)
	}
	return d
}

// findNode returns the named node of a server's state, or nil.
func findNode(s *server.Server, name string) *api.Node {
	return s.Store().Snapshot().Node(nil, name)
}
