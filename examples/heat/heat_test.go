package heat_test

// These tests build the examples with build.sh and run them under plain
// mpirun on loopback, with a fake `shoal` on PATH standing in for Shoal's
// side of the checkpoint contract: it records each commit and copies the
// rank's files, as the agent would, so that a restart can be given exactly
// the files of the epoch it resumes from.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"sigs.k8s.io/yaml"
)

// fakeShoal is the `shoal` the programs find on PATH. It accepts only
// `shoal checkpoint commit N`, appends the arguments to $FAKE_SHOAL_STORE/
// commits.<rank> and copies the rank's files to $FAKE_SHOAL_STORE/<N>/<rank>/.
const fakeShoal = `#!/bin/sh
set -eu
rank=${OMPI_COMM_WORLD_RANK:-$PMI_RANK}
echo "$*" >> "$FAKE_SHOAL_STORE/commits.$rank"
[ $# -eq 3 ] && [ "$1" = checkpoint ] && [ "$2" = commit ] || { echo "fake shoal: unexpected arguments: $*" >&2; exit 2; }
mkdir -p "$FAKE_SHOAL_STORE/$3/$rank"
cp -R "$SHOAL_CHECKPOINT_DIR/$rank/." "$FAKE_SHOAL_STORE/$3/$rank/"
`

const ranks = 4

// programs holds the directory build.sh wrote heat and ring into.
type programs struct{ dir string }

func build(t *testing.T) programs {
	t.Helper()
	for _, tool := range []string{"mpicc", "mpirun"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH (install Open MPI: openmpi-bin, libopenmpi-dev)", tool)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "build.sh", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	if len(out) != 0 {
		t.Errorf("build.sh printed (warnings?):\n%s", out)
	}
	return programs{dir}
}

// mpirun runs prog with args on ranks local ranks over loopback TCP. env
// is added to this process's environment without its SHOAL_ variables. It
// returns stdout, stderr and the error of the run.
func (p programs) mpirun(t *testing.T, env []string, prog string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"--oversubscribe", "-np", fmt.Sprint(ranks), "--mca", "btl", "tcp,self",
		filepath.Join(p.dir, prog)}, args...)
	cmd := exec.CommandContext(ctx, "mpirun", argv...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
		"OMPI_MCA_btl_tcp_if_include=lo", "OMPI_MCA_oob_tcp_if_include=lo")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("mpirun %s: timed out\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "), stdout.String(), stderr.String())
	}
	if err != nil {
		t.Logf("mpirun %s: %v\nstderr:\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String(), err
}

func lines(s string) []string {
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func TestRing(t *testing.T) {
	p := build(t)
	out, _, err := p.mpirun(t, nil, "ring")
	if err != nil {
		t.Fatalf("ring failed: %v\n%s", err, out)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for r := range ranks {
		want = append(want,
			fmt.Sprintf("rank %d of %d host %s node -", r, ranks, host),
			fmt.Sprintf("rank %d got token from rank %d on host %s", r, (r+ranks-1)%ranks, host))
	}
	want = append(want, "ring ok")
	got := lines(out)
	// Ranks print concurrently; only rank 0's own lines have an order.
	if i, j := slices.Index(got, "rank 0 got token from rank 3 on host "+host), slices.Index(got, "ring ok"); i < 0 || j < i {
		t.Errorf("ring ok is not printed after rank 0 got the token back:\n%s", out)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ring printed\n%s\nwant (in any order)\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var initDone = regexp.MustCompile(`^mpi_init_done [0-9]+\.[0-9]{9}$`)

// heatOutput checks that out has one mpi_init_done line per rank and
// returns its other lines, in order.
func heatOutput(t *testing.T, out string) []string {
	t.Helper()
	var rest []string
	n := 0
	for _, l := range lines(out) {
		if initDone.MatchString(l) {
			n++
		} else {
			rest = append(rest, l)
		}
	}
	if n != ranks {
		t.Errorf("%d mpi_init_done lines, want %d:\n%s", n, ranks, out)
	}
	return rest
}

// checkpointRun is one heat run with a checkpoint directory and a store
// that the fake shoal copies committed epochs into.
type checkpointRun struct {
	ckdir, store string
}

func newCheckpointRun(t *testing.T) checkpointRun {
	t.Helper()
	c := checkpointRun{ckdir: t.TempDir(), store: t.TempDir()}
	for r := range ranks {
		if err := os.Mkdir(filepath.Join(c.ckdir, fmt.Sprint(r)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c checkpointRun) env(bin string, extra ...string) []string {
	return append([]string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"SHOAL_CHECKPOINT_DIR=" + c.ckdir, "FAKE_SHOAL_STORE=" + c.store}, extra...)
}

// commits returns the arguments the fake shoal got from each rank.
func (c checkpointRun) commits(t *testing.T) map[int]string {
	t.Helper()
	got := map[int]string{}
	for r := range ranks {
		b, err := os.ReadFile(filepath.Join(c.store, fmt.Sprintf("commits.%d", r)))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		got[r] = string(b)
	}
	return got
}

func commitLines(epochs ...int) string {
	var b strings.Builder
	for _, e := range epochs {
		fmt.Fprintf(&b, "checkpoint commit %d\n", e)
	}
	return b.String()
}

func checkCommits(t *testing.T, what string, got map[int]string, epochs ...int) {
	t.Helper()
	want := commitLines(epochs...)
	for r := range ranks {
		if got[r] != want {
			t.Errorf("%s: rank %d ran shoal with\n%swant\n%s", what, r, got[r], want)
		}
	}
}

// TestHeatCheckpointRestart runs heat to the end, then again with a rank
// failing after epoch 3, then resumes that run from epoch 3's committed
// files and expects the uninterrupted run's checksum.
func TestHeatCheckpointRestart(t *testing.T) {
	p := build(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "shoal"), []byte(fakeShoal), 0o755); err != nil {
		t.Fatal(err)
	}
	const padded = 1 << 20
	args := []string{"--steps", "600", "--checkpoint-every", "100", "--cells-per-rank", "1000",
		"--checkpoint-bytes", fmt.Sprint(padded)}

	// Uninterrupted, with checkpoints.
	full := newCheckpointRun(t)
	out, _, err := p.mpirun(t, full.env(bin), "heat", args...)
	if err != nil {
		t.Fatalf("uninterrupted run failed: %v\n%s", err, out)
	}
	rest := heatOutput(t, out)
	if len(rest) != 1 || !regexp.MustCompile(`^checksum [0-9a-f]{16}$`).MatchString(rest[0]) {
		t.Fatalf("uninterrupted run printed %q besides mpi_init_done, want one checksum line", rest)
	}
	checksum := rest[0]
	checkCommits(t, "uninterrupted run", full.commits(t), 1, 2, 3, 4, 5, 6)
	for _, f := range []string{filepath.Join(full.ckdir, "1", "state"), filepath.Join(full.store, "6", "1", "state")} {
		if st, err := os.Stat(f); err != nil {
			t.Error(err)
		} else if st.Size() != padded {
			t.Errorf("%s is %d bytes, want --checkpoint-bytes %d", f, st.Size(), padded)
		}
	}
	if _, err := os.Stat(filepath.Join(full.ckdir, "1", "state.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state.tmp left behind: %v", err)
	}

	// Without SHOAL_CHECKPOINT_DIR (plain mpirun): no checkpoints, same result.
	out, _, err = p.mpirun(t, nil, "heat", args...)
	if err != nil {
		t.Fatalf("run without checkpoints failed: %v\n%s", err, out)
	}
	if rest := heatOutput(t, out); !slices.Equal(rest, []string{checksum}) {
		t.Errorf("run without checkpoints printed %q, want %q", rest, checksum)
	}

	// Rank 2 fails at step 350, after epoch 3 (step 300) is committed.
	failed := newCheckpointRun(t)
	out, _, err = p.mpirun(t, failed.env(bin), "heat", append(args, "--fail-at-step", "350", "--fail-rank", "2")...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("run with a failing rank: got error %v, want mpirun to pass on the rank's exit status 3\n%s", err, out)
	}
	if rest := heatOutput(t, out); len(rest) != 0 {
		t.Errorf("run with a failing rank printed %q besides mpi_init_done", rest)
	}
	checkCommits(t, "run with a failing rank", failed.commits(t), 1, 2, 3)

	// Restart in fresh directories holding only epoch 3's committed files,
	// as Shoal would restore them; --fail-at-step is ignored on a restart.
	resumed := newCheckpointRun(t)
	for r := range ranks {
		b, err := os.ReadFile(filepath.Join(failed.store, "3", fmt.Sprint(r), "state"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(resumed.ckdir, fmt.Sprint(r), "state"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err = p.mpirun(t, resumed.env(bin, "SHOAL_RESTART_EPOCH=3"), "heat",
		append(args, "--fail-at-step", "350", "--fail-rank", "2")...)
	if err != nil {
		t.Fatalf("resumed run failed: %v\n%s", err, out)
	}
	if got, want := heatOutput(t, out), []string{"resumed from epoch 3 at step 300", checksum}; !slices.Equal(got, want) {
		t.Errorf("resumed run printed %q besides mpi_init_done, want %q", got, want)
	}
	checkCommits(t, "resumed run", resumed.commits(t), 4, 5, 6)
}

// TestHeatRestartMissingFiles checks that a restart without the epoch's
// files fails with a message naming the file, not a run from scratch.
func TestHeatRestartMissingFiles(t *testing.T) {
	p := build(t)
	c := newCheckpointRun(t)
	out, stderr, err := p.mpirun(t, c.env(t.TempDir(), "SHOAL_RESTART_EPOCH=2"), "heat", "--steps", "10")
	if err == nil {
		t.Fatalf("restart without checkpoint files succeeded:\n%s", out)
	}
	// Every rank fails; the first to abort the job stops the others, so
	// which ranks get to explain varies.
	want := regexp.MustCompile(`(?m)^heat: rank ([0-3]): resuming from epoch 2: opening ` +
		regexp.QuoteMeta(c.ckdir) + `/([0-3])/state: No such file or directory$`)
	if m := want.FindStringSubmatch(stderr); m == nil || m[1] != m[2] {
		t.Errorf("stderr has no line matching %s:\n%s", want, stderr)
	}
	if rest := heatOutput(t, out); len(rest) != 0 {
		t.Errorf("restart without checkpoint files printed %q besides mpi_init_done", rest)
	}
}

// TestJobFile checks heat.yaml the way `shoal job run` reads it, without
// needing Open MPI.
func TestJobFile(t *testing.T) {
	b, err := os.ReadFile("heat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec api.JobSpec
	if err := yaml.UnmarshalStrict(b, &spec); err != nil {
		t.Fatalf("heat.yaml: %v", err)
	}
	if err := spec.Validate(); err != nil {
		t.Fatalf("heat.yaml: %v", err)
	}
	if spec.Type != api.JobMPI || spec.MPI.Nodes() != 3 || !slices.Equal(spec.Files, []string{"/clusters/c1/heat"}) {
		t.Errorf("heat.yaml: type %q, %d nodes, files %q; want an mpi job on the tour's 3 nodes running /clusters/c1/heat",
			spec.Type, spec.MPI.Nodes(), spec.Files)
	}
}
