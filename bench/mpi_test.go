package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// lastInit returns the latest `mpi_init_done <unix seconds>` line heat's
// ranks print right after MPI_Init, and how many there are.
func lastInit(b *testing.B, r io.Reader) (time.Time, int) {
	b.Helper()
	var last time.Time
	n := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "mpi_init_done" {
			continue
		}
		sec, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			b.Fatalf("bad line %q", sc.Text())
		}
		t := time.Unix(0, int64(sec*1e9))
		if t.After(last) {
			last = t
		}
		n++
	}
	return last, n
}

// mpiStart runs an mpi job of heat and returns the time from its
// submission to its last rank past MPI_Init, from the launcher's log.
func mpiStart(b *testing.B, in *testutil.Installation, ranks, slots int, args ...string) (time.Duration, string) {
	b.Helper()
	ctx := context.Background()
	// A core a rank, as on a real machine: a smaller cgroup quota throttles
	// MPI_Init's busy ranks.
	spec := &api.JobSpec{Name: "launch", Cluster: "c1", Type: api.JobMPI, Files: []string{"heat"},
		Resources: api.Resources{CPU: 1000, MemoryMB: 64},
		MPI: &api.MPISpec{Ranks: ranks, SlotsPerNode: slots,
			Command: append([]string{"mpirun", "--mca", "btl", "tcp,self", "--mca", "mpi_yield_when_idle", "1", "./heat"}, args...)}}
	start := time.Now()
	res, err := in.Client.SubmitJob(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	if j := waitJob(b, in.Client, res.ID, 2*time.Minute); j.State != api.JobComplete {
		b.Fatalf("job %s: %s %v", res.ID, j.State, j.Events)
	}
	rc, err := in.Client.Logs(ctx, res.ID, "", 0, "stdout", false)
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	last, n := lastInit(b, rc)
	if n != ranks {
		b.Fatalf("%d ranks reported MPI_Init, want %d", n, ranks)
	}
	return last.Sub(start), res.ID
}

// localStart runs heat with plain mpirun on this host and returns the time
// from the exec of mpirun to its last rank past MPI_Init.
func localStart(b *testing.B, dir string, ranks int, args ...string) time.Duration {
	b.Helper()
	cmd := exec.Command("mpirun", append([]string{"--oversubscribe", "-np", strconv.Itoa(ranks), "--mca", "btl", "tcp,self",
		filepath.Join(dir, "heat")}, args...)...)
	cmd.Env = testutil.LocalMPIEnv()
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("mpirun: %v", err)
	}
	last, n := lastInit(b, strings.NewReader(string(out)))
	if n != ranks {
		b.Fatalf("%d ranks reported MPI_Init, want %d", n, ranks)
	}
	return last.Sub(start)
}

// BenchmarkMPIGangLaunch measures an mpi job of 8 ranks on 4 nodes (2 a
// node) from its submission to its last rank past MPI_Init, against
// mpirun of the same program with the same rank count on one host, in
// the same run; the ratio's median and range over the rounds.
func BenchmarkMPIGangLaunch(b *testing.B) {
	const rounds = 5
	dir := testutil.MPIExamples(b)
	in := testutil.StartInstallation(b, testutil.Options{Agents: 4, Zones: 2})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 4, Zones: 2}); err != nil {
		b.Fatal(err)
	}
	if out, errOut, code := in.Shoal("fs", "put", filepath.Join(dir, "heat"), "/clusters/c1/heat"); code != 0 {
		b.Fatalf("fs put: %s %s", out, errOut)
	}
	args := []string{"--steps", "1", "--checkpoint-every", "0"}
	mpiStart(b, in, 8, 2, args...) // warm the page cache and the agents
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var ratios, shoal, local []float64
		for range rounds {
			l := localStart(b, dir, 8, args...)
			s, _ := mpiStart(b, in, 8, 2, args...)
			local = append(local, l.Seconds())
			shoal = append(shoal, s.Seconds())
			ratios = append(ratios, s.Seconds()/l.Seconds())
		}
		med, lo, hi := spread(ratios)
		sm, _, _ := spread(shoal)
		lm, _, _ := spread(local)
		b.ReportMetric(sm, "shoal-s")
		b.ReportMetric(lm, "mpirun-1host-s")
		b.ReportMetric(med, "ratio")
		b.ReportMetric(lo, "ratio-min")
		b.ReportMetric(hi, "ratio-max")
	}
}

// BenchmarkMPIRecovery measures, over several rounds, the time from kill
// -9 of the agent of a node hosting ranks of a running heat job to every
// rank of the relaunched gang past MPI_Init again (resuming from the last
// complete epoch), with the default 2 s heartbeat TTL: p50 and max.
func BenchmarkMPIRecovery(b *testing.B) {
	const rounds = 3
	dir := testutil.MPIExamples(b)
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3})
	ctx := context.Background()
	if _, err := in.Client.CreateCluster(ctx, &api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}); err != nil {
		b.Fatal(err)
	}
	if out, errOut, code := in.Shoal("fs", "put", filepath.Join(dir, "heat"), "/clusters/c1/heat"); code != 0 {
		b.Fatalf("fs put: %s %s", out, errOut)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var times []float64
		for r := range rounds {
			in.AddAgent(fmt.Sprintf("zone-%d", r%3+1)) // the pool node that replaces the victim
			res, err := in.Client.SubmitJob(ctx, &api.JobSpec{Name: "heat", Cluster: "c1", Type: api.JobMPI, Files: []string{"heat"},
				Resources: api.Resources{CPU: 1000, MemoryMB: 64},
				MPI: &api.MPISpec{Ranks: 6, SlotsPerNode: 2, MaxRestarts: 1, Command: []string{"mpirun", "--mca", "btl", "tcp,self", "--mca", "mpi_yield_when_idle", "1",
					"./heat", "--steps", "100000", "--checkpoint-every", "100", "--sleep-ms-per-step", "5"}}})
			if err != nil {
				b.Fatal(err)
			}
			var victim string
			poll(b, 60*time.Second, func() bool {
				j, _, err := in.Client.JobSummary(ctx, res.ID, nil)
				if err != nil || j.MPIStatus == nil || j.MPIStatus.LastEpoch < 1 {
					return false
				}
				victim = j.MPIStatus.GangNodes[len(j.MPIStatus.GangNodes)-1]
				return true
			})
			killed := time.Now()
			in.Agent(victim).Kill9()
			var last time.Time
			poll(b, 60*time.Second, func() bool {
				j, _, err := in.Client.JobSummary(ctx, res.ID, nil)
				if err != nil || j.MPIStatus.Restarts != 1 || j.MPIStatus.RestartingSince.IsZero() == false {
					return false
				}
				rc, err := in.Client.Logs(ctx, res.ID, "", 0, "stdout", false)
				if err != nil {
					return false
				}
				defer rc.Close()
				t, n := lastInit(b, rc)
				last = t
				return n == 6
			})
			times = append(times, last.Sub(killed).Seconds())
			if err := in.Client.CancelJob(ctx, res.ID); err != nil {
				b.Fatal(err)
			}
		}
		med, _, hi := spread(times)
		b.ReportMetric(med, "p50-s")
		b.ReportMetric(hi, "max-s")
	}
}
