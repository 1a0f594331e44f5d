package server

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/replication"
	"github.com/shoal-dev/shoal/internal/scheduler"
	"github.com/shoal-dev/shoal/internal/state"
)

// monitorLeadership starts the leader loops when this server gains
// leadership and stops them when it loses it.
func (s *Server) monitorLeadership() {
	defer s.wg.Done()
	var (
		stop chan struct{}
		wg   sync.WaitGroup
	)
	stopLoops := func() {
		if stop != nil {
			close(stop)
			wg.Wait()
			stop = nil
		}
	}
	defer stopLoops()
	for {
		select {
		case isLeader := <-s.raft.LeaderCh():
			s.metrics.isLeader.Set(boolFloat(isLeader))
			if !isLeader {
				s.log.Info("lost leadership")
				s.replMgr.Store(nil)
				stopLoops()
				continue
			}
			if stop != nil {
				continue
			}
			s.log.Info("gained leadership")
			stop = make(chan struct{})
			// Apply everything committed by earlier leaders before acting.
			if err := s.raft.Barrier(10 * time.Second).Error(); err != nil {
				s.log.Warn("leader barrier", "err", err)
			}
			s.heartbeats.reset(s.now())
			repl := replication.New(replication.Config{Store: s.store, Apply: s.apply, Chunks: s.chunkClient,
				Log: s.log.With("component", "replication"), Now: s.now, OpenLease: s.cfg.OpenFileLease,
				Capability: func(op capability.Op, chunk string) string { return s.capability(op, chunk, "") }})
			s.replMgr.Store(repl)
			wg.Add(4)
			go func(stop chan struct{}) { defer wg.Done(); s.ensureCapabilityKey(stop) }(stop)
			go func(stop chan struct{}) { defer wg.Done(); s.nodeHealthLoop(stop) }(stop)
			go func(stop chan struct{}) { defer wg.Done(); s.schedulerLoop(stop) }(stop)
			go func(stop chan struct{}) { defer wg.Done(); repl.Run(stop) }(stop)
			for _, sub := range s.subsystems {
				for _, loop := range sub.LeaderLoops() {
					wg.Add(1)
					go func(stop chan struct{}) { defer wg.Done(); loop(stop) }(stop)
				}
			}
		case <-s.shutdown:
			return
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// heartbeatTracker remembers when each node last heartbeated. It lives in
// the leader's memory only: heartbeats are not Raft writes. A new leader
// starts every node's clock afresh (a grace period of one TTL).
type heartbeatTracker struct {
	mu    sync.Mutex
	since time.Time
	last  map[string]time.Time
}

func newHeartbeatTracker() *heartbeatTracker {
	return &heartbeatTracker{last: map[string]time.Time{}}
}

func (h *heartbeatTracker) reset(now time.Time) {
	h.mu.Lock()
	h.since = now
	h.last = map[string]time.Time{}
	h.mu.Unlock()
}

func (h *heartbeatTracker) beat(node string, now time.Time) {
	h.mu.Lock()
	h.last[node] = now
	h.mu.Unlock()
}

// lastSeen is the node's last heartbeat, or when tracking began.
func (h *heartbeatTracker) lastSeen(node string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.last[node]; ok {
		return t
	}
	return h.since
}

// expectedBack is when a node that stopped in an orderly way is replaced
// if it is not back: the time recorded when it stopped, but at least grace
// after this leader took over, so that an installation restarted as a
// whole, however long it was stopped, gets its nodes back in their
// clusters.
func (h *heartbeatTracker) expectedBack(n *api.Node, grace time.Duration) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.since.Add(grace); t.After(n.ExpectedBack) {
		return t
	}
	return n.ExpectedBack
}

// nodeHealthLoop declares nodes down when their heartbeats stop, replaces
// in their clusters the nodes that stopped and did not come back in time,
// and moves tasks off draining nodes whose deadline passed.
func (s *Server) nodeHealthLoop(stop chan struct{}) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := s.now()
		for _, n := range s.store.Snapshot().Nodes(nil) {
			switch {
			case n.State != api.NodeDown && now.Sub(s.heartbeats.lastSeen(n.Name)) > s.cfg.HeartbeatTTL:
				s.log.Warn("node missed heartbeats; marking it down", "node", n.Name, "ttl", s.cfg.HeartbeatTTL)
				_, _, err := s.apply(fsm.NodeState, &state.NodeStateRequest{Name: n.Name, State: api.NodeDown,
					Reason: "no heartbeat for " + s.cfg.HeartbeatTTL.String(), Now: now})
				if err != nil {
					s.log.Warn("marking node down", "node", n.Name, "err", err)
				}
			case n.State == api.NodeDown && !n.ExpectedBack.IsZero() && !now.Before(s.heartbeats.expectedBack(n, s.cfg.RejoinGrace)):
				s.log.Warn("node not back in time; replacing it in its cluster", "node", n.Name, "cluster", n.Cluster)
				_, _, err := s.apply(fsm.NodeState, &state.NodeStateRequest{Name: n.Name, State: api.NodeDown, Expired: true, Now: now})
				if err != nil {
					s.log.Warn("expiring node", "node", n.Name, "err", err)
				}
			case n.State == api.NodeDraining && n.Tasks > 0 && !now.Before(n.DrainDeadline):
				if _, _, err := s.apply(fsm.DrainDeadline, &state.DrainDeadlineRequest{Name: n.Name, Now: now}); err != nil {
					s.log.Warn("drain deadline", "node", n.Name, "err", err)
				}
			}
		}
	}
}

// queuedPassInterval spaces scheduling passes while tasks wait for room.
const queuedPassInterval = 20 * time.Millisecond

// schedulerLoop places waiting tasks whenever tasks, nodes or clusters
// change (a job submission writes only the jobs table), and when a retry
// backoff ends.
func (s *Server) schedulerLoop(stop chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	defer cancel()
	for ctx.Err() == nil {
		snap := s.store.Snapshot()
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws, state.TableTasks, state.TableJobs, state.TableNodes, state.TableClusters)
		start := time.Now()
		res := scheduler.Plan(snap, s.now())
		if len(res.Placements) > 0 || len(res.Gangs) > 0 {
			v, _, err := s.apply(fsm.Plan, &state.PlanRequest{Placements: res.Placements, Gangs: res.Gangs, Now: s.now()})
			s.metrics.schedLatency.Observe(time.Since(start).Seconds())
			if err != nil {
				s.log.Warn("applying plan", "err", err)
				if !s.sleep(100 * time.Millisecond) {
					return
				}
				continue
			}
			if pr, ok := v.(*state.PlanResult); ok {
				s.metrics.placements.Add(float64(pr.Placed))
				if pr.Rejected > 0 {
					s.log.Debug("plan partly rejected", "placed", pr.Placed, "rejected", pr.Rejected)
				}
			}
			continue
		}
		wctx, c := ctx, context.CancelFunc(func() {})
		if !res.Wake.IsZero() {
			wctx, c = context.WithDeadline(ctx, res.Wake)
		}
		ws.WatchCtx(wctx)
		c()
		if res.Waiting > 0 {
			// Tasks are queued for room: every task report wakes this loop,
			// and each pass reads the whole queue. Let reports gather.
			if !s.sleep(queuedPassInterval) {
				return
			}
		}
	}
}
