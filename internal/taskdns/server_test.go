package taskdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
)

// testTimeout bounds every exchange in the tests, so a server that never
// answers fails the test instead of hanging it.
const testTimeout = 10 * time.Second

var errLookupBroken = errors.New("lookup backend down")

// clusterLookup is the Lookup of a test cluster:
//
//	myjob-3  10.128.0.5
//	pair     10.128.0.6, 10.128.0.7
//	dual     10.128.0.8, fd00::8
//	many     50 addresses, too many for a 512-byte answer
//	ghost    claimed, no address
//	broken   Lookup fails
func clusterLookup(ctx context.Context, label string) ([]netip.Addr, bool, error) {
	switch label {
	case "myjob-3":
		return []netip.Addr{netip.MustParseAddr("10.128.0.5")}, true, nil
	case "pair":
		return []netip.Addr{netip.MustParseAddr("10.128.0.6"), netip.MustParseAddr("10.128.0.7")}, true, nil
	case "dual":
		return []netip.Addr{netip.MustParseAddr("10.128.0.8"), netip.MustParseAddr("fd00::8")}, true, nil
	case "many":
		var addrs []netip.Addr
		for i := range 50 {
			addrs = append(addrs, netip.AddrFrom4([4]byte{10, 128, 1, byte(i)}))
		}
		return addrs, true, nil
	case "ghost":
		return nil, true, nil
	case "broken":
		return nil, false, errLookupBroken
	}
	return nil, false, nil
}

// startServer starts a Server on 127.0.0.1 with cfg, closed when the test ends.
func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Lookup == nil {
		cfg.Lookup = clusterLookup
	}
	s, err := Serve(cfg)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// goResolver is Go's own stub resolver sending every query to s.
func goResolver(s *Server) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.Addr().String())
		},
	}
}

// newQuery builds a query with one question per name, all of type typ.
func newQuery(t testing.TB, id uint16, typ dnsmessage.Type, edns bool, names ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(n), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
	}
	if edns {
		if err := b.StartAdditionals(); err != nil {
			t.Fatal(err)
		}
		var rh dnsmessage.ResourceHeader
		if err := rh.SetEDNS0(4096, dnsmessage.RCodeSuccess, false); err != nil {
			t.Fatal(err)
		}
		if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// exchangeRaw sends msg to addr over network ("udp" or "tcp") and returns
// the raw reply.
func exchangeRaw(t *testing.T, network string, addr netip.AddrPort, msg []byte) []byte {
	t.Helper()
	c, err := net.Dial(network, addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	if network == "tcp" {
		if err := writeTCPMsg(c, msg); err != nil {
			t.Fatal(err)
		}
		resp, err := readTCPMsg(c)
		if err != nil {
			t.Fatalf("read tcp reply: %v", err)
		}
		return resp
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxMsgSize)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read udp reply: %v", err)
	}
	return buf[:n]
}

// ask is exchangeRaw with the reply parsed.
func ask(t *testing.T, network string, addr netip.AddrPort, msg []byte) dnsmessage.Message {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(exchangeRaw(t, network, addr, msg)); err != nil {
		t.Fatalf("unpack reply: %v", err)
	}
	return m
}

// answerAddrs returns the addresses of the A and AAAA records of m.
func answerAddrs(m dnsmessage.Message) []netip.Addr {
	var out []netip.Addr
	for _, r := range m.Answers {
		switch b := r.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A))
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA))
		}
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestGoResolverFindsClusterNames(t *testing.T) {
	s := startServer(t, Config{})
	r := goResolver(s)
	tests := []struct {
		name string
		want []netip.Addr
	}{
		{"myjob-3", addrs("10.128.0.5")},
		{"myjob-3.", addrs("10.128.0.5")},
		{"myjob-3.shoal", addrs("10.128.0.5")},
		{"MyJob-3.example.com.", addrs("10.128.0.5")},
		{"pair.cluster.internal", addrs("10.128.0.6", "10.128.0.7")},
		{"dual", addrs("10.128.0.8", "fd00::8")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			got, err := r.LookupNetIP(ctx, "ip", tt.name)
			if err != nil {
				t.Fatalf("LookupNetIP(%q): %v", tt.name, err)
			}
			slices.SortFunc(got, netip.Addr.Compare)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("LookupNetIP(%q) (-want +got):\n%s", tt.name, diff)
			}
		})
	}

	t.Run("claimed without address", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err := r.LookupNetIP(ctx, "ip4", "ghost.shoal.")
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("LookupNetIP(ghost): got %v, want not found", err)
		}
	})
	t.Run("outside name without upstream", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if got, err := r.LookupNetIP(ctx, "ip4", "www.example.com."); err == nil {
			t.Errorf("LookupNetIP(www.example.com): got %v, want an error", got)
		}
	})
}

func TestRawAnswers(t *testing.T) {
	s := startServer(t, Config{TTL: 7 * time.Second})
	tests := []struct {
		desc      string
		typ       dnsmessage.Type
		names     []string
		wantRCode dnsmessage.RCode
		wantAA    bool
		wantAddrs []netip.Addr
	}{
		{"A single label", dnsmessage.TypeA, []string{"myjob-3."}, dnsmessage.RCodeSuccess, true, addrs("10.128.0.5")},
		{"A with suffix", dnsmessage.TypeA, []string{"MYJOB-3.corp.example."}, dnsmessage.RCodeSuccess, true, addrs("10.128.0.5")},
		{"AAAA is NODATA", dnsmessage.TypeAAAA, []string{"myjob-3.shoal."}, dnsmessage.RCodeSuccess, true, nil},
		{"AAAA of an IPv6 address", dnsmessage.TypeAAAA, []string{"dual."}, dnsmessage.RCodeSuccess, true, addrs("fd00::8")},
		{"A of a dual-stack name", dnsmessage.TypeA, []string{"dual."}, dnsmessage.RCodeSuccess, true, addrs("10.128.0.8")},
		{"TXT is NODATA", dnsmessage.TypeTXT, []string{"myjob-3."}, dnsmessage.RCodeSuccess, true, nil},
		{"claimed without address", dnsmessage.TypeA, []string{"ghost."}, dnsmessage.RCodeNameError, true, nil},
		{"lookup error", dnsmessage.TypeA, []string{"broken.shoal."}, dnsmessage.RCodeServerFailure, false, nil},
		{"not claimed, no upstream", dnsmessage.TypeA, []string{"www.example.com."}, dnsmessage.RCodeRefused, false, nil},
		{"root", dnsmessage.TypeNS, []string{"."}, dnsmessage.RCodeRefused, false, nil},
		{"two questions", dnsmessage.TypeA, []string{"myjob-3.", "pair."}, dnsmessage.RCodeFormatError, false, nil},
		{"no question", dnsmessage.TypeA, nil, dnsmessage.RCodeFormatError, false, nil},
	}
	for _, network := range []string{"udp", "tcp"} {
		for i, tt := range tests {
			t.Run(network+"/"+tt.desc, func(t *testing.T) {
				id := uint16(1000 + i)
				m := ask(t, network, s.Addr(), newQuery(t, id, tt.typ, false, tt.names...))
				if m.ID != id || !m.Response || !m.RecursionDesired || !m.RecursionAvailable {
					t.Errorf("header: got %+v, want ID %d, response, RD and RA", m.Header, id)
				}
				if m.RCode != tt.wantRCode || m.Authoritative != tt.wantAA {
					t.Errorf("got rcode %v aa %v, want %v aa %v", m.RCode, m.Authoritative, tt.wantRCode, tt.wantAA)
				}
				if len(tt.names) == 1 {
					want := []dnsmessage.Question{{Name: dnsmessage.MustNewName(tt.names[0]), Type: tt.typ, Class: dnsmessage.ClassINET}}
					if diff := cmp.Diff(want, m.Questions); diff != "" {
						t.Errorf("question (-want +got):\n%s", diff)
					}
				}
				if diff := cmp.Diff(tt.wantAddrs, answerAddrs(m), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("answers (-want +got):\n%s", diff)
				}
				for _, r := range m.Answers {
					if r.Header.TTL != 7 || r.Header.Name != m.Questions[0].Name {
						t.Errorf("answer header %+v, want TTL 7 and name %v", r.Header, m.Questions[0].Name)
					}
				}
			})
		}
	}
}

func TestTruncation(t *testing.T) {
	s := startServer(t, Config{})
	tests := []struct {
		network     string
		edns        bool
		wantTC      bool
		wantAnswers int
		maxLen      int
	}{
		{"udp", false, true, 0, minUDPSize},
		{"udp", true, false, 50, maxUDPSize},
		{"tcp", false, false, 50, maxMsgSize},
	}
	for _, tt := range tests {
		raw := exchangeRaw(t, tt.network, s.Addr(), newQuery(t, 7, dnsmessage.TypeA, tt.edns, "many."))
		var m dnsmessage.Message
		if err := m.Unpack(raw); err != nil {
			t.Fatal(err)
		}
		if m.Truncated != tt.wantTC || len(m.Answers) != tt.wantAnswers || len(raw) > tt.maxLen {
			t.Errorf("%s edns=%v: got TC %v, %d answers, %d bytes; want TC %v, %d answers, at most %d bytes",
				tt.network, tt.edns, m.Truncated, len(m.Answers), len(raw), tt.wantTC, tt.wantAnswers, tt.maxLen)
		}
		hasOPT := len(m.Additionals) == 1 && m.Additionals[0].Header.Type == dnsmessage.TypeOPT
		if hasOPT != tt.edns {
			t.Errorf("%s edns=%v: reply has OPT %v", tt.network, tt.edns, hasOPT)
		}
	}
}

// closedPort returns a loopback address on which nothing listens, so that
// queries sent there fail at once (ICMP port unreachable, TCP reset).
func closedPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestRelay(t *testing.T) {
	upstream := startServer(t, Config{
		Lookup: func(ctx context.Context, label string) ([]netip.Addr, bool, error) {
			if label == "www" {
				return addrs("192.0.2.80"), true, nil
			}
			return nil, false, nil
		},
	})
	front := startServer(t, Config{Upstream: []string{closedPort(t), upstream.Addr().String()}})
	deadFront := startServer(t, Config{Upstream: []string{closedPort(t)}})

	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := ask(t, network, front.Addr(), newQuery(t, 42, dnsmessage.TypeA, false, "www.example.com."))
			if m.ID != 42 || m.RCode != dnsmessage.RCodeSuccess {
				t.Fatalf("got ID %d rcode %v, want 42 and success", m.ID, m.RCode)
			}
			if got, want := answerAddrs(m), addrs("192.0.2.80"); !slices.Equal(got, want) {
				t.Errorf("relayed answers: got %v, want %v", got, want)
			}
			// Names the upstream does not know come back as it answered them.
			m = ask(t, network, front.Addr(), newQuery(t, 43, dnsmessage.TypeA, false, "mail.example.com."))
			if m.ID != 43 || m.RCode != dnsmessage.RCodeRefused {
				t.Errorf("got ID %d rcode %v, want 43 and the upstream's REFUSED", m.ID, m.RCode)
			}
			// The cluster's names are still answered by the front server.
			m = ask(t, network, front.Addr(), newQuery(t, 44, dnsmessage.TypeA, false, "myjob-3."))
			if got, want := answerAddrs(m), addrs("10.128.0.5"); !slices.Equal(got, want) {
				t.Errorf("cluster answers: got %v, want %v", got, want)
			}
			m = ask(t, network, deadFront.Addr(), newQuery(t, 45, dnsmessage.TypeA, false, "www.example.com."))
			if m.ID != 45 || m.RCode != dnsmessage.RCodeServerFailure {
				t.Errorf("no upstream answering: got ID %d rcode %v, want 45 and SERVFAIL", m.ID, m.RCode)
			}
		})
	}

	t.Run("go resolver", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		got, err := goResolver(front).LookupNetIP(ctx, "ip4", "www.example.com.")
		if err != nil || !slices.Equal(got, addrs("192.0.2.80")) {
			t.Errorf("LookupNetIP: got %v, %v; want 192.0.2.80", got, err)
		}
	})
}

// TestCloseStopsRelay checks that Close returns while a relayed query waits
// for an upstream that never answers.
func TestCloseStopsRelay(t *testing.T) {
	hole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	s, err := Serve(Config{Addr: "127.0.0.1:0", Lookup: clusterLookup, Upstream: []string{hole.LocalAddr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(newQuery(t, 1, dnsmessage.TypeA, false, "www.example.com.")); err != nil {
		t.Fatal(err)
	}
	// Once the query reaches the hole, the relay is in flight.
	hole.SetReadDeadline(time.Now().Add(testTimeout))
	if _, _, err := hole.ReadFromUDP(make([]byte, 512)); err != nil {
		t.Fatalf("relayed query never arrived: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestServeRejectsBadConfig(t *testing.T) {
	tests := []struct {
		desc string
		cfg  Config
	}{
		{"no lookup", Config{Addr: "127.0.0.1:0"}},
		{"bad addr", Config{Addr: "localhost", Lookup: clusterLookup}},
		{"bad upstream", Config{Addr: "127.0.0.1:0", Lookup: clusterLookup, Upstream: []string{"8.8.8.8"}}},
	}
	for _, tt := range tests {
		if s, err := Serve(tt.cfg); !errors.Is(err, ErrConfig) {
			if s != nil {
				s.Close()
			}
			t.Errorf("%s: got %v, want ErrConfig", tt.desc, err)
		}
	}
}

func TestServeSamePortBothProtocols(t *testing.T) {
	s := startServer(t, Config{})
	again, err := Serve(Config{Addr: s.Addr().String(), Lookup: clusterLookup})
	if err == nil {
		again.Close()
		t.Fatalf("second Serve on %v succeeded, want address in use", s.Addr())
	}
	m := ask(t, "tcp", s.Addr(), newQuery(t, 9, dnsmessage.TypeA, false, "myjob-3."))
	if m.RCode != dnsmessage.RCodeSuccess {
		t.Errorf("tcp on the udp port: rcode %v", m.RCode)
	}
}

func TestUpstreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := `# generated
nameserver 127.0.0.53
nameserver 10.0.0.2 # the office
search example.com
nameserver ::1
nameserver 2001:db8::53
nameserver   192.0.2.53
;nameserver 192.0.2.99
nameserver 10.0.0.2
nameserver bogus
options edns0 trust-ad
`
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got := Upstreams(path)
	want := []string{"10.0.0.2:53", "192.0.2.53:53"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Upstreams (-want +got):\n%s", diff)
	}
	if got := Upstreams(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Errorf("Upstreams(missing file): got %q, want nil", got)
	}
}
