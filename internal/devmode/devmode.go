// Package devmode runs a whole Shoal installation on one machine: one
// server and several agents as child processes of the current binary, each
// with its own data directory, plus a pool provider that starts agents
// where the pool lacks idle nodes (package internal/pool). It is what
// `shoal dev` runs.
//
// The agents it starts are recorded in DIR/agents.json (see [Record]):
// `shoal dev` started again in the same directory brings back the agents
// that ran when it stopped, and `shoal dev kill` signals an agent of this
// installation only, after checking the recorded pid's command line.
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
	"text/tabwriter"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusternet"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// Config configures a dev installation.
type Config struct {
	Agents int
	Zones  int
	// PoolMin is the number of ready idle nodes every zone should hold;
	// the pool provider starts agents to keep it so.
	PoolMin      int
	MaxAgents    int
	Dir          string
	Addr         string // server HTTP address
	AgentCPU     int64
	AgentMemory  int64
	HeartbeatTTL time.Duration
	// Token is the operator token the server requires and every child
	// presents (passed in SHOAL_TOKEN); empty runs an open installation.
	Token string
	// Insecure runs every process without TLS. Otherwise the
	// installation's CA and certificates are made in DIR/tls on the first
	// start (see [tlsfiles.MakeSet]) and reused on later ones.
	Insecure bool
	Logger   *slog.Logger
	Stdout   io.Writer
	// Binary is the shoal executable; default: this process's.
	Binary string
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
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
	now    func() time.Time
	dir    string
	client *api.Client
	server *child
	// tls is the installation's files; nil with Insecure.
	tls *tlsfiles.Set
	// wake is signalled when an agent exits, so that the pool provider
	// looks again without waiting for the nodes to change.
	wake chan struct{}

	mu       sync.Mutex // guards the fields below
	rec      *Record
	agents   map[string]*child // running agents by name
	stopping bool              // exits are no longer recorded
	// Start-up failures: agents that exited soon after they started, in
	// a row; the pool provider backs off after them.
	failures    int
	lastFailure time.Time
}

type child struct {
	name    string
	agent   bool
	zone    string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
}

// startupFailure is how soon after its start an agent's exit counts as a
// failure to start, for the pool provider's backoff.
const startupFailure = 10 * time.Second

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
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	// One shoal dev per directory: a second one would fight the first
	// over its ports, its Raft data and its record of agents.
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("a shoal dev already runs in %s (it holds %s); stop it first", dir, lock.Name())
	}
	rec, err := readRecord(dir)
	switch {
	case errors.Is(err, errNoRecord):
		rec = &Record{}
	case err != nil:
		return err
	}
	for i := range rec.Agents {
		a := &rec.Agents[i]
		if a.State == AgentRunning && a.PID != 0 && checkAgentProcess(a.PID, rec.Binary, dir, a) == nil {
			return fmt.Errorf("a shoal dev already runs in %s (its agent %s is pid %d); stop it first", dir, a.Name, a.PID)
		}
	}
	in := &installation{cfg: cfg, log: cfg.Logger, now: cfg.Clock, dir: dir, rec: rec,
		agents: map[string]*child{}, wake: make(chan struct{}, 1)}
	if err := in.setupTLS(); err != nil {
		return err
	}
	defer in.stopAll()

	raftAddr, err := freeAddr()
	if err != nil {
		return err
	}
	args := []string{"server", "--name", "dev-server", "--data-dir", filepath.Join(dir, "server"),
		"--http-addr", cfg.Addr, "--raft-addr", raftAddr, "--bootstrap-expect", "1",
		"--pool-min-per-zone", strconv.Itoa(cfg.PoolMin)}
	if cfg.HeartbeatTTL > 0 {
		args = append(args, "--heartbeat-ttl", cfg.HeartbeatTTL.String())
	}
	args = append(args, in.tlsArgs(tlsfiles.RoleServer)...)
	in.server, err = in.start("server", false, args)
	if err != nil {
		return err
	}
	if err := in.waitForLeader(ctx); err != nil {
		return err
	}
	// The agents that ran when the last `shoal dev` in dir stopped come
	// back; agents that had died before do not.
	var restored []AgentRecord
	for _, a := range rec.Agents {
		if a.State == AgentRunning || a.State == AgentStopped {
			restored = append(restored, a)
		}
	}
	in.mu.Lock()
	in.rec.Binary = cfg.Binary
	in.mu.Unlock()
	if len(restored) > 0 {
		for _, a := range restored {
			if err := in.startAgent(a.Name, a.Zone); err != nil {
				return err
			}
		}
	} else {
		for i := 0; i < cfg.Agents; i++ {
			if err := in.startAgent("", fmt.Sprintf("zone-%d", i%cfg.Zones+1)); err != nil {
				return err
			}
		}
	}
	in.printStarted(restored)
	in.poolProvider(ctx)
	fmt.Fprintln(cfg.Stdout, "Stopping...")
	return nil
}

func (in *installation) printStarted(restored []AgentRecord) {
	cfg := in.cfg
	in.mu.Lock()
	var agents []*child
	zones := map[string]bool{}
	for _, a := range in.rec.Agents {
		if c := in.agents[a.Name]; c != nil {
			agents = append(agents, c)
			zones[c.zone] = true
		}
	}
	in.mu.Unlock()
	fmt.Fprintf(cfg.Stdout, "Shoal dev is running: 1 server, %d agents in %d zones (data and logs in %s).\n", len(agents), len(zones), in.dir)
	if len(restored) > 0 {
		fmt.Fprintf(cfg.Stdout, "The agents that ran when it last stopped are back (%s).\n", filepath.Join(in.dir, RecordFile))
	}
	fmt.Fprintln(cfg.Stdout)
	tw := tabwriter.NewWriter(cfg.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  AGENT\tZONE\tPID")
	for _, c := range agents {
		fmt.Fprintf(tw, "  %s\t%s\t%d\n", c.name, c.zone, c.cmd.Process.Pid)
	}
	tw.Flush()
	access := "Access: open (no operator token): callers without a token may do anything;\n        a cluster's token (shoal cluster token NAME) sees only that cluster."
	if cfg.Token != "" {
		access = "Access: callers must present the operator token (SHOAL_TOKEN) or a cluster's token."
	}
	fmt.Fprintf(cfg.Stdout, `
  API:  %s
  Try:  %s
        shoal node list
        shoal cluster create c1 --nodes 3 --zones %d
        shoal dev kill node-1 --dir %s    # kill -9 one of these agents
  %s

The pool provider keeps %d ready idle node(s) in every zone (--pool-min); the
agents it starts are logged with their pids. Press Ctrl-C to stop everything.
`, in.apiURL(), in.exportLine(), min(len(zones), 3), in.dir, access, cfg.PoolMin)
}

// start launches the binary with args, its output in logs/<name>.log;
// agent says whether it is an agent, whose exit is recorded.
func (in *installation) start(name string, agent bool, args []string) (*child, error) {
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
	c := &child{name: name, agent: agent, cmd: cmd, started: in.now(), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logf.Close()
		if agent && os.Geteuid() == 0 {
			// A killed agent's network would clash with the next node
			// given its block on this same host.
			clusternet.SweepNode(name, filepath.Join(in.dir, "agents", name, "net"), nil)
		}
		close(c.done)
		in.exited(c, err)
	}()
	return c, nil
}

// startAgent starts the agent name in zone; an empty name gives the next
// node-N.
func (in *installation) startAgent(name, zone string) error {
	in.mu.Lock()
	if name == "" {
		in.rec.LastNumber++
		name = "node-" + strconv.Itoa(in.rec.LastNumber)
	}
	in.mu.Unlock()
	dataDir := filepath.Join(in.dir, "agents", name)
	args := []string{"agent", "--name", name, "--zone", zone, "--data-dir", dataDir, "--servers", in.cfg.Addr}
	if in.cfg.AgentCPU > 0 {
		args = append(args, "--cpu", strconv.FormatInt(in.cfg.AgentCPU, 10))
	}
	if in.cfg.AgentMemory > 0 {
		args = append(args, "--memory", strconv.FormatInt(in.cfg.AgentMemory, 10))
	}
	args = append(args, in.tlsArgs(tlsfiles.RoleAgent)...)
	// Recorded before it starts, so that its exit, however soon, finds
	// its record; a failed start leaves it exited.
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.rec.agent(name)
	if a == nil {
		in.rec.Agents = append(in.rec.Agents, AgentRecord{Name: name})
		a = &in.rec.Agents[len(in.rec.Agents)-1]
	}
	*a = AgentRecord{Name: name, Zone: zone, DataDir: dataDir, State: AgentExited, Started: in.now()}
	c, err := in.start(name, true, args)
	if err != nil {
		in.saveLocked()
		return err
	}
	c.zone = zone
	in.agents[name] = c
	a.State, a.PID, a.Started = AgentRunning, c.cmd.Process.Pid, c.started
	in.saveLocked()
	in.log.Info("started agent", "node", name, "zone", zone, "pid", a.PID)
	return nil
}

// exited records the end of a child.
func (in *installation) exited(c *child, err error) {
	if !c.agent {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopping {
		return
	}
	delete(in.agents, c.name)
	now := in.now()
	if a := in.rec.agent(c.name); a != nil && a.PID == c.cmd.Process.Pid {
		a.State, a.PID, a.Exited = AgentExited, 0, now
		in.saveLocked()
	}
	if now.Sub(c.started) < startupFailure {
		in.failures++
		in.lastFailure = now
	}
	in.log.Warn("agent exited; it will not be started again", "node", c.name, "zone", c.zone, "status", fmt.Sprint(err))
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// saveLocked writes the record; in.mu is held. A record that cannot be
// written is logged: the installation runs on, it only would not restart
// the same agents.
func (in *installation) saveLocked() {
	if err := writeRecord(in.dir, in.rec); err != nil {
		in.log.Error("recording the agents", "file", filepath.Join(in.dir, RecordFile), "err", err)
	}
}

func (in *installation) waitForLeader(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	logPath := filepath.Join(in.dir, "logs", "server.log")
	for {
		select {
		case <-in.server.done:
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
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// stopAll stops agents first, then the server: SIGTERM, then SIGKILL after
// ten seconds. The agents running now are recorded as stopped, so that the
// next `shoal dev` in the directory starts them again.
func (in *installation) stopAll() {
	in.mu.Lock()
	in.stopping = true
	var agents []*child
	for _, c := range in.agents {
		agents = append(agents, c)
	}
	for i := range in.rec.Agents {
		if a := &in.rec.Agents[i]; a.State == AgentRunning {
			a.State, a.PID = AgentStopped, 0
		}
	}
	if len(in.rec.Agents) > 0 {
		in.saveLocked()
	}
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
	stop(agents)
	if in.server != nil {
		stop([]*child{in.server})
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
