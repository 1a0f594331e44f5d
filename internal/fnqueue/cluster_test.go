package fnqueue

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// openCluster opens n queues routed to each other over mutual TLS, with
// streams of n replicas, and waits until each is ready; tweak, when not
// nil, changes each configuration.
func openCluster(t testing.TB, n int, tweak func(i int, cfg *Config)) []*Queue {
	t.Helper()
	tlsDir := t.TempDir()
	if _, err := tlsfiles.MakeSet(tlsDir); err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	qs := make([]*Queue, n)
	for i := range qs {
		cfg := clusterConfig(t, tlsDir, addrs, i, t.TempDir())
		if tweak != nil {
			tweak(i, &cfg)
		}
		q, err := Open(cfg)
		if err != nil {
			t.Fatalf("Open %s: %v", cfg.Name, err)
		}
		t.Cleanup(func() { q.Close() })
		qs[i] = q
	}
	for _, q := range qs {
		waitReady(t, q)
	}
	return qs
}

// clusterConfig is the configuration of server i (named s<i+1>) of a
// cluster listening on addrs, with the TLS files of tlsDir and streams of
// len(addrs) replicas.
func clusterConfig(t testing.TB, tlsDir string, addrs []string, i int, dataDir string) Config {
	t.Helper()
	id, err := tlsfiles.Load(tlsfiles.Set{Dir: tlsDir}.Files(tlsfiles.RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := id.ServerConfig(tlsfiles.RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dataDir)
	cfg.Name = "s" + strconv.Itoa(i+1)
	cfg.Log = testLog(t).With("server", cfg.Name)
	cfg.Listen = addrs[i]
	for j, a := range addrs {
		if j != i {
			cfg.Routes = append(cfg.Routes, a)
		}
	}
	cfg.ServerTLS, cfg.ClientTLS = serverTLS, id.ClientConfig(tlsfiles.RoleServer)
	cfg.Replicas = len(addrs)
	return cfg
}

// gated returns a handler that waits until gate is closed, then runs h.
func gated(gate chan struct{}, h Handler) Handler {
	return func(ctx context.Context, ev *Event) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		return h(ctx, ev)
	}
}

// enqueueRetrying enqueues through q, trying again while the queue is
// unavailable (a stream leader is being elected after a server's loss).
func enqueueRetrying(t *testing.T, q *Queue, e *Event) {
	t.Helper()
	var last error
	waitFor(t, "Enqueue "+e.ID+" to succeed", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		last = q.Enqueue(ctx, e)
		if last != nil && !errors.Is(last, ErrUnavailable) {
			t.Fatalf("Enqueue %s: %v", e.ID, last)
		}
		return last == nil
	})
}

// TestClusterSurvivesLosingAServer: three servers, streams of three
// replicas; one of them stops as with kill -9 while running events, and
// the other two go on storing and running events, those it held included.
func TestClusterSurvivesLosingAServer(t *testing.T) {
	// The first two servers run few events at once, and finish none
	// before the third holds one, so that it does.
	qs := openCluster(t, 3, func(i int, cfg *Config) {
		if i < 2 {
			cfg.Workers = 4
		}
	})
	r := newRecorder()
	thirdHolds := make(chan struct{})
	ok := gated(thirdHolds, r.handler(func(*Event, int) error { return nil }))
	qs[0].Run(ok)
	qs[1].Run(ok)
	// The third server never finishes an event: whatever it took must be
	// delivered again to the others after it dies.
	var mu sync.Mutex
	var heldByLost []string
	qs[2].Run(func(ctx context.Context, ev *Event) error {
		mu.Lock()
		if heldByLost = append(heldByLost, ev.ID); len(heldByLost) == 1 {
			close(thirdHolds)
		}
		mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	})
	var ids []string
	for i := range 30 {
		id := "a" + strconv.Itoa(i)
		ids = append(ids, id)
		enqueueRetrying(t, qs[i%3], ev(id, "f", 2))
	}
	waitFor(t, "the third server to hold an event", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(heldByLost) > 0
	})
	qs[2].crash()
	for i := range 30 {
		id := "b" + strconv.Itoa(i)
		ids = append(ids, id)
		enqueueRetrying(t, qs[i%2], ev(id, "f", 2))
	}
	waitFor(t, "every event done on the surviving servers", 45*time.Second, func() bool { return r.doneCount() == len(ids) })
	for _, id := range ids {
		if len(r.callsOf(id)) == 0 {
			t.Errorf("event %s never ran", id)
		}
	}
	waitFor(t, "an empty queue", 10*time.Second, func() bool {
		queued, _, err := qs[0].Depth(context.Background(), "c1", "f")
		return err == nil && queued == 0
	})
	// A delivery to a server that died counts as an attempt.
	mu.Lock()
	for _, id := range heldByLost {
		calls := r.callsOf(id)
		if len(calls) == 0 || calls[len(calls)-1].Attempt < 2 {
			t.Errorf("event %s, held by the lost server, ran on the others as %+v; want attempt 2 or more", id, calls)
		}
	}
	t.Logf("the lost server held %d events", len(heldByLost))
	mu.Unlock()
	if err := qs[0].SetRoutes([]string{qs[1].cfg.Listen}); err != nil {
		t.Errorf("SetRoutes: %v", err)
	}
}

// TestListenWithoutRoutes: a single server given a listen address but no
// routes runs a standalone JetStream.
func TestListenWithoutRoutes(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Listen = freeAddr(t)
	q := open(t, cfg)
	r := newRecorder()
	q.Run(r.handler(func(*Event, int) error { return nil }))
	enqueue(t, q, ev("x", "f", 0))
	waitFor(t, "the event done", 20*time.Second, func() bool { return r.doneCount() == 1 })
	if err := q.SetRoutes([]string{freeAddr(t)}); err == nil {
		t.Errorf("SetRoutes on a standalone queue succeeded; it needs a restart")
	}
}

// TestExternalNATS: with URL the queue uses an external NATS server (here
// one started by the test, with a client port) and embeds none.
func TestExternalNATS(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: maxMsgBytes, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the external NATS server did not start")
	}
	cfg := testConfig(t, "")
	cfg.URL = ns.ClientURL()
	q := open(t, cfg)
	if q.ns != nil {
		t.Fatal("a queue with a URL embedded a server")
	}
	r := newRecorder()
	q.Run(r.handler(func(ev *Event, n int) error {
		if n == 1 {
			return &Failure{Type: "Unhandled", Message: "first"}
		}
		return nil
	}))
	enqueue(t, q, ev("x", "f", 1))
	waitFor(t, "the event done on its second attempt", 20*time.Second, func() bool { return r.doneCount() == 1 })
	if err := q.SetRoutes([]string{"127.0.0.1:1"}); err != nil {
		t.Errorf("SetRoutes with a URL: %v, want nil (nothing to do)", err)
	}
}

// TestExternalNATSReplicas: with URL the streams' replicas follow the
// external NATS, not Config.Replicas: one on a single server, three on a
// cluster of three.
func TestExternalNATSReplicas(t *testing.T) {
	startNATS := func(name string, cluster *server.ClusterOpts, routes []string) *server.Server {
		t.Helper()
		opts := &server.Options{ServerName: name, Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
			StoreDir: t.TempDir(), MaxPayload: maxMsgBytes, NoSigs: true, NoLog: true}
		if cluster != nil {
			opts.Cluster = *cluster
			opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		ns.Start()
		t.Cleanup(ns.Shutdown)
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("NATS server %s did not start", name)
		}
		return ns
	}
	streamReplicas := func(q *Queue) int {
		t.Helper()
		st, err := q.js.Stream(context.Background(), EventStream)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.Replicas
	}

	single := startNATS("single", nil, nil)
	cfg := testConfig(t, "")
	cfg.URL, cfg.Replicas = single.ClientURL(), 3
	if got := streamReplicas(open(t, cfg)); got != 1 {
		t.Errorf("on a single NATS server: %d replicas, want 1", got)
	}

	var routeAddrs, urls []string
	for range 3 {
		routeAddrs = append(routeAddrs, freeAddr(t))
	}
	var routes []string
	for _, a := range routeAddrs {
		routes = append(routes, "nats-route://"+a)
	}
	for i, a := range routeAddrs {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		ns := startNATS("n"+strconv.Itoa(i), &server.ClusterOpts{Name: "ext", Host: host, Port: p}, routes)
		urls = append(urls, ns.ClientURL())
	}
	cfg = testConfig(t, "")
	cfg.URL, cfg.Replicas = strings.Join(urls, ","), 1
	if got := streamReplicas(open(t, cfg)); got != 3 {
		t.Errorf("on a NATS cluster of three: %d replicas, want 3", got)
	}
}
