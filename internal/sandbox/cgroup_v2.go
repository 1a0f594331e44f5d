package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// cgroupV2 manages run cgroups on a cgroup v2 (unified) host. Runs are
// cloned straight into their cgroup (CLONE_INTO_CGROUP), so, unlike on v1,
// no process of a run ever runs outside it.
type cgroupV2 struct {
	parent *cgroup2.Manager
	dir    string // the parent's directory
	// swap is whether the kernel accounts swap (memory.swap.max). If so,
	// runs with a memory limit get no swap, as on v1.
	swap bool
}

// cgroupV2Mount is where the unified hierarchy is mounted.
const cgroupV2Mount = "/sys/fs/cgroup"

func newCgroupV2(parent string) (*cgroupV2, error) {
	// NewManager creates the parent and enables the cpu and memory
	// controllers in its ancestors; enabling them in the parent itself,
	// for its children, is left to us.
	res := &cgroup2.Resources{CPU: &cgroup2.CPU{}, Memory: &cgroup2.Memory{}}
	m, err := cgroup2.NewManager(cgroupV2Mount, parent, res)
	if err != nil {
		return nil, fmt.Errorf("sandbox: create cgroup %s: %w", parent, err)
	}
	c := &cgroupV2{parent: m, dir: filepath.Join(cgroupV2Mount, parent)}
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		_ = syscall.Rmdir(c.dir)
		return nil, fmt.Errorf("sandbox: enable cpu and memory controllers in cgroup %s: %w", parent, err)
	}
	_, err = os.Stat(filepath.Join(c.dir, "memory.swap.max"))
	c.swap = err == nil
	return c, nil
}

func (c *cgroupV2) create(id string, cpu, memoryMB int64) (*runCgroup, error) {
	// NewChild with nil resources skips re-enabling controllers up the
	// tree, which newCgroupV2 did once.
	child, err := c.parent.NewChild(id, nil)
	if err != nil {
		return nil, err
	}
	run := &runCgroup{dirs: []string{filepath.Join(c.dir, id)}, fd: -1}
	var res cgroup2.Resources
	if cpu > 0 {
		quota, period := cpuQuota(cpu), uint64(cfsPeriod)
		res.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
	}
	if memoryMB > 0 {
		limit, noSwap := memoryMB<<20, int64(0)
		res.Memory = &cgroup2.Memory{Max: &limit}
		if c.swap {
			res.Memory.Swap = &noSwap
		}
		run.oomFile = filepath.Join(run.dirs[0], "memory.events")
	}
	if res.CPU != nil || res.Memory != nil {
		err = child.Update(&res)
	}
	if err == nil {
		run.fd, err = syscall.Open(run.dirs[0], syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			run.fd = -1
		}
	}
	if err != nil {
		_ = syscall.Rmdir(run.dirs[0])
		return nil, err
	}
	return run, nil
}

// release removes the cgroup: on v2 cgroups are not reused, since a
// cgroup cannot be renamed there.
func (c *cgroupV2) release(run *runCgroup) error {
	return removeCgroupDirs(run.dirs)
}

func (c *cgroupV2) dirs(id string) []string {
	return []string{filepath.Join(c.dir, id)}
}

func (c *cgroupV2) close() error {
	err := syscall.Rmdir(c.dir)
	if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("sandbox: remove cgroup %s: %w", c.dir, err)
	}
	return nil
}
