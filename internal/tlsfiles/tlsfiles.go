// Package tlsfiles makes the files of an installation's own TLS: a CA and
// the certificates of its servers, agents and clients, as `shoal tls ca
// create` and `shoal tls cert create` write them (as Nomad and Consul do).
//
// A certificate says what it is for with a DNS name "<role>.shoal"
// (server.shoal, agent.shoal, client.shoal) besides the names and
// addresses it serves, so that a peer can require a server, not merely a
// holder of the installation's CA. Keys are ECDSA P-256 in PKCS#8 PEM; CA
// certificates last 10 years by default, others 1 year.
//
// [Load] reads a process's files into an [Identity], which makes the
// *tls.Config of its listeners and of its connections to peers (TLS 1.3,
// peers checked by role); [MakeSet] makes a whole installation's files in
// one directory, as `shoal dev` and the tests use them.
package tlsfiles

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
	"net"
	"time"
)

// Role is what a certificate is for.
type Role string

// Roles.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
	RoleClient Role = "client"
)

// Default lifetimes.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// ErrBadCA is returned, wrapped, for a CA certificate or key that does not
// parse or that do not belong together.
var ErrBadCA = errors.New("tlsfiles: invalid CA")

// RoleName is the DNS name that marks a certificate's role.
func RoleName(r Role) string { return string(r) + ".shoal" }

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleServer || r == RoleAgent || r == RoleClient }

// NewCA makes a self-signed CA named name, valid from now for validity.
func NewCA(name string, rand io.Reader, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsfiles: making a key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name, Organization: []string{"Shoal"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(validity),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	return sign(tmpl, tmpl, key, key, rand)
}

// NewCert makes a key and a certificate for role, signed by the CA: named
// name, valid for the DNS names and IP addresses given (a server's or
// agent's listen addresses) and for RoleName(role).
func NewCert(caCertPEM, caKeyPEM []byte, role Role, name string, dnsNames []string, ips []net.IP,
	rand io.Reader, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if !role.Valid() {
		return nil, nil, fmt.Errorf("tlsfiles: %q is not a role (server, agent or client)", role)
	}
	ca, caKey, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsfiles: making a key: %w", err)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if role != RoleClient {
		usage = append(usage, x509.ExtKeyUsageServerAuth) // servers and agents also dial each other
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name, Organization: []string{"Shoal"}},
		NotBefore: now.Add(-time.Minute), NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usage,
		DNSNames:    append([]string{RoleName(role)}, dnsNames...),
		IPAddresses: ips,
	}
	return sign(tmpl, ca, key, caKey, rand)
}

func sign(tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey, rand io.Reader) (certPEM, keyPEM []byte, err error) {
	serial, err := randSerial(rand)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsfiles: signing: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsfiles: encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

func randSerial(rand io.Reader) (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(rand, b); err != nil {
		return nil, fmt.Errorf("tlsfiles: drawing a serial number: %w", err)
	}
	return new(big.Int).SetBytes(b), nil
}

// parseCA reads a CA's certificate and key and checks they belong
// together and that the certificate is a CA.
func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%w: the certificate is not a PEM CERTIFICATE block", ErrBadCA)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadCA, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%w: %s is not a CA certificate", ErrBadCA, cert.Subject.CommonName)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, nil, fmt.Errorf("%w: the key is not a PEM PRIVATE KEY block", ErrBadCA)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadCA, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%w: the key does not belong to the certificate", ErrBadCA)
	}
	return cert, key, nil
}
