package mpi

import (
	"errors"
	"os"
	"sync"
	"syscall"
)

// reaper starts the wrapper's children and reaps every process that ends
// under the wrapper. The wrapper is PID 1 of an isolated run's namespace
// (and a child subreaper otherwise), so processes orphaned inside the run
// (daemons orted leaves, ranks whose orted died) become its children and
// must be reaped, or they stay zombies. Waiting for any child with
// wait4(-1) would race with waiting for one's own children, so one loop
// reaps everything and hands the status of the children the wrapper
// started to whoever waits for them.
type reaper struct {
	mu      sync.Mutex // held while starting a child, so its pid is registered before it can be reaped
	waiting map[int]chan syscall.WaitStatus
	wake    chan struct{}
}

// processReaper is the process's one reaper: wait4(-1) takes any child of
// the process, so two reapers would steal each other's.
var processReaper = sync.OnceValue(newReaper)

func newReaper() *reaper {
	r := &reaper{waiting: map[int]chan syscall.WaitStatus{}, wake: make(chan struct{}, 1)}
	go r.loop()
	return r
}

// start starts a process and returns its pid and a channel that receives
// its wait status once it has ended.
func (r *reaper) start(argv0 string, argv []string, attr *os.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	p, err := os.StartProcess(argv0, argv, attr)
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	pid := p.Pid
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	r.mu.Unlock()
	p.Release() // the loop waits for it; Release also sets p.Pid to -1
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return pid, ch, nil
}

func (r *reaper) loop() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
		case errors.Is(err, syscall.ECHILD):
			<-r.wake // no child: wait until one is started
		case err != nil:
			<-r.wake
		default:
			r.mu.Lock()
			ch := r.waiting[pid]
			delete(r.waiting, pid)
			r.mu.Unlock()
			if ch != nil {
				ch <- ws
			}
		}
	}
}

// shellStatus is a wait status as a shell reports it: the exit code, or
// 128+N for a process killed by signal N.
func shellStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
