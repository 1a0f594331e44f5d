package functions

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/invoke"
	"github.com/shoal-dev/shoal/internal/state"
)

// Provisioner timing: it recomputes every provisionInterval (and at once
// when the functions' table changes) and sends every agent its set again
// every resendInterval even when the set did not change, since an agent
// that restarted has forgotten it.
const (
	provisionInterval = time.Second
	resendInterval    = 10 * time.Second
)

// Target returns the number of provisioned sandboxes a function with
// configuration cfg should have over its whole cluster: the fixed count
// of cfg.Provisioned, or, for "auto", the [Forecast] from the agents'
// counters of the function. Either is capped by the function's
// concurrency limit (sandboxes beyond it could never all be busy) and by
// api.MaxProvisioned.
func Target(cfg api.FunctionConfig, counters []*api.FunctionCounters) int {
	cfg = cfg.Resolved()
	n, auto := cfg.ProvisionedCount()
	if auto {
		n = Forecast(counters)
	}
	return max(0, min(n, cfg.Concurrency, api.MaxProvisioned))
}

// Forecast is the "auto" provisioned target from the agents' counters
// of one function. The function's recent peak is the largest number of
// its sandboxes busy at once in any slot of api.ForecastSlot (5 s) of the
// last ten minutes, summed over the agents slot by slot (each agent
// numbers its slots, so a poll that straddles a slot's end still adds up
// the same moments); the target is that peak plus a quarter of it for
// growth, rounded up, and at least one spare sandbox:
//
//	peak = max over slots s of (sum over agents of their peak in s)
//	target = 0 when peak is 0, else peak + max(1, ceil(peak/4))
//
// so 1 -> 2, 4 -> 5, 8 -> 10, 100 -> 125. A function idle for the whole
// window gets no provisioned sandbox: its next invocation starts cold.
// Summing per-agent peaks of a slot over-counts when the agents' peaks
// fall at different moments of the same 5 s, a far smaller error than
// with slots of a minute.
func Forecast(counters []*api.FunctionCounters) int {
	sums := map[int64]int{}
	for _, c := range counters {
		for i, p := range c.Peaks {
			if i < api.ForecastSlots && p > 0 {
				sums[c.PeakSlot-int64(i)] += p
			}
		}
	}
	peak := 0
	for _, s := range sums {
		peak = max(peak, s)
	}
	if peak == 0 {
		return 0
	}
	return peak + max(1, (peak+3)/4)
}

// Plan computes one cluster's provisioned sandboxes: the target of each
// of its functions (by name) and the set each of its ready nodes (sorted
// by name) should hold, with the latest version of every function it
// keeps sandboxes of, sorted by function name. counters holds the
// agents' counters by function name, for "auto". Nodes with nothing to
// keep are left out of sets.
func Plan(fns []*api.Function, nodes []string, counters map[string][]*api.FunctionCounters) (targets map[string]int, sets map[string]*api.ProvisionedSet) {
	targets, sets = map[string]int{}, map[string]*api.ProvisionedSet{}
	fns = append([]*api.Function(nil), fns...)
	sort.Slice(fns, func(i, j int) bool { return fns[i].Name < fns[j].Name })
	for _, f := range fns {
		v := f.Version(0)
		if v == nil {
			continue
		}
		t := Target(v.Config, counters[f.Name])
		targets[f.Name] = t
		for node, n := range invoke.Spread(t, nodes, f.Cluster+"/"+f.Name) {
			set := sets[node]
			if set == nil {
				set = &api.ProvisionedSet{}
				sets[node] = set
			}
			set.Functions = append(set.Functions, &api.ProvisionedFunction{Function: f.Name, Cluster: f.Cluster, Version: v, Count: n})
		}
	}
	return targets, sets
}

// sentSet is what the provisioner last sent an agent.
type sentSet struct {
	addr  string
	key   string // the set's JSON
	at    time.Time
	empty bool
}

// provisioner is the state of the leader loop: what each agent was last
// sent, and which gauges are set. Only the loop's goroutine uses it.
type provisioner struct {
	s      *Service
	sent   map[string]sentSet // by node
	gauges map[[2]string]bool // cluster, function
}

// provisionLoop keeps every function's provisioned sandboxes spread over
// its cluster's ready nodes while this server leads (see Plan).
func (s *Service) provisionLoop(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	p := &provisioner{s: s, sent: map[string]sentSet{}, gauges: map[[2]string]bool{}}
	defer p.clearGauges()
	for {
		snap := s.cfg.Store.Snapshot()
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws, state.TableFunctions)
		p.tick(ctx, snap)
		wctx, wcancel := context.WithTimeout(ctx, provisionInterval)
		state.Wait(wctx, ws)
		wcancel()
		if ctx.Err() != nil {
			return
		}
	}
}

// tick computes every cluster's plan and sends the agents whose set
// changed (or was last sent resendInterval ago) their new set, all at
// once, each within agentTimeout.
func (p *provisioner) tick(ctx context.Context, snap *state.Snapshot) {
	byCluster := map[string][]*api.Function{}
	auto := map[string]bool{}
	for _, f := range snap.Functions(nil, "") {
		if v := f.Version(0); v != nil && v.Config.Provisioned == api.ProvisionedAuto {
			auto[f.Cluster] = true
		}
		byCluster[f.Cluster] = append(byCluster[f.Cluster], f)
	}
	// Only clusters with an "auto" function need their agents' counters;
	// the agents of every such cluster are asked at once.
	var autoAgents []Agent
	for cluster := range auto {
		autoAgents = append(autoAgents, readyAgents(snap, cluster)...)
	}
	counters := map[[2]string][]*api.FunctionCounters{}
	if len(autoAgents) > 0 {
		reports, _ := gather[api.SandboxReport](ctx, p.s, autoAgents, "/v1/agent/functions")
		for _, rep := range reports {
			for _, c := range rep.Functions {
				k := [2]string{c.Cluster, c.Function}
				counters[k] = append(counters[k], c)
			}
		}
	}
	want := map[string]*api.ProvisionedSet{}
	addrs := map[string]string{}
	gauges := map[[2]string]bool{}
	for cluster, fns := range byCluster {
		agents := readyAgents(snap, cluster)
		names := make([]string, len(agents))
		for i, a := range agents {
			names[i] = a.Node
			addrs[a.Node] = a.Addr
		}
		byName := map[string][]*api.FunctionCounters{}
		for _, f := range fns {
			byName[f.Name] = counters[[2]string{cluster, f.Name}]
		}
		targets, sets := Plan(fns, names, byName)
		for name, t := range targets {
			p.s.target.WithLabelValues(cluster, name).Set(float64(t))
			gauges[[2]string{cluster, name}] = true
		}
		for node, set := range sets {
			want[node] = set
		}
	}
	for k := range p.gauges {
		if !gauges[k] {
			p.s.target.DeleteLabelValues(k[0], k[1])
		}
	}
	p.gauges = gauges
	// Agents that were sent sandboxes to keep and now have none to keep
	// are told so once (while they are ready and reachable).
	for node, prev := range p.sent {
		if _, ok := want[node]; ok || prev.empty {
			continue
		}
		if n := snap.Node(nil, node); n != nil && n.State == api.NodeReady && n.Addr != "" {
			want[node] = &api.ProvisionedSet{Functions: []*api.ProvisionedFunction{}}
			addrs[node] = n.Addr
		} else {
			delete(p.sent, node)
		}
	}
	p.send(ctx, want, addrs)
}

// send PUTs each agent its set unless it was sent the same set to the
// same address less than resendInterval ago. p.sent is updated once every
// request has ended: an agent that failed is tried again on the next tick.
func (p *provisioner) send(ctx context.Context, want map[string]*api.ProvisionedSet, addrs map[string]string) {
	now := p.s.now()
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		sent   = map[string]sentSet{}
		failed []string
	)
	for node, set := range want {
		b, err := json.Marshal(set)
		if err != nil {
			continue
		}
		next := sentSet{addr: addrs[node], key: string(b), at: now, empty: len(set.Functions) == 0}
		if prev, ok := p.sent[node]; ok && prev.key == next.key && prev.addr == next.addr && now.Sub(prev.at) < resendInterval {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.s.callAgent(ctx, http.MethodPut, next.addr, "/v1/agent/functions/provisioned", set, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.s.log.Debug("sending provisioned sandboxes", "node", node, "err", err)
				failed = append(failed, node)
				return
			}
			sent[node] = next
		}()
	}
	wg.Wait()
	for node, next := range sent {
		p.sent[node] = next
	}
	for _, node := range failed {
		if prev, ok := p.sent[node]; ok {
			prev.at = time.Time{} // stale: send again
			p.sent[node] = prev
		}
	}
}

func (p *provisioner) clearGauges() {
	for k := range p.gauges {
		p.s.target.DeleteLabelValues(k[0], k[1])
	}
}
