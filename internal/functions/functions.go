// Package functions is the control plane of Shoal's Lambda-compatible
// functions: deploying a function's versions (a zip bundle with a
// "bootstrap" executable, stored in the cluster's part of the DFS, and a
// configuration kept in the Raft state), listing, inspecting and deleting
// them, gathering their logs and sandbox status from the cluster's agents,
// serving their dead-letter queues, and, on the leader, keeping the
// provisioned sandboxes of each function spread over the cluster's ready
// nodes. Invocations do not pass through here (package invoke); the
// [Catalog] is the read side of the state that the invoke path uses.
//
// A [Service] plugs into the server as an httpapi.Subsystem.
package functions

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// agentTimeout bounds every request to an agent: an agent that does not
// answer in time is left out of what is gathered, or tried again on the
// provisioner's next tick.
const agentTimeout = 2 * time.Second

// Config configures a [Service].
type Config struct {
	Store *state.Store
	// Apply is the server's Raft apply: it proposes an entry and returns
	// the FSM's value, the entry's index and the FSM's error.
	Apply func(t fsm.MessageType, req any) (any, uint64, error)
	// WriteBundle stores data at a DFS path, replacing a file already
	// there (bundles are named by their digest, so a replaced file holds
	// the same bytes); RemoveBundle removes one, best effort.
	WriteBundle  func(ctx context.Context, path string, data []byte) (*api.FileInfo, error)
	RemoveBundle func(ctx context.Context, path string) error
	// Agents carries requests to agents (mutual TLS when AgentScheme is
	// "https"); nil means http.DefaultClient. A node's Addr is host:port.
	Agents      *http.Client
	AgentScheme string
	// Queue serves the functions' dead-letter queues and queue depths;
	// nil answers the queue routes with 503.
	Queue DeadLetters
	// OperatorToken is the installation's operator token, the secret of
	// the "operator" access key (see Catalog.SigningSecret).
	OperatorToken string
	Log           *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Metrics registers the service's metrics; nil registers none.
	Metrics prometheus.Registerer
}

// DeadLetters is the functions' asynchronous queue as the control plane
// sees it (package fnqueue implements it).
type DeadLetters interface {
	// DeadLetters lists a function's dead letters.
	DeadLetters(ctx context.Context, cluster, function string) ([]*api.DeadLetter, error)
	// DeadLetter returns one dead letter, or an error wrapping
	// state.ErrNotFound when there is no such letter.
	DeadLetter(ctx context.Context, cluster, function, id string) (*api.DeadLetter, error)
	// Redrive submits the dead letters named by ids again (all of them
	// when ids is empty) and returns the ids submitted.
	Redrive(ctx context.Context, cluster, function string, ids []string) ([]string, error)
	// Depth returns the number of invocations waiting to run and of dead
	// letters.
	Depth(ctx context.Context, cluster, function string) (queued, dead uint64, err error)
	// Purge drops a function's queued invocations and dead letters.
	Purge(ctx context.Context, cluster, function string) error
}

// Service is the functions' control plane: routes, the provisioner's
// leader loop, and the [Catalog].
type Service struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	agents  *http.Client
	catalog *Catalog
	// target is shoal_server_fn_provisioned_target{cluster,function}.
	target *prometheus.GaugeVec
}

// New returns a Service.
func New(cfg Config) *Service {
	s := &Service{cfg: cfg, log: cfg.Log, now: cfg.Now, agents: cfg.Agents,
		catalog: &Catalog{store: cfg.Store, operatorToken: cfg.OperatorToken}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.agents == nil {
		s.agents = http.DefaultClient
	}
	if s.cfg.AgentScheme == "" {
		s.cfg.AgentScheme = "http"
	}
	s.target = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "shoal_server_fn_provisioned_target",
		Help: "Provisioned sandboxes the leader keeps ready for a function, over all of its cluster's nodes."},
		[]string{"cluster", "function"})
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(s.target); err != nil {
			s.log.Warn("registering the functions' metrics", "err", err)
		}
	}
	return s
}

// Catalog returns the read side of the functions' state that the invoke
// path uses.
func (s *Service) Catalog() *Catalog { return s.catalog }

// Routes registers the functions' API (see the handlers for each route).
//
// The dead-letter routes, redrive included, are TenantRead: they go to
// the queue (NATS JetStream), not through Raft, so any server serves
// them itself instead of forwarding them to the leader.
func (s *Service) Routes(r *httpapi.Router) {
	const fn = "/v1/clusters/{cluster}/functions/{name}"
	r.TenantUpload("PUT "+fn, maxDeployBody, s.handleDeploy)
	r.TenantWrite("DELETE "+fn, s.handleDelete)
	r.TenantRead("GET /v1/functions", s.handleList)
	r.TenantRead("GET "+fn, s.handleGet)
	r.TenantRead("GET "+fn+"/status", s.handleStatus)
	r.TenantRead("GET "+fn+"/logs", s.handleLogs)
	r.TenantRead("GET "+fn+"/dlq", s.handleDeadLetters)
	r.TenantRead("GET "+fn+"/dlq/{id}", s.handleDeadLetter)
	r.TenantRead("POST "+fn+"/dlq/redrive", s.handleRedrive)
}

// LeaderLoops returns the provisioner, which runs while the server leads.
func (s *Service) LeaderLoops() []func(stop <-chan struct{}) {
	return []func(stop <-chan struct{}){s.provisionLoop}
}

// Close releases nothing: the service holds no resources of its own
// outside its leader loop, which stops with leadership.
func (s *Service) Close() error { return nil }

// allowCluster checks that the request's principal may act on cluster,
// answering 403 otherwise.
func allowCluster(w http.ResponseWriter, r *http.Request, cluster string) bool {
	p, _ := httpapi.PrincipalOf(r)
	if p.Sees(cluster) {
		return true
	}
	httpapi.WriteErr(w, fmt.Errorf("%w: the token of cluster %q may not act on cluster %q", httpapi.ErrForbidden, p.Cluster, cluster))
	return false
}

// function returns the function the request's path names, having checked
// that the principal may see it; on failure it has answered.
func (s *Service) function(w http.ResponseWriter, r *http.Request) (*api.Function, bool) {
	cluster, name := r.PathValue("cluster"), r.PathValue("name")
	if !allowCluster(w, r, cluster) {
		return nil, false
	}
	f, err := s.catalog.Function(cluster, name)
	if err != nil {
		httpapi.WriteErr(w, err)
		return nil, false
	}
	return f, true
}

// query serves a read that may block: with ?index=N it waits (up to
// ?wait=, default 30s, at most 10m) until the functions' table index
// passes N. fn fills ws with what it read.
func (s *Service) query(w http.ResponseWriter, r *http.Request, fn func(snap *state.Snapshot, ws memdb.WatchSet) (any, error)) {
	q := r.URL.Query()
	var minIndex uint64
	if v := q.Get("index"); v != "" {
		i, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			httpapi.WriteErr(w, fmt.Errorf("%w: index: %q is not a non-negative integer", api.ErrInvalid, v))
			return
		}
		minIndex = i
	}
	wait := 30 * time.Second
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			httpapi.WriteErr(w, fmt.Errorf("%w: wait: %q is not a duration such as 30s", api.ErrInvalid, v))
			return
		}
		wait = min(d, 10*time.Minute)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		snap := s.cfg.Store.Snapshot()
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws, state.TableFunctions)
		out, err := fn(snap, ws)
		if err != nil {
			httpapi.WriteErr(w, err)
			return
		}
		idx := snap.Index(state.TableFunctions)
		if minIndex == 0 || idx > minIndex || !state.Wait(ctx, ws) {
			if r.Context().Err() != nil {
				return
			}
			w.Header().Set(api.IndexHeader, strconv.FormatUint(max(idx, 1), 10))
			httpapi.WriteJSON(w, http.StatusOK, out)
			return
		}
	}
}

// deadLetters resolves the function of the request's path (as function
// does) and the queue that keeps its dead letters (503 when this server
// runs none), writing the error when either fails.
func (s *Service) deadLetters(w http.ResponseWriter, r *http.Request) (*api.Function, DeadLetters, bool) {
	f, ok := s.function(w, r)
	if !ok {
		return nil, nil, false
	}
	if s.cfg.Queue == nil {
		httpapi.WriteErr(w, fmt.Errorf("%w: the functions' queue is not running on this server", httpapi.ErrUnavailable))
		return nil, nil, false
	}
	return f, s.cfg.Queue, true
}
