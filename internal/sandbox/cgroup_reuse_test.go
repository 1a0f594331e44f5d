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
		if err != nil && !os.IsNotExist(err) { // a closed driver removes its parent
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

// TestExecChangedCgroupNotReused checks that a run which changed its own
// cgroup (it is root and sees /sys/fs/cgroup) does not hand those changes
// to the next run: the next run gets a new cgroup with its own limits.
func TestExecChangedCgroupNotReused(t *testing.T) {
	for _, tt := range []struct{ name, script string }{
		{"OOM killer off", `echo 1 > /sys/fs/cgroup/memory$m/memory.oom_control`},
		{"memory limit raised", `f=/sys/fs/cgroup/memory$m
if [ -e $f/memory.memsw.limit_in_bytes ]; then echo 1073741824 > $f/memory.memsw.limit_in_bytes; fi
echo 1073741824 > $f/memory.limit_in_bytes`},
		{"cpu quota lifted", `echo -1 > /sys/fs/cgroup/cpu$c/cpu.cfs_quota_us`},
		{"child cgroup", `mkdir /sys/fs/cgroup/memory$m/child`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, c := v1Driver(t)
			// Wait until the run is in its cgroup (on v1 it joins just
			// after it starts), then change it.
			first := testSpec(t, "sh", "-c", `until grep -q ':memory:.*/'"$RUN"'$' /proc/self/cgroup; do sleep 0.01; done
m=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup); c=$(sed -n 's/^[0-9]*:cpu://p' /proc/self/cgroup)
`+tt.script)
			first.CPU, first.MemoryMB = 500, 32
			first.Env = append(first.Env, "RUN="+first.ID)
			if res := start(t, e, first).Wait(); res.ExitCode != 0 {
				t.Fatalf("first run: exit code %d, err %v", res.ExitCode, res.Err)
			}
			if mem, cpu := idleCgroups(t, c); len(mem)+len(cpu) != 0 {
				t.Errorf("idle cgroups after a run changed its own: memory %v, cpu %v, want none", mem, cpu)
			}
			second := testSpec(t, "sleep", "100")
			second.CPU, second.MemoryMB = 500, 32
			h := start(t, e, second)
			defer h.Stop(0)
			memDir, cpuDir := c.dir(c.memory, c.parent+"/"+second.ID), c.dir(c.cpu, c.parent+"/"+second.ID)
			for file, want := range map[string]string{
				filepath.Join(cpuDir, "cpu.cfs_quota_us"):      "50000\n",
				filepath.Join(memDir, "memory.limit_in_bytes"): "33554432\n",
			} {
				if got := readFile(t, file); got != want {
					t.Errorf("%s = %q, want %q", file, got, want)
				}
			}
			if got := readFile(t, filepath.Join(memDir, "memory.oom_control")); !strings.Contains(got, "oom_kill_disable 0") {
				t.Errorf("memory.oom_control of the next run = %q, want the OOM killer on", got)
			}
			if _, err := os.Stat(filepath.Join(memDir, "child")); err == nil {
				t.Error("the next run's cgroup holds the child cgroup of the run before")
			}
		})
	}
}

// TestCgroupReleaseAfterClose checks that a run ending after the driver's
// cgroups were closed has its cgroup removed, not kept idle for ever.
func TestCgroupReleaseAfterClose(t *testing.T) {
	e, c := v1Driver(t)
	spec := testSpec(t, "sleep", "0.3")
	spec.MemoryMB = 32
	h := start(t, e, spec)
	if err := c.close(); err != nil {
		t.Logf("close with a run still going: %v", err)
	}
	h.Wait()
	if mem, cpu := idleCgroups(t, c); len(mem)+len(cpu) != 0 {
		t.Errorf("idle cgroups after close: memory %v, cpu %v, want none", mem, cpu)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nidle != 0 || len(c.idle) != 0 {
		t.Errorf("kept cgroups after close: %d, want 0", c.nidle)
	}
}
