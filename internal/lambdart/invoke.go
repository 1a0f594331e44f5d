package lambdart

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Init backoff: after a failed start of a version, further cold starts of
// it fail at once with the same error for a while, so that a bootstrap
// that crashes at start is not restarted in a tight loop.
const (
	minInitBackoff = time.Second
	maxInitBackoff = time.Minute
)

// initBackoff is the state of a version whose last start failed.
type initBackoff struct {
	until time.Time
	delay time.Duration
	err   *fnError
}

// Invoke runs one invocation in an idle sandbox of its version. When none
// is idle it declines at once (Declined set), unless inv.Start asks it to
// start one (a cold start). A function's failure (an error it returned,
// a crash, a timeout, running out of memory, a failed init) is a result
// with FunctionError set; the error is for invocations that could not be
// tried: an invalid request ([ErrInvalid]), a closed pool ([ErrClosed]),
// a bundle that cannot be fetched or used ([ErrBadBundle]), a sandbox the
// node could not set up.
//
// ctx bounds only the preparation of a cold start (fetching the bundle);
// once a sandbox has the invocation, the version's timeout bounds it.
func (p *Pool) Invoke(ctx context.Context, inv *api.SandboxInvocation) (*api.SandboxResult, error) {
	if inv == nil || inv.Version == nil || inv.Function == "" || inv.Cluster == "" {
		return nil, fmt.Errorf("%w: an invocation needs a function, a cluster and a version", ErrInvalid)
	}
	if len(inv.Payload) > api.MaxInvokePayload {
		return nil, fmt.Errorf("%w: the payload has %d bytes; at most %d are allowed", ErrInvalid, len(inv.Payload), api.MaxInvokePayload)
	}
	k := keyOf(inv.Cluster, inv.Function, inv.Version)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	hooks := p.hooks
	cn := p.countersLocked(k)
	decline := func(atShare bool) (*api.SandboxResult, error) {
		res := &api.SandboxResult{Declined: true, AtShare: atShare, Load: p.loadLocked(), Node: p.cfg.Node}
		p.mu.Unlock()
		if hooks.Invoked != nil {
			hooks.Invoked(inv.Function, outcomeDeclined)
		}
		return res, nil
	}
	if inv.Share > 0 && cn.running >= inv.Share {
		return decline(true)
	}
	s := p.pickIdleLocked(k)
	var backoff *fnError
	if s != nil {
		p.takeLocked(s)
		cn.warm++
	} else if !inv.Start {
		return decline(false)
	} else if b := p.backoff[k]; b != nil && b.err != nil && p.now().Before(b.until) {
		backoff = b.err
	}
	cn.running++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		cn.running--
		p.mu.Unlock()
	}()

	if s != nil {
		if hooks.WarmHit != nil {
			hooks.WarmHit(inv.Function)
		}
		return p.run(s, inv, false, 0), nil
	}
	if backoff != nil {
		return p.failedStart(inv, backoff), nil
	}
	began := p.now()
	s, err := p.startSandbox(ctx, k, inv.Version, nil)
	if fe, ok := err.(*fnError); ok {
		p.initFailed(k, fe)
		return p.failedStart(inv, fe), nil
	}
	if err != nil {
		return nil, err
	}
	if fe := s.awaitInit(); fe != nil {
		p.initFailed(k, fe)
		end := p.now()
		text := s.initDone(fe, began, end)
		p.logs.add(fnKey{k.cluster, k.function}, &api.FunctionLogRecord{RequestID: inv.RequestID, Function: k.function,
			Version: k.version, Node: p.cfg.Node, Sandbox: s.id, Start: began, End: end, Outcome: fe.outcome, Log: string(text)})
		res := p.failedStart(inv, fe)
		res.Sandbox = s.id
		if inv.Tail {
			res.LogTail = text[max(0, len(text)-api.LogTailBytes):]
		}
		return res, nil
	}
	p.mu.Lock()
	delete(p.backoff, k)
	if s.gone { // it exited right after asking for an invocation
		p.mu.Unlock()
		s.initDone(nil, began, began)
		return p.failedStart(inv, crashError(inv.RequestID, s)), nil
	}
	p.countersLocked(k).cold++
	p.takeLocked(s)
	p.mu.Unlock()
	s.initDone(nil, began, began)
	if hooks.ColdStart != nil {
		hooks.ColdStart(inv.Function)
	}
	return p.run(s, inv, true, p.now().Sub(began)), nil
}

// runtimeWaiting notes whether the sandbox's runtime is blocked in /next;
// an answered sandbox becomes idle then.
func (p *Pool) runtimeWaiting(s *sbox, waiting bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.waiting = waiting
	p.maybeIdleLocked(s)
}

// maybeIdleLocked makes a busy sandbox idle once it has answered and its
// runtime waits for the next invocation: a runtime that exits after its
// answer (aws-lambda-go does after a panic) is never handed another.
func (p *Pool) maybeIdleLocked(s *sbox) {
	if s.state == api.SandboxBusy && s.answered && s.waiting && !s.gone {
		s.state, s.answered = api.SandboxIdle, false
		s.lastUsed = p.now()
	}
}

// pickIdleLocked returns the idle sandbox of k used last, or nil; the
// others age towards their reclaim.
func (p *Pool) pickIdleLocked(k versionKey) *sbox {
	var best *sbox
	for _, s := range p.sandboxes {
		if s.key == k && s.state == api.SandboxIdle && !s.stopping && !s.gone && (best == nil || s.lastUsed.After(best.lastUsed)) {
			best = s
		}
	}
	return best
}

// takeLocked makes s busy for one invocation.
func (p *Pool) takeLocked(s *sbox) {
	s.state, s.answered = api.SandboxBusy, false
	s.inuse.Add(1)
	p.countersLocked(s.key).busyChange(1, p.now())
}

// loadLocked is the number of busy sandboxes.
func (p *Pool) loadLocked() int {
	n := 0
	for _, s := range p.sandboxes {
		if s.state == api.SandboxBusy {
			n++
		}
	}
	return n
}

// initFailed puts k in init backoff after a failed start. fe is nil
// when the node, not the function, failed (a bundle it could not fetch):
// provisioned starts are then held back, invocations are not.
func (p *Pool) initFailed(k versionKey, fe *fnError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.backoff[k]
	if b == nil {
		b = &initBackoff{}
		p.backoff[k] = b
	}
	b.delay = min(max(2*b.delay, minInitBackoff), maxInitBackoff)
	b.until = p.now().Add(b.delay)
	b.err = fe
	if fe != nil {
		p.log.Warn("lambdart: a sandbox failed to start; holding back starts of the version", "cluster", k.cluster,
			"function", k.function, "version", k.version, "error_type", fe.Type, "backoff", b.delay)
	}
}

// failedStart is the result of an invocation whose sandbox did not start.
func (p *Pool) failedStart(inv *api.SandboxInvocation, fe *fnError) *api.SandboxResult {
	p.mu.Lock()
	c := p.countersLocked(keyOf(inv.Cluster, inv.Function, inv.Version))
	c.invocations++
	load, hooks := p.loadLocked(), p.hooks
	p.mu.Unlock()
	if hooks.Invoked != nil {
		hooks.Invoked(inv.Function, fe.outcome)
	}
	return &api.SandboxResult{Load: load, Node: p.cfg.Node, Cold: true, Payload: fe.doc(),
		FunctionError: functionErrorField, ErrorType: fe.Type}
}

// run hands inv to s, which the caller made busy, and waits for its
// answer, the end of the process, or the version's timeout.
func (p *Pool) run(s *sbox, inv *api.SandboxInvocation, cold bool, initDur time.Duration) *api.SandboxResult {
	defer s.inuse.Done()
	timeout := s.conf.Timeout.D()
	reqID := inv.RequestID
	if reqID == "" {
		reqID = newRequestID(p.cfg.Rand)
	}
	start := p.now()
	c := &call{reqID: reqID, payload: inv.Payload, deadline: start.Add(timeout), done: make(chan struct{}),
		arn:     "arn:aws:lambda:shoal:" + s.key.cluster + ":function:" + s.key.function,
		traceID: traceID(start, reqID), clientContext: inv.ClientContext}
	seg := beginLog(s.logPath, reqID, s.key.version)
	s.queue <- c // empty: only the sandbox's owner sends
	timer := time.NewTimer(timeout)
	var fe *fnError
	var resp []byte
	killed := false
	timedOut := func() *fnError {
		return &fnError{Type: "Sandbox.Timedout", outcome: outcomeTimeout,
			Message: fmt.Sprintf("%s %s Task timed out after %.2f seconds", p.now().UTC().Format("2006-01-02T15:04:05.000Z"), reqID, timeout.Seconds())}
	}
	select {
	case <-c.done:
		resp, fe = c.response, c.ferr
		// Compared on the wall clock (Round(0) drops the monotonic
		// reading): the runtime was handed the deadline as a wall-clock
		// time, and on a machine whose wall clock runs apart from the
		// monotonic one it may expire "early" by the latter.
		if !p.now().Round(0).Before(c.deadline.Round(0)) {
			// Answered at the deadline (a runtime whose context
			// expired, as aws-lambda-go's does, answers then): a
			// timeout all the same, as on Lambda.
			resp, fe, killed = nil, timedOut(), true
		}
	case <-s.exited:
		select {
		case <-c.done: // answered, then exited
			resp, fe = c.response, c.ferr
		default:
			fe = crashError(reqID, s)
		}
	case <-timer.C:
		s.kill()
		killed = true
		select {
		case <-c.done: // answered just in time
			resp, fe = c.response, c.ferr
		default:
			fe = timedOut()
		}
	}
	timer.Stop()
	select {
	case <-s.queue: // never taken: the sandbox ended first
	default:
	}
	end := p.now()
	dur := end.Sub(start)
	outcome := outcomeOK
	if fe != nil {
		outcome = fe.outcome
		if fe.outcome == outcomeTimeout || fe.outcome == outcomeOOM || fe.outcome == outcomeCrash {
			seg.line(fe.Message)
		}
	}
	text := seg.end(reqID, dur, initDur, s.conf.MemoryMiB)

	p.mu.Lock()
	s.invocations++
	s.lastUsed = end
	s.answered = true
	p.maybeIdleLocked(s)
	reset := killed || fe != nil && (fe.outcome != outcomeError || fe.reset)
	if reset {
		s.stopping = true // killed, dead or refused: never to be picked again
	}
	cn := p.countersLocked(s.key)
	cn.invocations++
	cn.busyChange(-1, end)
	load, hooks := p.loadLocked(), p.hooks
	p.mu.Unlock()

	if reset {
		go s.kill()
	}
	p.logs.add(fnKey{s.key.cluster, s.key.function}, &api.FunctionLogRecord{RequestID: reqID, Function: s.key.function,
		Version: s.key.version, Node: p.cfg.Node, Sandbox: s.id, Start: start, End: end, Outcome: outcome, Log: string(text)})
	if hooks.Invoked != nil {
		hooks.Invoked(s.key.function, outcome)
	}
	res := &api.SandboxResult{Load: load, Node: p.cfg.Node, Sandbox: s.id, Cold: cold, Duration: api.Duration(dur)}
	if fe != nil {
		res.FunctionError, res.ErrorType, res.Payload = functionErrorField, fe.Type, fe.doc()
	} else {
		res.Payload = resp
	}
	if inv.Tail {
		res.LogTail = text[max(0, len(text)-api.LogTailBytes):]
	}
	return res
}

// crashError describes the end of a sandbox's process during an
// invocation: out of memory, or another exit.
func crashError(reqID string, s *sbox) *fnError {
	<-s.exited
	text := exitText(s.exit)
	if s.exit != nil && s.exit.OOMKill {
		return &fnError{Type: "Runtime.OutOfMemory", outcome: outcomeOOM,
			Message: fmt.Sprintf("RequestId: %s Error: Runtime exited with error: %s (out of memory: limit %d MiB)", reqID, text, s.conf.MemoryMiB)}
	}
	return &fnError{Type: "Runtime.ExitError", outcome: outcomeCrash,
		Message: fmt.Sprintf("RequestId: %s Error: Runtime exited with error: %s", reqID, text)}
}

// signalName is Go's name of signal n ("killed", "terminated").
func signalName(n int) string { return syscall.Signal(n).String() }

// traceID is an X-Ray style trace header for the invocation.
func traceID(t time.Time, reqID string) string {
	clean := make([]byte, 0, 24)
	for i := 0; i < len(reqID) && len(clean) < 24; i++ {
		if c := reqID[i]; c >= '0' && c <= '9' || c >= 'a' && c <= 'f' {
			clean = append(clean, c)
		}
	}
	for len(clean) < 24 {
		clean = append(clean, '0')
	}
	return fmt.Sprintf("Root=1-%08x-%s;Parent=%s;Sampled=0", t.Unix(), clean, clean[:16])
}
