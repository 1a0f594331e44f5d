package testutil

import (
	"net/http"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TLSFiles makes a fresh installation CA and server, agent and client
// certificates (valid for localhost and 127.0.0.1) in a temporary
// directory removed when the test ends.
func TLSFiles(t testing.TB) tlsfiles.Set {
	t.Helper()
	set, err := tlsfiles.MakeSet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// Identity loads the files of role r in set.
func Identity(t testing.TB, set tlsfiles.Set, r tlsfiles.Role) *tlsfiles.Identity {
	t.Helper()
	id, err := tlsfiles.Load(set.Files(r))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// NewClient returns an API client of the servers at addrs presenting the
// certificate of id (nil: plain HTTP).
func NewClient(addrs []string, token string, id *tlsfiles.Identity) *api.Client {
	if id == nil {
		return api.NewClient(addrs, token)
	}
	return api.NewTLSClient(addrs, token, id.ClientConfig(tlsfiles.RoleServer))
}

// HTTPClient returns a client for raw requests to peers of role peer in
// the installation, presenting its client certificate; it sends the
// http:// URLs tests write as https:// (see [tlsfiles.Identity.HTTPClient]).
// Without TLS it is a plain client.
func (in *Installation) HTTPClient(peer tlsfiles.Role) *http.Client {
	if in.TLS == nil {
		return &http.Client{}
	}
	return Identity(in.t, *in.TLS, tlsfiles.RoleClient).HTTPClient(peer)
}

// HTTPClient returns a client for raw requests to the group's servers,
// presenting an agent certificate (as [InProcGroup.Client]); it sends
// http:// URLs as https://.
func (g *InProcGroup) HTTPClient() *http.Client {
	if g.tlsOff() {
		return &http.Client{}
	}
	return Identity(g.t, g.tls, tlsfiles.RoleAgent).HTTPClient(tlsfiles.RoleServer)
}

// AgentClient returns an API client of the servers at addrs (default:
// all of the installation's) that presents an agent certificate, for tests
// that play an agent on the agent routes.
func (in *Installation) AgentClient(addrs ...string) *api.Client {
	if len(addrs) == 0 {
		for _, s := range in.Servers {
			addrs = append(addrs, s.HTTPAddr)
		}
	}
	if in.TLS == nil {
		return api.NewClient(addrs, in.Opts.Token)
	}
	return NewClient(addrs, in.Opts.Token, Identity(in.t, *in.TLS, tlsfiles.RoleAgent))
}
