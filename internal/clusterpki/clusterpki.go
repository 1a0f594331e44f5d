// Package clusterpki gives every Shoal cluster its own certificate authority
// and lets the nodes of a cluster talk to each other over mutual TLS.
//
// Trust model: a cluster's [CA] is created with the cluster and kept by the
// servers (its key is a secret stored in Raft). A node that joins the cluster
// makes its own key with [NewNodeKey] and sends only the certificate request;
// the servers answer with a certificate from [CA.SignNode]. Nodes then hold
// [Credentials] and use [ServerConfig] and [ClientConfig] for node-to-node
// channels. A peer is accepted only if its certificate chains to the CA
// certificate this node holds and names this node's cluster. Trust is the CA
// key, not the cluster's name: a cluster deleted and re-created under the same
// name gets a new CA, and certificates of the old one are refused.
//
// Names are carried in certificates this way: the node name is the
// CommonName and a DNS SAN (so that standard hostname verification applies
// when dialing a node by name); the cluster is a URI SAN
// "shoal://cluster/<name>", in the CA certificate and in every node
// certificate it signs.
//
// Since Go 1.26 crypto/ecdsa ignores the rand argument for key generation
// and signing; the rand passed in here still draws certificate serial numbers.
package clusterpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Errors returned by this package, wrapped with %w and details.
var (
	// ErrBadName: a cluster or node name is not a valid Shoal name.
	ErrBadName = errors.New("clusterpki: invalid name")
	// ErrBadCSR: a certificate request is not PEM, does not parse, has a bad
	// signature, an unsupported key, or names another node.
	ErrBadCSR = errors.New("clusterpki: invalid certificate request")
	// ErrBadCA: a CA's certificate or key is malformed or they do not match.
	ErrBadCA = errors.New("clusterpki: invalid CA")
	// ErrBadCert: a node certificate is malformed, does not match its key,
	// is not signed by the CA, or does not name its cluster and node properly.
	ErrBadCert = errors.New("clusterpki: invalid certificate")
	// ErrWrongCluster: a certificate names another cluster than expected.
	ErrWrongCluster = errors.New("clusterpki: certificate is for another cluster")
	// ErrWrongNode: a server certificate names another node than dialed.
	ErrWrongNode = errors.New("clusterpki: certificate is for another node")
	// ErrNoCredentials: this node holds no credentials (it left its cluster).
	ErrNoCredentials = errors.New("clusterpki: no credentials")
	// ErrNoPeer: a connection has no verified peer certificate.
	ErrNoPeer = errors.New("clusterpki: no verified peer certificate")
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	clockSkew    = time.Minute
	uriScheme    = "shoal"
	uriHost      = "cluster"
	pemCert      = "CERTIFICATE"
	pemKey       = "PRIVATE KEY"
	pemCSR       = "CERTIFICATE REQUEST"
	serialBitLen = 128
)

// CA is a cluster's certificate authority as servers store it (in Raft):
// PEM certificate and PEM PKCS#8 private key. KeyPEM is secret; CertPEM is
// given to every node of the cluster as its only trust root.
type CA struct {
	CertPEM, KeyPEM []byte
}

// NewCA makes a CA for cluster: an ECDSA P-256 key and a self-signed
// certificate with CommonName "shoal cluster <name>" and the cluster's URI
// SAN, valid for about 10 years from now (and an hour before, for clock
// skew), which may sign node certificates only (path length 0).
func NewCA(cluster string, rand io.Reader, now time.Time) (*CA, error) {
	if err := api.ValidateName("cluster", cluster); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadName, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, fmt.Errorf("clusterpki: generate CA key: %w", err)
	}
	serial, err := newSerial(rand)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "shoal cluster " + cluster},
		URIs:                  []*url.URL{clusterURI(cluster)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("clusterpki: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("clusterpki: marshal CA key: %w", err)
	}
	return &CA{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: pemKey, Bytes: keyDER}),
	}, nil
}

// NewNodeKey makes a node's ECDSA P-256 private key and a PEM certificate
// request naming node as CommonName. The key never leaves the node; only the
// request is sent to the servers, which answer with [CA.SignNode].
func NewNodeKey(node string, rand io.Reader) (key *ecdsa.PrivateKey, csrPEM []byte, err error) {
	if err := api.ValidateName("node", node); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadName, err)
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, nil, fmt.Errorf("clusterpki: generate node key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: node},
		DNSNames: []string{node},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("clusterpki: create certificate request: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

// SignNode checks csrPEM (a PEM certificate request with a valid signature,
// an ECDSA key and CommonName == node) and returns a PEM certificate for
// node in cluster, valid from now-1m to now+ttl (never beyond the CA's own
// expiry, which notAfter reports), usable as both TLS client and server.
// The certificate names the node as CommonName and DNS SAN and the cluster
// as the CA does, so that [PeerIdentity] can read both. cluster must be the
// CA's own cluster: a CA signs for its cluster only. Only the request's
// public key and CommonName are used; any other field it asks for is ignored.
func (ca *CA) SignNode(csrPEM []byte, cluster, node string, rand io.Reader, now time.Time, ttl time.Duration) (certPEM []byte, notAfter time.Time, err error) {
	if err := api.ValidateName("node", node); err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %w", ErrBadName, err)
	}
	if ttl <= 0 {
		return nil, time.Time{}, fmt.Errorf("clusterpki: certificate lifetime %v must be positive", ttl)
	}
	caCert, caKey, err := ca.parse()
	if err != nil {
		return nil, time.Time{}, err
	}
	caCluster, err := clusterOf(caCert)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %w", ErrBadCA, err)
	}
	if caCluster != cluster {
		return nil, time.Time{}, fmt.Errorf("%w: the CA is cluster %q's, asked to sign for cluster %q", ErrWrongCluster, caCluster, cluster)
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, time.Time{}, err
	}
	if csr.Subject.CommonName != node {
		return nil, time.Time{}, fmt.Errorf("%w: it names node %q, not %q", ErrBadCSR, csr.Subject.CommonName, node)
	}
	serial, err := newSerial(rand)
	if err != nil {
		return nil, time.Time{}, err
	}
	notAfter = now.Add(ttl)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: node},
		DNSNames:              []string{node},
		URIs:                  []*url.URL{clusterURI(cluster)},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand, tmpl, caCert, csr.PublicKey, caKey)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("clusterpki: sign node certificate: %w", err)
	}
	// Certificates carry whole seconds; report what the certificate says.
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("clusterpki: parse signed certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}), leaf.NotAfter, nil
}

// parse decodes the CA's certificate and key and checks that they belong
// together and that the certificate may sign others.
func (ca *CA) parse() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := parseCert(ca.CertPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate: %w", ErrBadCA, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%w: certificate is not a CA certificate", ErrBadCA)
	}
	block, _ := pem.Decode(ca.KeyPEM)
	if block == nil || block.Type != pemKey {
		return nil, nil, fmt.Errorf("%w: key is not a PEM %q block", ErrBadCA, pemKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: key: %w", ErrBadCA, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: key is a %T, not ECDSA", ErrBadCA, k)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, fmt.Errorf("%w: key does not match certificate", ErrBadCA)
	}
	return cert, key, nil
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != pemCSR {
		return nil, fmt.Errorf("%w: not a PEM %q block", ErrBadCSR, pemCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: key is a %T, not ECDSA", ErrBadCSR, csr.PublicKey)
	}
	return csr, nil
}

// parseCert decodes the first PEM block of b, which must be a certificate.
func parseCert(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemCert {
		return nil, fmt.Errorf("not a PEM %q block", pemCert)
	}
	return x509.ParseCertificate(block.Bytes)
}

func newSerial(rand io.Reader) (*big.Int, error) {
	s, err := randInt(rand, serialBitLen)
	if err != nil {
		return nil, fmt.Errorf("clusterpki: serial number: %w", err)
	}
	return s, nil
}

// randInt reads a positive integer of at most bits bits from rand.
func randInt(rand io.Reader, bits int) (*big.Int, error) {
	b := make([]byte, bits/8)
	if _, err := io.ReadFull(rand, b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f // positive in DER without a leading zero byte
	n := new(big.Int).SetBytes(b)
	if n.Sign() == 0 {
		n.SetInt64(1) // RFC 5280: serial numbers are positive
	}
	return n, nil
}

// clusterURI is the URI SAN that names cluster in CA and node certificates.
func clusterURI(cluster string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + cluster}
}

// clusterOf reads the cluster a certificate names: exactly one URI SAN
// "shoal://cluster/<name>" with a valid name.
func clusterOf(cert *x509.Certificate) (string, error) {
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && u.Host == uriHost {
			found = append(found, strings.TrimPrefix(u.Path, "/"))
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("certificate names %d clusters, want 1", len(found))
	}
	if err := api.ValidateName("cluster", found[0]); err != nil {
		return "", err
	}
	return found[0], nil
}
