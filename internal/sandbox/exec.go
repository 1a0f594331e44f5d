package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Exec is the "exec" [Driver]. It runs a task as a host process in its own
// process group, with exactly the task's environment, in the task's
// directory, and with a parent-death signal of SIGKILL so that runs do not
// outlive the agent.
//
// Run as root, Exec also isolates each run (see [Exec.Isolated]): the
// process starts in new PID, mount, UTS and IPC namespaces, so it is PID 1
// of its own namespace and every process of the run dies with it, and in a
// cgroup of its own under the parent cgroup that enforces the run's CPU and
// memory limits. There is no shim process between the agent and the task:
// mounts are not made private and /proc is not remounted, which keeps a
// start to a single fork and exec.
//
// Without isolation, only a run's main process has the parent-death signal:
// if the agent dies, the children of that process are orphaned. The kernel
// sends the signal when the thread that started the run exits, so the agent
// must not start runs from a goroutine that ends with its thread locked
// ([runtime.LockOSThread]). Runs with a [Spec.NetNS] are started from one
// dedicated thread of the driver that lives as long as the process (see
// netnsStarter in netns.go).
//
// An Exec is safe for concurrent use.
type Exec struct {
	log     *slog.Logger
	cg      cgroupTree // nil when runs are not isolated
	devNull *os.File   // every run's stdin

	nsMu     sync.Mutex    // guards ns and nsClosed
	ns       *netnsStarter // starts runs with a Spec.NetNS; nil until the first
	nsClosed bool
}

var _ Driver = (*Exec)(nil)

// isolationFlags are the namespaces an isolated run starts in.
const isolationFlags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC

// NewExec returns the exec driver. cgroupParent names the parent cgroup
// (e.g. "shoal/agent-a1") under which each run gets its own cgroup; NewExec
// creates it. When not running as root, or when the parent cgroup cannot be
// set up, runs are not isolated: NewExec logs why once and still succeeds.
func NewExec(log *slog.Logger, cgroupParent string) (*Exec, error) {
	return newExec(log, cgroupParent, os.Geteuid() == 0)
}

// newExec is [NewExec] with the choice to isolate runs made by the caller;
// tests use it to run the unisolated driver as root.
func newExec(log *slog.Logger, cgroupParent string, isolate bool) (*Exec, error) {
	parent := "/" + cgroupParent
	if cgroupParent == "" || path.Clean(parent) != parent || strings.Contains(parent, "/..") {
		return nil, fmt.Errorf("sandbox: invalid cgroup parent %q", cgroupParent)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	e := &Exec{log: log, devNull: devNull}
	if !isolate {
		reason := "not running as root"
		if os.Geteuid() == 0 {
			reason = "disabled by the caller"
		}
		log.Warn("sandbox: exec driver runs tasks without namespaces or cgroups", "driver", "exec", "reason", reason)
		return e, nil
	}
	if e.cg, err = newCgroupTree(parent); err != nil {
		log.Warn("sandbox: exec driver runs tasks without namespaces or cgroups", "driver", "exec", "reason", err.Error())
		return e, nil
	}
	log.Info("sandbox: exec driver isolates tasks with namespaces and cgroups", "driver", "exec", "cgroup_parent", parent)
	e.sweepStale(log)
	return e, nil
}

// sweepStale removes run cgroups an earlier driver on the same parent left
// behind (its agent was killed): a new driver has started nothing yet, so
// every child cgroup is stale.
func (e *Exec) sweepStale(log *slog.Logger) {
	var stale []string
	for _, d := range e.cg.dirs("probe") {
		entries, _ := os.ReadDir(filepath.Dir(d))
		for _, ent := range entries {
			if ent.IsDir() && validID(ent.Name()) && !slices.Contains(stale, ent.Name()) {
				stale = append(stale, ent.Name())
			}
		}
	}
	if len(stale) == 0 {
		return
	}
	if err := e.Cleanup(stale); err != nil {
		log.Warn("sandbox: removing cgroups left by an earlier agent", "err", err)
	} else {
		log.Info("sandbox: removed cgroups left by an earlier agent", "cgroups", len(stale))
	}
}

// Name returns "exec".
func (e *Exec) Name() string { return "exec" }

// Isolated reports whether runs get namespaces and a cgroup.
func (e *Exec) Isolated() bool { return e.cg != nil }

// Start starts a run. The command is looked up in the PATH of spec.Env
// when it contains no slash. Stdout and Stderr are opened for appending
// and created (0644) if missing; stdin is /dev/null.
//
// On a cgroup v1 host the process joins its cgroup right after it starts,
// so processes it forks in the first instant may escape the cgroup's
// limits; they do not escape its PID namespace, so they still end with the
// run.
//
// With spec.NetNS, the process starts in that network namespace; see
// [netnsStarter] for why such starts go through one dedicated thread.
func (e *Exec) Start(ctx context.Context, spec *Spec) (Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	name := spec.Command[0]
	argv0, err := lookPath(name, spec.Env, spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: start %q: %w", name, err)
	}
	stdout, stderr, err := e.openOutputs(spec)
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	if stderr != stdout {
		defer stderr.Close()
	}

	// In a new PID namespace the child sees a parent PID of 0, so the Go
	// runtime's check for a parent that died before Pdeathsig was set makes
	// the child SIGKILL itself; the kernel ignores that, since a namespace's
	// PID 1 cannot be killed from inside it.
	sys := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var cg *runCgroup
	if e.cg != nil {
		if cg, err = e.cg.create(spec.ID, spec.CPU, spec.MemoryMB); err != nil {
			return nil, fmt.Errorf("sandbox: run %s: create cgroup: %w", spec.ID, err)
		}
		sys.Cloneflags = isolationFlags
		if cg.fd >= 0 {
			sys.UseCgroupFD, sys.CgroupFD = true, cg.fd
		}
	}
	env := spec.Env
	if env == nil {
		env = []string{} // nil would make the process inherit the agent's environment
	}
	attr := &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: []*os.File{e.devNull, stdout, stderr},
		Sys:   sys,
	}
	var proc *os.Process
	if spec.NetNS == "" {
		proc, err = os.StartProcess(argv0, spec.Command, attr)
	} else {
		proc, err = e.startInNetNS(spec.NetNS, func() (*os.Process, error) {
			return os.StartProcess(argv0, spec.Command, attr)
		})
	}
	started := time.Now()
	if cg != nil {
		cg.closeFD()
	}
	if err != nil {
		err = explainStartError(name, spec.Dir, err)
		if cg != nil {
			if rerr := e.cg.release(cg); rerr != nil {
				e.log.Warn("sandbox: cannot remove cgroup of failed run", "run", spec.ID, "err", rerr)
			}
		}
		return nil, err
	}
	if cg != nil && cg.attach != nil {
		if err := cg.attach(proc.Pid); err != nil {
			// The run must not go on outside its limits. Killing PID 1
			// of the namespace ends every process in it.
			_ = proc.Kill()
			_, _ = proc.Wait()
			if rerr := e.cg.release(cg); rerr != nil {
				e.log.Warn("sandbox: cannot remove cgroup of failed run", "run", spec.ID, "err", rerr)
			}
			return nil, fmt.Errorf("sandbox: run %s: join cgroup: %w", spec.ID, err)
		}
	}
	var cgDir string
	if cg != nil {
		cgDir = cg.dirs[0]
	}
	h := &execHandle{
		cgDir:   cgDir,
		log:     e.log,
		id:      spec.ID,
		proc:    proc,
		pid:     proc.Pid,
		cg:      cg,
		tree:    e.cg,
		started: started,
		done:    make(chan struct{}),
	}
	go h.wait()
	return h, nil
}

// Cleanup kills every process left in the cgroups of the given runs and
// removes the cgroups. Without isolation there is nothing to clean up:
// processes of a dead agent were killed by their parent-death signal.
func (e *Exec) Cleanup(ids []string) error {
	if e.cg == nil {
		return nil
	}
	var errs []error
	for _, id := range ids {
		if !validID(id) {
			errs = append(errs, fmt.Errorf("sandbox: invalid run id %q", id))
			continue
		}
		errs = append(errs, removeCgroupDirs(e.cg.dirs(id)))
	}
	return errors.Join(errs...)
}

// Close releases the driver, removes the idle cgroups it kept for reuse,
// and removes the parent cgroup if it is then empty. Runs still going on
// are not affected, but their cgroups keep the parent in place.
func (e *Exec) Close() error {
	e.closeNetNS()
	err := e.devNull.Close()
	if e.cg != nil {
		err = errors.Join(err, e.cg.close())
	}
	return err
}

// openOutputs opens the files the run's stdout and stderr append to. The
// same *os.File is returned twice when both name the same path, and an
// empty path means /dev/null.
func (e *Exec) openOutputs(spec *Spec) (stdout, stderr *os.File, err error) {
	open := func(name string) (*os.File, error) {
		if name == "" {
			name = os.DevNull
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("sandbox: run %s: open output: %w", spec.ID, err)
		}
		return f, nil
	}
	if stdout, err = open(spec.Stdout); err != nil {
		return nil, nil, err
	}
	if spec.Stderr == spec.Stdout {
		return stdout, stdout, nil
	}
	if stderr, err = open(spec.Stderr); err != nil {
		stdout.Close()
		return nil, nil, err
	}
	return stdout, stderr, nil
}

// validateSpec checks what Start needs of spec.
func validateSpec(spec *Spec) error {
	if len(spec.Command) == 0 || spec.Command[0] == "" {
		return fmt.Errorf("sandbox: run %s: empty command", spec.ID)
	}
	if !validID(spec.ID) {
		return fmt.Errorf("sandbox: invalid run id %q", spec.ID)
	}
	return nil
}

// validID reports whether id is a usable run ID: letters, digits, '-', '_'
// and '.', and not "." or "..", so that it is a safe cgroup name.
func validID(id string) bool {
	if id == "" || id == "." || id == ".." {
		return false
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return false
		}
	}
	return true
}

// defaultPath is searched when the task's environment has no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPath finds the executable for command name the way the task's own
// shell would: names with a slash are used as they are (relative to dir),
// others are searched in the PATH of env, relative entries resolved
// against dir.
func lookPath(name string, env []string, dir string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathList := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathList = v
			break
		}
	}
	for _, d := range filepath.SplitList(pathList) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (PATH=%s)", exec.ErrNotFound, pathList)
}

// explainStartError wraps an error of os.StartProcess with the command's
// name. The kernel reports a missing working directory as ENOENT, like a
// missing binary; it is told apart here, off the fast path.
func explainStartError(name, dir string, err error) error {
	if errors.Is(err, fs.ErrNotExist) && dir != "" {
		if _, serr := os.Stat(dir); serr != nil {
			return fmt.Errorf("sandbox: start %q: working directory: %w", name, serr)
		}
	}
	return fmt.Errorf("sandbox: start %q: %w", name, err)
}
