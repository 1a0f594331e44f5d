package taskdns

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// garbage returns malformed messages: every truncation of a valid query,
// the query with its response bit set, and n random byte strings.
func garbage(t *testing.T, n int) [][]byte {
	t.Helper()
	valid := newQuery(t, 77, dnsmessage.TypeA, true, "myjob-3.shoal.")
	var out [][]byte
	for i := range len(valid) {
		out = append(out, valid[:i])
	}
	resp := append([]byte(nil), valid...)
	resp[2] |= 0x80
	out = append(out, resp)
	rng := rand.New(rand.NewPCG(1, 2))
	for range n {
		b := make([]byte, rng.IntN(600))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		out = append(out, b)
	}
	return out
}

// waitAnswered sends a valid query over UDP until it is answered, failing
// the test at testTimeout. A UDP query may be dropped while the server is
// busy, so a single try would not prove the server broken.
func waitAnswered(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := newQuery(t, 4242, dnsmessage.TypeA, false, "myjob-3.")
	deadline := time.Now().Add(testTimeout)
	buf := make([]byte, maxMsgSize)
	for time.Now().Before(deadline) {
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		var m dnsmessage.Message
		if err := m.Unpack(buf[:n]); err == nil && m.ID == 4242 && len(m.Answers) == 1 {
			return
		}
	}
	t.Fatalf("server at %v stopped answering", addr)
}

func TestGarbageOverUDP(t *testing.T) {
	s := startServer(t, Config{})
	c, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, msg := range garbage(t, 3000) {
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	waitAnswered(t, s.Addr())
}

func TestGarbageOverTCP(t *testing.T) {
	s := startServer(t, Config{})
	msgs := garbage(t, 300)
	for i, msg := range msgs {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(testTimeout))
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(msg)))
		c.Write(append(l[:], msg...))
		// The server either answers (random bytes can make a query) or
		// closes the connection (EOF or reset); it must not leave it hanging.
		_, err = readTCPMsg(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("message %d (%d bytes): server neither answered nor closed", i, len(msg))
		}
		c.Close()
	}

	// A connection that sends half a message and stops is closed by the
	// client without disturbing the server.
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 40, 1, 2, 3})
	c.Close()

	m := ask(t, "tcp", s.Addr(), newQuery(t, 5, dnsmessage.TypeA, false, "myjob-3."))
	if m.ID != 5 || len(m.Answers) != 1 {
		t.Errorf("after garbage: got ID %d with %d answers, want 5 with 1", m.ID, len(m.Answers))
	}
	waitAnswered(t, s.Addr())
}

// FuzzRespond feeds arbitrary messages to the query handler, over both
// transports. Whatever comes in, the handler must not panic, and anything it
// answers must be a well-formed response to the query's ID within the size
// the transport allows. There is no upstream, so nothing leaves the process.
func FuzzRespond(f *testing.F) {
	for _, seed := range [][]byte{
		newQuery(f, 0x1234, dnsmessage.TypeA, false, "myjob-3."),
		newQuery(f, 0x1234, dnsmessage.TypeAAAA, true, "many.shoal."),
		newQuery(f, 0x1234, dnsmessage.TypeA, false, "ghost.example.com."),
		newQuery(f, 0x1234, dnsmessage.TypeA, false, "broken."),
		newQuery(f, 0x1234, dnsmessage.TypeA, false, "www.example.com."),
		newQuery(f, 0x1234, dnsmessage.TypeA, true, "myjob-3.", "pair."),
		{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{},
	} {
		f.Add(seed)
	}
	h := newHandler(Config{Lookup: clusterLookup})
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, req []byte) {
		for _, tcp := range []bool{false, true} {
			resp := h.respond(ctx, req, tcp)
			if resp == nil {
				continue
			}
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("tcp=%v: reply does not parse: %v", tcp, err)
			}
			if id := binary.BigEndian.Uint16(req); m.ID != id || !m.Response {
				t.Fatalf("tcp=%v: reply ID %d response %v, want ID %d and response", tcp, m.ID, m.Response, id)
			}
			if limit := maxUDPSize; !tcp && len(resp) > limit {
				t.Fatalf("udp reply of %d bytes, over %d", len(resp), limit)
			}
		}
	})
}
