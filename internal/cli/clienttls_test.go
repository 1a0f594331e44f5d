package cli

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestDaemonsNeedTLSOrInsecure: a server or agent with neither
// certificates nor --insecure does not start, and says what to give.
func TestDaemonsNeedTLSOrInsecure(t *testing.T) {
	for _, args := range [][]string{
		{"server", "--data-dir", t.TempDir()},
		{"agent", "--data-dir", t.TempDir()},
		{"agent", "--data-dir", t.TempDir(), "--ca-cert", "ca.pem"},
	} {
		code, _, stderr := runCLI(t, args...)
		if code != 1 || !strings.Contains(stderr, "--ca-cert, --cert and --key") || !strings.Contains(stderr, "--insecure") {
			t.Errorf("shoal %s: got exit %d, stderr %q; want 1 naming --ca-cert, --cert, --key and --insecure",
				strings.Join(args, " "), code, stderr)
		}
	}
}

// TestCLIFindsDevTLS: with no CA configured, the CLI run where `shoal dev`
// keeps its files trusts its CA and presents its client certificate; a
// host:port address then means https, and an http:// address still works.
func TestCLIFindsDevTLS(t *testing.T) {
	t.Setenv("SHOAL_CACERT", "")
	t.Setenv("SHOAL_CLIENT_CERT", "")
	t.Setenv("SHOAL_CLIENT_KEY", "")
	t.Chdir(t.TempDir())
	set, err := tlsfiles.MakeSet(DevTLSDir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tlsfiles.Load(set.Files(tlsfiles.RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := id.ServerConfig(tlsfiles.RoleClient) // the client certificate is required here
	if err != nil {
		t.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "[]")
	})
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = conf
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	if code, out, stderr := runCLI(t, "node", "list", "--addr", addr); code != 0 {
		t.Errorf("node list at %s with the dev files: exit %d, %q %q; want success", addr, code, out, stderr)
	}
	plain := httptest.NewServer(handler)
	defer plain.Close()
	if code, out, stderr := runCLI(t, "node", "list", "--addr", plain.URL); code != 0 {
		t.Errorf("node list at %s: exit %d, %q %q; want success", plain.URL, code, out, stderr)
	}
	code, _, stderr := runCLI(t, "node", "list", "--addr", strings.TrimPrefix(plain.URL, "http://"))
	if code != 1 || !strings.Contains(stderr, "cannot reach") {
		t.Errorf("node list at a plain server without a scheme: exit %d, %q; want https refused", code, stderr)
	}
}
