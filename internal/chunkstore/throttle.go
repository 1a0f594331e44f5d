package chunkstore

import (
	"context"
	"io"
	"sync"
	"time"
)

// maxThrottledRead caps one read through a throttle, so that a slow rate
// delays many small reads rather than one long one.
const maxThrottledRead = 64 << 10

// throttle is a token bucket shared by concurrent streams: on average it
// lets rate bytes per second through, with bursts of up to burst bytes.
// Streams take tokens for what they have read and may drive the bucket
// negative; each then waits until the debt it added is paid back, which
// shares the rate among them in the order they asked.
type throttle struct {
	rate  float64 // bytes per second
	burst float64
	now   func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// newThrottle returns a throttle of rate bytes per second, with a burst of
// a tenth of a second's worth or 64 KiB, whichever is more. It starts full.
func newThrottle(rate int64, now func() time.Time) *throttle {
	burst := max(float64(rate)/10, maxThrottledRead)
	return &throttle{rate: float64(rate), burst: burst, now: now, tokens: burst, last: now()}
}

// reserve takes n tokens and returns how long the caller must wait before
// using them.
func (t *throttle) reserve(n int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if elapsed := now.Sub(t.last).Seconds(); elapsed > 0 {
		t.tokens = min(t.burst, t.tokens+elapsed*t.rate)
	}
	t.last = now
	t.tokens -= float64(n)
	if t.tokens >= 0 {
		return 0
	}
	return time.Duration(-t.tokens / t.rate * float64(time.Second))
}

// wait takes n tokens and waits until they are available or ctx ends.
func (t *throttle) wait(ctx context.Context, n int) error {
	d := t.reserve(n)
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// throttledReader reads from r through a throttle.
type throttledReader struct {
	ctx context.Context
	t   *throttle
	r   io.Reader
}

func (tr *throttledReader) Read(p []byte) (int, error) {
	if len(p) > maxThrottledRead {
		p = p[:maxThrottledRead]
	}
	n, err := tr.r.Read(p)
	if n > 0 {
		if werr := tr.t.wait(tr.ctx, n); werr != nil {
			return 0, werr
		}
	}
	return n, err
}
