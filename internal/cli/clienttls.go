package cli

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
	"github.com/spf13/cobra"
)

// DevTLSDir is where `shoal dev` run in the current directory keeps its
// TLS files; the CLI uses them when no CA is configured.
const DevTLSDir = ".shoal-dev/tls"

// clientTLS is the CLI's TLS: the installation's CA, which servers and
// agents must chain to, and optionally a client certificate to present.
type clientTLS struct {
	caCert, cert, key string
	id                *tlsfiles.Identity // nil: plain HTTP
}

func (c *clientTLS) addFlags(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVar(&c.caCert, "ca-cert", os.Getenv("SHOAL_CACERT"),
		"the installation's CA certificate, which servers and agents must hold certificates of (env SHOAL_CACERT; default: "+DevTLSDir+"/ca.pem if it exists)")
	pf.StringVar(&c.cert, "client-cert", os.Getenv("SHOAL_CLIENT_CERT"), "client certificate to present (env SHOAL_CLIENT_CERT)")
	pf.StringVar(&c.key, "client-key", os.Getenv("SHOAL_CLIENT_KEY"), "key of --client-cert (env SHOAL_CLIENT_KEY)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		for p := cmd; p != nil; p = p.Parent() {
			switch p.Name() {
			case "server", "agent", "dev":
				return nil // they load their own files
			}
		}
		return c.load()
	}
}

// load reads the configured files, or those of a `shoal dev` running in
// the current directory when no CA is configured, or nothing.
func (c *clientTLS) load() error {
	f := tlsfiles.Files{CACert: c.caCert, Cert: c.cert, Key: c.key}
	if f.CACert == "" {
		if f.Cert != "" || f.Key != "" {
			return errors.New("--client-cert and --client-key need the CA too: --ca-cert or SHOAL_CACERT")
		}
		set := tlsfiles.Set{Dir: DevTLSDir}
		if _, err := os.Stat(set.CACert()); err != nil {
			return nil
		}
		f = set.Files(tlsfiles.RoleClient)
		if _, err := os.Stat(f.Key); err != nil {
			f.Cert, f.Key = "", ""
		}
	}
	id, err := tlsfiles.Load(f)
	if err != nil {
		return fmt.Errorf("--ca-cert, --client-cert, --client-key: %w", err)
	}
	c.id = id
	return nil
}

// chunkClient returns the client of the data nodes for a CLI talking to
// the servers through cl: over TLS when cl uses https (an installation
// with TLS has it on every link), nil (the default client) otherwise.
func (c *clientTLS) chunkClient(cl *api.Client) *chunkstore.Client {
	if c.id == nil || !strings.HasPrefix(cl.Addr(), "https://") {
		return nil
	}
	return &chunkstore.Client{HTTP: c.id.HTTPClient(tlsfiles.RoleAgent)}
}

// agentHTTP returns the client of the node's agent for commands run in a
// task (shoal mpi rsh, shoal checkpoint commit).
func (c *clientTLS) agentHTTP() *http.Client {
	if c.id == nil {
		return &http.Client{Transport: &http.Transport{Proxy: nil}}
	}
	// The agent's address names its scheme: https for its own port, http
	// for its endpoint on a cluster network.
	return c.id.HTTPClientAsIs(tlsfiles.RoleAgent)
}

// daemonTLS is the TLS of a server or an agent: its files, or --insecure.
type daemonTLS struct {
	files    tlsfiles.Files
	insecure bool
}

func (d *daemonTLS) addFlags(cmd *cobra.Command, role tlsfiles.Role) {
	f := cmd.Flags()
	f.StringVar(&d.files.CACert, "ca-cert", "", "the installation's CA certificate (shoal tls ca create); every peer must hold a certificate it signed")
	f.StringVar(&d.files.Cert, "cert", "", fmt.Sprintf("this %s's certificate (shoal tls cert create --%s)", role, role))
	f.StringVar(&d.files.Key, "key", "", "the key of --cert")
	f.BoolVar(&d.insecure, "insecure", false, "serve and dial plain HTTP, without TLS: anyone on the network can read and forge the traffic, tokens included")
}

// load returns the identity to run with; nil, after a warning, with
// --insecure. Neither files nor --insecure is an error naming the flags.
func (d *daemonTLS) load(log interface{ Warn(string, ...any) }, role tlsfiles.Role) (*tlsfiles.Identity, error) {
	given := d.files != (tlsfiles.Files{})
	switch {
	case d.insecure && given:
		return nil, errors.New("--insecure and --ca-cert/--cert/--key exclude each other")
	case d.insecure:
		log.Warn("--insecure: no TLS; API, Raft and data traffic, tokens included, cross the network in clear")
		return nil, nil
	case d.files.CACert == "" || d.files.Cert == "" || d.files.Key == "":
		return nil, fmt.Errorf("TLS needs --ca-cert, --cert and --key (make them with 'shoal tls ca create' and 'shoal tls cert create --%s'), or run without TLS with --insecure", role)
	}
	return tlsfiles.Load(d.files)
}
