package devmode

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// setupTLS makes (or reuses) the installation's TLS files in DIR/tls and
// the client the installation watches its server with.
func (in *installation) setupTLS() error {
	if in.cfg.Insecure {
		in.log.Warn("--insecure: no TLS; API, Raft and data traffic, tokens included, cross the network in clear")
		in.client = api.NewClient([]string{in.cfg.Addr}, in.cfg.Token)
		return nil
	}
	set, err := tlsfiles.MakeSet(filepath.Join(in.dir, "tls"))
	if err != nil {
		return fmt.Errorf("making the installation's TLS files: %w", err)
	}
	id, err := tlsfiles.Load(set.Files(tlsfiles.RoleClient))
	if err != nil {
		return err
	}
	in.tls = &set
	in.client = api.NewTLSClient([]string{in.cfg.Addr}, in.cfg.Token, id.ClientConfig(tlsfiles.RoleServer))
	return nil
}

// tlsArgs are the flags of a child of role r. --insecure comes last, as a
// flag without a value (see matchAgentCmdline).
func (in *installation) tlsArgs(r tlsfiles.Role) []string {
	if in.tls == nil {
		return []string{"--insecure"}
	}
	f := in.tls.Files(r)
	return []string{"--ca-cert", f.CACert, "--cert", f.Cert, "--key", f.Key}
}

// apiURL is the server's API address with its scheme.
func (in *installation) apiURL() string {
	if in.tls == nil {
		return "http://" + in.cfg.Addr
	}
	return "https://" + in.cfg.Addr
}

// exportLine is what another shell needs to reach the installation.
func (in *installation) exportLine() string {
	vars := []string{"SHOAL_ADDR=" + in.apiURL()}
	if in.tls != nil {
		f := in.tls.Files(tlsfiles.RoleClient)
		vars = append(vars, "SHOAL_CACERT="+f.CACert, "SHOAL_CLIENT_CERT="+f.Cert, "SHOAL_CLIENT_KEY="+f.Key)
	}
	return "export " + strings.Join(vars, " ")
}
