package devmode

import (
	"context"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/pool"
)

// maxBackoff bounds the pool provider's wait after agents that failed to
// start.
const maxBackoff = 30 * time.Second

// poolProvider keeps PoolMin ready idle nodes in every zone, with the
// policy of package internal/pool: it watches the nodes (blocking
// queries), counts the agents it started that are not ready yet as filling
// their zone, and starts exactly the agents still missing, up to
// MaxAgents. After agents that exited soon after their start it waits
// 1 s, 2 s, 4 s ... (at most 30 s) before starting more.
func (in *installation) poolProvider(ctx context.Context) {
	if in.cfg.PoolMin == 0 {
		<-ctx.Done()
		return
	}
	var index uint64
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		var woken atomic.Bool
		go func() {
			select {
			case <-in.wake:
				woken.Store(true)
				cancel()
			case <-qctx.Done():
			}
		}()
		nodes, idx, err := in.client.Nodes(qctx, &api.QueryOptions{Index: index, Wait: 30 * time.Second})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !woken.Load() {
				in.log.Warn("watching the nodes", "err", err)
				sleepCtx(ctx, time.Second)
			}
			index = 0
			continue
		}
		index = idx
		if wait := in.backoff(); wait > 0 {
			in.log.Info("agents failed to start; waiting before starting more", "wait", wait)
			sleepCtx(ctx, wait)
			index = 0
			continue
		}
		for _, zone := range sortedZones(in.wanted(nodes)) {
			in.log.Info("pool low in zone; starting an agent", "zone", zone.name, "pool_min", in.cfg.PoolMin)
			for i := 0; i < zone.n; i++ {
				if err := in.startAgent("", zone.name); err != nil {
					in.log.Error("starting agent", "zone", zone.name, "err", err)
				}
			}
		}
	}
}

// wanted returns how many agents to start in which zone, given the
// servers' nodes.
func (in *installation) wanted(nodes []*api.Node) map[string]int {
	counts := pool.Count(nodes)
	for i := 1; i <= in.cfg.Zones; i++ {
		z := "zone-" + strconv.Itoa(i)
		counts[z] = counts[z]
	}
	byName := map[string]*api.Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.agents {
		counts[c.zone] = counts[c.zone]
		n := byName[c.name]
		// Started but not registered yet: no node, or the node of an
		// earlier run of the agent (down since before this start).
		// Registered and initializing is counted by pool.Count.
		if n == nil || n.State == api.NodeDown && n.StateSince.Before(c.started) {
			zc := counts[c.zone]
			zc.Starting++
			counts[c.zone] = zc
		}
		if n != nil && n.State == api.NodeReady && !n.StateSince.Before(c.started) {
			in.failures = 0 // an agent got ready: starting works
		}
	}
	return pool.Wanted(pool.Policy{MinPerZone: in.cfg.PoolMin, MaxNew: max(0, in.cfg.MaxAgents-len(in.agents))}, counts)
}

// backoff returns how long to wait before starting agents after start-up
// failures.
func (in *installation) backoff() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.failures == 0 {
		return 0
	}
	wait := min(maxBackoff, time.Second<<min(in.failures-1, 5))
	return max(0, in.lastFailure.Add(wait).Sub(in.now()))
}

type zoneWant struct {
	name string
	n    int
}

func sortedZones(w map[string]int) []zoneWant {
	var out []zoneWant
	for z, n := range w {
		out = append(out, zoneWant{z, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
