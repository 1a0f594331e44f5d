// Package agent is the node side of Shoal: it registers its node with the
// servers, heartbeats, watches the tasks placed on the node with blocking
// queries, runs them through a [sandbox.Driver], reports their state, and
// serves their logs. It talks to servers only through package api.
package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/clusterpki"
	"github.com/shoal-dev/shoal/internal/lambdart"
	"github.com/shoal-dev/shoal/internal/sandbox"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// Config configures an agent.
type Config struct {
	Name    string
	Zone    string
	DataDir string
	Servers []string
	// HTTPAddr is where the agent serves logs; default 127.0.0.1:0.
	HTTPAddr string
	// AdvertiseAddr is the address servers use to reach HTTPAddr; default
	// the listener's address.
	AdvertiseAddr string
	CPU           int64 // millicores; 0 detects
	MemoryMB      int64 // 0 detects
	Labels        map[string]string
	Token         string
	// TLS is the agent's TLS identity, with an agent certificate; nil
	// serves and dials plain HTTP (shoal agent --insecure). See tls.go.
	TLS    *tlsfiles.Identity
	Logger *slog.Logger
	// Driver runs tasks; nil means the exec driver.
	Driver sandbox.Driver
	// StopGrace is how long a stopped task gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// EnableDebug serves Go's pprof profiles under /debug/pprof/.
	EnableDebug bool
	// ChunkReportInterval is how often the node reports its chunk
	// inventory (default 30 s; also once at start).
	ChunkReportInterval time.Duration
	// RepairRate limits the bytes per second this node copies from peers
	// to repair replicas (0: 256 MiB/s; negative: unlimited).
	RepairRate int64
	// PeerAddr is where the agent accepts mutual-TLS connections from the
	// nodes of its cluster (remote launch of MPI daemons); default
	// 127.0.0.1:0. It is advertised to the servers.
	PeerAddr string
	// ShoalBinary is the shoal binary tasks find first on their PATH
	// (DATA/bin/shoal links to it); default the agent's own executable.
	ShoalBinary string
	// TaskNetwork is auto (default), on or off: whether each task runs in
	// a network namespace of its own on its cluster's private network
	// (see network.go).
	TaskNetwork string
	// OverlayAddr is the ip:port (UDP) of the node's end of its cluster
	// network's overlay; default the advertised host and a free port.
	OverlayAddr string
	// EndpointPort is the port of the tasks' endpoint on the node's
	// gateway address (default DefaultEndpointPort).
	EndpointPort int
	// NetworkPool is how many task network namespaces are kept ready
	// (0: the default; negative: none).
	NetworkPool int
	// FunctionIdleTimeout is how long an on-demand function sandbox may
	// stay idle before it is stopped (0: lambdart.DefaultIdleTimeout).
	FunctionIdleTimeout time.Duration
}

// Agent runs one node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	client  *api.Client
	driver  sandbox.Driver
	ln      net.Listener
	httpSrv *http.Server
	updates *updateBatcher

	chunks      *chunkstore.Store
	chunkClient *chunkstore.Client
	// caps checks the capabilities of chunk and log requests with the
	// servers' keys (capabilities.go); metrics counts its refusals.
	caps    *capability.Verifier
	metrics *agentMetrics
	// local is the short-circuit socket (shortcircuit.go); nil when there
	// is none.
	local *localSocket

	// peerLn is the peer listener (peer.go), advertised as peerAdvertise.
	peerLn        net.Listener
	peerAdvertise string
	// net gives tasks their cluster's network (network.go).
	net *taskNet
	// fns runs the cluster's function sandboxes (functions.go); set by
	// Run before it serves.
	fns *lambdart.Pool
	// peerCreds are the node's credentials in its cluster, nil while it
	// holds none; a.mu guards changing them together with cluster.
	peerCreds  atomic.Pointer[clusterpki.Credentials]
	credsRenew time.Time // when to renew peerCreds; guarded by mu
	credsWake  chan struct{}
	// shoalBin is DATA/bin/shoal, the link to the shoal binary; binDir its
	// directory, first on every task's PATH.
	shoalBin, binDir string

	mu   sync.Mutex // guards runs, cluster, clusterToken and credsRenew
	runs map[runKey]*run
	// stopping holds the runs the servers no longer list until their
	// processes have ended (an mpi run of a job waits for them: see
	// waitOlderRuns).
	stopping map[runKey]*run
	cluster  string
	// clusterToken is the API token of the node's cluster, handed to its
	// tasks so that they reach only what their cluster may.
	clusterToken string
	// lostRuns are runs of a crashed earlier agent, reported lost; they
	// must not be started again while the servers still list them. Only
	// the watch loop touches it after start-up.
	lostRuns map[runKey]bool
	ckpt     checkpoints // MPI checkpoints (checkpoint.go)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New validates cfg, prepares the data directory and the sandbox driver,
// and cleans up after an earlier agent on this data dir. Call Run next.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.CPU == 0 {
		cfg.CPU = int64(runtime.NumCPU()) * 1000
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = detectMemoryMB()
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 5 * time.Second
	}
	reg := api.NodeRegistration{Name: cfg.Name, Zone: cfg.Zone, CPU: cfg.CPU, MemoryMB: cfg.MemoryMB, Labels: cfg.Labels}
	if err := reg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if len(cfg.Servers) == 0 {
		return nil, errors.New("agent: at least one server address is required (--servers)")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("agent: a data directory is required (--data-dir)")
	}
	if cfg.TLS != nil && cfg.TLS.Role() != tlsfiles.RoleAgent {
		return nil, fmt.Errorf("agent: the certificate is not an agent's (it must name %s; make one with 'shoal tls cert create --agent')",
			tlsfiles.RoleName(tlsfiles.RoleAgent))
	}
	if cfg.ChunkReportInterval <= 0 {
		cfg.ChunkReportInterval = 30 * time.Second
	}
	if cfg.RepairRate == 0 {
		cfg.RepairRate = 256 << 20
	}
	if cfg.PeerAddr == "" {
		cfg.PeerAddr = "127.0.0.1:0"
	}
	if err := os.MkdirAll(allocRoot(cfg.DataDir), 0o755); err != nil {
		return nil, fmt.Errorf("agent: creating %s: %w", allocRoot(cfg.DataDir), err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), runs: map[runKey]*run{}, stopping: map[runKey]*run{}, lostRuns: map[runKey]bool{},
		credsWake: make(chan struct{}, 1), caps: capability.NewVerifier(time.Now), metrics: newAgentMetrics()}
	if err := a.linkShoal(); err != nil {
		return nil, err
	}
	chunks, err := chunkstore.Open(filepath.Join(cfg.DataDir, "chunks"), a.log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.chunks, a.chunkClient = chunks, &chunkstore.Client{}
	a.local = a.listenLocal()
	a.client = api.NewClient(cfg.Servers, cfg.Token)
	if cfg.TLS != nil {
		a.chunkClient.HTTP = cfg.TLS.HTTPClient(tlsfiles.RoleAgent)
		a.client = api.NewTLSClient(cfg.Servers, cfg.Token, cfg.TLS.ClientConfig(tlsfiles.RoleServer))
	}
	a.driver = cfg.Driver
	if a.driver == nil {
		d, err := sandbox.NewExec(a.log, cgroupParent(cfg.Name, cfg.DataDir))
		if err != nil {
			return nil, fmt.Errorf("agent: sandbox: %w", err)
		}
		a.driver = d
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("agent: listening on %s: %w", cfg.HTTPAddr, err)
	}
	a.ln = ln
	if a.cfg.AdvertiseAddr == "" {
		a.cfg.AdvertiseAddr = ln.Addr().String()
	}
	if err := a.serveTLS(); err != nil {
		ln.Close()
		return nil, err
	}
	if err := a.listenPeer(); err != nil {
		ln.Close()
		return nil, err
	}
	if err := a.setupNetwork(); err != nil {
		ln.Close()
		return nil, err
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.updates = newUpdateBatcher(a.client, cfg.Name, a.log)
	return a, nil
}

// Addr is the agent's HTTP address.
func (a *Agent) Addr() string { return a.ln.Addr().String() }

// Run registers the node and works until ctx ends or Shutdown is called.
// Tasks still running then are stopped.
func (a *Agent) Run(ctx context.Context) error {
	go func() {
		select {
		case <-ctx.Done():
			a.cancel()
		case <-a.ctx.Done():
		}
	}()
	if err := a.startFunctions(a.fetchBundle); err != nil {
		return err
	}
	a.httpSrv = &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second}
	go a.httpSrv.Serve(a.ln)
	defer a.httpSrv.Close()
	defer a.serveLocal()() // serves until Run returns
	defer a.servePeer()()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.credsLoop() }()

	if err := a.register(); err != nil {
		return err
	}
	a.fetchCapabilityKeys()
	a.recoverRuns()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.chunkReportLoop() }()
	// The batcher outlives the other loops so that the reports of runs
	// stopped at shutdown are delivered.
	updatesCtx, stopUpdates := context.WithCancel(context.Background())
	updatesDone := make(chan struct{})
	go func() { defer close(updatesDone); a.updates.run(updatesCtx) }()
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.heartbeatLoop() }()
	a.watchLoop()
	a.stopAll()
	a.closeFunctions()
	a.closeNetwork()
	a.wg.Wait()
	stopUpdates()
	<-updatesDone
	a.leave()
	if c, ok := a.driver.(interface{ Close() error }); ok {
		c.Close()
	}
	return nil
}

// Shutdown makes Run return.
func (a *Agent) Shutdown() { a.cancel() }

// register announces the node, retrying until a server answers.
func (a *Agent) register() error {
	reg := &api.NodeRegistration{Name: a.cfg.Name, Zone: a.cfg.Zone, Addr: a.cfg.AdvertiseAddr,
		CPU: a.cfg.CPU, MemoryMB: a.cfg.MemoryMB, Labels: a.cfg.Labels, Socket: a.local.socketPath(),
		PeerAddr: a.peerAdvertise, OverlayAddr: a.overlayAdvertised()}
	for delay := 100 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		err := a.client.RegisterNode(ctx, reg)
		cancel()
		if err == nil {
			a.log.Info("registered", "zone", a.cfg.Zone, "cpu", a.cfg.CPU, "memory", a.cfg.MemoryMB, "isolated", a.driver.Isolated())
			return nil
		}
		var apiErr *api.Error
		if errors.As(err, &apiErr) && apiErr.Code == api.CodeInvalid {
			return fmt.Errorf("agent: registration refused: %w", err)
		}
		a.log.Warn("registering; will retry", "err", err)
		select {
		case <-a.ctx.Done():
			return a.ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (a *Agent) heartbeatLoop() {
	interval := 500 * time.Millisecond
	for {
		asleep := time.Now()
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(interval):
		}
		// A late wake-up or a slow answer is how a live node gets declared
		// down: say so, with the figures, so that it can be told apart
		// from a dead one.
		if late := time.Since(asleep) - interval; late > interval {
			a.log.Warn("heartbeat loop woke late: the agent was starved of CPU or stopped", "late", late.Round(time.Millisecond))
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
		resp, err := a.client.Heartbeat(ctx, a.cfg.Name, &api.Heartbeat{Ready: true})
		cancel()
		if took := time.Since(sent); err == nil && took > interval {
			a.log.Warn("heartbeat answered slowly", "took", took.Round(time.Millisecond))
		}
		switch {
		case err == nil:
			if resp.Interval > 0 {
				interval = resp.Interval.D()
			}
		case api.IsNotFound(err):
			a.log.Warn("servers do not know this node; registering again")
			a.register()
		default:
			if a.ctx.Err() == nil {
				a.log.Warn("heartbeat failed", "err", err)
			}
		}
	}
}

// leave tells the servers this node is going away, so that its tasks are
// placed elsewhere at once rather than after the heartbeat TTL.
func (a *Agent) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := a.client.Heartbeat(ctx, a.cfg.Name, &api.Heartbeat{Leaving: true}); err != nil {
		a.log.Warn("telling the servers this node leaves; they will notice when its heartbeats stop", "err", err)
	}
}

// watchLoop follows the node's work with blocking queries and reconciles.
// since is the index up to which the agent holds every task in full.
func (a *Agent) watchLoop() {
	var index, since uint64
	for a.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(a.ctx, 40*time.Second)
		work, idx, err := a.client.NodeWork(ctx, a.cfg.Name, since, &api.QueryOptions{Index: index, Wait: 30 * time.Second})
		cancel()
		if err != nil {
			if a.ctx.Err() != nil {
				return
			}
			a.log.Warn("watching work", "err", err)
			select {
			case <-a.ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		if idx < index {
			// The server we reached is behind the one we asked before:
			// start over rather than trust a partial view.
			index, since = 0, 0
			continue
		}
		a.setCapabilityKeys(work.CapabilityKeys)
		if a.reconcile(work) {
			index, since = idx, idx
		} else {
			index, since = 0, 0
		}
	}
}

func detectMemoryMB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 1024
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb / 1024
		}
	}
	return 1024
}

// cgroupParent names the agent's parent cgroup after its node and data
// dir: a restarted agent finds the cgroups of its predecessor, and two
// agents of the same name on one host (tests) never share one.
func cgroupParent(name, dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "shoal/" + name + "-" + hex.EncodeToString(sum[:4])
}

func allocRoot(dataDir string) string { return filepath.Join(dataDir, "alloc") }

// linkShoal makes DATA/bin/shoal a symbolic link to the shoal binary, so
// that tasks (and mpirun inside them) find `shoal` first on their PATH.
func (a *Agent) linkShoal() error {
	target := a.cfg.ShoalBinary
	if target == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("agent: finding the shoal binary for tasks' PATH (set it with --shoal-binary): %w", err)
		}
		target = exe
	}
	dataDir, err := filepath.Abs(a.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.binDir = filepath.Join(dataDir, "bin")
	a.shoalBin = filepath.Join(a.binDir, "shoal")
	if err := os.MkdirAll(a.binDir, 0o755); err != nil {
		return fmt.Errorf("agent: creating %s: %w", a.binDir, err)
	}
	if old, err := os.Readlink(a.shoalBin); err == nil && old == target {
		return nil
	}
	tmp := a.shoalBin + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("agent: linking %s to %s: %w", a.shoalBin, target, err)
	}
	if err := os.Rename(tmp, a.shoalBin); err != nil {
		return fmt.Errorf("agent: linking %s to %s: %w", a.shoalBin, target, err)
	}
	return nil
}
