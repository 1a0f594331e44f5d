package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// fakeAgent stands in for `shoal agent`: it registers a node, heartbeats it
// ready in the background until paused, and reports every task it is given
// as running. Its goroutine never fails the test; the test checks outcomes
// in the servers' state.
type fakeAgent struct {
	name   string
	client *api.Client

	mu     sync.Mutex
	paused bool
}

func startFakeAgent(t *testing.T, c *api.Client, name, zone string, cpu, mem int64) *fakeAgent {
	t.Helper()
	a := &fakeAgent{name: name, client: c}
	reg := &api.NodeRegistration{Name: name, Zone: zone, Addr: name + ":4647", CPU: cpu, MemoryMB: mem}
	if err := c.RegisterNode(reqCtx(t), reg); err != nil {
		t.Fatalf("RegisterNode(%s): %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a
}

// setPaused stops or resumes heartbeats and task reports, as a crashed
// and a restarted agent would.
func (a *fakeAgent) setPaused(p bool) {
	a.mu.Lock()
	a.paused = p
	a.mu.Unlock()
}

func (a *fakeAgent) isPaused() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.paused
}

func (a *fakeAgent) run(ctx context.Context) {
	interval := 50 * time.Millisecond
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if a.isPaused() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if r, err := a.client.Heartbeat(cctx, a.name, &api.Heartbeat{Ready: true}); err == nil && r.Interval > 0 && r.Interval.D() != interval {
			interval = r.Interval.D()
			tick.Reset(interval)
		}
		if w, _, err := a.client.NodeWork(cctx, a.name, 0, nil); err == nil {
			var u api.TaskUpdates
			u.Node = a.name
			for _, task := range w.Tasks {
				if task.State == api.TaskPending && task.Node == a.name {
					u.Updates = append(u.Updates, api.TaskUpdate{TaskID: task.ID, RunID: task.RunID, State: api.TaskRunning, Started: time.Now()})
				}
			}
			if len(u.Updates) > 0 {
				a.client.UpdateTasks(cctx, &u)
			}
		}
		cancel()
	}
}

// TestNodeDownTasksReplaced stops one node's heartbeats and checks that it
// is declared down, its task lost and run again on the node that replaced
// it in the cluster, and that the node rejoins the pool when it is back.
func TestNodeDownTasksReplaced(t *testing.T) {
	g := testutil.StartServers(t, 1, func(_ int, c *server.Config) { c.HeartbeatTTL = 500 * time.Millisecond })
	s := g.Server(0)
	c := g.Client(0)
	agents := map[string]*fakeAgent{}
	for _, name := range []string{"n1", "n2", "n3"} {
		agents[name] = startFakeAgent(t, c, name, "z1", 1000, 1024)
	}
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		for name := range agents {
			if n := findNode(s, name); n == nil || n.State != api.NodeReady {
				return false, fmt.Sprintf("node %s is %+v, want ready", name, n)
			}
		}
		return true, ""
	})
	cl, err := c.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 2})
	if err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	// Each task takes most of a node, so each member runs one and the
	// spare must take over the lost one.
	sub, err := c.SubmitJob(reqCtx(t), &api.JobSpec{Name: "j", Cluster: "c1",
		Groups: []api.GroupSpec{{Name: "g", Count: 2, Command: []string{"sleep", "60"}, Resources: api.Resources{CPU: 600, MemoryMB: 100}}}})
	if err != nil {
		t.Fatalf("SubmitJob: %v", err)
	}
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		j := s.Store().Snapshot().Job(nil, sub.ID)
		return j != nil && j.Counts.Running == 2, fmt.Sprintf("job counts %+v, want 2 running", j.Counts)
	})
	victimTask := s.Store().Snapshot().JobTasks(nil, sub.ID)[0]
	victim := victimTask.Node
	var spare string
	for name := range agents {
		if name != cl.Nodes[0] && name != cl.Nodes[1] {
			spare = name
		}
	}

	agents[victim].setPaused(true)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		n := findNode(s, victim)
		return n.State == api.NodeDown && n.Cluster == "" && n.Tasks == 0,
			fmt.Sprintf("node %s is %s in cluster %q with %d tasks, want down, detached, empty", victim, n.State, n.Cluster, n.Tasks)
	})
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		snap := s.Store().Snapshot()
		task := snap.Task(nil, victimTask.ID)
		c1 := snap.Cluster(nil, "c1")
		return task.State == api.TaskRunning && task.Node == spare && task.RunID > victimTask.RunID &&
				len(c1.Nodes) == 2 && (c1.Nodes[0] == spare || c1.Nodes[1] == spare),
			fmt.Sprintf("task %s is %s on %q (run %d); cluster nodes %q; want it running on spare %s in a new run",
				task.ID, task.State, task.Node, task.RunID, c1.Nodes, spare)
	})
	snap := s.Store().Snapshot()
	if task := snap.Task(nil, victimTask.ID); task.Attempt != 1 {
		t.Errorf("task attempt = %d, want 1: a run lost to a dead node must not use up an attempt", task.Attempt)
	}
	lostEvent := false
	for _, e := range snap.Job(nil, sub.ID).Events {
		lostEvent = lostEvent || e.Type == "task-lost"
	}
	if !lostEvent {
		t.Errorf("job events %+v have no task-lost event", snap.Job(nil, sub.ID).Events)
	}
	if other := snap.JobTasks(nil, sub.ID)[1]; other.State != api.TaskRunning || other.RunID == 0 || other.Node == victim {
		t.Errorf("the other task is %s on %q; want it still running where it was", other.State, other.Node)
	}

	// The node comes back: it is ready again, in the pool.
	agents[victim].setPaused(false)
	testutil.WaitFor(t, 15*time.Second, func() (bool, string) {
		n := findNode(s, victim)
		return n.State == api.NodeReady && n.Cluster == "", fmt.Sprintf("node %s is %s in cluster %q, want ready in the pool", victim, n.State, n.Cluster)
	})
}
