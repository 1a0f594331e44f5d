package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
)

// cgroupTree creates the per-run cgroups under one parent cgroup and
// removes them. [cgroupV1] serves legacy and hybrid hosts, [cgroupV2]
// unified ones.
type cgroupTree interface {
	// create makes the cgroup of run id with its limits applied, or takes
	// an idle one with the same limits and renames it id. cpu is in
	// millicores and memoryMB in MiB; 0 means unlimited.
	create(id string, cpu, memoryMB int64) (*runCgroup, error)
	// release takes back the cgroup of a run that has ended (or never
	// started): it keeps it idle for a later run with the same limits if
	// it can, and otherwise kills what is left in it and removes it.
	release(cg *runCgroup) error
	// dirs returns every directory the cgroup of run id has or may have.
	dirs(id string) []string
	// close removes the idle cgroups it keeps, and the parent cgroup if
	// that is then empty: runs still going on (or the idle cgroups of
	// another driver on the same parent) keep it in place, which is not an
	// error.
	close() error
}

// runCgroup is the cgroup of one run.
type runCgroup struct {
	// dirs holds the cgroup's directory in each hierarchy it was created
	// in. The cgroup.procs file of dirs[0] (the memory hierarchy on v1,
	// the only one on v2) lists every process of the run.
	dirs []string
	// oomFile is read after the run to learn whether the kernel OOM-killed
	// one of its processes; empty when the run has no memory limit.
	oomFile string
	// oomBase is the file's oom_kill count when the run began: a reused
	// cgroup (v1) keeps the count of the runs it served before.
	oomBase uint64
	// files are descriptors a reusable cgroup keeps open (v1); nil if
	// none.
	files *cgroupFiles
	// attach moves a started process into the cgroup (v1). It is nil when
	// the process is cloned straight into the cgroup through fd (v2).
	attach func(pid int) error
	// fd is an open descriptor of the cgroup directory for
	// CLONE_INTO_CGROUP, or -1. It is closed once the process is started.
	fd int
}

// closeFD closes the cgroup directory descriptor if one is open.
func (c *runCgroup) closeFD() {
	if c.fd >= 0 {
		syscall.Close(c.fd)
		c.fd = -1
	}
}

// cgroupKillTimeout bounds how long removing a cgroup waits for the
// processes it killed to exit.
const cgroupKillTimeout = 10 * time.Second

// newCgroupTree sets up the parent cgroup, an absolute cgroup path such as
// "/shoal/agent-a1", in whichever cgroup version the host runs.
func newCgroupTree(parent string) (cgroupTree, error) {
	switch mode := cgroups.Mode(); mode {
	case cgroups.Legacy, cgroups.Hybrid:
		return newCgroupV1(parent)
	case cgroups.Unified:
		return newCgroupV2(parent)
	default:
		return nil, errors.New("sandbox: no cgroup file system mounted at /sys/fs/cgroup")
	}
}

// cpuQuota converts millicores to a CFS quota in microseconds per
// [cfsPeriod]. The kernel refuses quotas under 1ms, so tiny limits are
// rounded up to that.
func cpuQuota(millicores int64) int64 {
	return max(millicores*cfsPeriod/1000, 1000)
}

// cfsPeriod is the CFS period in microseconds used for every run.
const cfsPeriod = 100000

// readPids returns the processes listed in dir's cgroup.procs.
func readPids(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("sandbox: parse %s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// signalCgroup sends sig to every process in dir's cgroup. Processes that
// exit meanwhile are not an error.
func signalCgroup(dir string, sig syscall.Signal) error {
	pids, err := readPids(dir)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("sandbox: signal pid %d: %w", pid, err)
		}
	}
	return nil
}

// emptyCgroup kills every process in dir's cgroup and waits, up to
// [cgroupKillTimeout], until none is left. The loop catches processes
// forked while it runs.
func emptyCgroup(dir string) error {
	// cgroup.kill (v2, Linux 5.14+) kills the whole cgroup atomically; where
	// it is missing the loop below does the same one process at a time.
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	deadline := time.Now().Add(cgroupKillTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		pids, err := readPids(dir)
		if errors.Is(err, os.ErrNotExist) || err == nil && len(pids) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox: cgroup %s: processes %v still running after SIGKILL", dir, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(delay)
	}
}

// removeCgroupDirs removes a run's cgroup directories. It first tries a
// bare rmdir, which succeeds when the run left no process behind (the usual
// case: a PID namespace dies with its init); otherwise it kills what is
// left, waits for it to exit and retries. Missing directories are skipped.
func removeCgroupDirs(dirs []string) error {
	var errs []error
	for _, dir := range dirs {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			continue
		}
		if errors.Is(err, syscall.EBUSY) {
			if err = emptyCgroup(dir); err == nil {
				if err = syscall.Rmdir(dir); errors.Is(err, syscall.ENOENT) {
					err = nil
				}
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sandbox: remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// oomKills returns the cgroup's "oom_kill" counter (v1
// memory.oom_control or v2 memory.events), read through the descriptor
// the cgroup keeps open if it has one. Kernels before 4.13 have no such
// counter; there it returns 0.
func (c *runCgroup) oomKills() (uint64, bool) {
	var b []byte
	if c.files != nil && c.files.oom >= 0 {
		b = c.files.read(c.files.oom)
	} else {
		b, _ = os.ReadFile(c.oomFile)
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("oom_kill ")); ok {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
