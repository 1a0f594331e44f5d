package cli

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTLSFiles makes a CA and a server and a client certificate with the
// CLI, then checks them the way a process will use them: a real mutual-TLS
// connection on loopback.
func TestTLSFiles(t *testing.T) {
	dir := t.TempDir()
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("shoal %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	ca, key := filepath.Join(dir, "shoal-ca.pem"), filepath.Join(dir, "shoal-ca-key.pem")
	mustRun("tls", "ca", "create", "--dir", dir)
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v, mode %v; want 0600", err, fi.Mode())
	}
	mustRun("tls", "cert", "create", "--server", "--name", "s1", "--ca", ca, "--key", key, "--dir", dir, "--ip", "127.0.0.2")
	mustRun("tls", "cert", "create", "--client", "--ca", ca, "--key", key, "--dir", dir)

	// Refusals: no overwriting, exactly one role, a missing CA.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"tls", "ca", "create", "--dir", dir}, "exists"},
		{[]string{"tls", "cert", "create", "--server", "--agent", "--ca", ca, "--key", key, "--dir", dir}, "exactly one"},
		{[]string{"tls", "cert", "create", "--agent", "--ca", filepath.Join(dir, "nope.pem"), "--key", key, "--dir", dir}, "reading the CA certificate"},
		{[]string{"tls", "cert", "create", "--agent", "--ca", ca, "--key", filepath.Join(dir, "shoal-client-key.pem"), "--dir", dir}, "does not belong"},
	} {
		code, _, errOut := runCLI(t, tt.args...)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("shoal %s: exit %d %q, want a failure mentioning %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}

	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(caPEM)
	srvCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "shoal-server-s1.pem"), filepath.Join(dir, "shoal-server-s1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cliCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "shoal-client.pem"), filepath.Join(dir, "shoal-client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].DNSNames[0])
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, host := range []string{"localhost", "server.shoal"} {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host,
			Certificates: []tls.Certificate{cliCert}}}}
		resp, err := c.Get("https://127.0.0.1:" + port)
		if err != nil {
			t.Fatalf("verifying the server as %s: %v", host, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "client.shoal" {
			t.Errorf("the server saw client %q, want client.shoal", b)
		}
	}
	// A client without a certificate is refused.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	if resp, err := c.Get("https://127.0.0.1:" + port); err == nil {
		resp.Body.Close()
		t.Error("a client without a certificate was served")
	}
}
