package server

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// joinOrBootstrap forms or joins the Raft group at first start. A server
// with Raft state from an earlier run just rejoins with it.
//
//   - bootstrap-expect 1 (or no join addresses): bootstrap alone.
//   - bootstrap-expect N: ask the join addresses (and, transitively, the
//     servers they know) who they are until N servers are known, then
//     bootstrap with all N; every server computes the same configuration.
//     If the group already has a leader, join it instead.
//   - otherwise: ask the join addresses to add this server as a voter.
func (s *Server) joinOrBootstrap() {
	defer s.wg.Done()
	has, err := raft.HasExistingState(s.boltDB, s.boltDB, s.snaps)
	if err != nil {
		s.log.Error("reading raft state", "err", err)
		return
	}
	if !has {
		if s.cfg.BootstrapExpect <= 1 && (s.cfg.BootstrapExpect == 1 || len(s.cfg.Join) == 0) {
			s.bootstrap([]api.ServerInfo{s.Info()})
		} else {
			s.discover()
		}
	}
	s.registerSelf()
}

func (s *Server) bootstrap(servers []api.ServerInfo) {
	var conf raft.Configuration
	for _, sv := range servers {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(sv.Name), Address: raft.ServerAddress(sv.RaftAddr)})
	}
	if err := s.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		s.log.Error("bootstrapping raft", "err", err)
		return
	}
	s.log.Info("bootstrapped raft group", "servers", len(servers))
}

// discover runs until this server is part of a Raft group.
func (s *Server) discover() {
	known := map[string]api.ServerInfo{s.cfg.Name: s.Info()}
	// Servers asked introduce themselves, so that servers that all name
	// only one other (s2 and s3 join s1, s1 joins none) still find each
	// other through it.
	me := url.Values{"name": {s.cfg.Name}, "raft_addr": {s.RaftAddr()}, "http_addr": {s.HTTPAddr()}, "queue_addr": {s.queueAddr}}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !s.sleep(250*time.Millisecond) {
			return
		}
		if s.raft.Leader() != "" {
			return // someone added us
		}
		leaderSeen := false
		for _, c := range s.discoveryCallers() {
			known[c.Name] = c
		}
		addrs := slices.Clone(s.cfg.Join)
		for _, k := range known {
			addrs = append(addrs, k.HTTPAddr)
		}
		for _, addr := range dedupe(addrs) {
			if addr == s.HTTPAddr() {
				continue
			}
			var peers []api.ServerInfo
			c := s.serverClient([]string{addr})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := c.Do(ctx, "GET", "/v1/status/self", me, nil, &peers)
			var leader string
			if err == nil {
				leader, _ = c.Leader(ctx)
			}
			cancel()
			c.Close()
			if err != nil {
				continue
			}
			if leader != "" {
				leaderSeen = true
			}
			for _, p := range peers {
				known[p.Name] = p
			}
		}
		if leaderSeen || s.cfg.BootstrapExpect <= 1 {
			if s.joinExisting() {
				return
			}
			continue
		}
		if len(known) >= s.cfg.BootstrapExpect {
			var servers []api.ServerInfo
			for _, k := range known {
				servers = append(servers, k)
			}
			slices.SortFunc(servers, func(a, b api.ServerInfo) int { return strings.Compare(a.Name, b.Name) })
			s.bootstrap(servers)
			return
		}
	}
}

// maxCallers bounds the servers remembered from discovery requests.
const maxCallers = 16

// noteCaller remembers a server that introduced itself while discovering.
func (s *Server) noteCaller(sv api.ServerInfo) {
	if sv.Name == s.cfg.Name || api.ValidateName("name", sv.Name) != nil || sv.RaftAddr == "" || sv.HTTPAddr == "" {
		return
	}
	s.callersMu.Lock()
	defer s.callersMu.Unlock()
	if _, ok := s.callers[sv.Name]; ok || len(s.callers) < maxCallers {
		s.callers[sv.Name] = sv
	}
}

// discoveryCallers returns the servers noteCaller remembered.
func (s *Server) discoveryCallers() []api.ServerInfo {
	s.callersMu.Lock()
	defer s.callersMu.Unlock()
	out := make([]api.ServerInfo, 0, len(s.callers))
	for _, sv := range s.callers {
		out = append(out, sv)
	}
	return out
}

// joinExisting asks the join addresses to add this server; it reports
// success.
func (s *Server) joinExisting() bool {
	req := &api.JoinRequest{Name: s.cfg.Name, RaftAddr: s.RaftAddr(), HTTPAddr: s.HTTPAddr(), QueueAddr: s.queueAddr}
	for _, addr := range s.cfg.Join {
		c := s.serverClient([]string{addr})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Do(ctx, "POST", "/v1/status/join", nil, req, nil)
		cancel()
		c.Close()
		if err == nil {
			s.log.Info("joined raft group", "via", addr)
			return true
		}
		s.log.Debug("join attempt failed", "via", addr, "err", err)
	}
	return false
}

// addVoter adds a server to the group; called on the leader.
func (s *Server) addVoter(req *api.JoinRequest) error {
	if err := api.ValidateName("name", req.Name); err != nil {
		return err
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, sv := range cf.Configuration().Servers {
		if sv.ID == raft.ServerID(req.Name) && sv.Address == raft.ServerAddress(req.RaftAddr) {
			return nil // already a member
		}
		if sv.ID == raft.ServerID(req.Name) || sv.Address == raft.ServerAddress(req.RaftAddr) {
			if err := s.raft.RemoveServer(sv.ID, 0, 0).Error(); err != nil {
				return fmt.Errorf("server: removing stale member %s: %w", sv.ID, err)
			}
		}
	}
	if err := s.raft.AddVoter(raft.ServerID(req.Name), raft.ServerAddress(req.RaftAddr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("server: adding %s: %w", req.Name, err)
	}
	_, _, err := s.apply(fsm.ServerUpsert, &state.ServerUpsertRequest{Server: api.ServerInfo{Name: req.Name, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr, QueueAddr: req.QueueAddr}})
	return err
}

// registerSelf records this server's addresses in the replicated state so
// that followers can forward to it when it leads. It retries until done.
func (s *Server) registerSelf() {
	me := s.Info()
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !s.sleep(200*time.Millisecond) {
			return
		}
		for _, sv := range s.store.Snapshot().Servers(nil) {
			if sv.Name == me.Name && sv.RaftAddr == me.RaftAddr && sv.HTTPAddr == me.HTTPAddr && sv.QueueAddr == me.QueueAddr {
				return
			}
		}
		req := &state.ServerUpsertRequest{Server: me}
		if s.IsLeader() {
			s.apply(fsm.ServerUpsert, req)
			continue
		}
		addr := s.leaderHTTP()
		if addr == "" {
			continue
		}
		c := s.serverClient([]string{addr})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.Do(ctx, "POST", "/v1/status/register", nil, req, nil)
		cancel()
		c.Close()
	}
}

// leaderHTTP returns the leader's HTTP address, if known.
func (s *Server) leaderHTTP() string {
	addr, _ := s.raft.LeaderWithID()
	if addr == "" {
		return ""
	}
	if string(addr) == s.RaftAddr() {
		return s.HTTPAddr()
	}
	for _, sv := range s.store.Snapshot().Servers(nil) {
		if sv.RaftAddr == string(addr) {
			return sv.HTTPAddr
		}
	}
	return ""
}

// sleep waits d, or returns false at shutdown.
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.shutdown:
		return false
	}
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
