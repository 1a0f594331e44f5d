package agent

import (
	"crypto/tls"
	"fmt"
)

// An agent with TLS (Config.TLS) serves its HTTP port (chunks, logs, the
// local endpoints of its tasks) over TLS, verifying a client certificate
// when one is presented, and presents its agent certificate to servers
// (which it requires to hold server certificates) and to other agents
// (which must hold agent certificates). The peer listener (peer.go) keeps
// its own per-cluster mutual TLS.

// serveTLS wraps the HTTP listener in TLS when the agent has it.
func (a *Agent) serveTLS() error {
	if a.cfg.TLS == nil {
		return nil
	}
	conf, err := a.cfg.TLS.ServerConfig("")
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.ln = tls.NewListener(a.ln, conf)
	return nil
}

// scheme is the scheme of the agent's HTTP port.
func (a *Agent) scheme() string {
	if a.cfg.TLS == nil {
		return "http"
	}
	return "https"
}

// caCertFile is the installation's CA certificate, which tasks get in
// SHOAL_CACERT so that the shoal CLI they run trusts servers and agents;
// "" without TLS.
func (a *Agent) caCertFile() string {
	if a.cfg.TLS == nil {
		return ""
	}
	return a.cfg.TLS.CAFile
}
