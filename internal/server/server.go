// Package server is Shoal's control plane: a Raft group (hashicorp/raft with
// raft-boltdb) whose FSM writes a go-memdb state store, an HTTP/JSON API
// that any server answers (writes are forwarded to the leader), and the
// leader-only loops: scheduler, node health and drain deadlines.
package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"go.etcd.io/bbolt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/fnqueue"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/invoke"
	"github.com/shoal-dev/shoal/internal/replication"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// DefaultRejoinGrace is how long a node that stopped in an orderly way
// (its agent stopped, or the whole installation) keeps its place in its
// cluster: long enough for a restart or an upgrade, short enough that a
// node that is really gone is replaced without a human.
const DefaultRejoinGrace = 5 * time.Minute

// Config configures one server.
type Config struct {
	Name     string
	DataDir  string
	HTTPAddr string // host:port to listen on for the API
	RaftAddr string // host:port for Raft traffic
	// AdvertiseHTTP and AdvertiseRaft are the addresses other servers and
	// agents use to reach this one, when they differ from the listen
	// addresses (for example when listening on 0.0.0.0).
	AdvertiseHTTP string
	AdvertiseRaft string
	// BootstrapExpect is the number of servers that form the group at
	// first start; 1 bootstraps alone.
	BootstrapExpect int
	// Join lists other servers' HTTP addresses.
	Join []string
	// HeartbeatTTL is how long after its last heartbeat a node is declared
	// down.
	HeartbeatTTL time.Duration
	// RejoinGrace is how long a node that stopped in an orderly way stays
	// a member of its cluster, with its data, before it is replaced
	// (default DefaultRejoinGrace; a negative value replaces it at once).
	RejoinGrace time.Duration
	// OpenFileLease is how long a file stays open after its writer last
	// renewed it or committed a chunk (default api.DefaultOpenFileLease).
	OpenFileLease time.Duration
	// ClusterNetworks is the IPv4 network (CIDR) clusters' private subnets
	// come from, /ClusterSubnetBits each (default
	// state.DefaultClusterNetworks, /state.DefaultClusterSubnetBits).
	ClusterNetworks   string
	ClusterSubnetBits int
	// NodeSubnetBits is the size of each member node's block of its
	// cluster's subnet, for its tasks (default state.DefaultNodeSubnetBits).
	NodeSubnetBits int
	// PoolMinPerZone is the number of ready idle nodes every zone should
	// hold; the pool status tells provisioners how many nodes to add where
	// (api.PoolStatus.WantedByZone). 0 wishes for nothing.
	PoolMinPerZone int
	// EnableDebug serves Go's pprof profiles under /debug/pprof/.
	EnableDebug bool
	// Token is the operator token: callers presenting it may do anything,
	// and servers present it to each other. Empty means an open
	// installation, where a caller without a token is an operator; a
	// cluster's token is confined to its cluster either way.
	Token string
	// TLS is the server's TLS identity, with a server certificate; nil
	// serves plain HTTP and Raft (shoal server --insecure). See tls.go.
	TLS    *tlsfiles.Identity
	Logger *slog.Logger
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Rand is the source of the clusters' keys and of the capability
	// signing key; nil means crypto/rand.
	Rand io.Reader
	// CapabilityTTL is how long the capabilities this server issues stay
	// valid (default DefaultCapabilityTTL).
	CapabilityTTL time.Duration
	// QueueAddr is where the embedded queue of asynchronous invocations
	// (NATS JetStream, see queue.go) accepts routes from the other
	// servers; default: the Raft address's host, port Raft's + 1. A
	// server alone in its group opens none.
	QueueAddr string
	// QueueURL, when set, uses that external NATS cluster instead of the
	// embedded queue.
	QueueURL string
}

// ErrNotLeader is returned by writes attempted on a server that lost
// leadership while applying them.
var ErrNotLeader = httpapi.ErrNoLeader

// Server is one control-plane server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	rand    io.Reader
	store   *state.Store
	fsm     *fsm.FSM
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	boltDB  *raftboltdb.BoltStore
	snaps   raft.SnapshotStore
	http    *http.Server
	httpLn  net.Listener
	metrics *metrics

	heartbeats *heartbeatTracker

	// DFS: a client of this server's own API (metadata writes from the
	// upload path reach the leader through it), a client of data nodes,
	// and the replication manager while this server leads.
	self        *api.Client
	chunkClient *chunkstore.Client
	replMgr     atomic.Pointer[replication.Manager]
	// toServers and toAgents carry requests to other servers (forwarding)
	// and to agents (logs, chunks) over TLS; nil without TLS (see tls.go).
	toServers, toAgents http.RoundTripper
	// caps signs capabilities with the state's key (capabilities.go).
	caps capIssuer

	// queue is the async invocation queue once open (queue.go); queueAddr
	// its advertised route address ("" when it takes none).
	queue     atomic.Pointer[fnqueue.Queue]
	queueAddr string

	// subsystems plug in their own routes and leader loops
	// (subsystems.go).
	subsystems []httpapi.Subsystem
	// invoker runs invocations, the queued ones too (subsystems.go).
	invoker *invoke.Invoker

	// callers holds the servers that asked this one who it is while
	// discovering their group (see discover); guarded by callersMu, which
	// is never held with another lock.
	callersMu sync.Mutex
	callers   map[string]api.ServerInfo

	wg       sync.WaitGroup
	shutdown chan struct{}
	once     sync.Once
}

// New starts a server: Raft, the HTTP API and (once it leads) the leader
// loops. It returns once both listeners are open.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.OpenFileLease <= 0 {
		cfg.OpenFileLease = api.DefaultOpenFileLease
	}
	if cfg.OpenFileLease < time.Second {
		return nil, fmt.Errorf("server: the open file lease must be at least 1s, got %s", cfg.OpenFileLease)
	}
	if cfg.CapabilityTTL <= 0 {
		cfg.CapabilityTTL = DefaultCapabilityTTL
	}
	if cfg.RejoinGrace == 0 {
		cfg.RejoinGrace = DefaultRejoinGrace
	}
	if cfg.HeartbeatTTL <= 0 {
		cfg.HeartbeatTTL = 2 * time.Second
	}
	if cfg.ClusterNetworks == "" {
		cfg.ClusterNetworks = state.DefaultClusterNetworks
	}
	if cfg.ClusterSubnetBits == 0 {
		cfg.ClusterSubnetBits = state.DefaultClusterSubnetBits
	}
	if cfg.NodeSubnetBits == 0 {
		cfg.NodeSubnetBits = max(state.DefaultNodeSubnetBits, cfg.ClusterSubnetBits)
	}
	if err := state.ValidateNetworks(cfg.ClusterNetworks, cfg.ClusterSubnetBits, cfg.NodeSubnetBits); err != nil {
		return nil, fmt.Errorf("server: --cluster-networks, --cluster-subnet-bits, --node-subnet-bits: %w", err)
	}
	if err := api.ValidateName("name", cfg.Name); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if cfg.TLS != nil && cfg.TLS.Role() != tlsfiles.RoleServer {
		return nil, fmt.Errorf("server: the certificate is not a server's (it must name %s; make one with 'shoal tls cert create --server')",
			tlsfiles.RoleName(tlsfiles.RoleServer))
	}
	if cfg.BootstrapExpect < 0 || cfg.BootstrapExpect > 7 {
		return nil, fmt.Errorf("server: bootstrap-expect must be between 0 and 7, got %d", cfg.BootstrapExpect)
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("server", cfg.Name),
		now:        cfg.Clock,
		rand:       cfg.Rand,
		store:      state.New(),
		shutdown:   make(chan struct{}),
		heartbeats: newHeartbeatTracker(),
		callers:    map[string]api.ServerInfo{},
	}
	s.fsm = fsm.New(s.store, s.log)
	s.metrics = newMetrics(s)
	if cfg.TLS != nil {
		s.toServers = cfg.TLS.HTTPClient(tlsfiles.RoleServer).Transport
		s.toAgents = cfg.TLS.HTTPClient(tlsfiles.RoleAgent).Transport
	}
	if err := s.setupRaft(); err != nil {
		s.closeRaft()
		return nil, err
	}
	if err := s.setupSubsystems(); err != nil {
		s.closeRaft()
		return nil, err
	}
	if err := s.setupHTTP(); err != nil {
		s.closeSubsystems()
		s.closeRaft()
		return nil, err
	}
	s.self = s.serverClient([]string{s.HTTPAddr()})
	s.chunkClient = &chunkstore.Client{}
	if s.toAgents != nil {
		s.chunkClient.HTTP = &http.Client{Transport: s.toAgents}
	}
	s.wg.Add(3)
	go s.runQueue(s.runEvent)
	go s.monitorLeadership()
	go s.joinOrBootstrap()
	return s, nil
}

// HTTPAddr returns the address the API listens on.
func (s *Server) HTTPAddr() string {
	if s.cfg.AdvertiseHTTP != "" {
		return s.cfg.AdvertiseHTTP
	}
	return s.httpLn.Addr().String()
}

// RaftAddr returns the Raft address.
func (s *Server) RaftAddr() string { return string(s.trans.LocalAddr()) }

// Store gives tests and the in-process harness read access to the state.
func (s *Server) Store() *state.Store { return s.store }

// IsLeader reports whether this server leads the Raft group.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Info describes this server.
func (s *Server) Info() api.ServerInfo {
	return api.ServerInfo{Name: s.cfg.Name, RaftAddr: s.RaftAddr(), HTTPAddr: s.HTTPAddr(), QueueAddr: s.queueAddr, Leader: s.IsLeader()}
}

func (s *Server) setupRaft() error {
	raftDir := filepath.Join(s.cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return fmt.Errorf("server: creating data dir: %w", err)
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(s.cfg.Name)
	// Tuned for a LAN: a dead leader is replaced in well under 3 s.
	conf.HeartbeatTimeout = 500 * time.Millisecond
	conf.ElectionTimeout = 500 * time.Millisecond
	conf.LeaderLeaseTimeout = 250 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold = 8192
	conf.SnapshotInterval = 30 * time.Second
	conf.TrailingLogs = 10240
	// Let concurrent writes queue for the leader loop so that each log
	// commit (one fdatasync) carries as many of them as are waiting.
	conf.BatchApplyCh = true
	conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{s.log}})

	advertise := s.cfg.RaftAddr
	if s.cfg.AdvertiseRaft != "" {
		advertise = s.cfg.AdvertiseRaft
	}
	addr, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return fmt.Errorf("server: raft address %q: %w", advertise, err)
	}
	if addr.IP == nil || addr.IP.IsUnspecified() {
		return fmt.Errorf("server: raft address %q cannot be reached by other servers; set --advertise-raft", advertise)
	}
	var trans *raft.NetworkTransport
	if s.cfg.TLS != nil {
		layer, err := newRaftTLSLayer(s.cfg.RaftAddr, addr, s.cfg.TLS, s.log)
		if err != nil {
			return fmt.Errorf("server: listening for raft on %s: %w", s.cfg.RaftAddr, err)
		}
		trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: layer, MaxPool: 5, Timeout: 5 * time.Second, Logger: conf.Logger})
	} else if trans, err = raft.NewTCPTransportWithLogger(s.cfg.RaftAddr, addr, 5, 5*time.Second, conf.Logger); err != nil {
		return fmt.Errorf("server: listening for raft on %s: %w", s.cfg.RaftAddr, err)
	}
	s.trans = trans
	// The log is appended and truncated, never updated in place: a hashmap
	// freelist that is not synced on each commit (rebuilt by a scan at
	// start) saves a page write and a slow array merge per commit.
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
	if err != nil {
		return fmt.Errorf("server: opening raft log: %w", err)
	}
	s.boltDB = bolt
	logs, err := raft.NewLogCache(512, bolt)
	if err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, conf.Logger)
	if err != nil {
		return fmt.Errorf("server: opening snapshot store: %w", err)
	}
	s.snaps = snaps
	r, err := raft.NewRaft(conf, s.fsm, logs, bolt, snaps, trans)
	if err != nil {
		return fmt.Errorf("server: starting raft: %w", err)
	}
	s.raft = r
	return nil
}

func (s *Server) closeRaft() {
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			s.log.Warn("raft shutdown", "err", err)
		}
	}
	if s.trans != nil {
		s.trans.Close()
	}
	if s.boltDB != nil {
		s.boltDB.Close()
	}
}

// Shutdown stops the server: HTTP first, then the loops, then Raft.
func (s *Server) Shutdown() error {
	s.once.Do(func() {
		close(s.shutdown)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if s.http != nil {
			s.http.Shutdown(ctx)
			s.http.Close()
		}
		s.wg.Wait()
		s.closeSubsystems()
		s.closeRaft()
	})
	return nil
}

// apply proposes one entry on the leader and waits for it to be applied.
func (s *Server) apply(t fsm.MessageType, req any) (any, uint64, error) {
	b, err := fsm.Encode(t, req)
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	f := s.raft.Apply(b, 10*time.Second)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, 0, fmt.Errorf("server: raft apply: %w", err)
	}
	s.metrics.applyLatency.WithLabelValues(t.String()).Observe(time.Since(start).Seconds())
	res, _ := f.Response().(fsm.Result)
	return res.Value, f.Index(), res.Err
}

// replication returns the replication manager while this server leads.
func (s *Server) replication() *replication.Manager { return s.replMgr.Load() }

// dfsWriter returns a writer whose metadata goes through this server's API.
func (s *Server) dfsWriter() *dfs.Writer {
	return &dfs.Writer{NS: s.self, Chunks: s.chunkClient, Log: s.log}
}

// slogWriter turns hclog's lines into slog records.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.log.Warn(msg, "component", "raft")
	return len(p), nil
}
