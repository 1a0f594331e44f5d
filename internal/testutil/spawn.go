package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the path of a shoal binary built from this source tree,
// once per test process. SHOAL_BIN overrides it.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SHOAL_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "shoal")
		out, err := exec.Command("go", "build", "-o", buildPath, "github.com/shoal-dev/shoal/cmd/shoal").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return freeAddrOn(t, "")
}

// freeAddrOn is FreeAddr on ip (default 127.0.0.1).
func freeAddrOn(t testing.TB, ip string) string {
	t.Helper()
	if ip == "" {
		ip = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Proc is a spawned shoal process.
type Proc struct {
	Name string
	Args []string
	// Env is added to the process's environment.
	Env     []string
	LogPath string
	bin     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// afterStop runs once the process, stopped by Kill9 or Stop, is gone.
	afterStop func()
}

func startProc(t testing.TB, bin, name, logDir string, args, env []string) *Proc {
	t.Helper()
	p := &Proc{Name: name, Args: args, Env: env, LogPath: filepath.Join(logDir, name+".log"), bin: bin}
	if err := p.start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(p.Kill9)
	return p
}

func (p *Proc) start() error {
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	return nil
}

// PID of the running process.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Kill9 kills the process with SIGKILL and waits for it.
func (p *Proc) Kill9() { p.signal(syscall.SIGKILL) }

// Stop sends SIGTERM and waits for the process to exit.
func (p *Proc) Stop() { p.signal(syscall.SIGTERM) }

func (p *Proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	if p.afterStop != nil {
		p.afterStop()
	}
}

// Restart starts the process again with the same arguments.
func (p *Proc) Restart(t testing.TB) {
	t.Helper()
	if p.Running() {
		t.Fatalf("%s is still running", p.Name)
	}
	if err := p.start(); err != nil {
		t.Fatalf("restarting %s: %v", p.Name, err)
	}
}

// Log returns what the process has written so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// ServerProc is a spawned `shoal server`.
type ServerProc struct {
	*Proc
	HTTPAddr, RaftAddr string
	// QueueAddr is where the server's embedded queue takes routes (groups of several).
	QueueAddr string
}

// Options shape an installation.
type Options struct {
	Servers      int // default 1
	Agents       int
	Zones        int // default 1; agents are spread round-robin
	HeartbeatTTL time.Duration
	AgentCPU     int64 // default 2000
	AgentMemory  int64 // default 2048
	// AgentArgs are extra flags for every agent (say, --repair-rate 0).
	AgentArgs []string
	// ServerArgs are extra flags for every server.
	ServerArgs []string
	// Token is the operator token the servers require; empty runs an open
	// installation. Servers, agents, Client and Shoal all present it.
	Token string
	// ServerIP is the address servers listen on (default 127.0.0.1);
	// AgentHosts, when set, are the test hosts (NetHosts) agents run in,
	// round-robin, each listening on its host's address.
	ServerIP   string
	AgentHosts []TestHost
	// Insecure runs the installation without TLS (--insecure). Otherwise
	// every link uses TLS with a CA made for the test (Installation.TLS).
	Insecure bool
}

// Installation is a set of spawned servers and agents.
type Installation struct {
	Bin     string
	Dir     string
	Opts    Options
	Servers []*ServerProc
	Agents  []*Proc
	Client  *api.Client
	// TLS holds the installation's CA and certificates; nil when
	// Opts.Insecure.
	TLS *tlsfiles.Set
	t   testing.TB
}

// StartInstallation spawns servers and agents and waits until a leader
// exists and every agent's node is ready.
func StartInstallation(t testing.TB, opts Options) *Installation {
	t.Helper()
	if opts.Servers == 0 {
		opts.Servers = 1
	}
	if opts.Zones == 0 {
		opts.Zones = 1
	}
	if opts.AgentCPU == 0 {
		opts.AgentCPU = 2000
	}
	if opts.AgentMemory == 0 {
		opts.AgentMemory = 2048
	}
	in := &Installation{Bin: Binary(t), Dir: t.TempDir(), Opts: opts, t: t}
	t.Cleanup(func() { unmountUnder(in.Dir) }) // after the agents are killed
	if !opts.Insecure {
		set := TLSFiles(t)
		in.TLS = &set
	}
	var httpAddrs []string
	for i := 0; i < opts.Servers; i++ {
		in.Servers = append(in.Servers, &ServerProc{HTTPAddr: freeAddrOn(t, opts.ServerIP), RaftAddr: freeAddrOn(t, opts.ServerIP),
			QueueAddr: freeAddrOn(t, opts.ServerIP)})
		httpAddrs = append(httpAddrs, in.Servers[i].HTTPAddr)
	}
	for i, s := range in.Servers {
		name := fmt.Sprintf("server-%d", i+1)
		args := []string{"server", "--name", name, "--data-dir", filepath.Join(in.Dir, name),
			"--http-addr", s.HTTPAddr, "--raft-addr", s.RaftAddr, "--bootstrap-expect", strconv.Itoa(opts.Servers),
			"--log-level", "debug"}
		if opts.Servers > 1 {
			var others []string
			for j, a := range httpAddrs {
				if j != i {
					others = append(others, a)
				}
			}
			args = append(args, "--join", strings.Join(others, ","), "--queue-addr", s.QueueAddr)
		}
		if opts.HeartbeatTTL > 0 {
			args = append(args, "--heartbeat-ttl", opts.HeartbeatTTL.String())
		}
		args = append(args, opts.ServerArgs...)
		args = append(args, in.tlsArgs(tlsfiles.RoleServer)...)
		s.Proc = startProc(t, in.Bin, name, in.Dir, args, in.tokenEnv())
	}
	in.Client = in.NewClient(httpAddrs, opts.Token)
	t.Cleanup(func() {
		if t.Failed() {
			in.dumpLogs()
		}
	})
	in.WaitForLeader()
	for i := 0; i < opts.Agents; i++ {
		in.AddAgent(fmt.Sprintf("zone-%d", i%opts.Zones+1))
	}
	in.WaitForReady(opts.Agents)
	return in
}

// AddAgent spawns one more agent in zone.
func (in *Installation) AddAgent(zone string) *Proc {
	in.t.Helper()
	name := fmt.Sprintf("node-%d", len(in.Agents)+1)
	var addrs []string
	for _, s := range in.Servers {
		addrs = append(addrs, s.HTTPAddr)
	}
	args := []string{"agent", "--name", name, "--zone", zone, "--data-dir", filepath.Join(in.Dir, name),
		"--servers", strings.Join(addrs, ","), "--cpu", strconv.FormatInt(in.Opts.AgentCPU, 10),
		"--memory", strconv.FormatInt(in.Opts.AgentMemory, 10), "--log-level", "debug"}
	args = append(args, in.Opts.AgentArgs...)
	args = append(args, in.tlsArgs(tlsfiles.RoleAgent)...)
	bin := in.Bin
	if hosts := in.Opts.AgentHosts; len(hosts) > 0 {
		h := hosts[len(in.Agents)%len(hosts)]
		// nsenter (unlike ip netns exec, which remounts /sys and so hides
		// the cgroup file systems) only enters the network namespace, then
		// execs shoal: same pid.
		args = append([]string{"--net=/run/netns/" + h.NS, bin}, append(args, "--http-addr", h.IP+":0", "--peer-addr", h.IP+":0")...)
		bin = "nsenter"
	}
	p := startProc(in.t, bin, name, in.Dir, args, in.tokenEnv())
	if len(in.Opts.AgentHosts) == 0 { // a test host's namespace goes with it
		p.afterStop = func() { sweepNetwork(name, filepath.Join(in.Dir, name)) }
	}
	in.Agents = append(in.Agents, p)
	return p
}

// Agent returns the agent process of the named node.
func (in *Installation) Agent(node string) *Proc {
	for _, a := range in.Agents {
		if a.Name == node {
			return a
		}
	}
	in.t.Fatalf("no agent %s", node)
	return nil
}

// WaitForLeader waits until some server reports a leader.
func (in *Installation) WaitForLeader() {
	in.t.Helper()
	WaitFor(in.t, 30*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		l, err := in.Client.Leader(ctx)
		return err == nil && l != "", fmt.Sprintf("leader %q, err %v", l, err)
	})
}

// WaitForReady waits until at least n nodes are ready.
func (in *Installation) WaitForReady(n int) {
	in.t.Helper()
	WaitFor(in.t, 30*time.Second, func() (bool, string) {
		nodes, _, err := in.Client.Nodes(context.Background(), nil)
		ready := 0
		for _, nd := range nodes {
			if nd.State == api.NodeReady {
				ready++
			}
		}
		return ready >= n, fmt.Sprintf("%d of %d nodes ready (err %v)", ready, n, err)
	})
}

// Leader returns the index in Servers of the current leader.
func (in *Installation) Leader() int {
	in.t.Helper()
	var idx int
	WaitFor(in.t, 30*time.Second, func() (bool, string) {
		for _, s := range in.Servers {
			if !s.Running() {
				continue
			}
			c := in.NewClient([]string{s.HTTPAddr}, in.Opts.Token)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			l, err := c.Leader(ctx)
			cancel()
			if err == nil && l != "" {
				for j, o := range in.Servers {
					if o.RaftAddr == l && o.Running() {
						idx = j
						return true, ""
					}
				}
			}
		}
		return false, "no running server is leader"
	})
	return idx
}

// Shoal runs the CLI against the installation and returns its stdout,
// stderr and exit status.
func (in *Installation) Shoal(args ...string) (string, string, int) {
	in.t.Helper()
	return in.ShoalAs(in.Opts.Token, args...)
}

// ShoalAs runs the CLI as the holder of token (say, a cluster's token, or
// none at all).
func (in *Installation) ShoalAs(token string, args ...string) (string, string, int) {
	in.t.Helper()
	return RunCLI(in.t, in.Bin, append(in.CLIEnv(), "SHOAL_TOKEN="+token, "SHOAL_ADDR="+in.Addrs()), args...)
}

// CLIEnv is the environment that makes the shoal CLI trust the
// installation and present its client certificate (none when insecure).
func (in *Installation) CLIEnv() []string {
	if in.TLS == nil {
		return nil
	}
	f := in.TLS.Files(tlsfiles.RoleClient)
	return []string{"SHOAL_CACERT=" + f.CACert, "SHOAL_CLIENT_CERT=" + f.Cert, "SHOAL_CLIENT_KEY=" + f.Key}
}

// NewClient returns an API client of the servers at addrs that presents
// the installation's client certificate (plain HTTP when insecure).
func (in *Installation) NewClient(addrs []string, token string) *api.Client {
	if in.TLS == nil {
		return api.NewClient(addrs, token)
	}
	return NewClient(addrs, token, Identity(in.t, *in.TLS, tlsfiles.RoleClient))
}

// tlsArgs are the TLS flags of a server or agent (role r).
func (in *Installation) tlsArgs(r tlsfiles.Role) []string {
	if in.TLS == nil {
		return []string{"--insecure"}
	}
	f := in.TLS.Files(r)
	return []string{"--ca-cert", f.CACert, "--cert", f.Cert, "--key", f.Key}
}

// Addrs returns the HTTP addresses of the running servers, comma-separated
// as SHOAL_ADDR takes them.
func (in *Installation) Addrs() string {
	var addrs []string
	for _, s := range in.Servers {
		if s.Running() {
			addrs = append(addrs, s.HTTPAddr)
		}
	}
	return strings.Join(addrs, ",")
}

// tokenEnv passes the operator token to a spawned process the way a user
// would: in SHOAL_TOKEN, never on the command line.
func (in *Installation) tokenEnv() []string {
	return []string{"SHOAL_TOKEN=" + in.Opts.Token}
}

// RunCLI runs the shoal binary with extra environment variables.
func RunCLI(t testing.TB, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running shoal %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func (in *Installation) dumpLogs() {
	for _, p := range append(serverProcs(in.Servers), in.Agents...) {
		log := p.Log()
		if len(log) > 6000 {
			log = "...\n" + log[len(log)-6000:]
		}
		in.t.Logf("==== %s log ====\n%s", p.Name, log)
	}
}

func serverProcs(s []*ServerProc) []*Proc {
	out := make([]*Proc, len(s))
	for i, p := range s {
		out[i] = p.Proc
	}
	return out
}
