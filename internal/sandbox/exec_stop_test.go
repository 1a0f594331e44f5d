package sandbox

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// groupMembers returns the live processes of group pgid.
func groupMembers(t testing.TB, pgid int) []int {
	t.Helper()
	pids, err := liveGroupMembers(pgid)
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// checkGone fails the test if any process of the run started as pid is
// left, or, for an isolated run, its cgroup.
func checkGone(t *testing.T, e *Exec, id string, pid int) {
	t.Helper()
	if left := groupMembers(t, pid); len(left) > 0 {
		t.Errorf("processes %v of the run are left", left)
	}
	if e.cg != nil {
		for _, d := range e.cg.dirs(id) {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("cgroup %s left behind: stat error %v", d, err)
			}
		}
	}
}

// treeCmd starts a background and a foreground child, 3 processes in all.
var treeCmd = []string{"sh", "-c", "sleep 100 & sleep 100"}

func TestExecStopKillsTree(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			e := newTestExec(t, m.isolate)
			spec := testSpec(t, treeCmd...)
			h := start(t, e, spec)
			waitFor(t, 10*time.Second, "3 processes in the run", func() bool {
				return len(groupMembers(t, h.PID())) == 3
			})
			if err := h.Stop(10 * time.Second); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			checkGone(t, e, spec.ID, h.PID())
			if err := h.Stop(time.Second); err != nil {
				t.Errorf("Stop of an ended run: got %v, want nil", err)
			}
		})
	}
}

func TestExecStopGraceful(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			e := newTestExec(t, m.isolate)
			spec := testSpec(t, "sh", "-c", `trap "exit 7" TERM; echo ready; sleep 100 & wait`)
			h := start(t, e, spec)
			waitFor(t, 10*time.Second, "the trap to be set", func() bool {
				return readFile(t, spec.Stdout) == "ready\n"
			})
			if err := h.Stop(time.Minute); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if res := h.Wait(); res.ExitCode != 7 || res.Signal != 0 {
				t.Errorf("exit code, signal = %d, %d, want 7, 0", res.ExitCode, res.Signal)
			}
			checkGone(t, e, spec.ID, h.PID())
		})
	}
}

// TestExecStopInit checks that Stop does not wait out the grace period for
// a main process without a SIGTERM handler, which the kernel shields from
// SIGTERM when it is PID 1 of a namespace.
func TestExecStopInit(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			e := newTestExec(t, m.isolate)
			h := start(t, e, testSpec(t, "sleep", "100"))
			stopped := make(chan error, 1)
			go func() { stopped <- h.Stop(time.Hour) }()
			select {
			case err := <-stopped:
				if err != nil {
					t.Fatalf("Stop: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Stop still waiting after 30s with nothing but the main process left")
			}
			// Isolated, the kernel drops SIGTERM and Stop uses SIGKILL.
			want := syscall.SIGTERM
			if m.isolate {
				want = syscall.SIGKILL
			}
			if res := h.Wait(); res.Signal != int(want) {
				t.Errorf("signal = %d, want %d", res.Signal, want)
			}
		})
	}
}

func TestExecPIDNamespace(t *testing.T) {
	requireRoot(t)
	spec := testSpec(t, "sh", "-c", "echo $$")
	start(t, newTestExec(t, true), spec).Wait()
	if got, want := readFile(t, spec.Stdout), "1\n"; got != want {
		t.Errorf("$$ = %q, want %q", got, want)
	}
}

func TestExecMemoryLimit(t *testing.T) {
	requireRoot(t)
	spec := testSpec(t, "sh", "-c", `x=$(head -c 200000000 /dev/zero | tr "\0" a); echo done`)
	spec.MemoryMB = 32
	res := start(t, newTestExec(t, true), spec).Wait()
	if res.ExitCode == 0 || !res.OOMKill {
		t.Errorf("exit code, OOMKill = %d, %v, want non-zero, true", res.ExitCode, res.OOMKill)
	}
	if got := readFile(t, spec.Stdout); got != "" {
		t.Errorf("stdout = %q, want nothing", got)
	}
}

func TestExecCPULimit(t *testing.T) {
	requireRoot(t)
	e := newTestExec(t, true)
	spec := testSpec(t, "sleep", "100")
	spec.CPU = 500
	h := start(t, e, spec)
	defer h.Stop(0)
	v1, ok := e.cg.(*cgroupV1)
	if !ok {
		t.Skip("checks the cgroup v1 cpu files")
	}
	dir := v1.dir(v1.cpu, v1.parent+"/"+spec.ID)
	for file, want := range map[string]string{"cpu.cfs_quota_us": "50000\n", "cpu.cfs_period_us": "100000\n"} {
		if got := readFile(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	pids, err := readPids(dir)
	if err != nil || len(pids) != 1 || pids[0] != h.PID() {
		t.Errorf("cpu cgroup processes = %v, %v, want [%d]", pids, err, h.PID())
	}
}

// TestExecCleanup stands in for an agent restart: a second driver on the
// same parent cgroup cleans up after a run of the first.
func TestExecCleanup(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			parent := testParent()
			e := newTestExecParent(t, m.isolate, parent)
			spec := testSpec(t, treeCmd...)
			h := start(t, e, spec)
			waitFor(t, 10*time.Second, "3 processes in the run", func() bool {
				return len(groupMembers(t, h.PID())) == 3
			})
			next := newTestExecParent(t, m.isolate, parent)
			if err := next.Cleanup([]string{spec.ID, "never-started"}); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			if !m.isolate {
				h.Stop(0) // nothing to clean up without cgroups
			}
			if res := h.Wait(); m.isolate && res.Signal != int(syscall.SIGKILL) {
				t.Errorf("signal = %d, want SIGKILL", res.Signal)
			}
			waitFor(t, 10*time.Second, "the run's processes to be reaped", func() bool {
				return len(groupMembers(t, h.PID())) == 0
			})
			checkGone(t, e, spec.ID, h.PID())
		})
	}
}

// TestExecParentDeath checks that runs die with the agent: a helper process
// (this test binary) starts a run and is killed.
func TestExecParentDeath(t *testing.T) {
	if os.Getenv("SHOAL_SANDBOX_HELPER") == "1" {
		parentDeathHelper(t)
		return
	}
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			parent := testParent()
			cmd := exec.Command(os.Args[0], "-test.run=^TestExecParentDeath$")
			cmd.Env = append(os.Environ(), "SHOAL_SANDBOX_HELPER=1", "SHOAL_SANDBOX_DIR="+t.TempDir(),
				"SHOAL_SANDBOX_PARENT="+parent, "SHOAL_SANDBOX_ISOLATE="+strconv.FormatBool(m.isolate))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			var id string
			var pid int
			for sc := bufio.NewScanner(out); pid == 0; {
				if !sc.Scan() {
					t.Fatalf("helper exited without naming its run: %v", sc.Err())
				}
				fmt.Sscanf(sc.Text(), "run %s %d", &id, &pid)
			}
			waitFor(t, 10*time.Second, "3 processes in the run", func() bool {
				return len(groupMembers(t, pid)) == 3
			})
			cmd.Process.Kill()
			if !m.isolate {
				// Only the main process has a parent-death signal; its
				// children are orphaned (see Exec).
				waitFor(t, 10*time.Second, "the main process to die with its parent", func() bool {
					return !slices.Contains(groupMembers(t, pid), pid)
				})
				syscall.Kill(-pid, syscall.SIGKILL)
			}
			waitFor(t, 10*time.Second, "the run to die with its parent", func() bool {
				return len(groupMembers(t, pid)) == 0
			})
			// The dead helper left the run's (empty) cgroup behind.
			e := newTestExecParent(t, m.isolate, parent)
			if err := e.Cleanup([]string{id}); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
		})
	}
}

// parentDeathHelper starts a run, prints its ID and PID and waits to be
// killed.
func parentDeathHelper(t *testing.T) {
	isolate, _ := strconv.ParseBool(os.Getenv("SHOAL_SANDBOX_ISOLATE"))
	e, err := newExec(discardLogger(), os.Getenv("SHOAL_SANDBOX_PARENT"), isolate)
	if err != nil {
		t.Fatal(err)
	}
	// The helper is killed, so it must not make a directory it would be
	// left to remove.
	dir := os.Getenv("SHOAL_SANDBOX_DIR")
	spec := &Spec{ID: "orphan", Dir: dir, Command: treeCmd, Stdout: filepath.Join(dir, "out"), Stderr: filepath.Join(dir, "out")}
	h := start(t, e, spec)
	fmt.Printf("run %s %d\n", spec.ID, h.PID())
	h.Wait()
	t.Fatal("run ended before its parent")
}

// TestExecSweepsStaleCgroups checks that a new driver on a parent kills
// and removes the runs an earlier driver on it left, as after kill -9 of
// an agent that is then restarted.
func TestExecSweepsStaleCgroups(t *testing.T) {
	requireRoot(t)
	parent := testParent()
	e := newTestExecParent(t, true, parent)
	if !e.Isolated() {
		t.Skip("no cgroups on this host")
	}
	spec := testSpec(t, treeCmd...)
	h := start(t, e, spec)
	waitFor(t, 10*time.Second, "3 processes in the run", func() bool {
		return len(groupMembers(t, h.PID())) == 3
	})
	newTestExecParent(t, true, parent)
	if res := h.Wait(); res.Signal != int(syscall.SIGKILL) {
		t.Errorf("signal = %d, want SIGKILL", res.Signal)
	}
	waitFor(t, 10*time.Second, "the run's processes to be reaped", func() bool {
		return len(groupMembers(t, h.PID())) == 0
	})
	checkGone(t, e, spec.ID, h.PID())
}
