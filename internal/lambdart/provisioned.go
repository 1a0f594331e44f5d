package lambdart

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// SetProvisioned makes set the provisioned sandboxes to keep: Count
// initialised sandboxes per entry, started now and replaced when they
// end. Provisioned sandboxes of entries no longer listed become on-demand
// ones (reclaimed once idle); idle on-demand sandboxes of a listed
// version count towards its entry. Entries of another cluster than the
// one given to [Pool.RetainCluster] are the caller's to filter.
func (p *Pool) SetProvisioned(set *api.ProvisionedSet) error {
	want := map[versionKey]*api.ProvisionedFunction{}
	if set != nil {
		for _, f := range set.Functions {
			if f == nil || f.Version == nil || f.Function == "" || f.Cluster == "" || f.Count < 0 || f.Count > api.MaxProvisioned {
				return fmt.Errorf("%w: a provisioned entry needs a function, a cluster, a version and a count between 0 and %d",
					ErrInvalid, api.MaxProvisioned)
			}
			if !validDigest(f.Version.SHA256) {
				return fmt.Errorf("%w: version %d of %s has no valid sha256", ErrInvalid, f.Version.Version, f.Function)
			}
			if f.Count > 0 {
				want[keyOf(f.Cluster, f.Function, f.Version)] = f
			}
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	for k, e := range p.provisioned {
		if want[k] == nil {
			delete(p.provisioned, k)
			e.count = 0
		}
	}
	for k, f := range want {
		e := p.provisioned[k]
		if e == nil {
			e = &provEntry{cluster: f.Cluster, function: f.Function}
			p.provisioned[k] = e
		}
		e.version, e.count = f.Version, f.Count
	}
	for _, s := range p.sandboxes {
		if s.provisioned && p.provisioned[s.key] == nil {
			s.provisioned = false
			s.lastUsed = p.now() // its idle time starts now
		}
	}
	p.mu.Unlock()
	p.poke()
	return nil
}

// fillProvisioned brings every provisioned entry to its count: it adopts
// or releases sandboxes of the version, and starts the missing ones
// unless the version is in init backoff.
func (p *Pool) fillProvisioned() {
	type start struct {
		k versionKey
		e *provEntry
	}
	var starts []start
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	now := p.now()
	for k, e := range p.provisioned {
		var mine, spare []*sbox
		for _, s := range p.sandboxes {
			if s.key != k || s.stopping || s.gone {
				continue
			}
			if s.provisioned {
				mine = append(mine, s)
			} else {
				spare = append(spare, s)
			}
		}
		have := len(mine) + e.pending
		for ; have < e.count && len(spare) > 0; have++ {
			spare[0].provisioned = true
			spare = spare[1:]
		}
		// Release the excess, idle ones first.
		slices.SortFunc(mine, func(a, b *sbox) int { return strings.Compare(stateRank(a.state), stateRank(b.state)) })
		for i := 0; have > e.count && i < len(mine); i++ {
			mine[i].provisioned = false
			mine[i].lastUsed = now
			have--
		}
		if b := p.backoff[k]; b != nil && now.Before(b.until) {
			continue
		}
		for ; have < e.count; have++ {
			e.pending++
			starts = append(starts, start{k, e})
		}
	}
	p.mu.Unlock()
	for _, st := range starts {
		p.starts.Add(1)
		go func() {
			defer p.starts.Done()
			p.startProvisioned(st.k, st.e)
		}()
	}
}

// stateRank orders sandboxes idle first, then starting, then busy.
func stateRank(state string) string {
	switch state {
	case api.SandboxIdle:
		return "0"
	case api.SandboxStarting:
		return "1"
	}
	return "2"
}

// startProvisioned starts one provisioned sandbox and waits for its
// init; a failed start puts the version in init backoff.
func (p *Pool) startProvisioned(k versionKey, e *provEntry) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	p.mu.Lock()
	v := e.version
	p.mu.Unlock()
	began := p.now()
	s, err := p.startSandbox(ctx, k, v, e)
	if fe, ok := err.(*fnError); ok {
		p.initFailed(k, fe)
		return
	}
	if err != nil {
		p.log.Warn("lambdart: cannot start a provisioned sandbox; will retry", "cluster", k.cluster, "function", k.function,
			"version", k.version, "err", err)
		p.initFailed(k, nil)
		return
	}
	fe := s.awaitInit()
	text := s.initDone(fe, began, p.now())
	if fe != nil {
		p.initFailed(k, fe)
		p.log.Warn("lambdart: a provisioned sandbox failed to start", "sandbox", s.id, "function", k.function,
			"version", k.version, "error_type", fe.Type, "error", fe.Message, "log", string(text[max(0, len(text)-api.LogTailBytes):]))
		return
	}
	p.mu.Lock()
	delete(p.backoff, k)
	if s.state == api.SandboxStarting && !s.gone {
		s.state = api.SandboxIdle
		s.lastUsed = p.now()
	}
	p.mu.Unlock()
}

// reclaimIdle stops the on-demand sandboxes idle longer than the idle
// timeout.
func (p *Pool) reclaimIdle() {
	p.mu.Lock()
	now := p.now()
	var doomed []*sbox
	for _, s := range p.sandboxes {
		if s.state == api.SandboxIdle && !s.provisioned && !s.stopping && now.Sub(s.lastUsed) > p.cfg.IdleTimeout {
			s.stopping = true
			doomed = append(doomed, s)
		}
	}
	p.mu.Unlock()
	for _, s := range doomed {
		p.log.Info("lambdart: stopping an idle sandbox", "sandbox", s.id, "function", s.key.function, "idle_since", s.lastUsed)
		go s.kill()
	}
}

// counters are one function's counts on the node.
type counters struct {
	invocations, warm, cold uint64
	busy                    int
	// running counts the invocations admitted and not yet answered,
	// warm or starting a sandbox: what a share is checked against (see
	// Pool.Invoke).
	running int
	// peaks[i] is the peak busy count of slot peakSlot[i] (see
	// api.ForecastSlot), for the last api.ForecastSlots slots; lastSlot
	// is the slot of the last change of busy.
	peaks    [api.ForecastSlots]int
	peakSlot [api.ForecastSlots]int64
	lastSlot int64
}

// slotOf is the forecast slot of t.
func slotOf(t time.Time) int64 { return t.UnixNano() / int64(api.ForecastSlot) }

func (p *Pool) countersLocked(k versionKey) *counters {
	c := p.counters[fnKey{k.cluster, k.function}]
	if c == nil {
		c = &counters{}
		p.counters[fnKey{k.cluster, k.function}] = c
	}
	return c
}

// busyChange adds d to the busy count and keeps this slot's peak. The
// slots since the last change, in which nothing changed, had the busy
// count of then as their peak.
func (c *counters) busyChange(d int, now time.Time) {
	m := slotOf(now)
	if c.lastSlot != 0 {
		for mm := max(c.lastSlot+1, m-api.ForecastSlots+1); mm <= m; mm++ {
			i := mm % api.ForecastSlots
			c.peakSlot[i], c.peaks[i] = mm, c.busy
		}
	}
	c.lastSlot = max(c.lastSlot, m)
	i := m % api.ForecastSlots
	if c.peakSlot[i] != m {
		c.peakSlot[i], c.peaks[i] = m, c.busy
	}
	c.busy += d
	c.peaks[i] = max(c.peaks[i], c.busy)
}

// peakList is the peaks of the last api.ForecastSlots slots, the current
// one (slot m) first.
func (c *counters) peakList(now time.Time) (peaks []int, m int64) {
	out := make([]int, api.ForecastSlots)
	m = slotOf(now)
	for j := range out {
		mm := m - int64(j)
		i := mm % api.ForecastSlots
		switch {
		case mm > c.lastSlot:
			out[j] = c.busy // nothing changed since
		case c.peakSlot[i] == mm:
			out[j] = c.peaks[i]
		}
	}
	return out, m
}

// Report lists the node's sandboxes and its counters per function.
func (p *Pool) Report() *api.SandboxReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	r := &api.SandboxReport{Node: p.cfg.Node, Sandboxes: []*api.SandboxInfo{}, Functions: []*api.FunctionCounters{}}
	for _, s := range p.sandboxes {
		if s.gone || s.stopping {
			continue
		}
		r.Sandboxes = append(r.Sandboxes, &api.SandboxInfo{ID: s.id, Node: p.cfg.Node, Function: s.key.function,
			Cluster: s.key.cluster, Version: s.key.version, State: s.state, Provisioned: s.provisioned,
			Started: s.started, LastUsed: s.lastUsed, Invocations: s.invocations, Addr: s.addr})
	}
	slices.SortFunc(r.Sandboxes, func(a, b *api.SandboxInfo) int { return strings.Compare(a.ID, b.ID) })
	for k, c := range p.counters {
		peaks, slot := c.peakList(now)
		r.Functions = append(r.Functions, &api.FunctionCounters{Function: k.function, Cluster: k.cluster,
			Invocations: c.invocations, WarmHits: c.warm, ColdStarts: c.cold, Busy: c.busy, Peaks: peaks, PeakSlot: slot})
	}
	slices.SortFunc(r.Functions, func(a, b *api.FunctionCounters) int {
		return strings.Compare(a.Cluster+"/"+a.Function, b.Cluster+"/"+b.Function)
	})
	return r
}
