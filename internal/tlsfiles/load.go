package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Files names the PEM files of one process's TLS identity: the
// installation's CA certificate and, optionally, the process's own
// certificate and key (both or neither).
type Files struct {
	CACert, Cert, Key string
}

// Identity is a loaded [Files]: the CA every peer must chain to and, when
// the process has one, its certificate. Files are read once; a changed
// file takes effect at the next start.
type Identity struct {
	// CAFile is the absolute path of the CA certificate, handed to tasks
	// in SHOAL_CACERT.
	CAFile string
	pool   *x509.CertPool
	cert   *tls.Certificate // nil when the process has none
	role   Role             // the role cert names; "" when cert is nil
}

// ErrNoRole is returned, wrapped, for a certificate that names no role
// (no "<role>.shoal" DNS name), and by [Identity.ServerConfig] without a
// certificate.
var ErrNoRole = errors.New("tlsfiles: no role")

// Load reads f. The CA certificate is required; a certificate without its
// key, or a key without its certificate, is an error, as is a certificate
// that the CA did not sign or that names no role.
func Load(f Files) (*Identity, error) {
	if f.CACert == "" {
		return nil, errors.New("tlsfiles: a CA certificate is required")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("tlsfiles: a certificate and its key go together: give both or neither")
	}
	caPath, err := filepath.Abs(f.CACert)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %w", err)
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: reading the CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrBadCA, f.CACert)
	}
	id := &Identity{CAFile: caPath, pool: pool}
	if f.Cert == "" {
		return id, nil
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: loading %s and %s: %w", f.Cert, f.Key, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tlsfiles: %s: %w", f.Cert, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("tlsfiles: %s is not valid under the CA %s: %w", f.Cert, f.CACert, err)
	}
	for _, r := range []Role{RoleServer, RoleAgent, RoleClient} {
		if HasRole(leaf, r) {
			id.role = r
		}
	}
	if id.role == "" {
		return nil, fmt.Errorf("%w: %s names none of server.shoal, agent.shoal or client.shoal; make it with 'shoal tls cert create'", ErrNoRole, f.Cert)
	}
	id.cert = &cert
	return id, nil
}

// Role returns the role of the process's certificate, "" without one.
func (id *Identity) Role() Role { return id.role }

// HasRole reports whether cert names role r.
func HasRole(cert *x509.Certificate, r Role) bool {
	return cert != nil && slices.Contains(cert.DNSNames, RoleName(r))
}

// PeerHasRole reports whether the verified peer of a connection holds a
// certificate of role r: false without a certificate, or with one that
// was not verified (as when client certificates are optional and none was
// sent).
func PeerHasRole(cs *tls.ConnectionState, r Role) bool {
	return cs != nil && len(cs.VerifiedChains) > 0 && HasRole(cs.VerifiedChains[0][0], r)
}

// ServerConfig returns the configuration of a listener presenting the
// process's certificate. With require empty a client may present a
// certificate, which must then chain to the CA (an API caller with a token
// needs none); otherwise every client must present a certificate of role
// require, or the handshake fails.
func (id *Identity) ServerConfig(require Role) (*tls.Config, error) {
	if id.cert == nil {
		return nil, fmt.Errorf("%w: serving TLS needs a certificate and key", ErrNoRole)
	}
	c := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*id.cert},
		ClientCAs:    id.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
	if require != "" {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if !PeerHasRole(&cs, require) {
				return fmt.Errorf("tlsfiles: the peer's certificate does not name %s", RoleName(require))
			}
			return nil
		}
	}
	return c, nil
}

// ClientConfig returns the configuration of a connection to a peer that
// must hold a certificate of role peer, presenting the process's own
// certificate when it has one. The peer is checked by its role name, not
// by the address dialed, as Nomad checks "server.<region>.nomad": any
// address of an installation's server is fine as long as the CA made it a
// server.
func (id *Identity) ClientConfig(peer Role) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    id.pool,
		ServerName: RoleName(peer),
	}
	if id.cert != nil {
		c.Certificates = []tls.Certificate{*id.cert}
	}
	return c
}

// HTTPClient returns an HTTP client for links inside an installation that
// uses TLS, to peers of role peer. Such links name their peers by
// host:port (node and server addresses), and the code building their URLs
// writes http:// for them; in an installation with TLS every link is TLS,
// so this client sends an http:// request as https://. Its timeouts suit
// chunk transfers: connect 5 s, handshake 10 s, response headers 2 min, no
// overall timeout (use the context).
func (id *Identity) HTTPClient(peer Role) *http.Client {
	return &http.Client{Transport: httpsTransport{id.transport(peer)}}
}

// HTTPClientAsIs is HTTPClient without the rewriting: an http:// URL stays
// plain HTTP. For addresses that name their scheme, such as the endpoint
// a node serves its tasks on their cluster network (plain HTTP: it never
// leaves the machine).
func (id *Identity) HTTPClientAsIs(peer Role) *http.Client {
	return &http.Client{Transport: id.transport(peer)}
}

// transport is the TLS transport of HTTPClient.
func (id *Identity) transport(peer Role) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       id.ClientConfig(peer),
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}
}

// httpsTransport sends http:// requests as https:// (see
// [Identity.HTTPClient]).
type httpsTransport struct{ *http.Transport }

// RoundTrip implements [http.RoundTripper].
func (t httpsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" {
		r2 := r.Clone(r.Context())
		r2.URL.Scheme = "https"
		return t.Transport.RoundTrip(r2)
	}
	return t.Transport.RoundTrip(r)
}
