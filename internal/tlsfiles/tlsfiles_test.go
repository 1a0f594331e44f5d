package tlsfiles

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"
)

func parse(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertificates(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	caCert, caKey, err := NewCA("test CA", rand.Reader, now, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := parse(t, caCert)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, tt := range []struct {
		role  Role
		usage x509.ExtKeyUsage
	}{{RoleServer, x509.ExtKeyUsageServerAuth}, {RoleAgent, x509.ExtKeyUsageServerAuth}, {RoleClient, x509.ExtKeyUsageClientAuth}} {
		certPEM, _, err := NewCert(caCert, caKey, tt.role, "n1", []string{"n1.example"}, nil, rand.Reader, now, DefaultCertValidity)
		if err != nil {
			t.Fatalf("%s: %v", tt.role, err)
		}
		c := parse(t, certPEM)
		if !slices.Contains(c.DNSNames, RoleName(tt.role)) || !slices.Contains(c.DNSNames, "n1.example") {
			t.Errorf("%s: DNS names %v", tt.role, c.DNSNames)
		}
		if !c.NotAfter.Equal(ca.NotAfter) {
			t.Errorf("%s: not after %s, want capped at the CA's %s", tt.role, c.NotAfter, ca.NotAfter)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{tt.usage}}); err != nil {
			t.Errorf("%s: %v", tt.role, err)
		}
	}
	// A client certificate cannot serve.
	clientPEM, clientKey, _ := NewCert(caCert, caKey, RoleClient, "c", nil, nil, rand.Reader, now, time.Hour)
	if _, err := parse(t, clientPEM).Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verifies for server use")
	}
	// Refused: an unknown role, a CA whose key is another's, a non-CA as CA.
	if _, _, err := NewCert(caCert, caKey, "admin", "x", nil, nil, rand.Reader, now, time.Hour); err == nil {
		t.Error("an unknown role was accepted")
	}
	if _, _, err := NewCert(caCert, clientKey, RoleAgent, "x", nil, nil, rand.Reader, now, time.Hour); !errors.Is(err, ErrBadCA) {
		t.Errorf("a mismatched CA key: %v", err)
	}
	if _, _, err := NewCert(clientPEM, clientKey, RoleAgent, "x", nil, nil, rand.Reader, now, time.Hour); !errors.Is(err, ErrBadCA) {
		t.Errorf("a client certificate as CA: %v", err)
	}
}
