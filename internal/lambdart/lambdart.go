// Package lambdart runs function sandboxes on a node and serves them the
// AWS Lambda Runtime API 2018-06-01, so that an unmodified bootstrap of
// Lambda's "provided" runtime (an aws-lambda-go binary, a shell script
// using curl) runs as it would on Lambda.
//
// A [Pool] keeps the node's sandboxes: one process each, started through a
// [sandbox.Driver] from a function version's bundle (unpacked once per
// cluster and digest, and shared read-only), with a Runtime API listener
// of its own. It hands an invocation to an idle sandbox of the version,
// starts one when asked to (a cold start), enforces the version's
// timeout, keeps the provisioned sandboxes the servers ask for, reclaims
// idle ones, and keeps each invocation's log.
//
// A sandbox is idle while its runtime waits in /next with nothing handed
// out; it is busy from the moment an invocation is given to it until it
// has answered and asks for the next one.
//
// The package knows nothing of servers: the agent gives it a way to fetch
// bundles ([Config.Fetch]) and, when tasks have networks of their own, a
// way to give a sandbox a network namespace ([Config.Network]).
package lambdart

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/sandbox"
)

// Errors of the package.
var (
	// ErrClosed is returned once the pool is closed.
	ErrClosed = errors.New("lambdart: pool closed")
	// ErrBadBundle is returned for a bundle that cannot be used: wrong
	// digest, not a zip, paths escaping its directory, no bootstrap.
	ErrBadBundle = errors.New("lambdart: bad bundle")
	// ErrInvalid is returned for an invocation or provisioned entry that
	// lacks what it needs (a function, a version with a digest).
	ErrInvalid = errors.New("lambdart: invalid request")
	// ErrNoRoom is returned when a sandbox's memory does not fit on the
	// node (Config.Room).
	ErrNoRoom = errors.New("lambdart: no room on the node for another sandbox")
)

// DefaultIdleTimeout is how long an on-demand sandbox may stay idle
// before it is stopped.
const DefaultIdleTimeout = 10 * time.Minute

// Network gives sandboxes network namespaces on their cluster's network.
type Network interface {
	// Attach gives sandbox id of cluster a network namespace and returns
	// its path (for [sandbox.Spec.NetNS]) and the sandbox's address on
	// the cluster network. An empty path means the sandbox shares the
	// host's network.
	Attach(cluster, id string) (netns, addr string, err error)
	// Detach frees what Attach gave sandbox id, once its process ended.
	Detach(id string)
}

// FetchFunc writes the bundle (zip) of version v of a function of
// cluster to w. The pool checks its size and digest.
type FetchFunc func(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error

// Config configures a [Pool].
type Config struct {
	// Node is the node's name, reported with sandboxes and results.
	Node string
	// Dir holds the pool's files: unpacked bundles, sandboxes' working
	// directories and logs, invocation log records. It is created.
	Dir string
	// Driver starts sandbox processes.
	Driver sandbox.Driver
	// Fetch gets a version's bundle.
	Fetch FetchFunc
	// Network, when set, gives each sandbox a network namespace.
	Network Network
	// Log receives the pool's events; nil discards them.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand is the source of sandbox ids; nil means crypto/rand.
	Rand io.Reader
	// IdleTimeout is how long an on-demand sandbox stays idle before it
	// is stopped; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Path is the PATH sandboxes get; empty means the usual system one.
	Path string
	// LogRecords and LogBytes bound the invocation log records kept per
	// function (0: 1000 records, 10 MiB).
	LogRecords int
	LogBytes   int64
	// Room, when set, returns the memory (MiB) sandboxes may take on the
	// node, all together: a sandbox whose function's memory does not fit
	// beside the others is not started (ErrNoRoom). Nil: no limit. It is
	// called without the pool's lock held.
	Room func() int64
}

// Hooks observe the pool, for the agent's metrics. Every field may be nil;
// they are called without the pool's lock held.
type Hooks struct {
	// Invoked is called when an invocation ends, with its outcome
	// ("ok", "error", "timeout", "oom", "crash", "declined").
	Invoked func(function, outcome string)
	// ColdStart and WarmHit count how invocations found their sandbox.
	ColdStart func(function string)
	WarmHit   func(function string)
}

// versionKey names the sandboxes that may serve a version: they run the
// same code with the same configuration.
type versionKey struct {
	cluster, function string
	version           int
	sha256            string
}

func keyOf(cluster, function string, v *api.FunctionVersion) versionKey {
	return versionKey{cluster: cluster, function: function, version: v.Version, sha256: v.SHA256}
}

// fnKey names a function for counters and logs.
type fnKey struct{ cluster, function string }

// Pool is a node's function sandboxes. It is safe for concurrent use.
//
// Lock ordering: Pool.mu before sbox.mu; bundles.mu and logs' locks are
// taken alone.
type Pool struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	hooks   Hooks
	bundles *bundleCache
	logs    *logStore

	mu     sync.Mutex
	closed bool
	// retained is the cluster the node is in (RetainCluster); no sandbox
	// of another is started. Empty until the agent says.
	retained  string
	sandboxes map[string]*sbox // by id
	// provisioned is the set the servers asked for, by version.
	provisioned map[versionKey]*provEntry
	// backoff holds the versions whose last start failed.
	backoff  map[versionKey]*initBackoff
	counters map[fnKey]*counters

	wake   chan struct{} // pokes the provisioning loop
	stop   chan struct{} // closed by Close
	loops  sync.WaitGroup
	starts sync.WaitGroup // sandbox starts and watchers in flight
}

// provEntry is one entry of the provisioned set.
type provEntry struct {
	cluster, function string
	version           *api.FunctionVersion
	count             int
	// pending counts the starts launched for the entry and not yet in
	// Pool.sandboxes.
	pending int
}

// New makes a pool and starts its background work (provisioning and idle
// reclaim). Close it when done.
func New(cfg Config) (*Pool, error) {
	if cfg.Driver == nil || cfg.Fetch == nil || cfg.Dir == "" {
		return nil, errors.New("lambdart: a driver, a fetch function and a directory are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Path == "" {
		cfg.Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("lambdart: %w", err)
	}
	cfg.Dir = dir
	// Sandboxes of an earlier agent died with it: their directories
	// are stale. Unpacked bundles stay, they are keyed by digest.
	if err := os.RemoveAll(filepath.Join(dir, "sandboxes")); err != nil {
		return nil, fmt.Errorf("lambdart: clearing old sandboxes: %w", err)
	}
	for _, d := range []string{"bundles", "sandboxes", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("lambdart: %w", err)
		}
	}
	p := &Pool{
		cfg: cfg, log: cfg.Log, now: cfg.Now,
		bundles:     newBundleCache(filepath.Join(dir, "bundles"), cfg.Fetch),
		logs:        newLogStore(filepath.Join(dir, "logs"), cfg.LogRecords, cfg.LogBytes),
		sandboxes:   map[string]*sbox{},
		provisioned: map[versionKey]*provEntry{},
		backoff:     map[versionKey]*initBackoff{},
		counters:    map[fnKey]*counters{},
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}
	p.loops.Add(1)
	go func() { defer p.loops.Done(); p.backgroundLoop() }()
	return p, nil
}

// SetHooks sets the pool's observers; call it before the first invocation.
func (p *Pool) SetHooks(h Hooks) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hooks = h
}

// Close stops every sandbox and its Runtime API listener, and the pool's
// background work. Invocations still running fail.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stop)
	all := make([]*sbox, 0, len(p.sandboxes))
	for _, s := range p.sandboxes {
		all = append(all, s)
	}
	p.mu.Unlock()
	p.loops.Wait()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() { defer wg.Done(); s.kill() }()
	}
	wg.Wait()
	p.starts.Wait()
	p.logs.close()
	return nil
}

// RetainCluster stops every sandbox of a cluster other than cluster,
// forgets their provisioned entries, and removes their bundles and
// invocation logs: the node left those clusters. An empty cluster stops
// them all.
func (p *Pool) RetainCluster(cluster string) {
	p.mu.Lock()
	p.retained = cluster
	var doomed []*sbox
	for _, s := range p.sandboxes {
		if s.key.cluster != cluster {
			s.stopping, s.provisioned = true, false // never picked nor kept again
			doomed = append(doomed, s)
		}
	}
	for k := range p.provisioned {
		if k.cluster != cluster {
			delete(p.provisioned, k)
		}
	}
	p.mu.Unlock()
	for _, s := range doomed {
		p.log.Info("lambdart: stopping a sandbox of a cluster the node left", "sandbox", s.id, "cluster", s.key.cluster, "function", s.key.function)
		go s.kill()
	}
	// The clusters' code and logs go too, once their sandboxes ended and
	// their last invocations' records were written (a sandbox's
	// directory goes with it).
	go func() {
		for _, s := range doomed {
			<-s.done
		}
		err := errors.Join(p.bundles.removeOthers(cluster), p.logs.removeOthers(cluster))
		if err != nil {
			p.log.Warn("lambdart: removing the functions' files of clusters the node left", "err", err)
		}
	}()
}

// newID returns a sandbox id: a valid sandbox run id (letters, digits,
// '-', '_', '.') naming the function and version.
func (p *Pool) newID(k versionKey) (string, error) {
	b := make([]byte, 6)
	if _, err := io.ReadFull(p.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("lambdart: random id: %w", err)
	}
	return fmt.Sprintf("fn.%s.%s.%d.%s", k.cluster, k.function, k.version, hex.EncodeToString(b)), nil
}

// newRequestID returns a random UUID (version 4), as Lambda's request ids.
func newRequestID(r io.Reader) string {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "00000000-0000-4000-8000-000000000000"
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// poke wakes the provisioning loop.
func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// backgroundLoop keeps the provisioned sandboxes and reclaims idle ones.
// It runs on wake-ups (a sandbox ended, a new set) and every second, which
// is also how starts held back by an init backoff are retried.
func (p *Pool) backgroundLoop() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		case <-tick.C:
			p.reclaimIdle()
		}
		p.fillProvisioned()
	}
}
