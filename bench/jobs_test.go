package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// serverMemory makes the server process collect its garbage (the heap
// profile's ?gc=1, served with --enable-debug) and returns its resident
// set (VmRSS) and its live Go heap (HeapAlloc), in bytes.
func serverMemory(b *testing.B, in *testutil.Installation) (rss, heap int64) {
	b.Helper()
	resp, err := in.HTTPClient(tlsfiles.RoleServer).Get("http://" + in.Servers[0].HTTPAddr + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		b.Fatalf("heap profile: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("heap profile: status %d, %v", resp.StatusCode, err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			heap, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", in.Servers[0].PID()))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb << 10
		}
	}
	return rss, heap
}

// medianTime runs fn n times and returns the median duration.
func medianTime(b *testing.B, n int, fn func() error) time.Duration {
	b.Helper()
	var ds []time.Duration
	for range n {
		start := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// BenchmarkMillionTaskJob submits one job of 1,000,000 tasks to one
// spawned server whose cluster (one agent) has room for one of them at a
// time, so that 999,999 stay pending. It reports the time until the
// submission is accepted, the server's memory per task (resident set and
// live Go heap, after a GC, before and after), and the median time of a
// job summary and of one filtered page (100 pending tasks at offset
// 500,000) over 20 requests each, all through the Go client over HTTP.
func BenchmarkMillionTaskJob(b *testing.B) {
	const tasks = 1000000
	in := testutil.StartInstallation(b, testutil.Options{Agents: 1, AgentCPU: 1000, AgentMemory: 1024,
		ServerArgs: []string{"--enable-debug"}})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 1}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rss0, heap0 := serverMemory(b, in)
		start := time.Now()
		res, err := in.Client.SubmitJob(ctx, &api.JobSpec{Name: "million", Cluster: "c1", Groups: []api.GroupSpec{{
			Name: "t", Count: tasks, Command: []string{"/bin/sleep", "3600"},
			Resources: api.Resources{CPU: 1000, MemoryMB: 64}}}})
		if err != nil {
			b.Fatal(err)
		}
		accepted := time.Since(start)
		// Wait until the scheduler has placed the one task that fits.
		testutil.WaitFor(b, time.Minute, func() (bool, string) {
			j, _, err := in.Client.JobSummary(ctx, res.ID, nil)
			if err != nil {
				return false, err.Error()
			}
			return j.Counts.Pending+j.Counts.Running == tasks && j.Counts.Pending < tasks,
				fmt.Sprintf("counts %+v", j.Counts)
		})
		rss1, heap1 := serverMemory(b, in)
		summary := medianTime(b, 20, func() error {
			j, _, err := in.Client.JobSummary(ctx, res.ID, nil)
			if err == nil && j.Counts.Total() != tasks {
				err = fmt.Errorf("summary counts %d tasks, want %d", j.Counts.Total(), tasks)
			}
			return err
		})
		page := medianTime(b, 20, func() error {
			p, _, err := in.Client.JobTasks(ctx, res.ID, &api.TaskFilter{State: api.TaskPending, Limit: 100, Offset: tasks / 2}, nil)
			if err == nil && (len(p.Tasks) != 100 || p.Total != tasks-1) {
				err = fmt.Errorf("page has %d of %d tasks, want 100 of %d", len(p.Tasks), p.Total, tasks-1)
			}
			return err
		})
		if err := in.Client.CancelJob(ctx, res.ID); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(accepted.Seconds()*1000, "accept-ms")
		b.ReportMetric(float64(rss1-rss0)/tasks, "rss-B/task")
		b.ReportMetric(float64(heap1-heap0)/tasks, "heap-B/task")
		b.ReportMetric(float64(rss1)/(1<<20), "rss-MiB")
		b.ReportMetric(float64(summary.Microseconds())/1000, "summary-ms")
		b.ReportMetric(float64(page.Microseconds())/1000, "page-ms")
	}
}

// BenchmarkThroughputJobSize runs, on one server and three agents as
// BenchmarkThroughputTrue does, one job of 2,000 /bin/true tasks, one of
// 20,000 and another of 2,000, and reports the large job's task rate, the
// small jobs' mean rate and their ratio: a larger job must not run slower
// per task (target ratio >= 0.9). It also reports the CPU time that the
// server and agents (not the tasks) spend per task, and the small jobs'
// over the large one's (cpu-ratio; below 1: the large job costs more per
// task), which the other work on a shared machine disturbs less.
func BenchmarkThroughputJobSize(b *testing.B) {
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3, AgentCPU: 4000, AgentMemory: 8192})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}); err != nil {
		b.Fatal(err)
	}
	// run returns the job's task rate and the CPU time per task of the
	// server and agents.
	run := func(tasks int) (rate, cpu float64) {
		cpu0 := controlCPU(b, in)
		rate = float64(tasks) / runTrueJob(b, in, tasks, 30*time.Minute).Seconds()
		return rate, (controlCPU(b, in) - cpu0).Seconds() / float64(tasks)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The small job runs before and after the large one, so that a
		// change in the shared machine's load during the run weighs on
		// both sides of the ratio.
		before, cpuBefore := run(2000)
		large, cpuLarge := run(20000)
		after, cpuAfter := run(2000)
		small, cpuSmall := (before+after)/2, (cpuBefore+cpuAfter)/2
		b.ReportMetric(small, "2k-tasks/s")
		b.ReportMetric(large, "20k-tasks/s")
		b.ReportMetric(large/small, "ratio")
		b.ReportMetric(cpuSmall*1e6, "2k-cpu-us/task")
		b.ReportMetric(cpuLarge*1e6, "20k-cpu-us/task")
		b.ReportMetric(cpuSmall/cpuLarge, "cpu-ratio")
	}
}

// controlCPU returns the CPU time (user and system) used so far by the
// installation's server and agent processes themselves, not by the tasks
// they started.
func controlCPU(b *testing.B, in *testutil.Installation) time.Duration {
	b.Helper()
	pids := []int{in.Servers[0].PID()}
	for _, a := range in.Agents {
		pids = append(pids, a.PID())
	}
	var ticks int64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatal(err)
		}
		// Fields after the command name (which ends with ")"): state is
		// field 3, utime 14 and stime 15.
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		for _, i := range []int{14 - 3, 15 - 3} {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/stat: %v", pid, err)
			}
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}
