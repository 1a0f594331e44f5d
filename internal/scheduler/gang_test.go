package scheduler_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/scheduler"
	"github.com/shoal-dev/shoal/internal/state"
)

// gang adds an mpi job of count tasks of cpu millicores each, all waiting.
func (s *fakeState) gang(job string, created uint64, count int, cpu int64) []*api.Task {
	if s.jobs == nil {
		s.jobs = map[string]*api.Job{}
	}
	s.jobs[job] = &api.Job{ID: job, Type: api.JobMPI, Cluster: "c", CreateIndex: created,
		Groups: []api.GroupSpec{{Name: api.MPIGroup, Count: count}}}
	var out []*api.Task
	for i := range count {
		t := &api.Task{ID: state.TaskID(job, api.MPIGroup, i), JobID: job, Cluster: "c", Group: api.MPIGroup, Index: i,
			State: api.TaskPending, Attempt: 1, Resources: api.Resources{CPU: cpu, MemoryMB: cpu},
			MPI: &api.TaskMPI{Ranks: count, SlotsPerNode: 1}, CreateIndex: created, ModifyIndex: created}
		s.tasks = append(s.tasks, t)
		out = append(out, t)
	}
	return out
}

func gangNodes(g state.GangPlacement) []string {
	var out []string
	for _, p := range g.Placements {
		out = append(out, p.Node)
	}
	return out
}

func TestGangPlacedWholeOnDistinctNodesAcrossZones(t *testing.T) {
	s := newFakeState()
	s.node("a1", "za", 4000)
	s.node("a2", "za", 4000)
	s.node("b1", "zb", 4000)
	s.node("c1", "zc", 4000)
	s.gang("heat", 10, 3, 1000)
	res := scheduler.Plan(s, now)
	if len(res.Placements) != 0 || len(res.Gangs) != 1 {
		t.Fatalf("got %d placements and %d gangs, want one gang only", len(res.Placements), len(res.Gangs))
	}
	got := gangNodes(res.Gangs[0])
	// One node in each zone, although a1 alone could hold all three.
	if diff := cmp.Diff([]string{"a1", "b1", "c1"}, got); diff != "" {
		t.Errorf("gang nodes (-want +got):\n%s", diff)
	}
	for i, p := range res.Gangs[0].Placements {
		if want := state.TaskID("heat", api.MPIGroup, i); p.TaskID != want {
			t.Errorf("placement %d is for %s, want %s", i, p.TaskID, want)
		}
	}
}

func TestGangWaitsWhole(t *testing.T) {
	tests := []struct {
		name  string
		setup func(s *fakeState)
	}{
		{"fewer nodes than tasks", func(s *fakeState) {
			s.node("a1", "za", 8000)
			s.node("b1", "zb", 8000)
			s.gang("g", 10, 3, 1000)
		}},
		{"one node too full", func(s *fakeState) {
			s.node("a1", "za", 4000)
			s.node("b1", "zb", 4000)
			s.node("c1", "zc", 500)
			s.gang("g", 10, 3, 1000)
		}},
		{"a member still placed (being stopped)", func(s *fakeState) {
			s.node("a1", "za", 4000)
			s.node("b1", "zb", 4000)
			s.node("c1", "zc", 4000)
			tasks := s.gang("g", 10, 3, 1000)
			tasks[2].Node = "c1"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeState()
			tt.setup(s)
			res := scheduler.Plan(s, now)
			if len(res.Gangs) != 0 || len(res.Placements) != 0 {
				t.Fatalf("placed %d tasks and %d gangs, want nothing (a gang is never half placed)", len(res.Placements), len(res.Gangs))
			}
		})
	}
}

func TestGangAndBatchShareNodes(t *testing.T) {
	s := newFakeState()
	s.node("a1", "za", 2000)
	s.node("b1", "zb", 2000)
	s.job("batch", 5, 2, 1000) // older: placed first
	s.gang("mpi", 10, 2, 1000)
	res := scheduler.Plan(s, now)
	if len(res.Placements) != 2 || len(res.Gangs) != 1 {
		t.Fatalf("got %d batch placements and %d gangs, want 2 and 1", len(res.Placements), len(res.Gangs))
	}
	if got := gangNodes(res.Gangs[0]); got[0] == got[1] {
		t.Errorf("gang tasks share node %s", got[0])
	}
	// Nothing is left: a third gang task would not fit.
	used := map[string]int64{}
	for _, p := range res.Placements {
		used[p.Node] += 1000
	}
	for _, n := range gangNodes(res.Gangs[0]) {
		used[n] += 1000
	}
	for n, cpu := range used {
		if cpu > 2000 {
			t.Errorf("node %s got %d millicores of 2000", n, cpu)
		}
	}
}

// TestGangNotStarvedByYoungerWork: a gang that does not fit holds back
// younger tasks of its cluster, so that the room it waits for is not taken
// by them; older work still goes first.
func TestGangNotStarvedByYoungerWork(t *testing.T) {
	s := newFakeState()
	s.node("a1", "za", 2000)
	s.node("b1", "zb", 2000)
	s.node("c1", "zc", 2000)
	s.job("old", 5, 1, 2000) // takes a node: the gang of 3 cannot fit
	s.gang("mpi", 10, 3, 1000)
	s.job("young", 20, 4, 500)
	res := scheduler.Plan(s, now)
	if len(res.Gangs) != 0 {
		t.Fatalf("gang placed on %v, but only two nodes had room", gangNodes(res.Gangs[0]))
	}
	for _, p := range res.Placements {
		if p.TaskID != state.TaskID("old", "g", 0) {
			t.Errorf("placed %s while an older gang waits", p.TaskID)
		}
	}
	if res.Waiting != 3+4 {
		t.Errorf("waiting %d, want 7 (the gang and the younger job)", res.Waiting)
	}
}
