package mpi

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// killGrace is how long a launched command gets between SIGTERM and
// SIGKILL when its requester disconnects or the wrapper stops.
const killGrace = 2 * time.Second

// drainWait bounds how long the wrapper waits, after a launched command
// ended, for the rest of its output: a process it left behind may hold
// its pipes open.
const drainWait = time.Second

// Host is the wrapper every task of an mpi job runs as (`shoal mpi host`).
type Host struct {
	// Secret is the run's secret (SHOAL_RUN_SECRET): it names the socket
	// and must come with every request.
	Secret string
	// Hostname, when set, becomes the host name of the run's own UTS
	// namespace, so that mpirun finds itself in the hostfile. Set it only
	// in a run that has its own UTS namespace.
	Hostname string
	// Command, when set, is run (the user's mpirun on the launcher node);
	// Run then returns its status. Without it Run serves until ctx ends.
	Command []string
	// Stdout and Stderr receive the output of Command and a copy of every
	// launched command's output: the task's logs.
	Stdout, Stderr *os.File
	// Signals, when set, is where the wrapper hears SIGTERM and SIGINT
	// (which it forwards to Command); nil means the process's own.
	Signals chan os.Signal

	reaper *reaper
	outMu  sync.Mutex // serializes copies to Stdout and Stderr

	mu       sync.Mutex
	launched map[int]bool // process groups of running launched commands
}

// Run sets the host name, listens on the run's socket and serves launch
// requests; with Command it runs it and returns its status (as a shell
// reports it), otherwise it serves until ctx ends or a SIGTERM or SIGINT
// arrives and returns 143 (SIGTERM's status). Launched commands still
// running when Run returns are killed.
func (h *Host) Run(ctx context.Context) (int, error) {
	if h.Secret == "" {
		return -1, errors.New("mpi: no run secret (SHOAL_RUN_SECRET is empty): the wrapper runs only as a task of an mpi job")
	}
	if h.Hostname != "" {
		if err := syscall.Sethostname([]byte(h.Hostname)); err != nil {
			return -1, fmt.Errorf("mpi: setting the run's host name to %s: %w", h.Hostname, err)
		}
	}
	// Orphans of the run become the wrapper's children (PID 1 of an
	// isolated run is already their reaper).
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	h.reaper = processReaper()
	h.launched = map[int]bool{}
	ln, err := net.Listen("unix", SocketName(h.Secret))
	if err != nil {
		return -1, fmt.Errorf("mpi: listening on the run's launch socket: %w", err)
	}
	go h.serve(ln)
	// No new launch once the wrapper is ending, then end those running.
	defer func() {
		ln.Close()
		h.killLaunched()
	}()

	sigs := h.Signals
	if sigs == nil {
		sigs = make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(sigs)
	}
	if len(h.Command) == 0 {
		select {
		case <-ctx.Done():
		case <-sigs:
		}
		return 128 + int(syscall.SIGTERM), nil
	}
	return h.runCommand(ctx, sigs)
}

// runCommand runs Command in the wrapper's process group (so that a
// signal to the run's group reaches it) and forwards SIGTERM and SIGINT.
func (h *Host) runCommand(ctx context.Context, sigs <-chan os.Signal) (int, error) {
	argv0, err := lookPath(h.Command[0])
	if err != nil {
		return 127, fmt.Errorf("mpi: %s: %w", h.Command[0], err)
	}
	pid, done, err := h.reaper.start(argv0, h.Command, &os.ProcAttr{
		Files: []*os.File{os.Stdin, h.Stdout, h.Stderr},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return 127, fmt.Errorf("mpi: starting %s: %w", h.Command[0], err)
	}
	for {
		select {
		case ws := <-done:
			return shellStatus(ws), nil
		case s := <-sigs:
			_ = syscall.Kill(pid, s.(syscall.Signal))
		case <-ctx.Done():
			_ = syscall.Kill(pid, syscall.SIGTERM)
			ctx = context.Background() // once
		}
	}
}

func (h *Host) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go h.handle(conn)
	}
}

// handle serves one launch request: check the secret, run the command,
// stream its output and status; kill it if the requester goes away.
func (h *Host) handle(conn net.Conn) {
	defer conn.Close()
	fw := &frameWriter{w: conn}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	req, err := readRequest(conn)
	if err != nil {
		fw.write(FrameError, []byte("mpi: "+err.Error()))
		return
	}
	conn.SetReadDeadline(time.Time{})
	if subtle.ConstantTimeCompare([]byte(req.Secret), []byte(h.Secret)) != 1 {
		fw.write(FrameError, []byte("mpi: wrong run secret: this wrapper serves only its own run"))
		return
	}
	if len(req.Command) == 0 {
		fw.write(FrameError, []byte("mpi: empty command"))
		return
	}
	status, err := h.launch(conn, fw, strings.Join(req.Command, " "))
	if err != nil {
		fw.write(FrameError, []byte(err.Error()))
		return
	}
	fw.write(FrameExit, ExitFrame(status))
}

// launch runs line with /bin/sh -c in a process group of its own, copies
// its output to fw and to the task's logs, and returns its status. The
// requester sends nothing after its request, so a read on conn that
// returns means it went away: the command is then killed.
func (h *Host) launch(conn net.Conn, fw *frameWriter, line string) (int, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("mpi: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return -1, fmt.Errorf("mpi: %w", err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return -1, fmt.Errorf("mpi: %w", err)
	}
	h.mu.Lock() // a stop in progress must see this group
	pid, done, err := h.reaper.start("/bin/sh", []string{"/bin/sh", "-c", line}, &os.ProcAttr{
		Files: []*os.File{devNull, outW, errW},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	})
	if err == nil {
		h.launched[pid] = true
	}
	h.mu.Unlock()
	devNull.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return -1, fmt.Errorf("mpi: starting /bin/sh: %w", err)
	}
	defer func() {
		h.mu.Lock()
		delete(h.launched, pid)
		h.mu.Unlock()
	}()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); h.copyOut(streamWriter{fw, FrameStdout}, h.Stdout, outR) }()
	go func() { defer copies.Done(); h.copyOut(streamWriter{fw, FrameStderr}, h.Stderr, errR) }()
	gone := make(chan struct{})
	go func() {
		var b [1]byte
		conn.Read(b[:])
		close(gone)
	}()
	var ws syscall.WaitStatus
	select {
	case ws = <-done:
	case <-gone:
		ws = terminateGroup(pid, done)
	}
	// Output still buffered in the pipes is sent; a process left holding
	// them open does not hold up the status for long.
	drained := make(chan struct{})
	go func() { copies.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainWait):
		outR.Close()
		errR.Close()
		<-drained
	}
	outR.Close()
	errR.Close()
	return shellStatus(ws), nil
}

// copyOut copies a launched command's stream to its frames and to the
// task's log file. Frames stop when the requester is gone; the log copy
// goes on.
func (h *Host) copyOut(frames io.Writer, log *os.File, r io.Reader) {
	buf := make([]byte, 32<<10)
	framesOK := true
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if framesOK {
				_, werr := frames.Write(buf[:n])
				framesOK = werr == nil
			}
			if log != nil {
				h.outMu.Lock()
				log.Write(buf[:n])
				h.outMu.Unlock()
			}
		}
		if err != nil {
			return
		}
	}
}

// terminateGroup sends SIGTERM to the process group pid and, if its
// leader has not ended after killGrace, SIGKILL; it returns the leader's
// status. The group gets SIGKILL in the end either way, so nothing it
// started outlives it.
func terminateGroup(pid int, done <-chan syscall.WaitStatus) syscall.WaitStatus {
	killGroup(pid, syscall.SIGTERM)
	var ws syscall.WaitStatus
	select {
	case ws = <-done:
	case <-time.After(killGrace):
		killGroup(pid, syscall.SIGKILL)
		ws = <-done
	}
	killGroup(pid, syscall.SIGKILL)
	return ws
}

// killGroup signals the process group led by pid. It never signals with
// a pid below 2: kill(-1) would reach every process of the host.
func killGroup(pid int, sig syscall.Signal) {
	if pid > 1 {
		_ = syscall.Kill(-pid, sig)
	}
}

// killLaunched ends every launched command still running (their requests
// then finish with their status).
func (h *Host) killLaunched() {
	h.mu.Lock()
	pids := make([]int, 0, len(h.launched))
	for pid := range h.launched {
		pids = append(pids, pid)
	}
	h.mu.Unlock()
	for _, pid := range pids {
		killGroup(pid, syscall.SIGTERM)
	}
	if len(pids) == 0 {
		return
	}
	deadline := time.Now().Add(killGrace)
	for time.Now().Before(deadline) && h.anyLaunched() {
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range pids {
		killGroup(pid, syscall.SIGKILL)
	}
}

func (h *Host) anyLaunched() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.launched) > 0
}

// lookPath finds name in the PATH the way a shell would.
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range strings.Split(os.Getenv("PATH"), ":") {
		if d == "" {
			d = "."
		}
		p := d + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in PATH=%s", os.Getenv("PATH"))
}
