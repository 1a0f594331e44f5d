package testutil

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// InProcGroup is a Raft group of Shoal servers running inside the test
// process, each on its own loopback HTTP and Raft ports and data directory.
// A server can be killed and restarted with the same addresses and data, as
// after a crash. Its methods are meant for the test goroutine.
type InProcGroup struct {
	t       testing.TB
	cfgs    []server.Config
	servers []*server.Server // nil while killed
	clients []*api.Client
	logs    *syncBuffer
	tls     tlsfiles.Set
}

// StartServers starts n servers that form one Raft group with
// BootstrapExpect n, each told to join all the others, and waits until
// they have a leader. They use TLS, with a CA made for the test
// ([InProcGroup.TLSFiles]). configure, if given, may change each server's
// configuration before it starts (for example its Join list or
// HeartbeatTTL, or TLS set to nil for plain HTTP); i is the server's
// position in the group. The servers are shut down when the test ends, and
// their logs are printed if it failed.
func StartServers(t testing.TB, n int, configure ...func(i int, c *server.Config)) *InProcGroup {
	t.Helper()
	g := &InProcGroup{t: t, logs: &syncBuffer{limit: 8 << 20}, tls: TLSFiles(t)}
	serverID := Identity(t, g.tls, tlsfiles.RoleServer)
	dir := t.TempDir()
	httpAddrs := make([]string, n)
	for i := range httpAddrs {
		httpAddrs[i] = FreeAddr(t)
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("server-%d", i+1)
		cfg := server.Config{
			Name:            name,
			DataDir:         filepath.Join(dir, name),
			HTTPAddr:        httpAddrs[i],
			RaftAddr:        FreeAddr(t),
			QueueAddr:       FreeAddr(t),
			BootstrapExpect: n,
			TLS:             serverID,
			Logger:          slog.New(slog.NewTextHandler(g.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		for j, a := range httpAddrs {
			if j != i {
				cfg.Join = append(cfg.Join, a)
			}
		}
		for _, fn := range configure {
			fn(i, &cfg)
		}
		g.cfgs = append(g.cfgs, cfg)
		g.clients = append(g.clients, g.NewClient([]string{cfg.HTTPAddr}, cfg.Token))
	}
	// Registered first so that it runs after the shutdown below.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server logs:\n%s", g.logs.String())
		}
	})
	t.Cleanup(g.shutdownAll)
	g.servers = make([]*server.Server, n)
	for i := range g.cfgs {
		s, err := server.New(g.cfgs[i])
		for try := 0; err != nil && strings.Contains(err.Error(), "listening for raft") &&
			strings.Contains(err.Error(), "address already in use") && try < 5; try++ {
			// FreeAddr's port was taken by another process meanwhile;
			// no other server names the Raft address, so take another.
			g.cfgs[i].RaftAddr = FreeAddr(t)
			s, err = server.New(g.cfgs[i])
		}
		if err != nil {
			t.Fatalf("starting %s: %v", g.cfgs[i].Name, err)
		}
		g.servers[i] = s
	}
	g.Leader(t)
	return g
}

// Len is the number of servers in the group, running or killed.
func (g *InProcGroup) Len() int { return len(g.cfgs) }

// Server returns server i, or nil while it is killed.
func (g *InProcGroup) Server(i int) *server.Server { return g.servers[i] }

// Config returns the configuration server i was started with.
func (g *InProcGroup) Config(i int) server.Config { return g.cfgs[i] }

// HTTPAddr returns server i's API address; it stays the same across
// restarts.
func (g *InProcGroup) HTTPAddr(i int) string { return g.cfgs[i].HTTPAddr }

// Client returns an API client that talks to server i only, so that a
// test controls which server receives each request. With TLS it presents
// an agent certificate, since tests play agents through it.
func (g *InProcGroup) Client(i int) *api.Client { return g.clients[i] }

// NewClient returns an API client of the servers at addrs as
// [InProcGroup.Client] makes them.
func (g *InProcGroup) NewClient(addrs []string, token string) *api.Client {
	if g.tlsOff() {
		return api.NewClient(addrs, token)
	}
	return NewClient(addrs, token, Identity(g.t, g.tls, tlsfiles.RoleAgent))
}

// tlsOff reports whether configure turned TLS off.
func (g *InProcGroup) tlsOff() bool { return len(g.cfgs) > 0 && g.cfgs[0].TLS == nil }

// TLSFiles returns the files of the group's CA and certificates.
func (g *InProcGroup) TLSFiles() tlsfiles.Set { return g.tls }

// Running lists the positions of the servers not killed.
func (g *InProcGroup) Running() []int {
	var out []int
	for i, s := range g.servers {
		if s != nil {
			out = append(out, i)
		}
	}
	return out
}

// Leader waits until exactly one running server leads and every running
// server reports it, with its HTTP address, as the leader, so that writes
// sent to any of them reach it; it returns the leader's position.
func (g *InProcGroup) Leader(t testing.TB) int {
	t.Helper()
	leader := -1
	WaitFor(t, 15*time.Second, func() (bool, string) {
		leader = -1
		for _, i := range g.Running() {
			if g.servers[i].IsLeader() {
				if leader >= 0 {
					return false, fmt.Sprintf("both %s and %s think they lead", g.cfgs[leader].Name, g.cfgs[i].Name)
				}
				leader = i
			}
		}
		if leader < 0 {
			return false, "no running server leads"
		}
		want := g.servers[leader].Info()
		for _, i := range g.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			servers, err := g.Client(i).Servers(ctx)
			cancel()
			if err != nil {
				return false, fmt.Sprintf("%s: listing servers: %v", g.cfgs[i].Name, err)
			}
			ok := false
			for _, sv := range servers {
				if sv.Leader && sv.RaftAddr == want.RaftAddr && sv.HTTPAddr == want.HTTPAddr {
					ok = true
				}
			}
			if !ok {
				return false, fmt.Sprintf("%s does not yet report %s (%s) as leader: %+v", g.cfgs[i].Name, want.Name, want.HTTPAddr, servers)
			}
		}
		return true, ""
	})
	return leader
}

// Kill shuts server i down, keeping its data directory for Restart. For
// the other servers this looks like a crash: it stops answering.
func (g *InProcGroup) Kill(i int) {
	if s := g.servers[i]; s != nil {
		s.Shutdown()
		g.servers[i] = nil
	}
}

// Restart starts killed server i again with its configuration, addresses
// and data directory. It retries briefly in case a port is not yet free.
func (g *InProcGroup) Restart(t testing.TB, i int) *server.Server {
	t.Helper()
	if g.servers[i] != nil {
		t.Fatalf("Restart(%d): %s is running", i, g.cfgs[i].Name)
	}
	WaitFor(t, 10*time.Second, func() (bool, string) {
		s, err := server.New(g.cfgs[i])
		if err != nil {
			return false, fmt.Sprintf("restarting %s: %v", g.cfgs[i].Name, err)
		}
		g.servers[i] = s
		return true, ""
	})
	return g.servers[i]
}

func (g *InProcGroup) shutdownAll() {
	var wg sync.WaitGroup
	for i := range g.servers {
		if s := g.servers[i]; s != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.Shutdown() }()
			g.servers[i] = nil
		}
	}
	wg.Wait()
}

// syncBuffer collects log output from many goroutines, up to limit bytes;
// it never fails, so that logging after a test ends is harmless.
type syncBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	limit     int
	truncated bool
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > b.limit {
		b.truncated = true
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if b.truncated {
		s += "\n" + strings.Repeat("-", 20) + " log truncated at " + fmt.Sprint(b.limit) + " bytes"
	}
	return s
}
