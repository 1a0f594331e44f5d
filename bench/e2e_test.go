package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func waitJob(b *testing.B, c *api.Client, id string, timeout time.Duration) *api.Job {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var index uint64
	for {
		j, idx, err := c.JobSummary(ctx, id, &api.QueryOptions{Index: index, Wait: 10 * time.Second})
		if err != nil {
			b.Fatalf("waiting for job %s: %v", id, err)
		}
		index = idx
		if j.State == api.JobComplete || j.State == api.JobFailed || j.State == api.JobCancelled {
			return j
		}
	}
}

// BenchmarkThroughputTrue runs one batch job of 2,000 /bin/true tasks on
// one server and three agents and compares its task rate with the raw
// fork/exec rate of /bin/true measured in the same run.
func BenchmarkThroughputTrue(b *testing.B) {
	const tasks = 2000
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3, AgentCPU: 4000, AgentMemory: 8192})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw := max(forkExecRate(b, tasks, 1), forkExecRate(b, tasks, startsParallelism)) // the best of serial and parallel
		rate := tasks / runTrueJob(b, in, tasks, 10*time.Minute).Seconds()
		b.ReportMetric(rate, "tasks/s")
		b.ReportMetric(raw, "raw-forkexec/s")
		b.ReportMetric(rate/raw, "ratio")
	}
}

// BenchmarkRecoveryAfterAgentKill measures the time from kill -9 of an
// agent to every one of its tasks running again on another node (p50 and
// max over the rounds), with the default 2 s heartbeat TTL.
func BenchmarkRecoveryAfterAgentKill(b *testing.B) {
	const rounds = 5
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var times []time.Duration
		for r := 0; r < rounds; r++ {
			in.AddAgent(fmt.Sprintf("zone-%d", r%3+1)) // the pool node that will replace the victim
			res, err := in.Client.SubmitJob(ctx, &api.JobSpec{Name: "sleep", Cluster: "c1", Groups: []api.GroupSpec{{
				Name: "s", Count: 6, Command: []string{"/bin/sleep", "600"}}}})
			if err != nil {
				b.Fatal(err)
			}
			var victim string
			var moved []string
			poll(b, 30*time.Second, func() bool {
				j, _, _ := in.Client.Job(ctx, res.ID, nil)
				if j.Counts.Running != 6 {
					return false
				}
				victim = j.Tasks[0].Node
				for _, t := range j.Tasks {
					if t.Node == victim {
						moved = append(moved, t.ID)
					}
				}
				return true
			})
			start := time.Now()
			in.Agent(victim).Kill9()
			poll(b, 30*time.Second, func() bool {
				j, _, _ := in.Client.Job(ctx, res.ID, nil)
				for _, t := range j.Tasks {
					if slices.Contains(moved, t.ID) && (t.Node == victim || t.State != api.TaskRunning) {
						return false
					}
				}
				return true
			})
			times = append(times, time.Since(start))
			in.Client.CancelJob(ctx, res.ID)
		}
		slices.Sort(times)
		b.ReportMetric(times[len(times)/2].Seconds(), "p50-s")
		b.ReportMetric(times[len(times)-1].Seconds(), "max-s")
	}
}

// BenchmarkLeaderFailover measures the time from kill -9 of the Raft
// leader of three servers to the first successful write through a
// surviving server (p50 and max over the rounds).
func BenchmarkLeaderFailover(b *testing.B) {
	const rounds = 5
	in := testutil.StartInstallation(b, testutil.Options{Servers: 3})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var times []time.Duration
		for r := 0; r < rounds; r++ {
			old := in.Leader()
			var addrs []string
			for j, s := range in.Servers {
				if j != old {
					addrs = append(addrs, s.HTTPAddr)
				}
			}
			c := in.AgentClient(addrs...)
			start := time.Now()
			in.Servers[old].Kill9()
			reg := &api.NodeRegistration{Name: fmt.Sprintf("probe-%d", r), Zone: "z", CPU: 1, MemoryMB: 1}
			poll(b, 30*time.Second, func() bool {
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				return c.RegisterNode(rctx, reg) == nil
			})
			times = append(times, time.Since(start))
			in.Servers[old].Restart(b)
			poll(b, 30*time.Second, func() bool {
				p, err := in.NewClient([]string{in.Servers[old].HTTPAddr}, "").Peers(ctx)
				return err == nil && len(p) == 3
			})
		}
		slices.Sort(times)
		b.ReportMetric(times[len(times)/2].Seconds(), "p50-s")
		b.ReportMetric(times[len(times)-1].Seconds(), "max-s")
	}
}

// poll calls cond every 10ms until it is true.
func poll(b *testing.B, timeout time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
