// Package fnqueue is the durable queue of asynchronous function invocations
// and their dead-letter queue, on NATS JetStream: each Shoal server embeds a
// NATS server (clustered with the other servers' when there are 3 or 5), or
// all of them connect to an external NATS cluster (Config.URL).
//
// An Event invocation is stored (file storage, fsync before the answer) in
// the work-queue stream FN_EVENTS under fn.event.<cluster>.<function> before
// [Queue.Enqueue] returns. Every server runs workers ([Queue.Run]) that pull
// from one shared durable consumer, "workers", so each server takes a share.
// A function error or timeout ([Failure]) is retried with a backoff, as many
// times as the event allows (0 to 2), by JetStream redelivery; after the last
// attempt the event goes to the limits stream FN_DEAD, one message per dead
// letter under fn.dead.<cluster>.<function>.<id>, where [Queue.DeadLetters],
// [Queue.DeadLetter] and [Queue.Redrive] find it.
//
// Delivery is at least once. An event's attempt number is JetStream's
// delivery count: a redelivery because the server running the event stopped
// (it did not acknowledge it within the ack wait, 30 s) counts as an attempt,
// and the function may then run twice. An error that is not a [Failure]
// (no agent could take the event) is retried on the same delivery and does
// not count.
//
// The package does not import the server, state or FSM packages: servers
// construct a [Queue] and pass it a [Handler].
package fnqueue

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors.
var (
	// ErrUnavailable: JetStream cannot store or serve now (starting, no
	// quorum of servers, or closed). The caller may try again later.
	ErrUnavailable = errors.New("fnqueue: the queue is unavailable")
	// ErrNotFound: no such dead letter.
	ErrNotFound = errors.New("fnqueue: no such dead letter")
	// ErrInvalid: a cluster, function or event ID that is not made of
	// letters, digits, '-' and '_' (they are NATS subject tokens).
	ErrInvalid = errors.New("fnqueue: invalid name")
)

// Names of the streams and of the consumer.
const (
	EventStream    = "FN_EVENTS"
	DeadStream     = "FN_DEAD"
	WorkerConsumer = "workers"
	eventPrefix    = "fn.event."
	deadPrefix     = "fn.dead."
	clusterName    = "shoal"
)

const (
	// DefaultWorkers is how many events a server runs at once.
	DefaultWorkers = 32
	// DeadLetterMaxAge is how long a dead letter is kept (as SQS keeps a
	// message at most).
	DeadLetterMaxAge = 14 * 24 * time.Hour
	// maxMsgBytes bounds a stored message: the largest payload plus room
	// for headers.
	maxMsgBytes = 8 << 20
	// maxDeferrals bounds the retries of an event that could not run (an
	// error other than a Failure) before it is dead-lettered: with the
	// default backoff about ten minutes.
	maxDeferrals = 120
	// maxErrorMessage bounds the error message kept in a dead letter.
	maxErrorMessage = 4096
	defaultAckWait  = 30 * time.Second
	dedupWindow     = 2 * time.Minute
)

// Config configures a [Queue].
type Config struct {
	// Name is this server's name, unique in the installation; it names the
	// embedded NATS server.
	Name string
	// DataDir holds the JetStream store, in DataDir/nats.
	DataDir string
	// Listen is host:port for the NATS cluster routes between servers.
	// It is used only with Routes.
	Listen string
	// Routes are the other servers' route addresses (host:port). Empty: a
	// standalone JetStream with no listener at all (JetStream cannot run
	// clustered alone), and changing to a cluster takes a restart.
	Routes []string
	// ServerTLS and ClientTLS, when set, secure routes with mutual TLS:
	// ServerTLS accepts, ClientTLS dials (both ends hold server
	// certificates of the installation's CA). NATS uses one configuration
	// for both directions, so the two are merged: ServerTLS's certificate,
	// client CAs and checks with ClientTLS's root CAs and server name.
	// With URL, ClientTLS secures the connection to the external cluster.
	ServerTLS, ClientTLS *tls.Config
	// URL, when set, connects to an external NATS cluster instead of
	// embedding a server (credentials may be given in the URL). Its
	// max_payload must be at least 8 MiB.
	URL string
	// Replicas is the streams' replica count: 1, or 3 when there are 3
	// or more servers.
	Replicas int
	// Workers is how many events this server runs at once; 0 means
	// DefaultWorkers.
	Workers int
	Log     *slog.Logger
	// Now stamps Enqueued and Failed times; nil means time.Now.
	Now func() time.Time
	// Backoff returns the wait before retry n (1-based); nil means 1 s
	// before the first retry and 5 s before later ones.
	Backoff func(attempt int) time.Duration

	// ackWait overrides the consumer's ack wait (tests).
	ackWait time.Duration
	// noSync turns SyncAlways off (benchmarks, to show its cost).
	noSync bool
}

// Event is one asynchronous invocation.
type Event struct {
	ID       string // the request ID: letters, digits, '-', '_'
	Cluster  string
	Function string
	Version  int // 0: the latest at each attempt
	Payload  []byte
	// Retries is how many times the event is retried after a Failure.
	Retries int
	// Attempt is set by the queue: 1 for the first delivery; JetStream's
	// delivery count.
	Attempt  int
	Enqueued time.Time // set by Enqueue when zero
}

// Failure is what a [Handler] returns when the function failed (a function
// error or a timeout): the event is retried, then dead-lettered with Type
// and Message.
type Failure struct {
	Type, Message string
}

func (f *Failure) Error() string { return f.Type + ": " + f.Message }

// Handler runs one event. It returns nil when the event is done (it is
// acknowledged), a *[Failure] when the function failed (retry or dead
// letter), and any other error when the event could not run now (no
// agent, say): that is retried after a backoff without counting as an
// attempt, up to a limit, then dead-lettered with the error. An event that
// should not run any more (its function was deleted) is dropped by
// returning nil. The context ends when the queue is closed; the handler
// must then return soon, as Close waits for it. A panic is recovered and
// treated as an error that is not a Failure.
type Handler func(ctx context.Context, ev *Event) error

// Queue is the durable queue of one server. Its methods are safe for
// concurrent use.
type Queue struct {
	cfg     Config
	log     *slog.Logger
	ackWait time.Duration

	ns   *server.Server  // nil with URL
	opts *server.Options // the embedded server's options; guarded by mu
	nc   *nats.Conn
	js   jetstream.JetStream

	ctx    context.Context // ends at Close, after fetchCtx
	cancel context.CancelFunc
	// fetchCtx ends first at Close: no more events are taken before the
	// running ones are cancelled and nacked, so that none of those is
	// delivered again to this closing server (a lost delivery, which would
	// count as an attempt).
	fetchCtx    context.Context
	fetchCancel context.CancelFunc
	fetchWG     sync.WaitGroup
	ready       chan struct{} // closed once streams and consumer exist

	mu     sync.Mutex
	events jetstream.Stream // set before ready is closed
	dead   jetstream.Stream
	cons   jetstream.Consumer
	closed bool

	wg sync.WaitGroup // setup, fetch loop and running events
}

var token = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func checkToken(what, s string) error {
	if !token.MatchString(s) {
		return fmt.Errorf("%w: %s %q may contain only letters, digits, '-' and '_'", ErrInvalid, what, s)
	}
	return nil
}

// Open starts the embedded NATS server (with no client listener: this
// process connects in-process) or connects to Config.URL, and creates or
// updates the streams in the background: while JetStream has no quorum,
// Enqueue returns ErrUnavailable.
func Open(cfg Config) (*Queue, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	q := &Queue{cfg: cfg, log: cfg.Log.With("component", "fnqueue"), ackWait: cfg.ackWait, ready: make(chan struct{})}
	if q.ackWait <= 0 {
		q.ackWait = defaultAckWait
	}
	var err error
	if cfg.URL != "" {
		opts := []nats.Option{nats.Name(cfg.Name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true)}
		if cfg.ClientTLS != nil {
			opts = append(opts, nats.Secure(cfg.ClientTLS))
		}
		q.nc, err = nats.Connect(cfg.URL, opts...)
		if err != nil {
			return nil, fmt.Errorf("fnqueue: connecting to %s: %w", redactURL(cfg.URL), err)
		}
	} else {
		if err := q.startServer(); err != nil {
			return nil, err
		}
		opts := []nats.Option{nats.InProcessServer(q.ns), nats.Name(cfg.Name), nats.MaxReconnects(-1)}
		if q.opts.Authorization != "" {
			opts = append(opts, nats.Token(q.opts.Authorization))
		}
		q.nc, err = nats.Connect("", opts...)
		if err != nil {
			q.ns.Shutdown()
			return nil, fmt.Errorf("fnqueue: connecting in process: %w", err)
		}
	}
	q.js, err = jetstream.New(q.nc)
	if err != nil {
		q.shutdown()
		return nil, fmt.Errorf("fnqueue: %w", err)
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.fetchCtx, q.fetchCancel = context.WithCancel(q.ctx)
	q.wg.Add(1)
	go q.setup()
	return q, nil
}

// DefaultBackoff waits 1 s before the first retry and 5 s before later
// ones.
func DefaultBackoff(attempt int) time.Duration {
	if attempt <= 1 {
		return time.Second
	}
	return 5 * time.Second
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "the NATS URL"
	}
	return u.Redacted()
}

// startServer starts the embedded NATS server.
func (q *Queue) startServer() error {
	cfg := q.cfg
	if cfg.Name == "" || cfg.DataDir == "" {
		return errors.New("fnqueue: an embedded server needs a name and a data directory")
	}
	o := &server.Options{
		ServerName:             cfg.Name,
		DontListen:             true,
		NoSigs:                 true,
		JetStream:              true,
		StoreDir:               filepath.Join(cfg.DataDir, "nats"),
		SyncAlways:             !cfg.noSync,
		MaxPayload:             maxMsgBytes,
		DisableJetStreamBanner: true,
	}
	if len(cfg.Routes) > 0 {
		if cfg.Listen == "" {
			return errors.New("fnqueue: routes need a listen address")
		}
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return err
		}
		o.Cluster = server.ClusterOpts{Name: clusterName, Host: host, Port: port}
		if cfg.ServerTLS != nil {
			o.Cluster.TLSConfig = routeTLS(cfg.ServerTLS, cfg.ClientTLS)
			o.Cluster.TLSTimeout = 5
		}
		routes, err := routeURLs(cfg.Routes)
		if err != nil {
			return err
		}
		o.Routes = routes
		// nats-server starts routes only once its client accept loop runs
		// (StartRouting waits for it), so a clustered server cannot use
		// DontListen: it listens on loopback, on a random port, behind a
		// random token that only this process knows.
		tok := make([]byte, 32)
		if _, err := rand.Read(tok); err != nil {
			return fmt.Errorf("fnqueue: %w", err)
		}
		o.DontListen, o.Host, o.Port, o.Authorization = false, "127.0.0.1", server.RANDOM_PORT, hex.EncodeToString(tok)
	}
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("fnqueue: %w", err)
	}
	nl := &natsLogger{log: q.log.With("nats", cfg.Name)}
	ns.SetLoggerV2(nl, false, false, false)
	ns.Start()
	for deadline := time.Now().Add(30 * time.Second); !ns.ReadyForConnections(100 * time.Millisecond); {
		if f := nl.fatal.Load(); f != nil {
			ns.Shutdown()
			return fmt.Errorf("fnqueue: the embedded NATS server failed: %s", *f)
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return errors.New("fnqueue: the embedded NATS server did not start within 30s")
		}
	}
	q.ns, q.opts = ns, o
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("fnqueue: route address %q: %w", hp, err)
	}
	var port int
	if _, err := fmt.Sscanf(p, "%d", &port); err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("fnqueue: route address %q: bad port", hp)
	}
	return host, port, nil
}

func routeURLs(routes []string) ([]*url.URL, error) {
	var us []*url.URL
	for _, r := range routes {
		if _, _, err := splitHostPort(r); err != nil {
			return nil, err
		}
		us = append(us, &url.URL{Scheme: "nats-route", Host: r})
	}
	return us, nil
}

// routeTLS merges the accepting and dialing configurations into the one
// NATS uses for both ends of a route.
func routeTLS(srv, cli *tls.Config) *tls.Config {
	c := srv.Clone()
	if cli != nil {
		c.RootCAs = cli.RootCAs
		c.ServerName = cli.ServerName
		if len(c.Certificates) == 0 {
			c.Certificates = cli.Certificates
		}
	}
	return c
}

// SetRoutes changes the routes to the other servers when the server group
// changes (JetStream keeps departed servers as peers until they are
// removed from its meta group, which this does not do). It does nothing
// with an external NATS cluster. A queue opened without routes runs a
// standalone JetStream: making it part of a cluster takes a restart.
func (q *Queue) SetRoutes(routes []string) error {
	if q.ns == nil {
		return nil
	}
	us, err := routeURLs(routes)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.opts.Cluster.Port == 0 {
		return errors.New("fnqueue: the queue was opened without routes (standalone JetStream); joining a cluster takes a restart")
	}
	o := q.opts.Clone()
	o.Routes = us
	if err := q.ns.ReloadOptions(o); err != nil {
		return fmt.Errorf("fnqueue: changing routes: %w", err)
	}
	q.opts = o
	return nil
}

// setup creates or updates the streams and the consumer, retrying until it
// succeeds (a clustered JetStream needs a quorum) or the queue closes.
//
// Each try has a short timeout: when several servers create the same
// stream at once, nats-server (2.15.2) answers only some of the requests,
// and a try again finds the stream made.
func (q *Queue) setup() {
	defer q.wg.Done()
	timeout := 2 * time.Second
	start, warned := time.Now(), time.Time{}
	for {
		err := q.createStreams(timeout)
		if err == nil {
			close(q.ready)
			q.log.Info("event queue ready", "replicas", q.cfg.Replicas, "after", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 15*time.Second && time.Since(warned) > time.Minute {
			q.log.Warn("event queue not ready yet: Event invocations are refused", "err", err, "since", start)
			warned = time.Now()
		} else {
			q.log.Debug("event queue not ready", "err", err)
		}
		if !sleep(q.ctx, 100*time.Millisecond) {
			return
		}
		timeout = min(2*timeout, 10*time.Second)
	}
}

func (q *Queue) createStreams(timeout time.Duration) error {
	events, err := q.ensureStream(timeout, jetstream.StreamConfig{
		Name:        EventStream,
		Description: "Shoal: Event invocations of functions waiting to run",
		Subjects:    []string{eventPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    q.cfg.Replicas,
		Duplicates:  dedupWindow,
		MaxMsgSize:  maxMsgBytes,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return err
	}
	dead, err := q.ensureStream(timeout, jetstream.StreamConfig{
		Name:              DeadStream,
		Description:       "Shoal: Event invocations of functions that failed every attempt",
		Subjects:          []string{deadPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          q.cfg.Replicas,
		Duplicates:        dedupWindow,
		MaxMsgSize:        maxMsgBytes,
		MaxMsgsPerSubject: 1,
		MaxAge:            DeadLetterMaxAge,
	})
	if err != nil {
		return err
	}
	want := jetstream.ConsumerConfig{
		Durable:       WorkerConsumer,
		Description:   "Shoal: every server's event workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       q.ackWait,
		MaxDeliver:    -1, // the workers dead-letter
		MaxAckPending: 1024,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	ctx, cancel := context.WithTimeout(q.ctx, timeout)
	defer cancel()
	cons, err := events.Consumer(ctx, WorkerConsumer)
	if err == nil {
		c := cons.CachedInfo().Config
		if c.AckWait != want.AckWait || c.MaxAckPending != want.MaxAckPending || c.MaxDeliver != want.MaxDeliver {
			err = errors.New("changed")
		}
	}
	if err != nil {
		if cons, err = events.CreateOrUpdateConsumer(ctx, want); err != nil {
			return fmt.Errorf("consumer %s: %w", WorkerConsumer, err)
		}
	}
	q.mu.Lock()
	q.events, q.dead, q.cons = events, dead, cons
	q.mu.Unlock()
	return nil
}

// ensureStream creates the stream, or updates it when a setting differs.
func (q *Queue) ensureStream(timeout time.Duration, want jetstream.StreamConfig) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(q.ctx, timeout)
	defer cancel()
	s, err := q.js.Stream(ctx, want.Name)
	if err == nil {
		c := s.CachedInfo().Config
		if c.Replicas == want.Replicas && c.Duplicates == want.Duplicates && c.MaxMsgSize == want.MaxMsgSize &&
			c.MaxMsgsPerSubject == want.MaxMsgsPerSubject && c.MaxAge == want.MaxAge &&
			c.Retention == want.Retention && c.Storage == want.Storage {
			return s, nil
		}
	}
	if s, err = q.js.CreateOrUpdateStream(ctx, want); err != nil {
		return nil, fmt.Errorf("stream %s: %w", want.Name, err)
	}
	return s, nil
}

// streams returns the streams once the queue is ready, or ErrUnavailable.
func (q *Queue) streams() (events, dead jetstream.Stream, err error) {
	select {
	case <-q.ready:
	default:
		return nil, nil, fmt.Errorf("%w: JetStream is not ready (starting, or no quorum of servers)", ErrUnavailable)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, nil, fmt.Errorf("%w: closed", ErrUnavailable)
	}
	return q.events, q.dead, nil
}

// Close stops the workers (cancelling the handlers' context and waiting for
// them), then the connection and the embedded server. Events in flight
// that did not finish are delivered again.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.fetchCancel()
	q.fetchWG.Wait()
	q.cancel()
	q.wg.Wait()
	if q.nc != nil {
		q.nc.FlushTimeout(5 * time.Second) // the last acknowledgements
	}
	q.shutdown()
	return nil
}

// crash stops the queue as kill -9 would: no event in flight is
// acknowledged or nacked; they are delivered again after the ack wait.
// Tests use it.
func (q *Queue) crash() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.shutdown() // first, so that nothing is acknowledged
	q.cancel()
	q.fetchWG.Wait()
	q.wg.Wait()
}

func (q *Queue) shutdown() {
	if q.nc != nil {
		q.nc.Close()
	}
	if q.ns != nil {
		q.ns.Shutdown()
		q.ns.WaitForShutdown()
	}
}

// natsLogger sends the embedded server's log to slog: notices at debug
// level (NATS is chatty when it starts), warnings and errors as such. It
// keeps the first fatal error (the embedded server does not exit) for Open
// to report.
type natsLogger struct {
	log   *slog.Logger
	fatal atomic.Pointer[string]
}

func (l *natsLogger) Noticef(f string, v ...any) { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Warnf(f string, v ...any)   { l.log.Warn(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Errorf(f string, v ...any)  { l.log.Error(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Debugf(f string, v ...any)  { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Tracef(string, ...any)      {}

func (l *natsLogger) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	l.fatal.CompareAndSwap(nil, &msg)
	l.log.Error(msg)
}
