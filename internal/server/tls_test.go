package server_test

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestTLSPlainHTTPRefused: a plain HTTP caller at the HTTPS API gets an
// answer saying so at once, not a hang.
func TestTLSPlainHTTPRefused(t *testing.T) {
	g := testutil.StartServers(t, 1)
	plain := api.NewClient([]string{g.HTTPAddr(0)}, "")
	_, err := plain.Leader(reqCtx(t))
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Message, "HTTPS server") ||
		!strings.Contains(ae.Message, "--ca-cert") {
		t.Errorf("plain HTTP to the TLS API: got %v, want a 400 saying the server uses TLS", err)
	}
}

// TestTLSForeignCertificateRefused: a certificate of another CA is refused
// at the handshake, and a server of another CA is not trusted.
func TestTLSForeignCertificateRefused(t *testing.T) {
	g := testutil.StartServers(t, 1)
	foreign := testutil.TLSFiles(t)
	mixed, err := tlsfiles.Load(tlsfiles.Files{CACert: g.TLSFiles().CACert(),
		Cert: foreign.Files(tlsfiles.RoleClient).Cert, Key: foreign.Files(tlsfiles.RoleClient).Key})
	if err == nil {
		t.Fatalf("Load of a certificate of another CA: got %v, want an error", mixed)
	}
	// Build the mixed configuration by hand: our CA, their certificate.
	ours := testutil.Identity(t, g.TLSFiles(), tlsfiles.RoleClient).ClientConfig(tlsfiles.RoleServer)
	theirs := testutil.Identity(t, foreign, tlsfiles.RoleClient).ClientConfig(tlsfiles.RoleServer)
	ours.Certificates = theirs.Certificates
	c := api.NewTLSClient([]string{g.HTTPAddr(0)}, "", ours)
	if _, err := c.Leader(reqCtx(t)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client certificate of another CA: got %v, want the handshake refused", err)
	}
	c = testutil.NewClient([]string{g.HTTPAddr(0)}, "", testutil.Identity(t, foreign, tlsfiles.RoleClient))
	if _, err := c.Leader(reqCtx(t)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a server of another CA: got %v, want it not trusted", err)
	}
	// Without a certificate, a caller trusting the CA is served.
	ours = testutil.Identity(t, g.TLSFiles(), tlsfiles.RoleClient).ClientConfig(tlsfiles.RoleServer)
	ours.Certificates = nil
	c = api.NewTLSClient([]string{g.HTTPAddr(0)}, "", ours)
	if _, err := c.Leader(reqCtx(t)); err != nil {
		t.Errorf("a caller without a certificate: %v, want served", err)
	}
}

// TestTLSRaftNeedsServerCertificate: only holders of a server certificate
// of the installation's CA complete a handshake on the Raft port.
func TestTLSRaftNeedsServerCertificate(t *testing.T) {
	g := testutil.StartServers(t, 1)
	set := g.TLSFiles()
	raftAddr := g.Server(0).RaftAddr()
	dial := func(role tlsfiles.Role) error {
		conf := testutil.Identity(t, set, tlsfiles.RoleServer).ClientConfig(tlsfiles.RoleServer)
		switch role {
		case "":
			conf.Certificates = nil
		case tlsfiles.RoleServer:
		default:
			conf.Certificates = testutil.Identity(t, set, role).ClientConfig(tlsfiles.RoleServer).Certificates
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", raftAddr, conf)
		if err != nil {
			return err
		}
		defer c.Close()
		// In TLS 1.3 the client finishes before the server has checked
		// its certificate: the refusal arrives on the first read.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil // accepted: Raft waits for the dialer to speak
		}
		return err
	}
	for _, role := range []tlsfiles.Role{"", tlsfiles.RoleAgent, tlsfiles.RoleClient} {
		if err := dial(role); err == nil {
			t.Errorf("raft connection with certificate %q: accepted, want refused", role)
		}
	}
	if err := dial(tlsfiles.RoleServer); err != nil {
		t.Errorf("raft connection with a server certificate: %v, want accepted", err)
	}
	if _, err := net.DialTimeout("tcp", raftAddr, 5*time.Second); err != nil {
		t.Fatalf("plain TCP to the raft port: %v", err)
	}
}

// TestTLSAgentRoutesNeedAgentCertificate: the routes of agents refuse
// callers without an agent certificate with 403, even with the operator
// token; other routes serve them.
func TestTLSAgentRoutesNeedAgentCertificate(t *testing.T) {
	g := testutil.StartServers(t, 1, withToken)
	set := g.TLSFiles()
	reg := &api.NodeRegistration{Name: "n1", Zone: "z1", Addr: "n1:4647", CPU: 1000, MemoryMB: 1024}
	for _, role := range []tlsfiles.Role{tlsfiles.RoleClient, ""} {
		conf := testutil.Identity(t, set, tlsfiles.RoleClient).ClientConfig(tlsfiles.RoleServer)
		if role == "" {
			conf.Certificates = nil
		}
		c := api.NewTLSClient([]string{g.HTTPAddr(0)}, operatorToken, conf)
		err := c.RegisterNode(reqCtx(t), reg)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || !strings.Contains(ae.Message, "agent.shoal") {
			t.Errorf("RegisterNode with certificate %q: got %v, want 403 naming agent.shoal", role, err)
		}
		if _, _, err := c.Nodes(reqCtx(t), nil); err != nil {
			t.Errorf("Nodes with certificate %q: %v, want served", role, err)
		}
	}
	addReadyNode(t, g.Client(0), "n1", "z1", 1000, 1024) // an agent certificate
}

// TestTLSServerNeedsServerCertificate: a server refuses to start with a
// certificate of another role.
func TestTLSServerNeedsServerCertificate(t *testing.T) {
	set := testutil.TLSFiles(t)
	_, err := server.New(server.Config{Name: "s1", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		BootstrapExpect: 1, TLS: testutil.Identity(t, set, tlsfiles.RoleAgent)})
	if err == nil || !strings.Contains(err.Error(), "server.shoal") {
		t.Errorf("server.New with an agent certificate: %v, want an error naming server.shoal", err)
	}
}
