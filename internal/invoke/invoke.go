// Package invoke is the data path of function invocations: it serves the
// Lambda Invoke API (POST /2015-03-31/functions/{name}/invocations, AWS
// SigV4 or bearer token) and Shoal's own invoke route, and routes each
// invocation to a warm sandbox on an agent of the function's cluster.
//
// No invocation goes through Raft: a server reads the function from its
// local state store (through a [Catalog]) and talks to the agents
// directly. Routing works as follows. The first probe goes to the agent
// that last served the same function version from this server (a
// per-server hint, no global search), the next ones to agents chosen at
// random; a probe carries the whole invocation with Start unset, so an
// agent with an idle warm sandbox runs it at once (a warm hit) and one
// without declines at once (409, with its load). After [Config.MaxProbes]
// declines the server asks the least loaded agent among those that
// declined to start a new sandbox (a cold start), then the next least
// loaded, then any agent not yet tried. An agent that cannot be dialled
// is skipped and counted; it does not use up a probe.
//
// A function's concurrency limit holds for its cluster: every server
// divides it over the ready agents the same way (shareOut) and sends each
// agent its share; an agent at its share declines, and when all are, the
// invocation is throttled (429). Each server also caps its own
// invocations of a function at the whole limit.
package invoke

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
)

// Errors of the invoke path. They wrap httpapi's sentinels so that
// the one error table renders them.
var (
	// ErrNoAgent: the function's cluster has no ready agent, or none of
	// its agents could be reached or could start a sandbox.
	ErrNoAgent = fmt.Errorf("%w: invoke: no agent can run the function", httpapi.ErrUnavailable)
	// ErrAgent: an agent failed the request in a way that leaves unknown
	// whether the function ran (a broken connection, a 5xx).
	ErrAgent = fmt.Errorf("%w: invoke: agent failed", httpapi.ErrUnavailable)
)

// Catalog is what the invoke path reads of the control plane's state
// (implemented by package functions over the state store). Its methods
// are called on every invocation and must be cheap and safe for
// concurrent use.
type Catalog interface {
	// Function returns the named function of the cluster, or an error
	// wrapping state.ErrNotFound.
	Function(cluster, name string) (*api.Function, error)
	// FunctionsNamed returns the functions of that name in every cluster.
	FunctionsNamed(name string) []*api.Function
	// Agents returns the ready member nodes of the cluster.
	Agents(cluster string) []Agent
	// SigningSecret returns the secret access key of an access key id and
	// the principal it stands for: "operator" is the operator token, a
	// cluster's name its token.
	SigningSecret(accessKey string) (secret string, p httpapi.Principal, ok bool)
}

// Agent is one ready node of a cluster, as the invoke path sees it.
type Agent struct {
	Node string
	Addr string // host:port of the agent's HTTP port
	Zone string
}

// Queue is the async invocation queue (Event invocations).
type Queue interface {
	// Enqueue stores ev; the event is durable when it returns nil.
	Enqueue(ctx context.Context, ev *Event) error
}

// Event is one Event invocation waiting in the queue.
type Event struct {
	ID       string // the invocation's request id
	Cluster  string
	Function string
	Version  int // 0: the latest at each attempt
	Payload  []byte
	Retries  int // how many times to retry after a function error
}

// Request is one invocation for [Invoker.Invoke].
type Request struct {
	Cluster, Function string
	Version           int // 0: the latest
	RequestID         string
	Payload           []byte
	Tail              bool // return the end of the invocation's log
	// ClientContext is the caller's client context, a JSON object
	// (decoded from X-Amz-Client-Context); empty: none.
	ClientContext string
}

// FunctionFailure is the error [Invoker.RunEvent] returns when the
// function ran and failed (an error, a timeout, running out of memory, a
// crash), as opposed to not running at all.
type FunctionFailure struct {
	Type    string // Lambda's errorType, e.g. "Runtime.ExitError"
	Message string
}

func (f *FunctionFailure) Error() string {
	return fmt.Sprintf("invoke: function failed: %s: %s", f.Type, f.Message)
}

// Config configures an [Invoker].
type Config struct {
	Catalog Catalog
	// Queue takes Event invocations; nil answers them with 503
	// ServiceException.
	Queue Queue
	// Agents is the client for agents' HTTP ports (mutual TLS when
	// AgentScheme is "https"); nil: [NewAgentClient](nil). It should dial
	// with a short timeout and keep many idle connections per host.
	Agents      *http.Client
	AgentScheme string // "http" (default) or "https"
	// OpenInstallation: the installation has no operator token. Unsigned
	// callers are then operators (the server decides that), and a request
	// signed with access key "operator" is an operator's whatever its
	// signature, as aws-cli needs some key but there is no secret to check.
	OpenInstallation bool
	Log              *slog.Logger
	Now              func() time.Time
	// Rand returns random numbers (agent choice, request ids); it must be
	// safe for concurrent use. nil: a ChaCha8 generator seeded from
	// crypto/rand.
	Rand    func() uint64
	Metrics prometheus.Registerer
	// MaxProbes is how many agents are asked for a warm sandbox before a
	// cold start; default 3.
	MaxProbes int
	// Refused counts a refused signature (what "signature", the reason).
	Refused func(what, reason string)
}

// DefaultMaxProbes is Config.MaxProbes's default.
const DefaultMaxProbes = 3

var _ httpapi.Subsystem = (*Invoker)(nil)

// Invoker serves invocations. It implements httpapi.Subsystem.
type Invoker struct {
	cfg     Config
	client  *http.Client
	scheme  string
	log     *slog.Logger
	now     func() time.Time
	rand    func() uint64
	signer  *v4.Signer
	metrics *metrics

	// mu guards fns; each fnState has its own lock (taken after mu, never
	// while holding mu).
	mu  sync.Mutex
	fns map[fnKey]*fnState
}

type fnKey struct{ cluster, name string }

// fnState is this server's view of one function: its in-flight
// invocations (for the concurrency limit) and, per version, the agent
// that last served it (the first probe's hint).
type fnState struct {
	label string // "cluster/name", the metrics' function label

	mu       sync.Mutex
	inflight int
	hints    map[int]string // version -> agent address
	verCache *versionCache
}

// New returns an Invoker.
func New(cfg Config) *Invoker {
	if cfg.MaxProbes <= 0 {
		cfg.MaxProbes = DefaultMaxProbes
	}
	v := &Invoker{cfg: cfg, client: cfg.Agents, scheme: cfg.AgentScheme, log: cfg.Log, now: cfg.Now,
		rand: cfg.Rand, signer: v4.NewSigner(), fns: map[fnKey]*fnState{}}
	if v.client == nil {
		v.client = NewAgentClient(nil)
	}
	if v.scheme == "" {
		v.scheme = "http"
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.rand == nil {
		var seed [32]byte
		crand.Read(seed[:])
		var mu sync.Mutex
		r := rand.NewChaCha8(seed)
		v.rand = func() uint64 {
			mu.Lock()
			defer mu.Unlock()
			return r.Uint64()
		}
	}
	v.metrics = newMetrics(cfg.Metrics)
	return v
}

// NewAgentClient returns an HTTP client for agents' ports, tuned for the
// invoke path: a one-second dial timeout (an unreachable agent is
// skipped, not waited for) and many kept-alive connections per agent.
// tlsCfg nil means plain HTTP.
func NewAgentClient(tlsCfg *tls.Config) *http.Client {
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     tlsCfg,
	}
	return &http.Client{Transport: t}
}

// LeaderLoops returns nil: the invoke path has no leader-only work.
func (v *Invoker) LeaderLoops() []func(stop <-chan struct{}) { return nil }

// Close releases the agents' idle connections.
func (v *Invoker) Close() error {
	v.client.CloseIdleConnections()
	return nil
}

// state returns the fnState of a function, creating it.
func (v *Invoker) state(cluster, name string) *fnState {
	k := fnKey{cluster, name}
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.fns[k]
	if s == nil {
		s = &fnState{label: cluster + "/" + name, hints: map[int]string{}}
		v.fns[k] = s
	}
	return s
}

// acquire takes one of the function's concurrency slots.
func (s *fnState) acquire(limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight >= limit {
		return false
	}
	s.inflight++
	return true
}

func (s *fnState) release() {
	s.mu.Lock()
	s.inflight--
	s.mu.Unlock()
}

func (s *fnState) hint(version int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hints[version]
}

func (s *fnState) setHint(version int, addr string) {
	s.mu.Lock()
	s.hints[version] = addr
	s.mu.Unlock()
}

// newRequestID returns a random UUID (version 4), as Lambda's request ids.
func (v *Invoker) newRequestID() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.rand())
	binary.BigEndian.PutUint64(b[8:], v.rand())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// RunEvent runs one Event invocation for the queue's worker: nil when the
// function succeeded; a *[FunctionFailure] when it ran and failed;
// another error when it could not run (the function or version is gone:
// wraps state.ErrNotFound; its concurrency is used up: wraps
// httpapi.ErrTooManyRequests; no agent could run it: wraps
// httpapi.ErrUnavailable).
func (v *Invoker) RunEvent(ctx context.Context, ev *Event) error {
	res, err := v.Invoke(ctx, &Request{Cluster: ev.Cluster, Function: ev.Function, Version: ev.Version,
		RequestID: ev.ID, Payload: ev.Payload})
	if err != nil {
		return err
	}
	if res.FunctionError != "" {
		return failureOf(res)
	}
	return nil
}

// failureOf reads the error document of a failed invocation.
func failureOf(res *api.SandboxResult) *FunctionFailure {
	var doc struct {
		Message string `json:"errorMessage"`
		Type    string `json:"errorType"`
	}
	json.Unmarshal(res.Payload, &doc)
	f := &FunctionFailure{Type: doc.Type, Message: doc.Message}
	if res.ErrorType != "" {
		f.Type = res.ErrorType
	}
	if f.Type == "" {
		f.Type = res.FunctionError
	}
	return f
}
