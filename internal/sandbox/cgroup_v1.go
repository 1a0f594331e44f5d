package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
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
//
// Making and removing a memory cgroup is the dearest part of a start (the
// kernel allocates and later frees per-CPU state for each, partly in its
// own workers), so the cgroup of an ended run is kept, renamed
// "idle-N", for the next run with the same limits, which renames it after
// itself: at any time a cgroup serves one run at most and is named after
// it. A cgroup is kept only if no process is left in it and it is charged
// with little memory (see [idleMaxUsage]), so that the next run gets
// (nearly) its full memory limit; at most [maxIdleCgroups] are kept.
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

	mu     sync.Mutex
	idle   map[cgroupLimits][]*runCgroup // guarded by mu
	nidle  int                           // guarded by mu
	seq    uint64                        // guarded by mu; names idle cgroups
	closed bool                          // guarded by mu; runs ending after close are destroyed
}

// cgroupLimits are the limits a cgroup was made with; only a run with the
// same limits reuses it.
type cgroupLimits struct{ cpu, memoryMB int64 }

// maxIdleCgroups bounds how many cgroups of ended runs a driver keeps.
const maxIdleCgroups = 256

// idleMaxUsage is the most memory (bytes) an ended run's cgroup may still
// be charged with to be reused; it must also be at most a sixteenth of its
// limit. What a run leaves charged is mostly kernel memory and page cache,
// which the kernel reclaims when the next run needs it, but files left on
// tmpfs stay charged until deleted.
const idleMaxUsage = 1 << 20

// cgroupFiles are the descriptors a reusable v1 cgroup keeps open, so that
// a run costs one write per hierarchy to join it and a few reads to learn
// how it ended, instead of opening files by path every time.
type cgroupFiles struct {
	procs  []int // cgroup.procs of each of the cgroup's dirs, read-write
	oom    int   // memory.oom_control, or -1
	usage  int   // memory.usage_in_bytes, or -1
	limits cgroupLimits
}

// read returns what fd's file holds (a short cgroup file), or nil.
func (f *cgroupFiles) read(fd int) []byte {
	buf := make([]byte, 512)
	n, err := syscall.Pread(fd, buf, 0)
	if err != nil || n < 0 {
		return nil
	}
	return buf[:n]
}

// close closes every descriptor.
func (f *cgroupFiles) close() {
	for _, fd := range append(f.procs, f.oom, f.usage) {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}

// attach moves process pid into the cgroup in every hierarchy.
func (f *cgroupFiles) attach(pid int) error {
	b := []byte(strconv.Itoa(pid))
	for _, fd := range f.procs {
		for {
			_, err := syscall.Pwrite(fd, b, 0)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("write cgroup.procs: %w", err)
			}
			break
		}
	}
	return nil
}

// reusable reports whether the cgroup of an ended run can serve another:
// no process is left in it and it holds little memory.
//
// cgroup.procs is read through a new descriptor: on v1 the kernel caches
// the list it returns for about a second per cgroup, and only the first
// read after an open is sure to list what is there now. dirs[0] lists
// every process of the run.
func (f *cgroupFiles) reusable(run *runCgroup) bool {
	if pids, err := readPids(run.dirs[0]); err != nil || len(pids) > 0 {
		return false
	}
	if f.usage >= 0 {
		n, err := strconv.ParseUint(string(trimSpace(f.read(f.usage))), 10, 64)
		if err != nil || n > idleMaxUsage || f.limits.memoryMB > 0 && n > uint64(f.limits.memoryMB<<20)/16 {
			return false
		}
	}
	return untouched(run, f.limits)
}

// untouched reports whether an ended run left its cgroup as it was made:
// no child cgroups, the limits it was given and the kernel's OOM killer
// on. A run is root and sees /sys/fs/cgroup, so it can change its own
// cgroup; a cgroup it changed is removed rather than handed to the next
// run, which must get exactly its own limits.
func untouched(run *runCgroup, l cgroupLimits) bool {
	for _, d := range run.dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			return false
		}
		for _, e := range entries {
			if e.IsDir() {
				return false
			}
		}
	}
	want := map[string]string{}
	if l.memoryMB > 0 {
		limit := strconv.FormatInt(l.memoryMB<<20, 10)
		want[filepath.Join(run.dirs[0], "memory.limit_in_bytes")] = limit
		if _, err := os.Stat(filepath.Join(run.dirs[0], "memory.memsw.limit_in_bytes")); err == nil {
			want[filepath.Join(run.dirs[0], "memory.memsw.limit_in_bytes")] = limit
		}
	}
	if l.cpu > 0 && len(run.dirs) > 1 {
		want[filepath.Join(run.dirs[1], "cpu.cfs_quota_us")] = strconv.FormatInt(cpuQuota(l.cpu), 10)
		want[filepath.Join(run.dirs[1], "cpu.cfs_period_us")] = strconv.FormatInt(cfsPeriod, 10)
	}
	for file, v := range want {
		b, err := os.ReadFile(file)
		if err != nil || string(trimSpace(b)) != v {
			return false
		}
	}
	b, err := os.ReadFile(filepath.Join(run.dirs[0], "memory.oom_control"))
	return err == nil && bytes.Contains(b, []byte("oom_kill_disable 0\n"))
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
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
	c := &cgroupV1{parent: parent, idle: map[cgroupLimits][]*runCgroup{}}
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
	limits := cgroupLimits{cpu, memoryMB}
	c.mu.Lock()
	var run *runCgroup
	if l := c.idle[limits]; len(l) > 0 {
		run, c.idle[limits] = l[len(l)-1], l[:len(l)-1]
		c.nidle--
	}
	c.mu.Unlock()
	if run != nil {
		if err := renameCgroup(run, id); err == nil {
			return run, nil
		}
		c.destroy(run) // and make a new one
	}
	return c.createNew(id, limits)
}

// createNew makes a new cgroup for run id.
func (c *cgroupV1) createNew(id string, limits cgroupLimits) (*runCgroup, error) {
	path := c.parent + "/" + id
	res := &specs.LinuxResources{}
	hier := c.memOnly
	run := &runCgroup{dirs: []string{c.dir(c.memory, path)}, fd: -1}
	if limits.cpu > 0 {
		quota, period := cpuQuota(limits.cpu), uint64(cfsPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
		hier = c.memCPU
		run.dirs = append(run.dirs, c.dir(c.cpu, path))
	}
	if limits.memoryMB > 0 {
		limit := limits.memoryMB << 20
		res.Memory = &specs.LinuxMemory{Limit: &limit}
		if c.memsw {
			res.Memory.Swap = &limit
		}
		run.oomFile = filepath.Join(run.dirs[0], "memory.oom_control")
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(path), res, cgroup1.WithHierarchy(hier)); err != nil {
		for _, d := range run.dirs {
			_ = syscall.Rmdir(d)
		}
		return nil, err
	}
	f := &cgroupFiles{oom: -1, usage: -1, limits: limits}
	run.files = f
	open := func(name string, mode int) (int, error) {
		return syscall.Open(name, mode|syscall.O_CLOEXEC, 0)
	}
	var err error
	for _, d := range run.dirs {
		var fd int
		if fd, err = open(filepath.Join(d, "cgroup.procs"), syscall.O_WRONLY); err != nil {
			break
		}
		f.procs = append(f.procs, fd)
	}
	if err == nil && run.oomFile != "" {
		f.oom, err = open(run.oomFile, syscall.O_RDONLY)
		if err != nil {
			f.oom = -1
		}
	}
	if err == nil {
		usage := "memory.usage_in_bytes"
		if c.memsw {
			usage = "memory.memsw.usage_in_bytes" // what is swapped out is charged too
		}
		f.usage, err = open(filepath.Join(run.dirs[0], usage), syscall.O_RDONLY)
		if err != nil {
			f.usage = -1
		}
	}
	if err != nil {
		c.destroy(run)
		return nil, err
	}
	run.attach = f.attach
	return run, nil
}

// renameCgroup renames run's cgroup, in every hierarchy, to name; dirs
// follows what is done even when it fails half-way.
func renameCgroup(run *runCgroup, name string) error {
	for i, d := range run.dirs {
		nd := filepath.Join(filepath.Dir(d), name)
		if err := syscall.Rename(d, nd); err != nil {
			return err
		}
		run.dirs[i] = nd
	}
	if run.oomFile != "" {
		run.oomFile = filepath.Join(run.dirs[0], "memory.oom_control")
	}
	return nil
}

// destroy closes a cgroup's descriptors and removes it, killing what is
// left in it.
func (c *cgroupV1) destroy(run *runCgroup) error {
	if run.files != nil {
		run.files.close()
	}
	return removeCgroupDirs(run.dirs)
}

func (c *cgroupV1) release(run *runCgroup) error {
	f := run.files
	if f == nil || !f.reusable(run) {
		return c.destroy(run)
	}
	c.mu.Lock()
	full := c.nidle >= maxIdleCgroups || c.closed
	c.seq++
	name := "idle-" + strconv.FormatUint(c.seq, 10)
	c.mu.Unlock()
	if full || renameCgroup(run, name) != nil {
		return c.destroy(run)
	}
	c.mu.Lock()
	if c.closed { // closed while it was being renamed
		c.mu.Unlock()
		return c.destroy(run)
	}
	c.idle[f.limits] = append(c.idle[f.limits], run)
	c.nidle++
	c.mu.Unlock()
	return nil
}

func (c *cgroupV1) dirs(id string) []string {
	path := c.parent + "/" + id
	return []string{c.dir(c.memory, path), c.dir(c.cpu, path)}
}

func (c *cgroupV1) close() error {
	var errs []error
	c.mu.Lock()
	idle := c.idle
	c.idle, c.nidle, c.closed = map[cgroupLimits][]*runCgroup{}, 0, true
	c.mu.Unlock()
	for _, l := range idle {
		for _, run := range l {
			errs = append(errs, c.destroy(run))
		}
	}
	for _, s := range []cgroup1.Subsystem{c.memory, c.cpu} {
		d := c.dir(s, c.parent)
		err := syscall.Rmdir(d)
		if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) {
			errs = append(errs, fmt.Errorf("sandbox: remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
