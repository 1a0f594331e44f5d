package server

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/internal/fnqueue"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// The queue of asynchronous function invocations is NATS JetStream
// (package fnqueue), embedded in every server: a server alone in its
// group runs it standalone; a group of several runs it as a NATS cluster
// whose routes are the servers' QueueAddr, learnt like their other
// addresses (discovery, then the servers table), with streams replicated
// on up to three servers. Config.QueueURL replaces it with an external
// NATS cluster.

// alone reports whether this server forms its group by itself.
func (s *Server) alone() bool {
	return s.cfg.BootstrapExpect <= 1 && len(s.cfg.Join) == 0
}

// resolveQueueAddr sets s.queueAddr from the configuration.
func (s *Server) resolveQueueAddr() error {
	if s.cfg.QueueURL != "" || s.alone() {
		return nil
	}
	addr := s.cfg.QueueAddr
	if addr == "" {
		host, port, err := net.SplitHostPort(s.RaftAddr())
		if err != nil {
			return fmt.Errorf("server: --raft-addr %q: %w", s.RaftAddr(), err)
		}
		p, _ := strconv.Atoi(port)
		addr = net.JoinHostPort(host, strconv.Itoa(p+1))
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("server: --queue-addr %q is not host:port: %w", addr, err)
	}
	s.queueAddr = addr
	return nil
}

// runQueue opens the queue once the server knows its group's routes,
// keeps the routes up to date as servers join, and runs the queue's
// workers with run.
func (s *Server) runQueue(run fnqueue.Handler) {
	defer s.wg.Done()
	var q *fnqueue.Queue
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !s.sleep(250*time.Millisecond) {
			return
		}
		routes, n := s.queueRoutes()
		if q == nil {
			if !s.alone() && s.cfg.QueueURL == "" && n < max(s.cfg.BootstrapExpect, 2) {
				continue // the group is not known yet
			}
			cfg := fnqueue.Config{Name: s.cfg.Name, DataDir: s.cfg.DataDir, Listen: s.queueAddr, Routes: routes,
				URL: s.cfg.QueueURL, Replicas: min(3, max(n, 1)), Log: s.log.With("component", "queue"), Now: s.now}
			if s.cfg.TLS != nil && s.queueAddr != "" {
				var err error
				if cfg.ServerTLS, err = s.cfg.TLS.ServerConfig(tlsfiles.RoleServer); err != nil {
					s.log.Error("queue TLS", "err", err)
					return
				}
				cfg.ClientTLS = s.cfg.TLS.ClientConfig(tlsfiles.RoleServer)
			}
			opened, err := fnqueue.Open(cfg)
			if err != nil {
				s.log.Warn("opening the invocation queue", "err", err)
				continue
			}
			q = opened
			q.Run(run)
			s.queue.Store(q)
			defer q.Close()
			if cfg.URL != "" {
				s.log.Info("invocation queue open on an external NATS")
			} else {
				s.log.Info("invocation queue open", "routes", routes, "replicas", cfg.Replicas)
			}
		} else if err := q.SetRoutes(routes); err != nil {
			s.log.Warn("updating the queue's routes", "err", err)
		}
		// Wake when the servers change.
		ws := memdb.NewWatchSet()
		s.store.Snapshot().Servers(ws)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.shutdown:
			case <-ctx.Done():
			}
			cancel()
		}()
		state.Wait(ctx, ws)
		cancel()
	}
}

// queueRoutes returns the other servers' queue addresses and the number
// of servers known, this one included.
func (s *Server) queueRoutes() ([]string, int) {
	seen := map[string]string{s.cfg.Name: s.queueAddr}
	for _, sv := range s.store.Snapshot().Servers(nil) {
		seen[sv.Name] = sv.QueueAddr
	}
	for _, sv := range s.discoveryCallers() {
		if _, ok := seen[sv.Name]; !ok {
			seen[sv.Name] = sv.QueueAddr
		}
	}
	var routes []string
	for name, addr := range seen {
		if name != s.cfg.Name && addr != "" {
			routes = append(routes, addr)
		}
	}
	slices.Sort(routes)
	return routes, len(seen)
}
