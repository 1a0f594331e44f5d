package agent

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/internal/chunkstore"
)

func TestLocalSockets(t *testing.T) {
	dir, err := os.MkdirTemp("", "ag") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	st, err := chunkstore.Open(filepath.Join(dir, "chunks"), log)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "n1", DataDir: dir}, log: log, chunks: st}
	a.local = a.listenLocal()
	path := a.local.socketPath()
	if path == "" {
		t.Fatal("no short-circuit socket")
	}
	stop := a.serveLocal()
	for p, want := range map[string]fs.FileMode{
		filepath.Dir(path):           fs.ModeDir | 0o700,
		path:                         fs.ModeSocket | 0o600,
		filepath.Join(dir, "chunks"): fs.ModeDir | 0o700,
	} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode(), err, want)
		}
	}
	if _, err := st.Put("c1", strings.NewReader("data"), 4); err != nil {
		t.Fatal(err)
	}
	lc, err := chunkstore.OpenLocal(context.Background(), path, "n1", "c1")
	if err != nil {
		t.Fatalf("OpenLocal through the agent's socket: %v", err)
	}
	p := make([]byte, 10)
	if n, _, err := lc.ReadAt(p, 0); err != nil || string(p[:n]) != "data" {
		t.Errorf("ReadAt = %q, %v; want the chunk", p[:n], err)
	}
	lc.Close()
	stop()
	if _, err := os.Stat(path); err == nil {
		t.Error("the short-circuit socket is still there after the agent stopped")
	}

	// A restarted agent replaces the socket a killed one left.
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no stale socket to replace: %v", err)
	}
	a.local = a.listenLocal()
	if a.local.socketPath() != path {
		t.Fatalf("restart: socket %q, want %q", a.local.socketPath(), path)
	}
	a.serveLocal()()
}

func TestLocalSocketsPathTooLong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	a := &Agent{cfg: Config{Name: "n1", DataDir: dir}, log: slog.New(slog.DiscardHandler)}
	if ls := a.listenLocal(); ls != nil || ls.socketPath() != "" {
		t.Errorf("listenLocal under a %d-byte data dir = %+v, want none", len(dir), ls)
	}
	if stop := a.serveLocal(); stop == nil {
		t.Error("serveLocal without sockets returned no stop function")
	}
}
