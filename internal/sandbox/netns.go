package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// errClosed is returned when a run is started in a network namespace after
// the driver was closed.
var errClosed = errors.New("sandbox: driver closed")

// netnsStarter starts processes inside network namespaces from one
// dedicated OS thread.
//
// A process inherits the network namespace of the thread that forks it,
// so the start happens on a thread switched (setns) into the task's
// namespace and switched back right after. That thread cannot be just any
// thread locked for the occasion: the exec driver gives every run a
// parent-death signal, which the kernel sends when the thread that forked
// the run exits, and a locked goroutine that ends takes its thread down
// with it. So all such starts go through one goroutine that stays locked
// to its thread for the life of the driver, fed by a channel:
//
//   - normally the thread is back in the host namespace after each start;
//     on Close the goroutine unlocks and returns, and the thread, back in
//     the runtime's pool, lives on (the Go runtime does not end idle
//     threads), so runs keep their parent;
//   - if switching back fails, the thread is in the wrong namespace and
//     must never run other goroutines, nor may it exit while its runs
//     live: its goroutine stays locked and parks forever, and the driver
//     starts a fresh starter for later runs.
//
// Starts in a namespace are serialised; starts without one do not come
// here and cost nothing more.
type netnsStarter struct {
	reqs chan *netnsStart
}

// netnsStart is one request to the starter.
type netnsStart struct {
	path  string                      // the namespace file
	start func() (*os.Process, error) // forks the run; called on the switched thread
	reply chan netnsResult
}

type netnsResult struct {
	proc   *os.Process
	err    error
	broken bool // the thread could not switch back; the starter is gone
}

// newNetnsStarter starts the goroutine of a starter. It fails when the
// thread's own namespace cannot be opened.
func newNetnsStarter() (*netnsStarter, error) {
	s := &netnsStarter{reqs: make(chan *netnsStart)}
	ready := make(chan error, 1)
	go s.loop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return s, nil
}

// loop serves requests on its locked thread until reqs is closed.
func (s *netnsStarter) loop(ready chan<- error) {
	runtime.LockOSThread()
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		ready <- fmt.Errorf("open own network namespace: %w", err)
		return
	}
	ready <- nil
	for req := range s.reqs {
		proc, err := s.startIn(req)
		if serr := unix.Setns(home, unix.CLONE_NEWNET); serr != nil {
			// Stay locked and never return: see the type's comment.
			req.reply <- netnsResult{proc: proc, err: err, broken: true}
			select {}
		}
		req.reply <- netnsResult{proc: proc, err: err}
	}
	unix.Close(home)
	runtime.UnlockOSThread()
}

// startIn switches the thread into req's namespace and starts the run.
func (s *netnsStarter) startIn(req *netnsStart) (*os.Process, error) {
	fd, err := unix.Open(req.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", req.path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter network namespace %s: %w", req.path, err)
	}
	return req.start()
}

// startInNetNS runs start (an os.StartProcess) on the driver's starter
// thread switched into the network namespace at path. Its errors are
// wrapped by the caller, like those of os.StartProcess.
func (e *Exec) startInNetNS(path string, start func() (*os.Process, error)) (*os.Process, error) {
	e.nsMu.Lock()
	defer e.nsMu.Unlock()
	if e.nsClosed {
		return nil, errClosed
	}
	if e.ns == nil {
		s, err := newNetnsStarter()
		if err != nil {
			return nil, err
		}
		e.ns = s
	}
	req := &netnsStart{path: path, start: start, reply: make(chan netnsResult, 1)}
	e.ns.reqs <- req
	res := <-req.reply
	if res.broken {
		e.log.Error("sandbox: a thread could not leave a task's network namespace; it is parked and a new one takes over", "netns", path)
		e.ns = nil
	}
	return res.proc, res.err
}

// closeNetNS stops the starter, if any. Runs it started keep running.
func (e *Exec) closeNetNS() {
	e.nsMu.Lock()
	defer e.nsMu.Unlock()
	if e.ns != nil {
		close(e.ns.reqs)
		e.ns = nil
	}
	e.nsClosed = true
}
