package fnqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/api"
)

// Headers of an event message; its subject names the cluster and function
// and its data is the payload.
const (
	hdrID       = "Shoal-Id"
	hdrVersion  = "Shoal-Version"
	hdrRetries  = "Shoal-Retries"
	hdrEnqueued = "Shoal-Enqueued"
	// hdrSpent is the number of attempts an event had used before its
	// message was stored again by a server giving it back unrun (see
	// giveBack); absent means none.
	hdrSpent = "Shoal-Attempts-Spent"
)

// Error types of the dead letters the queue makes itself, as Lambda names
// its own errors ("Sandbox.Timedout").
const (
	// ErrorTypeInterrupted: the event was delivered more times than it
	// has attempts without an outcome (the servers running it stopped).
	ErrorTypeInterrupted = "Shoal.Interrupted"
	// ErrorTypeCouldNotRun: the handler kept failing to run the event (no
	// agent, say) with an error other than a Failure.
	ErrorTypeCouldNotRun = "Shoal.CouldNotRun"
)

func eventSubject(cluster, function string) string {
	return eventPrefix + subjectToken(cluster) + "." + function
}

// Enqueue stores ev and returns once JetStream has acknowledged it as
// stored (on disk, on a majority of the replicas). ev.ID de-duplicates: a
// second Enqueue of the same ID within two minutes stores nothing more.
// Enqueued is stamped when zero; Attempt is ignored.
func (q *Queue) Enqueue(ctx context.Context, ev *Event) error {
	if err := checkEvent(ev); err != nil {
		return err
	}
	if _, _, err := q.streams(); err != nil {
		return err
	}
	if ev.Enqueued.IsZero() {
		ev.Enqueued = q.cfg.Now()
	}
	return q.publishEvent(ctx, ev, ev.ID)
}

func checkEvent(ev *Event) error {
	for _, c := range [][2]string{{"cluster", ev.Cluster}, {"function", ev.Function}, {"event ID", ev.ID}} {
		if err := checkToken(c[0], c[1]); err != nil {
			return err
		}
	}
	if ev.Retries < 0 {
		return fmt.Errorf("%w: %d retries", ErrInvalid, ev.Retries)
	}
	return nil
}

func (q *Queue) publishEvent(ctx context.Context, ev *Event, msgID string) error {
	m := nats.NewMsg(eventSubject(ev.Cluster, ev.Function))
	m.Header.Set(hdrID, ev.ID)
	m.Header.Set(hdrVersion, strconv.Itoa(ev.Version))
	m.Header.Set(hdrRetries, strconv.Itoa(ev.Retries))
	m.Header.Set(hdrEnqueued, ev.Enqueued.UTC().Format(time.RFC3339Nano))
	if ev.spent > 0 {
		m.Header.Set(hdrSpent, strconv.Itoa(ev.spent))
	}
	m.Data = ev.Payload
	return q.publish(ctx, m, msgID, EventStream)
}

// publish stores m in stream, waiting for the acknowledgement.
func (q *Queue) publish(ctx context.Context, m *nats.Msg, msgID, stream string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	_, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(stream))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("fnqueue: %w", err)
	case errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("%w: storing in %s: %v", ErrUnavailable, stream, err)
}

// decodeEvent reads an event message.
func decodeEvent(m jetstream.Msg) (*Event, error) {
	parts := strings.Split(m.Subject(), ".")
	if len(parts) != 4 {
		return nil, fmt.Errorf("subject %q is not %s<cluster>.<function>", m.Subject(), eventPrefix)
	}
	h := m.Headers()
	ev := &Event{ID: h.Get(hdrID), Cluster: clusterOf(parts[2]), Function: parts[3], Payload: m.Data()}
	var err error
	if ev.Version, err = strconv.Atoi(h.Get(hdrVersion)); err != nil {
		return nil, fmt.Errorf("header %s: %w", hdrVersion, err)
	}
	if ev.Retries, err = strconv.Atoi(h.Get(hdrRetries)); err != nil {
		return nil, fmt.Errorf("header %s: %w", hdrRetries, err)
	}
	if ev.Enqueued, err = time.Parse(time.RFC3339Nano, h.Get(hdrEnqueued)); err != nil {
		return nil, fmt.Errorf("header %s: %w", hdrEnqueued, err)
	}
	if ev.ID == "" {
		return nil, fmt.Errorf("no header %s", hdrID)
	}
	if v := h.Get(hdrSpent); v != "" {
		if ev.spent, err = strconv.Atoi(v); err != nil || ev.spent < 0 {
			return nil, fmt.Errorf("header %s: %q", hdrSpent, v)
		}
	}
	return ev, nil
}

// Run starts this server's workers, which run events with h until Close:
// up to Config.Workers at once, taken from the consumer every server
// shares. Call it once.
func (q *Queue) Run(h Handler) {
	w := &workers{h: h, run: make(chan struct{}, q.cfg.Workers), waiting: make(chan struct{}, maxWaitingPerWorker*q.cfg.Workers)}
	q.fetchWG.Add(1)
	go q.fetch(w)
}

// workers is what a server's workers share.
type workers struct {
	h Handler
	// run holds a token for each event taken from the consumer and not
	// waiting: at most Config.Workers.
	run chan struct{}
	// waiting holds a token for each event waiting to try again after an
	// error that was not a Failure; those give their run token back, so
	// that other events run meanwhile. When waiting is full, an event
	// waits with its run token, and fetching slows down: held events keep
	// their payload in memory.
	waiting chan struct{}
}

// maxWaitingPerWorker bounds the events waiting to try again, per worker.
const maxWaitingPerWorker = 8

// fetch takes events from the consumer whenever a run token is free.
func (q *Queue) fetch(w *workers) {
	defer q.fetchWG.Done()
	select {
	case <-q.ready:
	case <-q.fetchCtx.Done():
		return
	}
	q.mu.Lock()
	cons := q.cons
	q.mu.Unlock()
	for {
		select {
		case w.run <- struct{}{}:
		case <-q.fetchCtx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(q.fetchCtx, 5*time.Second)
		m, err := cons.Next(jetstream.FetchContext(ctx))
		cancel()
		if err != nil {
			<-w.run
			if q.fetchCtx.Err() != nil {
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
				q.log.Debug("fetching events", "err", err)
				sleep(q.fetchCtx, time.Second)
			}
			continue
		}
		q.wg.Add(1)
		go q.process(w, m)
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// process runs one delivery of an event, holding a run token, and settles
// it: ack, nak with a delay (retry) or dead letter then ack. The message
// is kept alive with InProgress while it is held, so that a long function
// is not delivered again, while one whose server died is, after the ack
// wait.
func (q *Queue) process(w *workers, m jetstream.Msg) {
	defer q.wg.Done()
	running := true
	defer func() {
		if running {
			<-w.run
		}
	}()
	meta, err := m.Metadata()
	if err != nil {
		q.log.Error("event message without metadata; dropped", "subject", m.Subject(), "err", err)
		m.Term()
		return
	}
	ev, err := decodeEvent(m)
	if err != nil {
		q.log.Error("malformed event message; dropped", "subject", m.Subject(), "seq", meta.Sequence.Stream, "err", err)
		m.Term()
		return
	}
	ev.Attempt = ev.spent + int(meta.NumDelivered)
	log := q.log.With("event", ev.ID, "cluster", ev.Cluster, "function", ev.Function, "attempt", ev.Attempt)

	done := make(chan struct{})
	defer close(done)
	go q.keepAlive(m, done)

	if ev.Attempt > ev.Retries+1 {
		// Delivered again after its last attempt began: the server running
		// it stopped every time.
		q.deadLetter(log, m, meta.Sequence.Stream, ev, &Failure{Type: ErrorTypeInterrupted,
			Message: fmt.Sprintf("delivered %d times without an outcome: the servers running it stopped", ev.Attempt-1)}, ev.Attempt-1)
		return
	}
	for deferrals := 0; ; {
		err := call(q.ctx, w.h, ev)
		var f *Failure
		switch {
		case err == nil:
			if err := ack(m); err != nil {
				log.Warn("acknowledging a finished event", "err", err)
			}
			return
		case errors.As(err, &f):
			if ev.Attempt <= ev.Retries {
				wait := q.cfg.Backoff(ev.Attempt)
				log.Debug("event failed; retrying", "err", err, "after", wait)
				if err := m.NakWithDelay(wait); err != nil {
					log.Warn("scheduling the retry of an event", "err", err)
				}
				return
			}
			q.deadLetter(log, m, meta.Sequence.Stream, ev, f, ev.Attempt)
			return
		case q.ctx.Err() != nil:
			// Closing: let another server take it now.
			m.Nak()
			return
		}
		deferrals++
		if deferrals > maxDeferrals {
			q.deadLetter(log, m, meta.Sequence.Stream, ev, &Failure{Type: ErrorTypeCouldNotRun, Message: err.Error()}, ev.Attempt-1)
			return
		}
		wait := q.cfg.Backoff(deferrals)
		log.Debug("event could not run; trying again", "err", err, "after", wait)
		if !q.wait(w, &running, wait) {
			q.giveBack(log, m, meta.Sequence.Stream, ev) // closing
			return
		}
	}
}

// wait waits d before an event tries again, giving its run token back
// meanwhile when a waiting token is free; *running says whether it holds
// its run token. It reports false when the queue starts closing first.
func (q *Queue) wait(w *workers, running *bool, d time.Duration) bool {
	select {
	case w.waiting <- struct{}{}:
		<-w.run
		*running = false
		defer func() { <-w.waiting }()
	default:
	}
	if !sleep(q.fetchCtx, d) {
		return false
	}
	if !*running {
		select {
		case w.run <- struct{}{}:
			*running = true
		case <-q.fetchCtx.Done():
			return false
		}
	}
	return true
}

// ack acknowledges m and waits for JetStream to confirm it: an
// acknowledgement lost on the way (the connection or this server closing
// right after) would have the event run again.
func ack(m jetstream.Msg) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.DoubleAck(ctx)
}

// call runs h, turning a panic into an error.
func call(ctx context.Context, h Handler, ev *Event) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("fnqueue: the handler panicked: %v", p)
		}
	}()
	c := *ev
	return h(ctx, &c)
}

// keepAlive tells JetStream the message is being worked on, every third of
// the ack wait, until done closes.
func (q *Queue) keepAlive(m jetstream.Msg, done chan struct{}) {
	t := time.NewTicker(q.ackWait / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m.InProgress()
		case <-done:
			return
		}
	}
}

// deadLetter stores the event in the dead-letter stream and only then
// acknowledges it: a crash in between gives a second copy of the dead
// letter at worst (de-duplicated by the message ID when JetStream still
// remembers it), never a loss. It retries storing until the queue closes;
// an event left unacknowledged then is dead-lettered as interrupted when
// delivered again.
func (q *Queue) deadLetter(log *slog.Logger, m jetstream.Msg, seq uint64, ev *Event, f *Failure, attempts int) {
	msg := f.Message
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	dl := &api.DeadLetter{ID: ev.ID, Function: ev.Function, Cluster: ev.Cluster, Version: ev.Version,
		ErrorType: f.Type, ErrorMessage: msg, Attempts: attempts, Enqueued: ev.Enqueued, Failed: q.cfg.Now()}
	dm, err := encodeDeadLetter(dl, ev.Payload, ev.Retries)
	if err != nil {
		log.Warn("encoding a dead letter", "err", err)
		return
	}
	// The event's stream sequence tells a redriven event's dead letter
	// from the first one.
	msgID := "dead/" + ev.ID + "/" + strconv.FormatUint(seq, 10)
	for {
		// Not q.ctx: a Close waits for one try, so that the error is kept.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := q.publish(ctx, dm, msgID, DeadStream)
		cancel()
		if err == nil {
			break
		}
		log.Warn("storing a dead letter; trying again", "err", err)
		if !sleep(q.ctx, time.Second) {
			return
		}
	}
	if err := ack(m); err != nil {
		log.Warn("acknowledging a dead-lettered event", "err", err)
	}
	log.Info("event dead-lettered", "error_type", f.Type, "attempts", attempts)
}

// giveBack returns an event this server is closing on before it ran in
// this delivery (it was waiting for an agent): stored again with the
// attempts it had used, so that the delivery does not count as one (a Nak
// would: the next delivery's count includes it). If that fails, it is
// Nak'd and the delivery counts.
func (q *Queue) giveBack(log *slog.Logger, m jetstream.Msg, seq uint64, ev *Event) {
	again := *ev
	again.spent = ev.Attempt - 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := q.publishEvent(ctx, &again, fmt.Sprintf("back/%s/%d", ev.ID, seq)); err != nil {
		log.Warn("giving an unrun event back; its delivery counts as an attempt", "err", err)
		m.Nak()
		return
	}
	if err := ack(m); err != nil {
		log.Warn("acknowledging an event given back", "err", err)
	}
}
