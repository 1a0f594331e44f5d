package cli

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-dev/shoal/internal/tlsfiles"
	"github.com/spf13/cobra"
)

// tlsCmd is `shoal tls`: the files of an installation's own TLS.
func tlsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tls", Short: "Make the CA and certificates of an installation's TLS",
		Long: `Make the files of an installation's TLS: a CA (shoal tls ca create) and, signed by
it, certificates for servers, agents and clients (shoal tls cert create). Keys
are written readable by their owner only, and existing files are never
overwritten. Servers and agents load them with --ca-cert, --cert and --key;
the CLI with --ca-cert, --client-cert and --client-key.`}
	var dir, name string
	var days int
	ca := &cobra.Command{
		Use: "create", Short: "Make a CA: shoal-ca.pem and shoal-ca-key.pem", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 {
				return fmt.Errorf("--days must be at least 1, got %d", days)
			}
			cert, key, err := tlsfiles.NewCA(name, rand.Reader, time.Now(), time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			return writePair(g, dir, "shoal-ca", cert, key)
		},
	}
	ca.Flags().StringVar(&dir, "dir", ".", "directory to write the files into")
	ca.Flags().StringVar(&name, "common-name", "Shoal CA", "the CA's name")
	ca.Flags().IntVar(&days, "days", int(tlsfiles.DefaultCAValidity/(24*time.Hour)), "validity in days")

	var (
		server, agent, client bool
		caFile, keyFile       string
		certName              string
		dns                   []string
		ips                   []net.IP
		certDays              int
		certDir               string
	)
	cert := &cobra.Command{
		Use:   "create --server|--agent|--client",
		Short: "Make a key and a certificate for a server, an agent or a client",
		Long: `Make a key and a certificate signed by the CA, written as
shoal-ROLE[-NAME].pem and shoal-ROLE[-NAME]-key.pem. Server and agent
certificates are valid for localhost, 127.0.0.1 and the names and addresses
given with --dns and --ip; every certificate also names its role
(server.shoal, agent.shoal, client.shoal).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var role tlsfiles.Role
			n := 0
			for r, set := range map[tlsfiles.Role]bool{tlsfiles.RoleServer: server, tlsfiles.RoleAgent: agent, tlsfiles.RoleClient: client} {
				if set {
					role, n = r, n+1
				}
			}
			if n != 1 {
				return errors.New("give exactly one of --server, --agent and --client")
			}
			if certDays < 1 {
				return fmt.Errorf("--days must be at least 1, got %d", certDays)
			}
			caPEM, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("reading the CA certificate: %w (make one with 'shoal tls ca create')", err)
			}
			caKey, err := os.ReadFile(keyFile)
			if err != nil {
				return fmt.Errorf("reading the CA key: %w", err)
			}
			hosts, addrs := dns, ips
			if role != tlsfiles.RoleClient {
				hosts = append([]string{"localhost"}, hosts...)
				addrs = append([]net.IP{net.IPv4(127, 0, 0, 1)}, addrs...)
			}
			cn := certName
			if cn == "" {
				cn = string(role)
			}
			c, k, err := tlsfiles.NewCert(caPEM, caKey, role, cn, hosts, addrs, rand.Reader, time.Now(), time.Duration(certDays)*24*time.Hour)
			if err != nil {
				return err
			}
			base := "shoal-" + string(role)
			if certName != "" {
				base += "-" + certName
			}
			return writePair(g, certDir, base, c, k)
		},
	}
	f := cert.Flags()
	f.BoolVar(&server, "server", false, "a certificate for a server")
	f.BoolVar(&agent, "agent", false, "a certificate for an agent")
	f.BoolVar(&client, "client", false, "a certificate for a client (the CLI)")
	f.StringVar(&caFile, "ca", "shoal-ca.pem", "the CA's certificate")
	f.StringVar(&keyFile, "key", "shoal-ca-key.pem", "the CA's key")
	f.StringVar(&certName, "name", "", "the certificate's name, also in its file names (default: its role)")
	f.StringSliceVar(&dns, "dns", nil, "more DNS names the certificate is valid for")
	f.IPSliceVar(&ips, "ip", nil, "more IP addresses the certificate is valid for")
	f.IntVar(&certDays, "days", int(tlsfiles.DefaultCertValidity/(24*time.Hour)), "validity in days")
	f.StringVar(&certDir, "dir", ".", "directory to write the files into")
	caCmd := &cobra.Command{Use: "ca", Short: "The installation's CA"}
	caCmd.AddCommand(ca)
	certCmd := &cobra.Command{Use: "cert", Short: "Certificates signed by the installation's CA"}
	certCmd.AddCommand(cert)
	cmd.AddCommand(caCmd, certCmd)
	return cmd
}

// writePair writes BASE.pem and BASE-key.pem into dir, refusing to
// overwrite either; the key is readable by its owner only.
func writePair(g *globals, dir, base string, cert, key []byte) error {
	certPath, keyPath := filepath.Join(dir, base+".pem"), filepath.Join(dir, base+"-key.pem")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; remove it first (files are never overwritten)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	fmt.Fprintf(g.stdout, "Wrote %s and %s\n", certPath, keyPath)
	return nil
}
