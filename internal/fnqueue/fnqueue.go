package fnqueue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
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
	// letters, digits, '-' and '_' (they are NATS subject tokens), or
	// negative retries.
	ErrInvalid = errors.New("fnqueue: invalid argument")
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
	// DefaultDrain is Config.Drain's default: a server restarting lets
	// the events it runs finish, unless they take longer than this.
	DefaultDrain = 20 * time.Second
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
	// embedded NATS server (and, with URL, the connection).
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
	// Replicas is the embedded streams' replica count (the server gives
	// the number of servers it knows, up to 3); an existing stream's is
	// never lowered. With URL it is ignored: the queue
	// sizes the streams from the NATS it connects to (1 for a single
	// server, up to 3 for a cluster).
	Replicas int
	// Workers is how many events this server runs at once; 0 means
	// DefaultWorkers.
	Workers int
	// Log receives the queue's log and the embedded server's; nil
	// discards it.
	Log *slog.Logger
	// Now stamps Enqueued and Failed times; nil means time.Now.
	Now func() time.Time
	// Backoff returns the wait before retry n (1-based); nil means 1 s
	// before the first retry and 5 s before later ones.
	Backoff func(attempt int) time.Duration
	// Drain is how long Close lets the events running on this server
	// finish before it cancels them (they are then delivered again, and
	// may run twice); 0 means DefaultDrain, negative none.
	Drain time.Duration

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
	// delivery count, plus the attempts used before a server closing
	// gave the event back unrun.
	Attempt  int
	Enqueued time.Time // set by Enqueue when zero
	spent    int       // attempts used before this message (hdrSpent)
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
	// fetchCtx ends first at Close: no more events are taken, the
	// waiting ones are given back, and the running ones have
	// Config.Drain to finish before ctx ends and they are cancelled and
	// nacked; none is delivered again to this closing server (a lost
	// delivery, which would count as an attempt).
	fetchCtx    context.Context
	fetchCancel context.CancelFunc
	fetchWG     sync.WaitGroup
	ready       chan struct{} // closed once streams and consumer exist

	mu     sync.Mutex
	events jetstream.Stream // set before ready is closed
	dead   jetstream.Stream
	cons   jetstream.Consumer
	closed bool

	wg sync.WaitGroup // setup and running events
}

var token = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// clusterToken is what a cluster's name may hold: a '.' too, which a
// subject carries as '~' (subjectToken), a character no name holds.
var clusterToken = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func checkToken(what, s string) error {
	if what == "cluster" {
		if !clusterToken.MatchString(s) {
			return fmt.Errorf("%w: cluster %q may contain only letters, digits, '-', '_' and '.'", ErrInvalid, s)
		}
		return nil
	}
	if !token.MatchString(s) {
		return fmt.Errorf("%w: %s %q may contain only letters, digits, '-' and '_'", ErrInvalid, what, s)
	}
	return nil
}

// subjectToken is a cluster's name as one token of a subject ('.'
// separates tokens); clusterOf reverses it.
func subjectToken(cluster string) string { return strings.ReplaceAll(cluster, ".", "~") }

func clusterOf(token string) string { return strings.ReplaceAll(token, "~", ".") }

// Open starts the embedded NATS server, to which this process connects
// in-process, or connects to Config.URL; it then creates or updates the
// streams and the consumer in the background: until that is done (a
// clustered JetStream needs a quorum of servers), Enqueue and the dead
// letter methods return ErrUnavailable.
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
	if cfg.Drain == 0 {
		cfg.Drain = DefaultDrain
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

// Close stops the workers: it takes no more events, gives back those
// waiting to try again, lets the running ones finish for up to
// Config.Drain, then cancels the handlers' context and waits for them.
// Then it closes the connection and the embedded server. Events in
// flight that did not finish are delivered again.
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
	if q.cfg.Drain > 0 {
		drained := make(chan struct{})
		go func() { q.wg.Wait(); close(drained) }()
		t := time.NewTimer(q.cfg.Drain)
		select {
		case <-drained:
		case <-t.C:
			q.log.Warn("closing the queue: events still running after the drain are cancelled and will run again elsewhere", "drain", q.cfg.Drain)
		}
		t.Stop()
	}
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
