package fnqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/api"
)

// hdrDeadLetter holds a dead letter's JSON, without its payload (the
// message's data). JSON has no line breaks, so it is a valid header value.
const hdrDeadLetter = "Shoal-Dead-Letter"

func deadSubject(cluster, function, id string) string {
	return deadPrefix + subjectToken(cluster) + "." + function + "." + id
}

// deadFilter matches every dead letter of a function.
func deadFilter(cluster, function string) string {
	return deadPrefix + subjectToken(cluster) + "." + function + ".>"
}

// encodeDeadLetter makes the message of a dead letter; retries is kept for
// a redrive.
func encodeDeadLetter(dl *api.DeadLetter, payload []byte, retries int) (*nats.Msg, error) {
	meta := *dl
	meta.Payload = nil
	b, err := json.Marshal(&meta)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(deadSubject(dl.Cluster, dl.Function, dl.ID))
	m.Header.Set(hdrDeadLetter, string(b))
	m.Header.Set(hdrRetries, strconv.Itoa(retries))
	m.Data = payload
	return m, nil
}

func decodeDeadLetter(raw *jetstream.RawStreamMsg) (dl *api.DeadLetter, retries int, err error) {
	dl = new(api.DeadLetter)
	if err := json.Unmarshal([]byte(raw.Header.Get(hdrDeadLetter)), dl); err != nil {
		return nil, 0, fmt.Errorf("fnqueue: dead letter %d (%s): %w", raw.Sequence, raw.Subject, err)
	}
	if len(raw.Data) > 0 {
		dl.Payload = raw.Data
	}
	retries, err = strconv.Atoi(raw.Header.Get(hdrRetries))
	if err != nil {
		return nil, 0, fmt.Errorf("fnqueue: dead letter %d (%s): header %s: %w", raw.Sequence, raw.Subject, hdrRetries, err)
	}
	return dl, retries, nil
}

func checkFunction(cluster, function string) error {
	if err := checkToken("cluster", cluster); err != nil {
		return err
	}
	return checkToken("function", function)
}

// unavailable wraps an error of a JetStream request.
func unavailable(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// DeadLetters returns the dead letters of a function, oldest first.
func (q *Queue) DeadLetters(ctx context.Context, cluster, function string) ([]*api.DeadLetter, error) {
	raws, err := q.deadMsgs(ctx, cluster, function)
	if err != nil {
		return nil, err
	}
	dls := make([]*api.DeadLetter, 0, len(raws))
	for _, raw := range raws {
		dl, _, err := decodeDeadLetter(raw)
		if err != nil {
			return nil, err
		}
		dls = append(dls, dl)
	}
	return dls, nil
}

// deadMsgs reads the dead-letter messages of a function, one request each
// (from the stream's leader, so a redriven one is gone at once).
func (q *Queue) deadMsgs(ctx context.Context, cluster, function string) ([]*jetstream.RawStreamMsg, error) {
	if err := checkFunction(cluster, function); err != nil {
		return nil, err
	}
	_, dead, err := q.streams()
	if err != nil {
		return nil, err
	}
	var raws []*jetstream.RawStreamMsg
	for seq := uint64(1); ; {
		raw, err := dead.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(deadFilter(cluster, function)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return raws, nil
		}
		if err != nil {
			return nil, unavailable(err)
		}
		raws = append(raws, raw)
		seq = raw.Sequence + 1
	}
}

// deadMsg reads the dead letter id of a function; ErrNotFound when there
// is none.
func (q *Queue) deadMsg(ctx context.Context, cluster, function, id string) (*jetstream.RawStreamMsg, error) {
	if err := checkFunction(cluster, function); err != nil {
		return nil, err
	}
	if err := checkToken("event ID", id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	_, dead, err := q.streams()
	if err != nil {
		return nil, err
	}
	raw, err := dead.GetLastMsgForSubject(ctx, deadSubject(cluster, function, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %s of function %s in cluster %s", ErrNotFound, id, function, cluster)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return raw, nil
}

// DeadLetter returns the dead letter id of a function, or ErrNotFound.
func (q *Queue) DeadLetter(ctx context.Context, cluster, function, id string) (*api.DeadLetter, error) {
	raw, err := q.deadMsg(ctx, cluster, function, id)
	if err != nil {
		return nil, err
	}
	dl, _, err := decodeDeadLetter(raw)
	return dl, err
}

// Redrive submits dead letters of a function again, all of them when ids
// is empty, and returns the IDs submitted. Each becomes a new event with
// the same ID, payload, version and retries, enqueued now, whose attempts
// start again; its dead letter is deleted once the event is stored. When
// an ID has no dead letter nothing is submitted and the error wraps
// ErrNotFound. After an error, calling Redrive again with the same IDs
// within two minutes does not submit twice what was submitted.
func (q *Queue) Redrive(ctx context.Context, cluster, function string, ids []string) ([]string, error) {
	var raws []*jetstream.RawStreamMsg
	if len(ids) == 0 {
		var err error
		if raws, err = q.deadMsgs(ctx, cluster, function); err != nil {
			return nil, err
		}
	} else {
		for _, id := range ids {
			raw, err := q.deadMsg(ctx, cluster, function, id)
			if err != nil {
				return nil, err
			}
			raws = append(raws, raw)
		}
	}
	_, dead, err := q.streams()
	if err != nil {
		return nil, err
	}
	redriven := []string{}
	for _, raw := range raws {
		dl, retries, err := decodeDeadLetter(raw)
		if err != nil {
			return redriven, err
		}
		ev := &Event{ID: dl.ID, Cluster: cluster, Function: function, Version: dl.Version,
			Payload: dl.Payload, Retries: retries, Enqueued: q.cfg.Now()}
		if err := q.publishEvent(ctx, ev, "redrive/"+dl.ID+"/"+strconv.FormatUint(raw.Sequence, 10)); err != nil {
			return redriven, err
		}
		if err := dead.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return redriven, unavailable(err)
		}
		redriven = append(redriven, dl.ID)
		q.log.Info("dead letter redriven", "event", dl.ID, "cluster", cluster, "function", function)
	}
	return redriven, nil
}

// Depth returns how many events of a function are queued (waiting or
// running) and how many are dead letters.
func (q *Queue) Depth(ctx context.Context, cluster, function string) (queued, dead uint64, err error) {
	if err := checkFunction(cluster, function); err != nil {
		return 0, 0, err
	}
	es, ds, err := q.streams()
	if err != nil {
		return 0, 0, err
	}
	info, err := es.Info(ctx, jetstream.WithSubjectFilter(eventSubject(cluster, function)))
	if err != nil {
		return 0, 0, unavailable(err)
	}
	for _, n := range info.State.Subjects {
		queued += n
	}
	info, err = ds.Info(ctx, jetstream.WithSubjectFilter(deadFilter(cluster, function)))
	if err != nil {
		return 0, 0, unavailable(err)
	}
	for _, n := range info.State.Subjects {
		dead += n
	}
	return queued, dead, nil
}

// Purge drops every queued event and dead letter of a function (it was
// deleted). An event running now still finishes.
func (q *Queue) Purge(ctx context.Context, cluster, function string) error {
	if err := checkFunction(cluster, function); err != nil {
		return err
	}
	return q.purge(ctx, eventSubject(cluster, function), deadFilter(cluster, function))
}

// PurgeCluster drops every queued event and dead letter of a deleted
// cluster's functions, so that a cluster made later with the same name
// finds none of them.
func (q *Queue) PurgeCluster(ctx context.Context, cluster string) error {
	if err := checkToken("cluster", cluster); err != nil {
		return err
	}
	return q.purge(ctx, eventPrefix+subjectToken(cluster)+".>", deadPrefix+subjectToken(cluster)+".>")
}

func (q *Queue) purge(ctx context.Context, events, dead string) error {
	es, ds, err := q.streams()
	if err != nil {
		return err
	}
	if err := es.Purge(ctx, jetstream.WithPurgeSubject(events)); err != nil {
		return unavailable(err)
	}
	if err := ds.Purge(ctx, jetstream.WithPurgeSubject(dead)); err != nil {
		return unavailable(err)
	}
	return nil
}
