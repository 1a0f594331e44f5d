package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// A server with TLS (Config.TLS) uses it on every link:
//   - the API is HTTPS; a caller may present a certificate of the
//     installation's CA, and must on the agent routes (agentRoutes);
//   - Raft is mutual TLS between holders of server certificates
//     (raftTLSLayer);
//   - what it dials (other servers' APIs, agents' chunk and log
//     endpoints) it dials over TLS, presenting its server certificate and
//     requiring the role of the peer it dials.

// serverClient returns an API client of the servers at addrs, as a server
// talks to the others: with the operator token and, with TLS, its server
// certificate, trusting only servers.
func (s *Server) serverClient(addrs []string) *api.Client {
	if s.cfg.TLS == nil {
		return api.NewClient(addrs, s.cfg.Token)
	}
	return api.NewTLSClient(addrs, s.cfg.Token, s.cfg.TLS.ClientConfig(tlsfiles.RoleServer))
}

// scheme is the scheme of the URLs of this installation's links.
func (s *Server) scheme() string {
	if s.cfg.TLS == nil {
		return "http"
	}
	return "https"
}

// peerTransport returns the transport of requests to peers of role peer
// (a leader's API, an agent's logs), shared so that connections are
// reused; nil is http.DefaultTransport.
func (s *Server) peerTransport(peer tlsfiles.Role) http.RoundTripper {
	if peer == tlsfiles.RoleAgent {
		return s.toAgents
	}
	return s.toServers
}

// agentRoutes are the routes only agents use: a node registering,
// heartbeating, watching and reporting its work, its chunks and its
// checkpoints, and asking for its cluster credentials. With TLS they also
// need the caller to present an agent certificate, so that a leaked
// operator token alone cannot impersonate a node; a server forwarding an
// agent's request presents its server certificate, having checked the
// agent's.
var agentRoutes = []string{
	"PUT /v1/nodes/{name}",
	"PUT /v1/nodes/{name}/heartbeat",
	"GET /v1/nodes/{name}/work",
	"PUT /v1/nodes/{name}/tasks",
	"PUT /v1/nodes/{name}/chunks",
	"PUT /v1/nodes/{name}/checkpoints",
	"POST /v1/nodes/{name}/certificate",
	"POST /v1/fs/corrupt",
}

// requireAgentCert refuses the agent routes, with 403, to callers without
// an agent certificate (or a server's, forwarding) when the server uses
// TLS; other routes pass.
func (s *Server) requireAgentCert(h http.Handler) http.Handler {
	if s.cfg.TLS == nil {
		return h
	}
	match := http.NewServeMux()
	for _, p := range agentRoutes {
		match.HandleFunc(p, func(http.ResponseWriter, *http.Request) {})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := match.Handler(r); pattern != "" &&
			!tlsfiles.PeerHasRole(r.TLS, tlsfiles.RoleAgent) && !tlsfiles.PeerHasRole(r.TLS, tlsfiles.RoleServer) {
			writeError(w, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf(
				"%s %s is for agents: present a certificate of the installation's CA naming %s (shoal agent --cert)",
				r.Method, r.URL.Path, tlsfiles.RoleName(tlsfiles.RoleAgent)))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// raftTLSLayer is a [raft.StreamLayer] over mutual TLS: both ends must
// hold server certificates of the installation's CA. Handshakes of
// accepted connections run off the accept loop, with a deadline, so that
// a peer that never completes one holds up nobody; refused connections
// never reach Raft.
type raftTLSLayer struct {
	ln        net.Listener // plain TCP
	advertise net.Addr
	serve     *tls.Config
	dial      *tls.Config
	log       *slog.Logger

	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// raftHandshakeTimeout bounds a Raft connection's TLS handshake.
const raftHandshakeTimeout = 10 * time.Second

func newRaftTLSLayer(addr string, advertise net.Addr, id *tlsfiles.Identity, log *slog.Logger) (*raftTLSLayer, error) {
	serve, err := id.ServerConfig(tlsfiles.RoleServer)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &raftTLSLayer{ln: ln, advertise: advertise, serve: serve, dial: id.ClientConfig(tlsfiles.RoleServer),
		log: log, conns: make(chan net.Conn), closed: make(chan struct{})}
	go l.acceptLoop()
	return l, nil
}

func (l *raftTLSLayer) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.log.Warn("raft: accepting a connection", "err", err)
			select {
			case <-l.closed:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		go l.handshake(c)
	}
}

func (l *raftTLSLayer) handshake(c net.Conn) {
	tc := tls.Server(c, l.serve)
	tc.SetDeadline(time.Now().Add(raftHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		l.log.Warn("raft: refused a connection", "from", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	select {
	case l.conns <- tc:
	case <-l.closed:
		tc.Close()
	}
}

// Accept implements [net.Listener].
func (l *raftTLSLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements [net.Listener].
func (l *raftTLSLayer) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		err = l.ln.Close()
	})
	return err
}

// Addr implements [net.Listener]: the advertised address.
func (l *raftTLSLayer) Addr() net.Addr { return l.advertise }

// Dial implements [raft.StreamLayer].
func (l *raftTLSLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(address), l.dial)
}
