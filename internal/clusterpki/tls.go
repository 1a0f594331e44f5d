package clusterpki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Credentials are what a node holds for its cluster: its private key, its
// certificate and the cluster's CA certificate (its only trust root).
// Build them with [NewCredentials]; they are immutable and safe to share
// between goroutines. A node that changes cluster gets new Credentials.
type Credentials struct {
	// Cluster and Node are the names the certificate carries.
	Cluster, Node string
	// NotAfter is when the certificate expires; renew before then.
	NotAfter time.Time

	cert tls.Certificate
	pool *x509.CertPool
}

// NewCredentials checks that certPEM is a node certificate for key, signed
// by the CA certificate caPEM, naming the same cluster as the CA, and
// returns the node's credentials with Cluster and Node read from the
// certificate. It does not check validity dates: an expired certificate is
// refused by peers at handshake time, which is where the clock matters.
func NewCredentials(key *ecdsa.PrivateKey, certPEM, caPEM []byte) (*Credentials, error) {
	if key == nil {
		return nil, fmt.Errorf("%w: no private key", ErrBadCert)
	}
	caCert, err := parseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: CA certificate: %w", ErrBadCA, err)
	}
	if !caCert.IsCA {
		return nil, fmt.Errorf("%w: CA certificate is not a CA", ErrBadCA)
	}
	caCluster, err := clusterOf(caCert)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCA, err)
	}
	leaf, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCert, err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("%w: certificate does not match the private key", ErrBadCert)
	}
	if err := leaf.CheckSignatureFrom(caCert); err != nil {
		return nil, fmt.Errorf("%w: not signed by the CA: %w", ErrBadCert, err)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			return nil, fmt.Errorf("%w: certificate is not usable as both TLS client and server", ErrBadCert)
		}
	}
	id, err := identityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCert, err)
	}
	if id.Cluster != caCluster {
		return nil, fmt.Errorf("%w: certificate names cluster %q, its CA cluster %q", ErrWrongCluster, id.Cluster, caCluster)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &Credentials{
		Cluster:  id.Cluster,
		Node:     id.Node,
		NotAfter: leaf.NotAfter,
		cert:     tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		pool:     pool,
	}, nil
}

// Identity is the verified peer of a connection: a node of a cluster.
type Identity struct {
	Cluster, Node string
}

// String returns "cluster/node", for logs.
func (id Identity) String() string { return id.Cluster + "/" + id.Node }

// ServerConfig returns a tls.Config for a node's listener. Each handshake
// reads the node's current credentials through creds: it presents the
// node's certificate, requires a client certificate that chains to the
// cluster's CA, checks that it names the same cluster, then calls authorize
// (if not nil) with the peer's [Identity]; an error from authorize refuses
// the handshake. When creds returns nil (the node left its cluster) every
// handshake is refused, and when it returns other credentials (the node
// joined another cluster) only the new cluster's nodes are accepted, both
// without restarting the listener. TLS 1.3 is the minimum and session
// resumption is disabled so that every connection is checked against the
// current credentials. ALPN protocols set in the returned config's
// NextProtos before serving are offered.
func ServerConfig(creds func() *Credentials, authorize func(Identity) error) *tls.Config {
	outer := &tls.Config{MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	outer.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := creds()
		if c == nil {
			return nil, ErrNoCredentials
		}
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			SessionTicketsDisabled: true,
			NextProtos:             outer.NextProtos,
			Certificates:           []tls.Certificate{c.cert},
			ClientAuth:             tls.RequireAndVerifyClientCert,
			ClientCAs:              c.pool,
			VerifyConnection: func(cs tls.ConnectionState) error {
				id, err := PeerIdentity(&cs)
				if err != nil {
					return err
				}
				if id.Cluster != c.Cluster {
					return fmt.Errorf("%w: peer %s, this node is in cluster %q", ErrWrongCluster, id, c.Cluster)
				}
				if authorize != nil {
					return authorize(id)
				}
				return nil
			},
		}, nil
	}
	return outer
}

// ClientConfig returns a tls.Config for dialing node of the cluster of
// creds: it presents our certificate (always, whatever CAs the server
// says it accepts), trusts only the cluster's CA, and accepts only a server
// certificate for exactly node (ServerName and CommonName) in our cluster.
// With nil creds every handshake fails with [ErrNoCredentials].
func ClientConfig(creds *Credentials, node string) *tls.Config {
	if creds == nil {
		return &tls.Config{
			MinVersion: tls.VersionTLS13,
			ServerName: node,
			RootCAs:    x509.NewCertPool(),
			VerifyConnection: func(tls.ConnectionState) error {
				return ErrNoCredentials
			},
		}
	}
	cert := creds.cert
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: node,
		RootCAs:    creds.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := PeerIdentity(&cs)
			if err != nil {
				return err
			}
			if id.Cluster != creds.Cluster {
				return fmt.Errorf("%w: server %s, this node is in cluster %q", ErrWrongCluster, id, creds.Cluster)
			}
			if id.Node != node {
				return fmt.Errorf("%w: dialed %q, server is %s", ErrWrongNode, node, id)
			}
			return nil
		},
	}
}

// PeerIdentity returns the verified [Identity] of the peer of a connection,
// for example r.TLS in an HTTP handler behind [ServerConfig]. It reads only
// verified chains, so a connection whose peer certificate was not verified
// has no identity ([ErrNoPeer]).
func PeerIdentity(cs *tls.ConnectionState) (Identity, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoPeer
	}
	id, err := identityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrBadCert, err)
	}
	return id, nil
}

// identityOf reads the cluster and node a node certificate names; the node
// name must be both the CommonName and a DNS SAN.
func identityOf(cert *x509.Certificate) (Identity, error) {
	cluster, err := clusterOf(cert)
	if err != nil {
		return Identity{}, err
	}
	node := cert.Subject.CommonName
	if err := api.ValidateName("node", node); err != nil {
		return Identity{}, err
	}
	if !slices.Contains(cert.DNSNames, node) {
		return Identity{}, fmt.Errorf("node %q is not among the certificate's DNS names", node)
	}
	return Identity{Cluster: cluster, Node: node}, nil
}
