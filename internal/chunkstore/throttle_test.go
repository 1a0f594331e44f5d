package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// TestThrottleReserve checks the bucket's arithmetic on a fake clock: the
// delays are computed, not measured.
func TestThrottleReserve(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	th := newThrottle(256<<10, clock.now) // burst: 64 KiB, since rate/10 is less
	steps := []struct {
		advance time.Duration
		n       int
		want    time.Duration
	}{
		{0, 64 << 10, 0},                                      // the initial burst
		{0, 128 << 10, 500 * time.Millisecond},                // in debt for half a second
		{500 * time.Millisecond, 0, 0},                        // debt repaid
		{10 * time.Second, 128 << 10, 250 * time.Millisecond}, // refill stops at the burst
	}
	for i, s := range steps {
		clock.advance(s.advance)
		if got := th.reserve(s.n); got != s.want {
			t.Errorf("step %d: reserve(%d) = %v, want %v", i, s.n, got, s.want)
		}
	}
}

func TestThrottledReaderPassesBytes(t *testing.T) {
	data := content(1, 5*copyBuf+3)
	th := newThrottle(1<<40, time.Now)
	var got bytes.Buffer
	if _, err := io.Copy(&got, &throttledReader{ctx: context.Background(), t: th, r: bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Errorf("read %d bytes through the throttle, want the %d written", got.Len(), len(data))
	}
}

func TestThrottledReaderStopsWithContext(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	th := newThrottle(1, clock.now) // 1 byte/s: a second read must wait for days
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &throttledReader{ctx: ctx, t: th, r: bytes.NewReader(content(1, 3*maxThrottledRead))}
	buf := make([]byte, maxThrottledRead)
	if n, err := r.Read(buf); n != maxThrottledRead || err != nil {
		t.Fatalf("first Read = %d, %v; want the burst", n, err)
	}
	if _, err := r.Read(buf); !errors.Is(err, context.Canceled) {
		t.Errorf("second Read = %v, want %v", err, context.Canceled)
	}
}
