package mpi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/shoal-dev/shoal/internal/clusternet"
)

// The wrapper's socket is an abstract unix socket: it needs no file (the
// run's mount namespace and working directory stay the task's own) and
// vanishes with the wrapper. Any process of the host's network namespace
// can connect to it, so its name is derived from the run's secret (and
// does not reveal it: /proc/net/unix lists names) and every request must
// carry the secret itself.

// SocketName is the abstract socket name of the wrapper of the run whose
// secret is given, in Go's notation (a leading '@').
func SocketName(secret string) string {
	sum := sha256.Sum256([]byte("shoal-mpi-host-socket\x00" + secret))
	return "@shoal-mpi-" + hex.EncodeToString(sum[:16])
}

// SocketRequest is the first frame a client sends on a wrapper's socket.
type SocketRequest struct {
	Secret string `json:"secret"`
	// Command is the remote command's words as mpirun gave them to its
	// rsh agent; the wrapper runs them joined with spaces by /bin/sh -c,
	// as sshd would.
	Command []string `json:"command"`
}

// LaunchRequest is the body of an agent's local launch endpoint
// (POST /v1/local/launch, the run's secret in api.RunSecretHeader): start
// Command on Host, a node of the caller's gang.
type LaunchRequest struct {
	Host    string   `json:"host"`
	Command []string `json:"command"`
}

// PeerLaunchRequest is the body of an agent's peer launch endpoint
// (POST /v1/peer/launch, mutual TLS): start Command in this node's run
// RunID of Job.
type PeerLaunchRequest struct {
	Job     string   `json:"job"`
	RunID   uint64   `json:"run_id"`
	Command []string `json:"command"`
}

// FramesContentType is the content type of a launch's streamed answer.
const FramesContentType = "application/x-shoal-launch-frames"

// DialHost connects to the wrapper of the run whose secret is given and
// sends it the request to run command. Read the answer with [Relay] or
// [Follow]; closing the connection before the exit frame kills the
// command.
//
// netns is the path of the run's network namespace when it has one of its
// own: an abstract socket belongs to the network namespace it was made
// in, so the connection is made from there.
func DialHost(ctx context.Context, netns, secret string, command []string) (net.Conn, error) {
	conn, err := dialIn(ctx, netns, SocketName(secret))
	if err != nil {
		return nil, fmt.Errorf("mpi: the run's wrapper does not answer: %w", err)
	}
	req, err := json.Marshal(SocketRequest{Secret: secret, Command: command})
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		err = WriteFrame(conn, FrameRequest, req)
		conn.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("mpi: sending the launch request to the run's wrapper: %w", err)
	}
	return conn, nil
}

// dialIn connects to the unix socket addr from the network namespace at
// path (empty: this process's).
func dialIn(ctx context.Context, path, addr string) (net.Conn, error) {
	var d net.Dialer
	if path == "" {
		return d.DialContext(ctx, "unix", addr)
	}
	var conn net.Conn
	err := clusternet.InNamespace(path, func() (err error) {
		conn, err = d.DialContext(ctx, "unix", addr)
		return err
	})
	return conn, err
}

// readRequest reads a [SocketRequest] frame from r.
func readRequest(r io.Reader) (*SocketRequest, error) {
	kind, data, err := ReadFrame(r)
	if err != nil {
		return nil, fmt.Errorf("reading the launch request: %w", err)
	}
	if kind != FrameRequest {
		return nil, fmt.Errorf("expected a launch request frame, got kind %q", kind)
	}
	var req SocketRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, fmt.Errorf("malformed launch request: %w", err)
	}
	return &req, nil
}
