package bench

import (
	"fmt"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/scheduler"
	"github.com/shoal-dev/shoal/internal/state"
)

// Shape of the scheduler benchmark: one cluster of schedNodes nodes over
// schedZones zones and one job of schedTasks small tasks. The tasks need
// half the cluster's cpu, so every one of them fits.
const (
	schedNodes    = 5000
	schedZones    = 3
	schedTasks    = 100000
	schedNodeCPU  = 4000
	schedNodeMem  = 8192
	schedTaskCPU  = 100
	schedTaskMem  = 64
	schedNodeName = "n%04d"
)

var schedNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// buildSchedulerState builds the benchmark's state through the store's
// write methods, as the FSM would, and returns the store and the last
// index used.
func buildSchedulerState(b *testing.B) (*state.Store, uint64) {
	b.Helper()
	st := state.New()
	var index uint64
	for i := range schedNodes {
		name := fmt.Sprintf(schedNodeName, i)
		index++
		err := st.RegisterNode(index, &state.NodeRegisterRequest{Now: schedNow, Reg: api.NodeRegistration{
			Name: name, Zone: fmt.Sprintf("zone-%d", i%schedZones), CPU: schedNodeCPU, MemoryMB: schedNodeMem}})
		if err != nil {
			b.Fatalf("RegisterNode(%s): %v", name, err)
		}
		index++
		if err := st.SetNodeState(index, &state.NodeStateRequest{Name: name, State: api.NodeReady, Now: schedNow}); err != nil {
			b.Fatalf("SetNodeState(%s): %v", name, err)
		}
	}
	index++
	_, err := st.CreateCluster(index, &state.ClusterCreateRequest{Now: schedNow,
		Req: api.ClusterRequest{Name: "bench", Nodes: schedNodes, Zones: schedZones}})
	if err != nil {
		b.Fatalf("CreateCluster: %v", err)
	}
	index++
	_, err = st.SubmitJob(index, &state.JobSubmitRequest{Now: schedNow, Spec: api.JobSpec{Name: "wide", Cluster: "bench",
		Groups: []api.GroupSpec{{Name: "g", Count: schedTasks, Command: []string{"/bin/true"},
			Resources: api.Resources{CPU: schedTaskCPU, MemoryMB: schedTaskMem}}}}})
	if err != nil {
		b.Fatalf("SubmitJob: %v", err)
	}
	return st, index
}

// BenchmarkSchedulerPlacements places a 100,000-task job on a 5,000-node
// cluster in 3 zones: scheduler passes (each at most
// [scheduler.MaxPlacements] placements) alternate with applying their plan
// to the store, as the leader does, until every task is placed. Building
// the state is not timed. It reports two rates: "plan-only-placements/s"
// counts only the time spent in [scheduler.Plan]; "plan+apply-placements/s"
// adds [state.Store.ApplyPlan], i.e. the FSM's work without Raft.
func BenchmarkSchedulerPlacements(b *testing.B) {
	var planTime, applyTime time.Duration
	var placed, passes int
	for range b.N {
		b.StopTimer()
		st, index := buildSchedulerState(b)
		b.StartTimer()
		left := schedTasks
		for left > 0 {
			start := time.Now()
			res := scheduler.Plan(st.Snapshot(), schedNow)
			planned := time.Now()
			if len(res.Placements) == 0 {
				b.Fatalf("pass %d placed nothing with %d tasks left (%d waiting)", passes, left, res.Waiting)
			}
			index++
			pr, err := st.ApplyPlan(index, &state.PlanRequest{Placements: res.Placements, Now: schedNow})
			applyTime += time.Since(planned)
			planTime += planned.Sub(start)
			if err != nil {
				b.Fatalf("ApplyPlan: %v", err)
			}
			if pr.Rejected != 0 {
				b.Fatalf("ApplyPlan rejected %d of %d placements of a fresh plan", pr.Rejected, len(res.Placements))
			}
			placed += pr.Placed
			left -= pr.Placed
			passes++
		}
		b.StopTimer()
		if n := len(st.Snapshot().PlaceableTasks(nil)); n != 0 {
			b.Fatalf("%d tasks still placeable after all placements", n)
		}
		if n := len(st.Snapshot().UnplacedJobs(nil)); n != 0 {
			b.Fatalf("%d jobs still have unplaced tasks after all placements", n)
		}
	}
	b.ReportMetric(float64(placed)/planTime.Seconds(), "plan-only-placements/s")
	b.ReportMetric(float64(placed)/(planTime+applyTime).Seconds(), "plan+apply-placements/s")
	b.ReportMetric(float64(passes)/float64(b.N), "passes/op")
}
