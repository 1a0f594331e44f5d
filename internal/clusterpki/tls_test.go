package clusterpki

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// testServer is an HTTP server on 127.0.0.1 behind ServerConfig. It does
// each TLS handshake itself so that tests can see why the server refused a
// connection (handshakes), then serves HTTP on the connections that pass.
// Its handler answers with the peer's identity and counts requests (hits).
type testServer struct {
	addr       string
	handshakes chan error
	hits       atomic.Int32
}

func startServer(t *testing.T, creds func() *Credentials, authorize func(Identity) error) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{addr: ln.Addr().String(), handshakes: make(chan error, 16)}
	cfg := ServerConfig(creds, authorize)
	passed := &chanListener{Listener: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := tc.HandshakeContext(ctx)
				s.handshakes <- err
				if err != nil {
					c.Close()
					return
				}
				select {
				case passed.conns <- tc:
				case <-passed.done:
					c.Close()
				}
			}()
		}
	}()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		id, err := PeerIdentity(r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		io.WriteString(w, id.String())
	})}
	go srv.Serve(passed)
	t.Cleanup(func() { srv.Close() })
	return s
}

// chanListener hands http.Server the connections whose handshake passed.
type chanListener struct {
	net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  atomic.Bool
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	if l.once.CompareAndSwap(false, true) {
		close(l.done)
	}
	return l.Listener.Close()
}

// handshake returns the server's outcome of the next handshake.
func (s *testServer) handshake(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.handshakes:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the server saw no handshake")
		return nil
	}
}

// get makes one request over a new connection with cfg and returns the
// response status and body, the server's verified identity and the error.
func get(t *testing.T, s *testServer, cfg *tls.Config) (status int, body string, server Identity, err error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + s.addr + "/")
	if err != nil {
		return 0, "", Identity{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", Identity{}, err
	}
	server, err = PeerIdentity(resp.TLS)
	return resp.StatusCode, string(b), server, err
}

// pinned returns the same value on every call, as a node's credentials
// holder would while the node stays in its cluster.
func pinned(c *Credentials) func() *Credentials { return func() *Credentials { return c } }

var errDenied = errors.New("test: node not allowed")

func isUnknownAuthority(err error) bool {
	var e x509.UnknownAuthorityError
	return errors.As(err, &e)
}

func isExpired(err error) bool {
	var e x509.CertificateInvalidError
	return errors.As(err, &e) && e.Reason == x509.Expired
}

func isHostnameMismatch(err error) bool {
	var e x509.HostnameError
	return errors.As(err, &e)
}

func TestMutualTLS(t *testing.T) {
	now := time.Now()
	alpha := mustCA(t, "alpha", now)
	beta := mustCA(t, "beta", now)
	alphaAgain := mustCA(t, "alpha", now) // alpha deleted and re-created
	node1 := mustCreds(t, alpha, "alpha", "node-1", now, time.Hour)
	node2 := mustCreds(t, alpha, "alpha", "node-2", now, time.Hour)
	node3 := mustCreds(t, alpha, "alpha", "node-3", now, time.Hour)
	expired := mustCreds(t, alpha, "alpha", "node-2", now.Add(-2*time.Hour), time.Hour)
	betaNode := mustCreds(t, beta, "beta", "node-2", now, time.Hour)
	againNode := mustCreds(t, alphaAgain, "alpha", "node-2", now, time.Hour)
	againNode1 := mustCreds(t, alphaAgain, "alpha", "node-1", now, time.Hour)
	// alpha's CA should never sign for another cluster; if it did, the
	// cluster check after chain verification still refuses.
	forgedClient := forge(t, alpha, "beta", "node-2", now)
	forgedServer := forge(t, alpha, "beta", "node-1", now)

	// impostor presents c's certificate to node-1 while trusting alpha's CA
	// (which is public), so that the server, not the client, must refuse.
	impostor := func(c *Credentials) *tls.Config {
		cfg := ClientConfig(c, "node-1")
		cfg.RootCAs = node1.pool
		cfg.VerifyConnection = nil
		return cfg
	}
	noCert := ClientConfig(node2, "node-1")
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil
	}

	var authorized atomic.Value
	authorize := func(id Identity) error {
		authorized.Store(id)
		if id.Node == "node-3" {
			return errDenied
		}
		return nil
	}

	tests := []struct {
		name      string
		serverAs  *Credentials
		client    *tls.Config
		wantBody  string           // the identity the server saw; "" when refused
		serverErr func(error) bool // the server's handshake error, when refused
		clientErr func(error) bool // the client's error, when the client refuses
	}{
		{name: "same cluster", serverAs: node1, client: ClientConfig(node2, "node-1"), wantBody: "alpha/node-2"},
		{name: "client of another cluster", serverAs: node1, client: impostor(betaNode), serverErr: isUnknownAuthority},
		{name: "client certificate from our CA naming another cluster", serverAs: node1, client: impostor(forgedClient),
			serverErr: func(err error) bool { return errors.Is(err, ErrWrongCluster) }},
		{name: "server certificate from our CA naming another cluster", serverAs: forgedServer, client: ClientConfig(node2, "node-1"),
			clientErr: func(err error) bool { return errors.Is(err, ErrWrongCluster) }},
		{name: "client without certificate", serverAs: node1, client: noCert,
			serverErr: func(err error) bool { return err != nil }},
		{name: "client from a re-created CA of the same name", serverAs: node1, client: impostor(againNode), serverErr: isUnknownAuthority},
		{name: "expired client certificate", serverAs: node1, client: impostor(expired), serverErr: isExpired},
		{name: "authorize refuses", serverAs: node1, client: ClientConfig(node3, "node-1"),
			serverErr: func(err error) bool { return errors.Is(err, errDenied) }},
		{name: "server is another node", serverAs: node1, client: ClientConfig(node2, "node-9"), clientErr: isHostnameMismatch},
		{name: "server name differs only in case", serverAs: node1, client: ClientConfig(node2, "NODE-1"),
			clientErr: func(err error) bool { return errors.Is(err, ErrWrongNode) }},
		{name: "server from a re-created CA of the same name", serverAs: againNode1, client: ClientConfig(node2, "node-1"), clientErr: isUnknownAuthority},
		{name: "client of another cluster trusting its own CA", serverAs: node1, client: ClientConfig(betaNode, "node-1"), clientErr: isUnknownAuthority},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, pinned(tt.serverAs), authorize)
			status, body, server, err := get(t, s, tt.client)
			hsErr := s.handshake(t)
			switch {
			case tt.wantBody != "":
				if err != nil || hsErr != nil {
					t.Fatalf("request failed: client %v, server %v", err, hsErr)
				}
				if status != http.StatusOK || body != tt.wantBody {
					t.Errorf("got %d %q, want 200 %q", status, body, tt.wantBody)
				}
				if want := (Identity{"alpha", "node-1"}); server != want {
					t.Errorf("server identity = %v, want %v", server, want)
				}
				if got := authorized.Load(); got != (Identity{"alpha", "node-2"}) {
					t.Errorf("authorize saw %v, want alpha/node-2", got)
				}
			case tt.serverErr != nil:
				if err == nil {
					t.Fatalf("request succeeded: %d %q", status, body)
				}
				if !tt.serverErr(hsErr) {
					t.Errorf("server handshake error = %v, not the expected refusal", hsErr)
				}
			default:
				if !tt.clientErr(err) {
					t.Errorf("client error = %v, not the expected refusal", err)
				}
			}
			if tt.wantBody == "" && s.hits.Load() != 0 {
				t.Errorf("handler ran %d times for a refused connection", s.hits.Load())
			}
		})
	}
}

// forge has ca sign a certificate for node naming cluster, bypassing
// SignNode's check that a CA signs for its own cluster only.
func forge(t *testing.T, ca *CA, cluster, node string, now time.Time) *Credentials {
	t.Helper()
	caCert, caKey, err := ca.parse()
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := NewNodeKey(node, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: node},
		DNSNames:     []string{node},
		URIs:         []*url.URL{clusterURI(cluster)},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &Credentials{Cluster: cluster, Node: node, NotAfter: leaf.NotAfter,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool: pool}
}

func TestServerFollowsCredentials(t *testing.T) {
	now := time.Now()
	alpha := mustCA(t, "alpha", now)
	beta := mustCA(t, "beta", now)
	var held atomic.Pointer[Credentials]
	held.Store(mustCreds(t, alpha, "alpha", "node-1", now, time.Hour))
	s := startServer(t, held.Load, nil)
	alphaClient := ClientConfig(mustCreds(t, alpha, "alpha", "node-2", now, time.Hour), "node-1")
	betaClient := ClientConfig(mustCreds(t, beta, "beta", "node-2", now, time.Hour), "node-1")

	if status, body, _, err := get(t, s, alphaClient); err != nil || status != http.StatusOK || body != "alpha/node-2" {
		t.Fatalf("before: got %d %q %v, want 200 alpha/node-2", status, body, err)
	}
	if err := s.handshake(t); err != nil {
		t.Fatalf("before: server handshake: %v", err)
	}

	held.Store(nil) // the node left its cluster
	if _, _, _, err := get(t, s, alphaClient); err == nil {
		t.Error("without credentials: request succeeded")
	}
	if err := s.handshake(t); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("without credentials: server handshake error = %v, want %v", err, ErrNoCredentials)
	}

	held.Store(mustCreds(t, beta, "beta", "node-1", now, time.Hour)) // joined beta
	if _, _, _, err := get(t, s, alphaClient); !isUnknownAuthority(err) {
		t.Errorf("alpha client after the move: error = %v, want unknown authority", err)
	}
	s.handshake(t)
	if status, body, _, err := get(t, s, betaClient); err != nil || status != http.StatusOK || body != "beta/node-2" {
		t.Errorf("beta client after the move: got %d %q %v, want 200 beta/node-2", status, body, err)
	}
	if got := s.hits.Load(); got != 2 {
		t.Errorf("handler ran %d times, want 2", got)
	}
}

func TestPeerIdentityUnverified(t *testing.T) {
	for _, cs := range []*tls.ConnectionState{nil, {}} {
		if id, err := PeerIdentity(cs); !errors.Is(err, ErrNoPeer) {
			t.Errorf("PeerIdentity(%v) = %v, %v; want %v", cs, id, err, ErrNoPeer)
		}
	}
}
