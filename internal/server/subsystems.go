package server

import (
	"bytes"
	"context"
	"net/http"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/functions"
)

// Subsystems (package httpapi's Subsystem) are families of routes and
// leader loops with packages of their own: the server builds them here,
// before its API, registers their routes in routes(), runs their leader
// loops while it leads (monitorLeadership) and closes them at shutdown.

// setupSubsystems builds the server's subsystems. It runs before the
// server's own API client (s.self) exists, so the functions' bundle
// callbacks look it up when called.
func (s *Server) setupSubsystems() error {
	fns := functions.New(functions.Config{
		Store: s.store,
		Apply: s.apply,
		WriteBundle: func(ctx context.Context, path string, data []byte) (*api.FileInfo, error) {
			return s.dfsWriter().Write(ctx, path, bytes.NewReader(data), dfs.WriteOptions{Size: int64(len(data)), Overwrite: true})
		},
		RemoveBundle: func(ctx context.Context, path string) error {
			return s.self.FSRemove(ctx, &api.Remove{Path: path})
		},
		Agents:        &http.Client{Transport: s.toAgents}, // nil: plain HTTP
		AgentScheme:   s.scheme(),
		OperatorToken: s.cfg.Token,
		Log:           s.log.With("component", "functions"),
		Now:           s.now,
		Metrics:       s.metrics.reg,
	})
	s.subsystems = append(s.subsystems, fns)
	return nil
}

// closeSubsystems closes the subsystems, last built first.
func (s *Server) closeSubsystems() {
	for i := len(s.subsystems) - 1; i >= 0; i-- {
		if err := s.subsystems[i].Close(); err != nil {
			s.log.Warn("closing a subsystem", "err", err)
		}
	}
}
