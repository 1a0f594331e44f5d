// Package devmode runs a whole Shoal installation on one machine: one
// server and several agents as child processes of the current binary, each
// with its own data directory, plus a pool provider that starts another
// agent whenever the pool runs low. It is what `shoal dev` runs.
package devmode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Config configures a dev installation.
type Config struct {
	Agents       int
	Zones        int
	PoolMin      int
	MaxAgents    int
	Dir          string
	Addr         string // server HTTP address
	AgentCPU     int64
	AgentMemory  int64
	HeartbeatTTL time.Duration
	// Token is the operator token the server requires and every child
	// presents (passed in SHOAL_TOKEN); empty runs an open installation.
	Token  string
	Logger *slog.Logger
	Stdout io.Writer
	// Binary is the shoal executable; default: this process's.
	Binary string
}

func (c *Config) validate() error {
	switch {
	case c.Agents < 1 || c.Agents > 64:
		return fmt.Errorf("--agents must be between 1 and 64, got %d", c.Agents)
	case c.Zones < 1 || c.Zones > c.Agents:
		return fmt.Errorf("--zones must be between 1 and --agents (%d), got %d", c.Agents, c.Zones)
	case c.PoolMin < 0:
		return fmt.Errorf("--pool-min must not be negative, got %d", c.PoolMin)
	case c.MaxAgents < c.Agents:
		return fmt.Errorf("--max-agents (%d) must be at least --agents (%d)", c.MaxAgents, c.Agents)
	}
	return nil
}

// installation is a running dev installation.
type installation struct {
	cfg    Config
	log    *slog.Logger
	dir    string
	client *api.Client

	mu     sync.Mutex // guards procs and next
	procs  []*child
	next   int // number of the next agent
	zoneOf map[string]string
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// Run starts the installation and keeps it running until ctx ends; then it
// stops every process it started and returns.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding the shoal binary: %w", err)
		}
		cfg.Binary = exe
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	in := &installation{cfg: cfg, log: cfg.Logger, dir: dir, zoneOf: map[string]string{},
		client: api.NewClient([]string{cfg.Addr}, cfg.Token)}
	defer in.stopAll()

	raftAddr, err := freeAddr()
	if err != nil {
		return err
	}
	args := []string{"server", "--name", "dev-server", "--data-dir", filepath.Join(dir, "server"),
		"--http-addr", cfg.Addr, "--raft-addr", raftAddr, "--bootstrap-expect", "1"}
	if cfg.HeartbeatTTL > 0 {
		args = append(args, "--heartbeat-ttl", cfg.HeartbeatTTL.String())
	}
	srv, err := in.start("server", args)
	if err != nil {
		return err
	}
	if err := in.waitForLeader(ctx, srv); err != nil {
		return err
	}
	for i := 0; i < cfg.Agents; i++ {
		if err := in.startAgent(fmt.Sprintf("zone-%d", i%cfg.Zones+1)); err != nil {
			return err
		}
	}
	access := "Access: open (no operator token): callers without a token may do anything;\n        a cluster's token (shoal cluster token NAME) sees only that cluster."
	if cfg.Token != "" {
		access = "Access: callers must present the operator token (SHOAL_TOKEN) or a cluster's token."
	}
	fmt.Fprintf(cfg.Stdout, `Shoal dev is running: 1 server, %d agents in %d zones (data and logs in %s).

  API:  http://%s
  Try:  export SHOAL_ADDR=http://%s
        shoal node list
        shoal cluster create c1 --nodes 3 --zones %d
  %s

Press Ctrl-C to stop everything.
`, cfg.Agents, cfg.Zones, dir, cfg.Addr, cfg.Addr, min(cfg.Zones, 3), access)
	in.poolProvider(ctx)
	fmt.Fprintln(cfg.Stdout, "Stopping...")
	return nil
}

// start launches the binary with args, its output in logs/<name>.log.
func (in *installation) start(name string, args []string) (*child, error) {
	logf, err := os.OpenFile(filepath.Join(in.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(in.cfg.Binary, args...)
	cmd.Env = append(os.Environ(), "SHOAL_TOKEN="+in.cfg.Token)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Children die with us even on kill -9; their own children (tasks) die
	// with them the same way.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	in.mu.Lock()
	in.procs = append(in.procs, c)
	in.mu.Unlock()
	in.log.Info("started", "process", name, "pid", cmd.Process.Pid)
	return c, nil
}

func (in *installation) startAgent(zone string) error {
	in.mu.Lock()
	in.next++
	name := "node-" + strconv.Itoa(in.next)
	in.zoneOf[name] = zone
	in.mu.Unlock()
	args := []string{"agent", "--name", name, "--zone", zone, "--data-dir", filepath.Join(in.dir, "agents", name),
		"--servers", in.cfg.Addr}
	if in.cfg.AgentCPU > 0 {
		args = append(args, "--cpu", strconv.FormatInt(in.cfg.AgentCPU, 10))
	}
	if in.cfg.AgentMemory > 0 {
		args = append(args, "--memory", strconv.FormatInt(in.cfg.AgentMemory, 10))
	}
	_, err := in.start(name, args)
	return err
}

func (in *installation) waitForLeader(ctx context.Context, srv *child) error {
	deadline := time.Now().Add(30 * time.Second)
	logPath := filepath.Join(in.dir, "logs", "server.log")
	for {
		select {
		case <-srv.done:
			return fmt.Errorf("the server exited at start-up (is %s in use?); see %s", in.cfg.Addr, logPath)
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		leader, err := in.client.Leader(rctx)
		cancel()
		if err == nil && leader != "" {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server did not elect itself leader within 30s; see %s", logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// poolProvider starts an agent whenever fewer than PoolMin nodes are idle,
// in the zone with the fewest idle nodes, up to MaxAgents agents.
func (in *installation) poolProvider(ctx context.Context) {
	var index uint64
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		pool, idx, err := in.client.Pool(rctx, &api.QueryOptions{Index: index, Wait: 30 * time.Second})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				in.log.Warn("watching the pool", "err", err)
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		index = idx
		if in.cfg.PoolMin == 0 || pool.Idle >= in.cfg.PoolMin {
			continue
		}
		in.mu.Lock()
		running := len(in.procs) - 1 // minus the server
		in.mu.Unlock()
		if running >= in.cfg.MaxAgents {
			continue
		}
		// Agents still starting count as idle soon: don't start more
		// than are missing in one go.
		if in.starting(pool) {
			sleepCtx(ctx, 500*time.Millisecond)
			index = 0
			continue
		}
		zone := "zone-1"
		for i := 1; i <= in.cfg.Zones; i++ {
			z := "zone-" + strconv.Itoa(i)
			if pool.ByZone[z] < pool.ByZone[zone] {
				zone = z
			}
		}
		in.log.Info("pool low; starting another agent", "idle", pool.Idle, "pool_min", in.cfg.PoolMin, "zone", zone)
		if err := in.startAgent(zone); err != nil {
			in.log.Error("starting agent", "err", err)
		}
		sleepCtx(ctx, 500*time.Millisecond)
		index = 0
	}
}

// starting reports whether an agent this installation started recently
// has not yet become a ready node.
func (in *installation) starting(pool *api.PoolStatus) bool {
	nodes, _, err := in.client.Nodes(context.Background(), nil)
	if err != nil {
		return true
	}
	known := map[string]bool{}
	for _, n := range nodes {
		if n.State != api.NodeInitializing {
			known[n.Name] = true
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.procs[1:] {
		select {
		case <-c.done:
			continue
		default:
		}
		if !known[c.name] {
			return true
		}
	}
	return false
}

// stopAll stops agents first, then the server: SIGTERM, then SIGKILL after
// ten seconds.
func (in *installation) stopAll() {
	in.mu.Lock()
	procs := append([]*child(nil), in.procs...)
	in.mu.Unlock()
	stop := func(cs []*child) {
		for _, c := range cs {
			c.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range cs {
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				c.cmd.Process.Kill()
				<-c.done
			}
		}
	}
	if len(procs) > 1 {
		stop(procs[1:])
	}
	if len(procs) > 0 {
		stop(procs[:1])
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", errors.New("no free port for Raft: " + err.Error())
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
