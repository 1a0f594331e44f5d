package fnqueue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

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
		replicas, err := q.replicas()
		if err == nil {
			err = q.createStreams(timeout, replicas)
		}
		if err == nil {
			close(q.ready)
			q.log.Info("event queue ready", "replicas", replicas, "after", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 15*time.Second && time.Since(warned) > time.Minute {
			q.log.Warn("event queue not ready yet: Event invocations are refused", "err", err, "since", start)
			warned = time.Now()
		} else {
			q.log.Debug("event queue not ready", "err", err)
		}
		if !sleep(q.fetchCtx, 100*time.Millisecond) { // a closing queue need not wait to be ready
			return
		}
		timeout = min(2*timeout, 10*time.Second)
	}
}

// replicas is the streams' replica count: Config.Replicas for the
// embedded servers; with Config.URL, 1 when that NATS is a single server,
// else up to 3 (as many servers as the connection knows of the cluster,
// given or discovered), whatever the number of Shoal servers.
func (q *Queue) replicas() (int, error) {
	if q.cfg.URL == "" {
		return q.cfg.Replicas, nil
	}
	if !q.nc.IsConnected() {
		return 0, fmt.Errorf("not connected to %s", redactURL(q.cfg.URL))
	}
	if q.nc.ConnectedClusterName() == "" {
		return 1, nil
	}
	return min(3, max(1, len(q.nc.Servers()))), nil
}

func (q *Queue) createStreams(timeout time.Duration, replicas int) error {
	events, err := q.ensureStream(timeout, jetstream.StreamConfig{
		Name:        EventStream,
		Description: "Shoal: Event invocations of functions waiting to run",
		Subjects:    []string{eventPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
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
		Replicas:          replicas,
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
// It never lowers the replicas of a stream that exists: a server that
// opens its queue knowing fewer servers than made the stream (a restart
// with a partial view) must not scale it down.
func (q *Queue) ensureStream(timeout time.Duration, want jetstream.StreamConfig) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(q.ctx, timeout)
	defer cancel()
	s, err := q.js.Stream(ctx, want.Name)
	if err == nil {
		c := s.CachedInfo().Config
		want.Replicas = max(want.Replicas, c.Replicas)
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
