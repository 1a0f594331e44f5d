package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cgroupV1 manages run cgroups on a cgroup v1 (legacy or hybrid) host.
//
// A v1 host mounts each controller as its own hierarchy, and every
// hierarchy a run joins costs a mkdir, a write to cgroup.procs and an rmdir.
// A run therefore joins only the memory hierarchy (which also serves to
// list the run's processes and to detect OOM kills) and, when it has a CPU
// limit, the cpu hierarchy.
type cgroupV1 struct {
	parent string // absolute cgroup path, e.g. "/shoal/agent-a1"
	memory cgroup1.Subsystem
	cpu    cgroup1.Subsystem
	// memOnly and memCPU are the hierarchies handed to cgroup1.New; they
	// are fixed lists so that New does not parse /proc/self/mountinfo on
	// every run.
	memOnly, memCPU cgroup1.Hierarchy
	// memsw is whether the kernel accounts swap (memory.memsw.*). If so,
	// runs get a memory+swap limit equal to their memory limit so that
	// the limit cannot be dodged by swapping.
	memsw bool
}

// pather is the part of a cgroup1 subsystem that maps a cgroup path to a
// directory; every subsystem cgroup1.Default returns implements it.
type pather interface {
	Path(path string) string
}

func newCgroupV1(parent string) (*cgroupV1, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, fmt.Errorf("sandbox: list cgroup v1 hierarchies: %w", err)
	}
	c := &cgroupV1{parent: parent}
	for _, s := range all {
		if _, ok := s.(pather); !ok {
			continue
		}
		switch s.Name() {
		case cgroup1.Memory:
			c.memory = s
		case cgroup1.Cpu:
			c.cpu = s
		}
	}
	if c.memory == nil || c.cpu == nil {
		return nil, errors.New("sandbox: cgroup v1 cpu or memory hierarchy not mounted")
	}
	memOnly := []cgroup1.Subsystem{c.memory}
	memCPU := []cgroup1.Subsystem{c.memory, c.cpu}
	c.memOnly = func() ([]cgroup1.Subsystem, error) { return memOnly, nil }
	c.memCPU = func() ([]cgroup1.Subsystem, error) { return memCPU, nil }

	_, err = cgroup1.New(cgroup1.StaticPath(parent), &specs.LinuxResources{}, cgroup1.WithHierarchy(c.memCPU))
	if err != nil {
		return nil, fmt.Errorf("sandbox: create cgroup %s: %w", parent, err)
	}
	_, err = os.Stat(filepath.Join(c.dir(c.memory, parent), "memory.memsw.limit_in_bytes"))
	c.memsw = err == nil
	return c, nil
}

// dir returns the directory of cgroup path in subsystem s's hierarchy.
func (c *cgroupV1) dir(s cgroup1.Subsystem, path string) string {
	return s.(pather).Path(path)
}

func (c *cgroupV1) create(id string, cpu, memoryMB int64) (*runCgroup, error) {
	path := c.parent + "/" + id
	res := &specs.LinuxResources{}
	hier := c.memOnly
	run := &runCgroup{dirs: []string{c.dir(c.memory, path)}, fd: -1}
	if cpu > 0 {
		quota, period := cpuQuota(cpu), uint64(cfsPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
		hier = c.memCPU
		run.dirs = append(run.dirs, c.dir(c.cpu, path))
	}
	if memoryMB > 0 {
		limit := memoryMB << 20
		res.Memory = &specs.LinuxMemory{Limit: &limit}
		if c.memsw {
			res.Memory.Swap = &limit
		}
		run.oomFile = filepath.Join(run.dirs[0], "memory.oom_control")
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), res, cgroup1.WithHierarchy(hier))
	if err != nil {
		for _, d := range run.dirs {
			_ = syscall.Rmdir(d)
		}
		return nil, err
	}
	run.attach = func(pid int) error { return cg.AddProc(uint64(pid)) }
	return run, nil
}

func (c *cgroupV1) dirs(id string) []string {
	path := c.parent + "/" + id
	return []string{c.dir(c.memory, path), c.dir(c.cpu, path)}
}

func (c *cgroupV1) close() error {
	var errs []error
	for _, s := range []cgroup1.Subsystem{c.memory, c.cpu} {
		d := c.dir(s, c.parent)
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("sandbox: remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
