package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/fnqueue"
	"github.com/shoal-dev/shoal/internal/functions"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/invoke"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// Subsystems (package httpapi's Subsystem) are families of routes and
// leader loops with packages of their own: the server builds them here,
// before its API, registers their routes in routes(), runs their leader
// loops while it leads (monitorLeadership) and closes them at shutdown.
//
// Functions are two: package functions (deploy, versions, status, logs,
// dead letters, provisioned sandboxes; through Raft) and package invoke
// (invocations; never through Raft), joined by functions' Catalog. Both
// reach the queue of asynchronous invocations (queue.go) through the
// adapters below, which answer 503 until it is open.

// setupSubsystems builds the server's subsystems. It runs before the
// server's own API client (s.self) exists, so the functions' bundle
// callbacks look it up when called.
func (s *Server) setupSubsystems() error {
	if err := s.resolveQueueAddr(); err != nil {
		return err
	}
	agentTLS := s.agentTLS()
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
		Queue:         deadLetters{s},
		OperatorToken: s.cfg.Token,
		Log:           s.log.With("component", "functions"),
		Now:           s.now,
		Metrics:       s.metrics.reg,
	})
	inv := invoke.New(invoke.Config{
		Catalog:          fns.Catalog(),
		Queue:            eventQueue{s},
		Agents:           invoke.NewAgentClient(agentTLS),
		AgentScheme:      s.scheme(),
		OpenInstallation: s.cfg.Token == "",
		Log:              s.log.With("component", "invoke"),
		Now:              s.now,
		Metrics:          s.metrics.reg,
		Refused:          func(what, reason string) { s.metrics.refused.WithLabelValues(what, reason).Inc() },
	})
	s.invoker = inv
	s.subsystems = append(s.subsystems, fns, inv)
	return nil
}

// agentTLS is the TLS configuration of requests to agents; nil without TLS.
func (s *Server) agentTLS() *tls.Config {
	if s.cfg.TLS == nil {
		return nil
	}
	return s.cfg.TLS.ClientConfig(tlsfiles.RoleAgent)
}

// runEvent is the queue's handler: it runs one asynchronous invocation.
// A function that failed is a fnqueue.Failure (retried, then
// dead-lettered); anything else (no agent, the concurrency used up, or a
// function this server's state does not hold yet, as on a follower that
// has not applied its deploy) is retried later without counting as an
// attempt. A deleted function's events are purged with it; one that
// escaped the purge (queued as the delete ran) is dropped once it is
// older than staleEvent, rather than dead-lettered under a name a new
// function may take.
func (s *Server) runEvent(ctx context.Context, ev *fnqueue.Event) error {
	err := s.invoker.RunEvent(ctx, &invoke.Event{ID: ev.ID, Cluster: ev.Cluster, Function: ev.Function,
		Version: ev.Version, Payload: ev.Payload, Retries: ev.Retries})
	var failed *invoke.FunctionFailure
	switch {
	case err == nil:
		return nil
	case errors.As(err, &failed):
		return &fnqueue.Failure{Type: failed.Type, Message: failed.Message}
	case errors.Is(err, state.ErrNotFound) && s.now().Sub(ev.Enqueued) > staleEvent:
		s.log.Warn("dropping an event of a function that no longer exists", "cluster", ev.Cluster,
			"function", ev.Function, "version", ev.Version, "event", ev.ID, "enqueued", ev.Enqueued)
		return nil
	}
	return err
}

// staleEvent is how old an event of a function this server does not know
// must be to be dropped: long past any lag of this server's state behind
// the deploy that let it be queued.
const staleEvent = time.Minute

// closeSubsystems closes the subsystems, last built first.
func (s *Server) closeSubsystems() {
	for i := len(s.subsystems) - 1; i >= 0; i-- {
		if err := s.subsystems[i].Close(); err != nil {
			s.log.Warn("closing a subsystem", "err", err)
		}
	}
}

// errNoQueue answers while the queue is not open yet.
var errNoQueue = fmt.Errorf("%w: the queue of asynchronous invocations is not open yet (the servers are still forming their group); retry", httpapi.ErrUnavailable)

// eventQueue is invoke's Queue over the server's queue.
type eventQueue struct{ s *Server }

func (e eventQueue) Enqueue(ctx context.Context, ev *invoke.Event) error {
	q := e.s.queue.Load()
	if q == nil {
		return errNoQueue
	}
	return queueErr(q.Enqueue(ctx, &fnqueue.Event{ID: ev.ID, Cluster: ev.Cluster, Function: ev.Function,
		Version: ev.Version, Payload: ev.Payload, Retries: ev.Retries}))
}

// deadLetters is functions' DeadLetters over the server's queue.
type deadLetters struct{ s *Server }

func (d deadLetters) queue() (*fnqueue.Queue, error) {
	if q := d.s.queue.Load(); q != nil {
		return q, nil
	}
	return nil, errNoQueue
}

func (d deadLetters) DeadLetters(ctx context.Context, cluster, function string) ([]*api.DeadLetter, error) {
	q, err := d.queue()
	if err != nil {
		return nil, err
	}
	l, err := q.DeadLetters(ctx, cluster, function)
	return l, queueErr(err)
}

func (d deadLetters) DeadLetter(ctx context.Context, cluster, function, id string) (*api.DeadLetter, error) {
	q, err := d.queue()
	if err != nil {
		return nil, err
	}
	l, err := q.DeadLetter(ctx, cluster, function, id)
	return l, queueErr(err)
}

func (d deadLetters) Redrive(ctx context.Context, cluster, function string, ids []string) ([]string, error) {
	q, err := d.queue()
	if err != nil {
		return nil, err
	}
	done, err := q.Redrive(ctx, cluster, function, ids)
	return done, queueErr(err)
}

func (d deadLetters) Depth(ctx context.Context, cluster, function string) (uint64, uint64, error) {
	q, err := d.queue()
	if err != nil {
		return 0, 0, err
	}
	a, b, err := q.Depth(ctx, cluster, function)
	return a, b, queueErr(err)
}

func (d deadLetters) Purge(ctx context.Context, cluster, function string) error {
	q, err := d.queue()
	if err != nil {
		return err
	}
	return queueErr(q.Purge(ctx, cluster, function))
}

// queueErr maps the queue's errors onto the error table.
func queueErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fnqueue.ErrNotFound):
		return fmt.Errorf("%w: %v", state.ErrNotFound, err)
	case errors.Is(err, fnqueue.ErrUnavailable):
		return fmt.Errorf("%w: %v", httpapi.ErrUnavailable, err)
	case errors.Is(err, fnqueue.ErrInvalid):
		return fmt.Errorf("%w: %v", state.ErrInvalid, err)
	}
	return err
}
