package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// idleCgroups returns the names of the idle cgroups under the driver's
// parent in the memory and the cpu hierarchy.
func idleCgroups(t *testing.T, c *cgroupV1) (memory, cpu []string) {
	t.Helper()
	list := func(dir string) []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "idle-") {
				names = append(names, e.Name())
			}
		}
		return names
	}
	return list(c.dir(c.memory, c.parent)), list(c.dir(c.cpu, c.parent))
}

// v1Driver returns an isolated driver on a cgroup v1 host, or skips.
func v1Driver(t *testing.T) (*Exec, *cgroupV1) {
	t.Helper()
	requireRoot(t)
	e := newTestExec(t, true)
	c, ok := e.cg.(*cgroupV1)
	if !ok {
		t.Skip("cgroups are reused on cgroup v1 hosts only")
	}
	return e, c
}

// TestExecReusesCgroups checks that the cgroup of an ended run serves the
// next run with the same limits, renamed after it, with its limits and a
// fresh OOM verdict, and that a run with other limits gets its own.
func TestExecReusesCgroups(t *testing.T) {
	e, c := v1Driver(t)
	first := testSpec(t, "true")
	first.CPU, first.MemoryMB = 500, 32
	h1 := start(t, e, first)
	if res := h1.Wait(); res.ExitCode != 0 {
		t.Fatalf("first run: exit code %d, err %v", res.ExitCode, res.Err)
	}
	mem, cpu := idleCgroups(t, c)
	if len(mem) != 1 || len(cpu) != 1 || mem[0] != cpu[0] {
		t.Fatalf("idle cgroups after one run: memory %v, cpu %v, want one in each, of one name", mem, cpu)
	}
	checkGone(t, e, first.ID, h1.PID())

	second := testSpec(t, "sleep", "100")
	second.CPU, second.MemoryMB = 500, 32
	h := start(t, e, second)
	if mem, cpu := idleCgroups(t, c); len(mem)+len(cpu) != 0 {
		t.Errorf("idle cgroups while the second run runs: memory %v, cpu %v, want none", mem, cpu)
	}
	memDir, cpuDir := c.dir(c.memory, c.parent+"/"+second.ID), c.dir(c.cpu, c.parent+"/"+second.ID)
	for file, want := range map[string]string{
		filepath.Join(cpuDir, "cpu.cfs_quota_us"):      "50000\n",
		filepath.Join(cpuDir, "cpu.cfs_period_us"):     "100000\n",
		filepath.Join(memDir, "memory.limit_in_bytes"): "33554432\n",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	for _, d := range []string{memDir, cpuDir} {
		pids, err := readPids(d)
		if err != nil || len(pids) != 1 || pids[0] != h.PID() {
			t.Errorf("processes of %s = %v, %v, want [%d]", d, pids, err, h.PID())
		}
	}
	other := testSpec(t, "true")
	other.CPU, other.MemoryMB = 500, 64
	if res := start(t, e, other).Wait(); res.ExitCode != 0 {
		t.Fatalf("run with other limits: exit code %d, err %v", res.ExitCode, res.Err)
	}
	if mem, _ := idleCgroups(t, c); len(mem) != 1 {
		t.Errorf("idle cgroups after a run with other limits = %v, want its own one", mem)
	}
	h.Stop(0)
	if mem, _ := idleCgroups(t, c); len(mem) != 2 {
		t.Errorf("idle cgroups after both ended = %v, want 2", mem)
	}
	checkGone(t, e, second.ID, h.PID())
}

// TestExecReusedCgroupOOM checks that a run in a cgroup whose earlier run
// was OOM-killed is not reported OOM-killed itself.
func TestExecReusedCgroupOOM(t *testing.T) {
	e, c := v1Driver(t)
	oom := testSpec(t, "sh", "-c", `x=$(head -c 200000000 /dev/zero | tr "\0" a); echo done`)
	oom.MemoryMB = 32
	if res := start(t, e, oom).Wait(); !res.OOMKill {
		t.Fatalf("OOMKill = false for a run over its limit (exit code %d)", res.ExitCode)
	}
	if mem, _ := idleCgroups(t, c); len(mem) != 1 {
		t.Fatalf("idle cgroups after an OOM-killed run = %v, want 1", mem)
	}
	next := testSpec(t, "true")
	next.MemoryMB = 32
	if res := start(t, e, next).Wait(); res.OOMKill || res.ExitCode != 0 {
		t.Errorf("next run in the reused cgroup: OOMKill %v, exit code %d, want false, 0", res.OOMKill, res.ExitCode)
	}
}

// TestExecChargedCgroupNotReused checks that a cgroup still charged with
// memory after its run (here a file the run left on tmpfs) is removed, not
// handed to the next run with part of its limit used up.
func TestExecChargedCgroupNotReused(t *testing.T) {
	e, c := v1Driver(t)
	spec := testSpec(t)
	shm := filepath.Join("/dev/shm", "shoal-sandbox-test-"+spec.ID+"-"+strconv.Itoa(os.Getpid()))
	t.Cleanup(func() { os.Remove(shm) })
	// On v1 a run joins its cgroup just after it starts: the shell waits
	// for that before it starts the writer.
	spec.Command = []string{"sh", "-c", "until grep -q 'memory:.*/" + spec.ID + "$' /proc/self/cgroup; do sleep 0.01; done; " +
		"head -c 4000000 /dev/zero > " + shm}
	spec.MemoryMB = 32
	h := start(t, e, spec)
	if res := h.Wait(); res.ExitCode != 0 {
		t.Fatalf("exit code %d, err %v", res.ExitCode, res.Err)
	}
	if mem, cpu := idleCgroups(t, c); len(mem)+len(cpu) != 0 {
		t.Errorf("idle cgroups after a run that left 4 MB charged: memory %v, cpu %v, want none", mem, cpu)
	}
	checkGone(t, e, spec.ID, h.PID())
}
