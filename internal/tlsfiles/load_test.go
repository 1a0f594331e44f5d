package tlsfiles_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

func makeSet(t *testing.T) tlsfiles.Set {
	t.Helper()
	set, err := tlsfiles.MakeSet(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func load(t *testing.T, set tlsfiles.Set, r tlsfiles.Role) *tlsfiles.Identity {
	t.Helper()
	id, err := tlsfiles.Load(set.Files(r))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestMakeSetReusesFiles(t *testing.T) {
	set := makeSet(t)
	before, err := os.ReadFile(set.Files(tlsfiles.RoleAgent).Cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsfiles.MakeSet(set.Dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(set.Files(tlsfiles.RoleAgent).Cert)
	if string(before) != string(after) {
		t.Error("MakeSet again: the agent certificate changed, want it reused")
	}
	for _, r := range []tlsfiles.Role{tlsfiles.RoleServer, tlsfiles.RoleAgent, tlsfiles.RoleClient} {
		st, err := os.Stat(set.Files(r).Key)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s key: %v, %v; want mode 0600", r, st.Mode(), err)
		}
		if got := load(t, set, r).Role(); got != r {
			t.Errorf("role of the %s certificate: got %q", r, got)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	set, other := makeSet(t), makeSet(t)
	f := set.Files(tlsfiles.RoleAgent)
	tests := []struct {
		name  string
		files tlsfiles.Files
		want  string
	}{
		{"no CA", tlsfiles.Files{Cert: f.Cert, Key: f.Key}, "CA certificate is required"},
		{"cert without key", tlsfiles.Files{CACert: f.CACert, Cert: f.Cert}, "give both or neither"},
		{"missing CA", tlsfiles.Files{CACert: f.CACert + ".nope"}, "no such file"},
		{"key of another", tlsfiles.Files{CACert: f.CACert, Cert: f.Cert, Key: set.Files(tlsfiles.RoleServer).Key}, "private key does not match"},
		{"another CA", tlsfiles.Files{CACert: other.CACert(), Cert: f.Cert, Key: f.Key}, "not valid under the CA"},
		{"CA is not PEM", tlsfiles.Files{CACert: f.Key}, "holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tlsfiles.Load(tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := load(t, set, tlsfiles.RoleAgent).ServerConfig(""); err != nil {
		t.Errorf("ServerConfig with a certificate: %v", err)
	}
	caOnly, err := tlsfiles.Load(tlsfiles.Files{CACert: set.CACert()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caOnly.ServerConfig(""); !errors.Is(err, tlsfiles.ErrNoRole) {
		t.Errorf("ServerConfig without a certificate: got %v, want ErrNoRole", err)
	}
}

// TestRoles: a listener requiring a role accepts only it, and a client
// requiring a role trusts only peers holding it.
func TestRoles(t *testing.T) {
	set := makeSet(t)
	serve := func(id *tlsfiles.Identity, require tlsfiles.Role) string {
		conf, err := id.ServerConfig(require)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "role ok: ", tlsfiles.PeerHasRole(r.TLS, tlsfiles.RoleAgent))
		}))
		srv.TLS = conf
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	get := func(hc *http.Client, addr string) (string, error) {
		resp, err := hc.Get("http://" + addr + "/") // sent as https
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	agentOnly := serve(load(t, set, tlsfiles.RoleServer), tlsfiles.RoleAgent)
	open := serve(load(t, set, tlsfiles.RoleServer), "")
	tests := []struct {
		name   string
		client *tlsfiles.Identity
		peer   tlsfiles.Role
		addr   string
		want   string // "" for an error
	}{
		{"agent to agent-only", load(t, set, tlsfiles.RoleAgent), tlsfiles.RoleServer, agentOnly, "role ok: true"},
		{"client to agent-only", load(t, set, tlsfiles.RoleClient), tlsfiles.RoleServer, agentOnly, ""},
		{"client to open", load(t, set, tlsfiles.RoleClient), tlsfiles.RoleServer, open, "role ok: false"},
		{"expecting an agent, finding a server", load(t, set, tlsfiles.RoleAgent), tlsfiles.RoleAgent, open, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc := tt.client.HTTPClient(tt.peer)
			defer hc.CloseIdleConnections()
			got, err := get(hc, tt.addr)
			if tt.want == "" && err == nil || tt.want != "" && (err != nil || got != tt.want) {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	conf, _ := load(t, set, tlsfiles.RoleServer).ServerConfig("")
	if conf.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion %x, want TLS 1.3", conf.MinVersion)
	}
}
