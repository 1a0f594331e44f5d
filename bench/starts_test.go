package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// startsRounds is how many jobs BenchmarkStartCost runs per iteration; it
// reports the median of each figure, and its range.
const startsRounds = 5

// startsParallelism is how many goroutines the parallel baseline uses.
const startsParallelism = 4

// clockTicks is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// which is 100 on every Linux architecture Go supports.
const clockTicks = 100

// forkExecRate runs /bin/true n times from workers goroutines and returns
// executions per second.
func forkExecRate(b *testing.B, n, workers int) float64 {
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				if err := exec.Command("/bin/true").Run(); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// procCPU returns the CPU time (user plus system) process pid has used,
// from /proc/PID/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command, which is in parentheses, start with
	// the state (field 3); utime and stime are fields 14 and 15.
	f := bytes.Fields(raw[bytes.LastIndexByte(raw, ')')+1:])
	utime, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parsing /proc/%d/stat: %q", pid, raw)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// startsRound is what one round of BenchmarkStartCost measured.
type startsRound struct {
	rate, baseline, ratio float64
	agentCPU, serverCPU   time.Duration // per task
}

// BenchmarkStartCost runs jobs of 1,000 /bin/true tasks on one server and
// one agent and compares their task rate with the best fork/exec rate of
// /bin/true (from one goroutine, and from several) measured in the same
// round. It also reports the CPU time the agent and the server spend per
// task. Tasks are isolated as in production when run as root (PID, mount,
// UTS and IPC namespaces, a cgroup with cpu and memory limits).
//
// The agent offers 4,000 millicores, so 40 tasks run at once;
// SHOAL_BENCH_AGENT_CPU sets another number of millicores. The data
// directories are under $TMPDIR, and the file system matters: each run
// creates four inodes (see docs/benchmarks.md).
//
// With SHOAL_BENCH_PROFILE=DIR set, it then runs one job of 5,000 tasks
// and writes CPU profiles of the agent and the server during it to
// DIR/agent.pprof and DIR/server.pprof (read them with
// `go tool pprof -top BINARY FILE`).
func BenchmarkStartCost(b *testing.B) {
	const tasks = 1000
	profileDir := os.Getenv("SHOAL_BENCH_PROFILE")
	var extra []string
	if profileDir != "" {
		extra = []string{"--enable-debug"}
	}
	agentCPU := int64(4000) // 40 tasks at once, at the default 100 millicores a task
	if v := os.Getenv("SHOAL_BENCH_AGENT_CPU"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("SHOAL_BENCH_AGENT_CPU: %v", err)
		}
		agentCPU = n
	}
	in := testutil.StartInstallation(b, testutil.Options{Agents: 1, AgentCPU: agentCPU, AgentMemory: 8192,
		AgentArgs: extra, ServerArgs: extra})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 1, Zones: 1}); err != nil {
		b.Fatal(err)
	}
	agentPID, serverPID := in.Agents[0].PID(), in.Servers[0].PID()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var rounds []startsRound
		for r := 0; r < startsRounds; r++ {
			serial := forkExecRate(b, tasks, 1)
			parallel := forkExecRate(b, tasks, startsParallelism)
			agent0, server0 := procCPU(b, agentPID), procCPU(b, serverPID)
			elapsed := runTrueJob(b, in, tasks, 10*time.Minute)
			agent1, server1 := procCPU(b, agentPID), procCPU(b, serverPID)
			rd := startsRound{rate: tasks / elapsed.Seconds(), baseline: max(serial, parallel),
				agentCPU: (agent1 - agent0) / tasks, serverCPU: (server1 - server0) / tasks}
			rd.ratio = rd.rate / rd.baseline
			b.Logf("round %d: %.1f tasks/s; fork/exec serial %.1f/s, parallel %.1f/s; ratio %.3f; CPU per task: agent %v, server %v",
				r+1, rd.rate, serial, parallel, rd.ratio, rd.agentCPU, rd.serverCPU)
			rounds = append(rounds, rd)
		}
		report := func(unit string, get func(startsRound) float64) {
			var v []float64
			for _, rd := range rounds {
				v = append(v, get(rd))
			}
			slices.Sort(v)
			b.ReportMetric(v[len(v)/2], unit)
			b.ReportMetric(v[0], "min-"+unit)
			b.ReportMetric(v[len(v)-1], "max-"+unit)
		}
		report("tasks/s", func(rd startsRound) float64 { return rd.rate })
		report("forkexec/s", func(rd startsRound) float64 { return rd.baseline })
		report("ratio", func(rd startsRound) float64 { return rd.ratio })
		report("agent-ms/task", func(rd startsRound) float64 { return rd.agentCPU.Seconds() * 1000 })
		report("server-ms/task", func(rd startsRound) float64 { return rd.serverCPU.Seconds() * 1000 })
		if profileDir != "" {
			// One more, longer job, profiled for about as long as it
			// takes at the rate of a middle round.
			rate := rounds[len(rounds)/2].rate
			wait := startProfiles(b, in, profileDir, max(int(profileTasks/rate), 1))
			runTrueJob(b, in, profileTasks, 10*time.Minute)
			wait()
		}
	}
}

// profileTasks is the size of the job profiled with SHOAL_BENCH_PROFILE.
const profileTasks = 5000

// runTrueJob runs one job of n /bin/true tasks on cluster c1 and returns
// the time from its submission to its end; it fails the benchmark if the
// job does not complete within timeout.
func runTrueJob(b *testing.B, in *testutil.Installation, n int, timeout time.Duration) time.Duration {
	ctx := context.Background()
	start := time.Now()
	res, err := in.Client.SubmitJob(ctx, &api.JobSpec{Name: "true", Cluster: "c1", Groups: []api.GroupSpec{{
		Name: "t", Count: n, Command: []string{"/bin/true"}}}})
	if err != nil {
		b.Fatal(err)
	}
	j := waitJob(b, in.Client, res.ID, timeout)
	elapsed := time.Since(start)
	if j.State != api.JobComplete {
		b.Fatalf("job %s ended %s: %+v", j.ID, j.State, j.Counts)
	}
	return elapsed
}

// startProfiles starts CPU profiles of seconds of the installation's agent
// and server (both serve pprof with --enable-debug). The returned function
// waits for them and writes them to dir.
func startProfiles(b *testing.B, in *testutil.Installation, dir string, seconds int) func() {
	nodes, _, err := in.Client.Nodes(context.Background(), nil)
	if err != nil || len(nodes) == 0 {
		b.Fatalf("finding the agent's address: %v", err)
	}
	targets := map[string]string{"agent": nodes[0].Addr, "server": in.Servers[0].HTTPAddr}
	var wg sync.WaitGroup
	for name, addr := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := in.HTTPClient(tlsfiles.RoleServer)
			if name == "agent" {
				hc = in.HTTPClient(tlsfiles.RoleAgent)
			}
			resp, err := hc.Get("http://" + addr + "/debug/pprof/profile?seconds=" + strconv.Itoa(seconds))
			if err != nil {
				b.Errorf("profiling the %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if err := os.WriteFile(filepath.Join(dir, name+".pprof"), data, 0o644); err != nil {
				b.Error(err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the profiles start
	return func() {
		wg.Wait()
		fmt.Fprintf(os.Stderr, "profiles written to %s\n", dir)
	}
}
