package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
)

// Short-circuit reads: DFS clients on this host (the CLI, a server, this
// agent's own input fetches) read local replicas straight from their
// files, which the agent opens and passes them over a unix socket (see
// chunkstore.LocalServer) instead of sending the bytes over loopback HTTP.
// The agent registers the socket's path, so that the replicas the
// namespace lists carry it.
//
// Who may use it: the socket is DATA/local/chunks.sock, of mode 0600 in a
// directory of mode 0700, both owned by the agent's user (root on a data
// node), and the agent checks each peer's credentials and serves only root
// and that user. Those can read the chunk files anyway, so the socket
// widens no one's access.

// localSocketDir is the directory of the socket under the data dir.
const localSocketDir = "local"

// localSocket is the listening short-circuit socket at path.
type localSocket struct {
	path string
	ln   *net.UnixListener
}

// socketPath is the socket's path, or "" when there is none.
func (ls *localSocket) socketPath() string {
	if ls == nil {
		return ""
	}
	return ls.path
}

// listenLocal binds the short-circuit socket. When it cannot (say, the
// path is too long for a unix socket), it logs why and returns nil:
// clients then read this node's replicas over HTTP, as remote ones.
func (a *Agent) listenLocal() *localSocket {
	ls, err := a.bindLocal()
	if err != nil {
		a.log.Warn("no short-circuit reads: local clients read over HTTP", "err", err)
		return nil
	}
	return ls
}

func (a *Agent) bindLocal() (*localSocket, error) {
	dir, err := filepath.Abs(filepath.Join(a.cfg.DataDir, localSocketDir))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "chunks.sock")
	if len(path) > api.MaxSocketPathLen {
		return nil, fmt.Errorf("the socket path %s is too long for a unix socket (%d bytes, at most %d); use a shorter --data-dir",
			path, len(path), api.MaxSocketPathLen)
	}
	// MkdirAll leaves a directory that exists as it is: chmod it.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	// A socket left by an agent that was killed is in the way.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return &localSocket{path: path, ln: ln}, nil
}

// serveLocal serves the short-circuit socket, if any, until the function
// it returns is called.
func (a *Agent) serveLocal() (stop func()) {
	ls := a.local
	if ls == nil {
		return func() {}
	}
	srv := &chunkstore.LocalServer{Store: a.chunks, Node: a.cfg.Name, OnCorrupt: a.reportCorrupt, Log: a.log}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ls.ln)
	}()
	return func() {
		ls.ln.Close() // closing removes the socket file
		<-done
	}
}
