package lambdart

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusternet"
	"github.com/shoal-dev/shoal/internal/sandbox"
)

// RuntimeAPIAddr is where a sandbox with a network namespace of its own
// finds the Runtime API, as on Lambda.
const RuntimeAPIAddr = "127.0.0.1:9001"

// sbox is one sandbox: a bootstrap process and its Runtime API.
type sbox struct {
	pool    *Pool
	id      string
	key     versionKey
	conf    api.FunctionConfig // resolved
	dir     string             // holds work/, tmp/ and log
	logPath string
	netns   string
	addr    string // on the cluster network; "" on the host's
	started time.Time
	srv     *http.Server
	h       sandbox.Handle // set once started; see mu

	// Guarded by Pool.mu.
	state       string
	provisioned bool
	// waiting: the runtime is blocked in /next with nothing handed out.
	// answered: the sandbox answered its invocation and becomes idle
	// when it next waits (only then can it take another).
	waiting, answered bool
	stopping          bool // being reclaimed or stopped: not to be picked
	gone              bool // ended and out of Pool.sandboxes
	lastUsed          time.Time
	invocations       uint64

	// queue holds the invocation the next /next hands out; the one who
	// made the sandbox busy is the only sender.
	queue     chan *call
	ready     chan struct{} // closed on the first /next
	readyOnce sync.Once
	// initErr is set once, before initFailed is closed, by a POST to
	// /runtime/init/error.
	initFailed chan struct{}
	initOnce   sync.Once
	initErr    *fnError
	// exit is set before exited is closed, when the process has ended.
	exited chan struct{}
	exit   *sandbox.ExitResult
	// done is closed once the sandbox has ended and its invokers are
	// done with it (their log records written) and its files removed.
	done chan struct{}
	// inuse counts those still reading the sandbox's log (its starter
	// until init is over, then each invoker); its directory is removed
	// after they are done.
	inuse sync.WaitGroup

	mu  sync.Mutex // guards cur, and h until it is set
	cur *call      // the invocation handed out and not yet answered
}

// startSandbox starts a sandbox of version v and registers it in the
// pool, in state starting. prov is the provisioned entry it is started
// for, nil for an on-demand start. The error is a start error of the
// function (its bootstrap cannot run) when it is a *fnError, else a
// problem of the node.
func (p *Pool) startSandbox(ctx context.Context, k versionKey, v *api.FunctionVersion, prov *provEntry) (_ *sbox, err error) {
	if prov != nil {
		defer func() {
			if err != nil && prov != nil {
				p.mu.Lock()
				prov.pending--
				p.mu.Unlock()
			}
		}()
	}
	root, err := p.bundles.get(ctx, k.cluster, v)
	if err != nil {
		return nil, err
	}
	id, err := p.newID(k)
	if err != nil {
		return nil, err
	}
	s := &sbox{pool: p, id: id, key: k, conf: v.Config.Resolved(), started: p.now(),
		dir:   filepath.Join(p.cfg.Dir, "sandboxes", id),
		queue: make(chan *call, 1), ready: make(chan struct{}), initFailed: make(chan struct{}), exited: make(chan struct{}), done: make(chan struct{}),
		state: api.SandboxStarting}
	s.logPath = filepath.Join(s.dir, "log")
	work, tmp := filepath.Join(s.dir, "work"), filepath.Join(s.dir, "tmp")
	for _, d := range []string{work, tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("lambdart: sandbox %s: %w", id, err)
		}
	}
	cleanup := func() { os.RemoveAll(s.dir) }
	if p.cfg.Network != nil {
		if s.netns, s.addr, err = p.cfg.Network.Attach(k.cluster, id); err != nil {
			cleanup()
			return nil, fmt.Errorf("lambdart: sandbox %s: network: %w", id, err)
		}
		prev := cleanup
		cleanup = func() { p.cfg.Network.Detach(id); prev() }
	}
	ln, err := listenRuntimeAPI(s.netns)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("lambdart: sandbox %s: runtime API: %w", id, err)
	}
	s.srv = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	prev := cleanup
	cleanup = func() { s.srv.Close(); prev() }

	spec := &sandbox.Spec{ID: id, Dir: work, Command: []string{filepath.Join(root, api.BundleBootstrap)},
		Env: p.sandboxEnv(s, root, work, tmp, ln.Addr().String(), prov != nil), Stdout: s.logPath, Stderr: s.logPath,
		MemoryMB: int64(s.conf.MemoryMiB), NetNS: s.netns}

	var room int64 // called without p.mu: Room may take its caller's locks
	if p.cfg.Room != nil {
		room = p.cfg.Room()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cleanup()
		return nil, ErrClosed
	}
	if p.retained != "" && k.cluster != p.retained {
		// The node left the cluster while this sandbox was being made.
		p.mu.Unlock()
		cleanup()
		return nil, fmt.Errorf("%w: the node is no longer in cluster %s", ErrInvalid, k.cluster)
	}
	if p.cfg.Room != nil {
		used := int64(s.conf.MemoryMiB)
		for _, o := range p.sandboxes {
			if !o.gone {
				used += int64(o.conf.MemoryMiB)
			}
		}
		if used > room {
			p.mu.Unlock()
			cleanup()
			return nil, fmt.Errorf("%w: %d MiB for function sandboxes, %d MiB free for them", ErrNoRoom, used, room)
		}
	}
	s.lastUsed = s.started
	if prov != nil {
		prov.pending--
		prov = nil // from here on, pending is settled
		s.provisioned = p.provisioned[k] != nil
	}
	p.sandboxes[id] = s
	p.starts.Add(1)
	provisioned := s.provisioned
	p.mu.Unlock()

	s.inuse.Add(1) // the starter's hold, until its init is over: see initDone
	h, err := p.cfg.Driver.Start(context.WithoutCancel(ctx), spec)
	if err != nil {
		s.inuse.Done()
		p.mu.Lock()
		delete(p.sandboxes, id)
		s.gone = true
		p.mu.Unlock()
		close(s.exited) // never started: nothing to wait for
		p.starts.Done()
		cleanup()
		close(s.done)
		p.poke()
		// The bootstrap could not be started: Lambda's
		// Runtime.InvalidEntrypoint.
		return nil, &fnError{Type: "Runtime.InvalidEntrypoint", Message: err.Error(), outcome: outcomeCrash}
	}
	s.mu.Lock()
	s.h = h
	s.mu.Unlock()
	p.log.Info("lambdart: sandbox started", "sandbox", id, "cluster", k.cluster, "function", k.function,
		"version", k.version, "provisioned", provisioned, "netns", s.netns != "")
	go func() { defer p.starts.Done(); p.watch(s, cleanup) }()
	// Close, or RetainCluster, may have listed the sandbox before its
	// handle was set, and could not kill it.
	p.mu.Lock()
	closed, left := p.closed, p.retained != "" && k.cluster != p.retained
	p.mu.Unlock()
	if closed || left {
		s.inuse.Done()
		s.kill()
		if closed {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: the node is no longer in cluster %s", ErrInvalid, k.cluster)
	}
	return s, nil
}

// watch waits for a sandbox's process to end, then takes it out of the
// pool and frees its listener, network and directory.
func (p *Pool) watch(s *sbox, cleanup func()) {
	s.mu.Lock()
	h := s.h
	s.mu.Unlock()
	s.exit = h.Wait()
	close(s.exited)
	p.mu.Lock()
	delete(p.sandboxes, s.id)
	s.gone = true
	p.mu.Unlock()
	p.log.Info("lambdart: sandbox ended", "sandbox", s.id, "function", s.key.function, "exit", exitText(s.exit))
	s.inuse.Wait()
	cleanup()
	close(s.done)
	p.poke() // a provisioned sandbox may need a replacement
}

// kill stops the sandbox's process at once and waits until it has ended.
func (s *sbox) kill() {
	s.mu.Lock()
	h := s.h
	s.mu.Unlock()
	if h != nil {
		h.Stop(0)
		<-s.exited
	}
}

// awaitInit waits until the sandbox asks for its first invocation. It
// fails, having killed the sandbox, when the bootstrap reports an init
// error, exits, or takes longer than the function's timeout.
func (s *sbox) awaitInit() *fnError {
	t := time.NewTimer(s.conf.Timeout.D())
	defer t.Stop()
	select {
	case <-s.ready:
		return nil
	case <-s.initFailed:
		s.kill()
		return s.initErr
	case <-s.exited:
		select {
		case <-s.initFailed:
			return s.initErr
		default:
		}
		return &fnError{Type: "Runtime.ExitError", outcome: outcomeCrash,
			Message: "Error: Runtime exited with error: " + exitText(s.exit) + " (before asking for an invocation)"}
	case <-t.C:
		s.kill()
		return &fnError{Type: "Runtime.InitTimeout", outcome: outcomeTimeout,
			Message: fmt.Sprintf("Error: the runtime never asked for an invocation within %s after it started", s.conf.Timeout.D())}
	}
}

// initDone releases the starter's hold on the sandbox. After a failed
// init it first adds the error to the sandbox's log and returns that
// log, for the invocation's record.
func (s *sbox) initDone(fe *fnError, began, now time.Time) []byte {
	defer s.inuse.Done()
	if fe == nil {
		return nil
	}
	f, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	fmt.Fprintf(f, "%s\nINIT_REPORT Init Duration: %.2f ms\tPhase: init\tStatus: error\tError Type: %s\n",
		fe.Message, float64(now.Sub(began).Microseconds())/1000, fe.Type)
	f.Close()
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return nil
	}
	return b[max(0, len(b)-maxRecordLog):]
}

// sandboxEnv is a sandbox's environment: the function's variables, and
// Lambda's, which they may not override.
func (p *Pool) sandboxEnv(s *sbox, root, work, tmp, apiAddr string, provisioned bool) []string {
	env := map[string]string{}
	for k, v := range s.conf.Env {
		env[k] = v
	}
	initType := "on-demand"
	if provisioned {
		initType = "provisioned-concurrency"
	}
	for k, v := range map[string]string{
		"AWS_LAMBDA_RUNTIME_API":          apiAddr,
		"AWS_LAMBDA_FUNCTION_NAME":        s.key.function,
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": strconv.Itoa(s.conf.MemoryMiB),
		"AWS_LAMBDA_FUNCTION_VERSION":     strconv.Itoa(s.key.version),
		"AWS_LAMBDA_INITIALIZATION_TYPE":  initType,
		"AWS_LAMBDA_LOG_GROUP_NAME":       "/aws/lambda/" + s.key.function,
		"AWS_LAMBDA_LOG_STREAM_NAME":      s.started.UTC().Format("2006/01/02") + "/[" + strconv.Itoa(s.key.version) + "]" + s.id,
		"_HANDLER":                        s.conf.Handler,
		"LAMBDA_TASK_ROOT":                root,
		"AWS_REGION":                      "shoal",
		"AWS_DEFAULT_REGION":              "shoal",
		"PATH":                            p.cfg.Path,
		"HOME":                            work,
		"TMPDIR":                          tmp,
		"TZ":                              ":UTC",
		"LANG":                            "en_US.UTF-8",
	} {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// listenRuntimeAPI makes a sandbox's Runtime API listener. With a network
// namespace, the socket is made inside it, on 127.0.0.1:9001 as on
// Lambda, so that only the sandbox reaches it; the namespace's loopback
// is brought up first if it is down. Without one, it listens on a free
// port of the host's loopback.
func listenRuntimeAPI(netnsPath string) (net.Listener, error) {
	if netnsPath == "" {
		return net.Listen("tcp4", "127.0.0.1:0")
	}
	var ln net.Listener
	err := clusternet.InNamespace(netnsPath, func() error {
		if err := loopbackUp(); err != nil {
			return err
		}
		var err error
		ln, err = net.Listen("tcp4", RuntimeAPIAddr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln, nil
}

// loopbackUp brings up "lo" of the calling thread's network namespace.
func loopbackUp() error {
	h, err := netlink.NewHandle() // its socket is in the thread's namespace
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing the loopback up: %w", err)
	}
	return nil
}

// exitText says how a process ended, as Go's exec.ExitError does ("exit
// status 2", "signal: killed").
func exitText(r *sandbox.ExitResult) string {
	switch {
	case r == nil:
		return "unknown"
	case r.Err != nil && !errors.Is(r.Err, context.Canceled):
		return r.Err.Error()
	case r.Signal != 0:
		return "signal: " + signalName(r.Signal)
	default:
		return "exit status " + strconv.Itoa(r.ExitCode)
	}
}
