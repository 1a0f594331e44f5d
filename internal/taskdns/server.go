// Package taskdns is the DNS resolver an agent runs for the tasks of a
// cluster network.
//
// Tasks keep the host's /etc/resolv.conf, so they send their queries to the
// host's nameserver; the node's firewall redirects every port-53 packet from
// the tasks to a [Server] listening on the cluster's gateway address. The
// server answers the cluster's own names itself and relays every other query,
// byte for byte, to the host's real resolvers ([Config.Upstream]), or refuses
// it when the cluster may not reach the outside.
//
// A name is the cluster's when [Config.Lookup] claims its first label,
// whatever follows it: "myjob-3.", "myjob-3.shoal." and
// "myjob-3.example.com." all name the same task. That way the search-list
// walk of the task's resolver finds the name whichever suffix it tries first.
package taskdns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Limits on the work a Server accepts, so that a misbehaving task cannot
// make the agent hold unbounded goroutines or connections.
const (
	// maxUDPInFlight bounds the UDP queries being answered at once; a query
	// arriving beyond it is dropped, and the client retries.
	maxUDPInFlight = 256
	// maxTCPConns bounds the open TCP connections; beyond it new ones are
	// closed at once.
	maxTCPConns = 64
	// tcpIdleTimeout is how long a TCP connection may wait for its next query.
	tcpIdleTimeout = 10 * time.Second
	// lookupTimeout bounds one call of Config.Lookup.
	lookupTimeout = 2 * time.Second
	// defaultTTL is the TTL of the cluster's answers when Config.TTL is zero.
	defaultTTL = 5 * time.Second
)

// ErrConfig reports a Config that cannot be served.
var ErrConfig = errors.New("taskdns: invalid config")

// Config configures a [Server].
type Config struct {
	// Addr is the "ip:port" to listen on, over both UDP and TCP. With port 0
	// a free port is picked, the same for both protocols.
	Addr string
	// Lookup resolves a name of the cluster. label is the query name's first
	// label, lowercased (e.g. "myjob-3"). ok=false means the label is not a
	// name of the cluster, and the query is relayed; ok=true with no addrs
	// means it is, but has no address (NXDOMAIN). An error is answered with
	// SERVFAIL. Lookup is called concurrently and must honour ctx.
	Lookup func(ctx context.Context, label string) (addrs []netip.Addr, ok bool, err error)
	// Upstream are the resolvers ("ip:port") that queries for other names
	// are relayed to, tried in order. Empty: such queries get REFUSED.
	Upstream []string
	// TTL is the TTL of answers from Lookup (default 5s).
	TTL time.Duration
	// Log receives the server's events; nil discards them.
	Log *slog.Logger
}

// Server answers DNS queries over UDP and TCP on one address. Create it with
// [Serve] and stop it with [Server.Close].
type Server struct {
	h    *handler
	udp  *net.UDPConn
	tcp  *net.TCPListener
	addr netip.AddrPort

	ctx    context.Context // cancelled by Close; parent of every query's context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the serve loops and every query and connection goroutine

	udpSlots chan struct{} // one token per UDP query in flight
	tcpSlots chan struct{} // one token per open TCP connection

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open TCP connections, closed by Close
	done  bool
}

// Serve starts a Server listening on cfg.Addr. It returns once both sockets
// are bound; queries are answered in the background until [Server.Close].
func Serve(cfg Config) (*Server, error) {
	if cfg.Lookup == nil {
		return nil, fmt.Errorf("%w: no Lookup", ErrConfig)
	}
	ap, err := netip.ParseAddrPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: addr %q: %v", ErrConfig, cfg.Addr, err)
	}
	for _, u := range cfg.Upstream {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return nil, fmt.Errorf("%w: upstream %q: %v", ErrConfig, u, err)
		}
	}
	udp, tcp, err := listenBoth(ap)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		h:        newHandler(cfg),
		udp:      udp,
		tcp:      tcp,
		addr:     udp.LocalAddr().(*net.UDPAddr).AddrPort(),
		ctx:      ctx,
		cancel:   cancel,
		udpSlots: make(chan struct{}, maxUDPInFlight),
		tcpSlots: make(chan struct{}, maxTCPConns),
		conns:    make(map[net.Conn]struct{}),
	}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	s.h.log.Debug("taskdns: serving", "addr", s.addr.String(), "upstreams", len(cfg.Upstream))
	return s, nil
}

// listenBoth binds UDP and TCP on the same address. With port 0 the kernel
// picks the UDP port, and the TCP bind is retried on a fresh one if that
// port is taken for TCP.
func listenBoth(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	const attempts = 10
	var lastErr error
	for range attempts {
		udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, nil, fmt.Errorf("taskdns: listen udp %s: %w", ap, err)
		}
		bound := udp.LocalAddr().(*net.UDPAddr).AddrPort()
		tcp, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(bound))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		lastErr = fmt.Errorf("taskdns: listen tcp %s: %w", bound, err)
		if ap.Port() != 0 {
			break
		}
	}
	return nil, nil, lastErr
}

// Addr returns the address the server is bound to, the same for UDP and TCP.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Close stops the server: it closes the sockets and every open connection,
// cancels the queries in flight, and waits for their goroutines to return.
// It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil
	}
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()

	s.cancel()
	err := errors.Join(s.udp.Close(), s.tcp.Close())
	s.wg.Wait()
	return err
}

// serveUDP reads queries until the socket is closed and answers each in its
// own goroutine, at most maxUDPInFlight at once.
func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, maxMsgSize)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.h.log.Debug("taskdns: udp read", "err", err)
			continue
		}
		select {
		case s.udpSlots <- struct{}{}:
		default:
			s.h.log.Debug("taskdns: udp query dropped, too many in flight", "from", from.String())
			continue
		}
		req := append([]byte(nil), buf[:n]...)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.udpSlots }()
			resp := s.h.respond(s.ctx, req, false)
			if resp == nil {
				return
			}
			if _, err := s.udp.WriteToUDPAddrPort(resp, from); err != nil && !errors.Is(err, net.ErrClosed) {
				s.h.log.Debug("taskdns: udp write", "to", from.String(), "err", err)
			}
		}()
	}
}

// serveTCP accepts connections until the listener is closed, at most
// maxTCPConns open at once.
func (s *Server) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.h.log.Debug("taskdns: tcp accept", "err", err)
			// Accept fails this way when out of descriptors; do not spin.
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case s.tcpSlots <- struct{}{}:
		default:
			s.h.log.Debug("taskdns: tcp connection refused, too many open", "from", c.RemoteAddr().String())
			c.Close()
			continue
		}
		if !s.track(c) {
			c.Close()
			<-s.tcpSlots
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.tcpSlots }()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

// track records an open connection so Close can close it; it reports false
// when the server is already closing.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// serveConn answers the length-prefixed queries of one TCP connection, one
// at a time, until the client closes it, stays idle for tcpIdleTimeout, or
// sends a message that cannot be answered.
func (s *Server) serveConn(c net.Conn) {
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdleTimeout))
		req, err := readTCPMsg(c)
		if err != nil {
			return
		}
		resp := s.h.respond(s.ctx, req, true)
		if resp == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(tcpIdleTimeout))
		if err := writeTCPMsg(c, resp); err != nil {
			return
		}
	}
}

// readTCPMsg reads one DNS message with its two-byte length prefix (RFC 1035
// section 4.2.2).
func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint16(l[:])
	if n == 0 {
		return nil, errEmptyMsg
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// writeTCPMsg writes msg with its two-byte length prefix in one write.
func writeTCPMsg(w io.Writer, msg []byte) error {
	if len(msg) > maxMsgSize {
		return errMsgTooLong
	}
	buf := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(buf, uint16(len(msg)))
	copy(buf[2:], msg)
	_, err := w.Write(buf)
	return err
}

var (
	errEmptyMsg   = errors.New("taskdns: empty message")
	errMsgTooLong = errors.New("taskdns: message too long")
)
