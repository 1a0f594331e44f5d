package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// ckptScript is the launcher of BenchmarkCheckpoint: no MPI, a shell
// script that plays the R ranks of a one-node gang. For each epoch it
// copies a template into every rank's directory with cp (timed: the
// local-copy baseline), commits all ranks at once with `shoal checkpoint
// commit` (each commit timed from call to return), and waits until the
// servers list the epoch complete. Lines: "cp EPOCH RANK NS" and
// "commit EPOCH RANK START_NS END_NS".
const ckptScript = `
SHOAL=%q; R=%d; S=%d; K=%d
D="$SHOAL_CHECKPOINT_DIR"
head -c $((S*1048576)) /dev/urandom > "$D/template" || exit 1
e=1
while [ $e -le $K ]; do
  r=0
  while [ $r -lt $R ]; do
    s=$(date +%%s%%N); cp "$D/template" "$D/$r/data" || exit 1; x=$(date +%%s%%N)
    echo "cp $e $r $((x-s))"
    r=$((r+1))
  done
  r=0
  while [ $r -lt $R ]; do
    ( s=$(date +%%s%%N); cp "$D/template" "$D/pcp.$r" || exit 1; x=$(date +%%s%%N)
      echo "pcp $e $r $((x-s))"; rm -f "$D/pcp.$r" ) &
    r=$((r+1))
  done
  wait
  r=0
  while [ $r -lt $R ]; do
    ( s=$(date +%%s%%N); OMPI_COMM_WORLD_RANK=$r "$SHOAL" checkpoint commit $e || exit 1; x=$(date +%%s%%N)
      echo "commit $e $r $s $x" ) &
    r=$((r+1))
  done
  wait
  until "$SHOAL" job checkpoints "$SHOAL_JOB_ID" -o json | tr -d ' \n' | grep -q "\"epoch\":$e,\"state\":\"complete\""; do
    sleep 0.02
  done
  e=$((e+1))
done
`

// envInt reads a positive integer knob, or returns def.
func envInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive whole number", name, s)
	}
	return n
}

// spread returns the median, minimum and maximum of xs.
func spread(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// BenchmarkCheckpoint measures one MPI checkpoint epoch of R ranks × S MiB
// (SHOAL_BENCH_CKPT_RANKS, default 8; SHOAL_BENCH_CKPT_MIB, default 64),
// over SHOAL_BENCH_CKPT_RUNS epochs (default 5), on a dev installation of
// three agents in three zones:
//
//   - ckpt-MB/s: R×S MiB over the time from the last rank's commit call to
//     the epoch complete in Raft (its completed time), against dfs-MB/s,
//     dfs.Client uploads of the same bytes (what `shoal fs put` does) with
//     the same default replication, the faster of one upload of it all and
//     R uploads of S MiB at once, measured in the same run: ckpt-ratio.
//   - blocked-ms: how long a rank waits in `shoal checkpoint commit`
//     (median), against cp-ms, a local cp of the same file by each of the R
//     ranks at once (the same work): blocked-ratio. cp-alone-ms is one cp
//     with the machine otherwise idle.
//
// Medians are reported with their range (-min, -max) over the epochs.
func BenchmarkCheckpoint(b *testing.B) {
	ranks := envInt(b, "SHOAL_BENCH_CKPT_RANKS", 8)
	mib := envInt(b, "SHOAL_BENCH_CKPT_MIB", 64)
	runs := envInt(b, "SHOAL_BENCH_CKPT_RUNS", 5)
	total := int64(ranks) * int64(mib) << 20
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3, AgentMemory: 4096})
	if _, errOut, code := in.Shoal("cluster", "create", "c1", "--nodes", "3", "--zones", "3"); code != 0 {
		b.Fatalf("cluster create: %s", errOut)
	}
	ctx := context.Background()
	dc := dfs.NewClient(in.Client, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Baseline: the same bytes written to the DFS, the faster of one
		// upload of them all and one upload per rank's share at once.
		var dfsRates []float64
		for k := 0; k < runs; k++ {
			dir := fmt.Sprintf("%s/baseline-%d-%d", api.ClusterRoot("c1"), i, k)
			start := time.Now()
			if _, err := dc.Upload(ctx, dir+"-one", newPatternReader(total, uint64(k)+1), total, api.UploadOptions{}); err != nil {
				b.Fatalf("baseline upload: %v", err)
			}
			one := float64(total) / megabyte / time.Since(start).Seconds()
			share := total / int64(ranks)
			if err := in.Client.FSMkdir(ctx, &api.Mkdir{Path: dir + "-par", Parents: true}); err != nil {
				b.Fatal(err)
			}
			errs := make(chan error, ranks)
			start = time.Now()
			for r := 0; r < ranks; r++ {
				go func() {
					_, err := dc.Upload(ctx, fmt.Sprintf("%s-par/%d", dir, r), newPatternReader(share, uint64(k*ranks+r)+1), share, api.UploadOptions{})
					errs <- err
				}()
			}
			for r := 0; r < ranks; r++ {
				if err := <-errs; err != nil {
					b.Fatalf("baseline upload: %v", err)
				}
			}
			par := float64(share*int64(ranks)) / megabyte / time.Since(start).Seconds()
			dfsRates = append(dfsRates, max(one, par))
			for _, p := range []string{dir + "-one", dir + "-par"} {
				if err := in.Client.FSRemove(ctx, &api.Remove{Path: p, Recursive: true}); err != nil {
					b.Fatal(err)
				}
			}
		}

		spec := fmt.Sprintf(`{"name": "ckpt-bench", "cluster": "c1", "type": "mpi",
 "mpi": {"ranks": %d, "slots_per_node": %d, "command": ["/bin/sh", "-c", %q]},
 "resources": {"cpu": 100, "memory": %d}}`, ranks, ranks, fmt.Sprintf(ckptScript, in.Bin, ranks, mib, runs), max(64, 2048/ranks))
		file := writeBenchFile(b, spec)
		out, errOut, code := in.Shoal("job", "run", file, "--wait")
		if code != 0 {
			logs, _, _ := in.Shoal("job", "logs", "--stderr", jobIDFrom(errOut))
			b.Fatalf("checkpoint job: exit %d\n%s\n%s\n%s", code, out, errOut, logs)
		}
		id := jobIDFrom(errOut)
		logs, _, code := in.Shoal("job", "logs", id)
		if code != 0 {
			b.Fatalf("job logs: exit %d", code)
		}
		cps, err := in.Client.JobCheckpoints(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		completed := map[int64]time.Time{}
		for _, c := range cps {
			completed[c.Epoch] = c.Completed
		}
		lastCall := map[int64]int64{}
		var blocked, cp, pcp []float64
		sc := bufio.NewScanner(strings.NewReader(logs))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			nums := make([]int64, len(f))
			for k := 1; k < len(f); k++ {
				nums[k], _ = strconv.ParseInt(f[k], 10, 64)
			}
			switch {
			case len(f) == 4 && f[0] == "cp":
				cp = append(cp, float64(nums[3])/1e6)
			case len(f) == 4 && f[0] == "pcp":
				pcp = append(pcp, float64(nums[3])/1e6)
			case len(f) == 5 && f[0] == "commit":
				lastCall[nums[1]] = max(lastCall[nums[1]], nums[3])
				blocked = append(blocked, float64(nums[4]-nums[3])/1e6)
			}
		}
		if len(lastCall) != runs || len(blocked) != runs*ranks {
			b.Fatalf("got %d epochs and %d commits in the launcher's output, want %d and %d:\n%s", len(lastCall), len(blocked), runs, runs*ranks, logs)
		}
		var ckptRates []float64
		for e, call := range lastCall {
			done := completed[e]
			if done.IsZero() {
				b.Fatalf("epoch %d has no completed time", e)
			}
			ckptRates = append(ckptRates, float64(total)/megabyte/done.Sub(time.Unix(0, call)).Seconds())
		}
		cm, clo, chi := spread(ckptRates)
		dm, dlo, dhi := spread(dfsRates)
		bm, blo, bhi := spread(blocked)
		pm, _, _ := spread(cp)
		ppm, _, _ := spread(pcp)
		b.ReportMetric(cm, "ckpt-MB/s")
		b.ReportMetric(clo, "ckpt-MB/s-min")
		b.ReportMetric(chi, "ckpt-MB/s-max")
		b.ReportMetric(dm, "dfs-MB/s")
		b.ReportMetric(dlo, "dfs-MB/s-min")
		b.ReportMetric(dhi, "dfs-MB/s-max")
		b.ReportMetric(cm/dm, "ckpt-ratio")
		b.ReportMetric(bm, "blocked-ms")
		b.ReportMetric(blo, "blocked-ms-min")
		b.ReportMetric(bhi, "blocked-ms-max")
		b.ReportMetric(pm, "cp-alone-ms")
		b.ReportMetric(ppm, "cp-ms")
		// Against the same work: every rank copying its share at once.
		b.ReportMetric(bm/ppm, "blocked-ratio")
	}
}

// writeBenchFile writes a job file into a temporary directory.
func writeBenchFile(b *testing.B, content string) string {
	p := b.TempDir() + "/job.json"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// jobIDFrom reads the job ID from `shoal job run --wait`'s first line.
func jobIDFrom(stderr string) string {
	var id string
	fmt.Sscanf(stderr, "Job %s submitted;", &id)
	return strings.TrimSuffix(id, ";")
}
