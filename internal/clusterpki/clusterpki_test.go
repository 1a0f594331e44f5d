package clusterpki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"
)

// base is a fixed clock for tests that only look at certificate contents.
var base = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func mustCA(t *testing.T, cluster string, now time.Time) *CA {
	t.Helper()
	ca, err := NewCA(cluster, rand.Reader, now)
	if err != nil {
		t.Fatalf("NewCA(%q): %v", cluster, err)
	}
	return ca
}

// mustCreds makes a node key, has ca sign it (valid from now-1m to now+ttl)
// and returns the node's credentials.
func mustCreds(t *testing.T, ca *CA, cluster, node string, now time.Time, ttl time.Duration) *Credentials {
	t.Helper()
	key, csr, err := NewNodeKey(node, rand.Reader)
	if err != nil {
		t.Fatalf("NewNodeKey(%q): %v", node, err)
	}
	certPEM, _, err := ca.SignNode(csr, cluster, node, rand.Reader, now, ttl)
	if err != nil {
		t.Fatalf("SignNode(%q, %q): %v", cluster, node, err)
	}
	creds, err := NewCredentials(key, certPEM, ca.CertPEM)
	if err != nil {
		t.Fatalf("NewCredentials(%q, %q): %v", cluster, node, err)
	}
	return creds
}

func mustParse(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(b)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return c
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "alpha", base)
	c := mustParse(t, ca.CertPEM)
	if got, want := c.Subject.CommonName, "shoal cluster alpha"; got != want {
		t.Errorf("CommonName = %q, want %q", got, want)
	}
	if got, err := clusterOf(c); err != nil || got != "alpha" {
		t.Errorf("cluster = %q, %v; want %q", got, err, "alpha")
	}
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("IsCA = %v, KeyUsage = %v; want a CA that signs certificates", c.IsCA, c.KeyUsage)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if c.NotBefore.After(base) || c.NotAfter.Before(base.AddDate(9, 11, 0)) {
		t.Errorf("validity %v..%v, want about 10 years from %v", c.NotBefore, c.NotAfter, base)
	}
	if _, _, err := ca.parse(); err != nil {
		t.Errorf("key does not load with its certificate: %v", err)
	}
	if _, err := NewCA("bad/name", rand.Reader, base); !errors.Is(err, ErrBadName) {
		t.Errorf("NewCA(bad/name) error = %v, want %v", err, ErrBadName)
	}
}

func TestSignNode(t *testing.T) {
	ca := mustCA(t, "alpha", base)
	key, csr, err := NewNodeKey("node-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, notAfter, err := ca.SignNode(csr, "alpha", "node-1", rand.Reader, base, time.Hour)
	if err != nil {
		t.Fatalf("SignNode: %v", err)
	}
	c := mustParse(t, certPEM)
	if got, want := c.Subject.CommonName, "node-1"; got != want {
		t.Errorf("CommonName = %q, want %q", got, want)
	}
	if got, want := c.DNSNames, []string{"node-1"}; !slices.Equal(got, want) {
		t.Errorf("DNSNames = %q, want %q", got, want)
	}
	if id, err := identityOf(c); err != nil || id != (Identity{"alpha", "node-1"}) {
		t.Errorf("identity = %v, %v; want alpha/node-1", id, err)
	}
	if !c.NotBefore.Equal(base.Add(-time.Minute)) || !c.NotAfter.Equal(base.Add(time.Hour)) || !notAfter.Equal(c.NotAfter) {
		t.Errorf("validity %v..%v (reported %v), want %v..%v", c.NotBefore, c.NotAfter, notAfter, base.Add(-time.Minute), base.Add(time.Hour))
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if !slices.Contains(c.ExtKeyUsage, u) {
			t.Errorf("ExtKeyUsage = %v, missing %v", c.ExtKeyUsage, u)
		}
	}
	if c.IsCA {
		t.Error("node certificate is a CA")
	}
	creds, err := NewCredentials(key, certPEM, ca.CertPEM)
	if err != nil {
		t.Fatalf("NewCredentials: %v", err)
	}
	if creds.Cluster != "alpha" || creds.Node != "node-1" || !creds.NotAfter.Equal(notAfter) {
		t.Errorf("credentials = %s/%s until %v, want alpha/node-1 until %v", creds.Cluster, creds.Node, creds.NotAfter, notAfter)
	}
}

func TestSignNodeRefuses(t *testing.T) {
	ca := mustCA(t, "alpha", base)
	_, csr1, err := NewNodeKey("node-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(csr1)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-3] ^= 0xff // inside the signature
	badSig := pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: tampered})

	tests := []struct {
		name    string
		csr     []byte
		cluster string
		node    string
		ttl     time.Duration
		want    error
	}{
		{"CommonName differs from node", csr1, "alpha", "node-2", time.Hour, ErrBadCSR},
		{"garbage", []byte("not a certificate request"), "alpha", "node-1", time.Hour, ErrBadCSR},
		{"PEM of another type", ca.CertPEM, "alpha", "node-1", time.Hour, ErrBadCSR},
		{"bad signature", badSig, "alpha", "node-1", time.Hour, ErrBadCSR},
		{"another cluster than the CA's", csr1, "beta", "node-1", time.Hour, ErrWrongCluster},
		{"invalid node name", csr1, "alpha", "*.node", time.Hour, ErrBadName},
		{"zero lifetime", csr1, "alpha", "node-1", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, _, err := ca.SignNode(tt.csr, tt.cluster, tt.node, rand.Reader, base, tt.ttl)
			if err == nil {
				t.Fatalf("SignNode signed %q", cert)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error = %v, want %v", err, tt.want)
			}
		})
	}

	bad := &CA{CertPEM: ca.CertPEM, KeyPEM: mustCA(t, "alpha", base).KeyPEM}
	if _, _, err := bad.SignNode(csr1, "alpha", "node-1", rand.Reader, base, time.Hour); !errors.Is(err, ErrBadCA) {
		t.Errorf("CA with another CA's key: error = %v, want %v", err, ErrBadCA)
	}
}

func TestNewCredentialsRefuses(t *testing.T) {
	ca := mustCA(t, "alpha", base)
	again := mustCA(t, "alpha", base) // the cluster re-created: same name, new CA
	key, csr, err := NewNodeKey("node-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := NewNodeKey("node-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignNode(csr, "alpha", "node-1", rand.Reader, base, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cert    []byte
		caPEM   []byte
		useKey  bool
		wantErr error
	}{
		{"another key", certPEM, ca.CertPEM, false, ErrBadCert},
		{"CA of the same name re-created", certPEM, again.CertPEM, true, ErrBadCert},
		{"garbage certificate", []byte("junk"), ca.CertPEM, true, ErrBadCert},
		{"garbage CA", certPEM, []byte("junk"), true, ErrBadCA},
		{"node certificate as CA", certPEM, certPEM, true, ErrBadCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := otherKey
			if tt.useKey {
				k = key
			}
			if _, err := NewCredentials(k, tt.cert, tt.caPEM); !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
