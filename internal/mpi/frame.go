// Package mpi is Shoal's remote-launch agent for MPI gang jobs: what lets
// an unmodified mpirun start its daemons (orted) on the other nodes of a
// gang without ssh.
//
// Every task of an mpi job runs a wrapper, `shoal mpi host` ([Host]),
// inside its sandbox. The wrapper listens on an abstract unix socket named
// after its run's secret and, for each request that carries that secret,
// runs a command with /bin/sh -c as ssh would, streaming its output and
// exit status back. Because the wrapper is the run's main process, what it
// starts shares the run's namespaces, cgroup, working directory and
// environment, and dies with the run. On the launcher node the wrapper
// also runs the user's command (their own mpirun).
//
// mpirun reaches another node's wrapper through `shoal mpi rsh HOST CMD...`
// ([RSH]), configured as Open MPI's plm_rsh_agent: it asks its local
// agent (POST /v1/local/launch with the run's secret), which asks HOST's
// agent over the cluster's mutual-TLS peer channel (POST /v1/peer/launch),
// which forwards to the wrapper of its run of the same job. Every hop
// streams the same frames (see [WriteFrame]) and tears the chain down, down
// to the remote process, when the hop before it disconnects.
package mpi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame kinds. A launch answers with any number of stdout and stderr
// frames and ends with exactly one exit or error frame.
const (
	// FrameRequest carries a [SocketRequest] as JSON (wrapper socket only).
	FrameRequest byte = 'q'
	FrameStdout  byte = 'o'
	FrameStderr  byte = 'e'
	// FrameExit carries the command's status as 4 bytes, big endian: its
	// exit code, or 128+N when signal N killed it, as a shell reports it.
	FrameExit byte = 'x'
	// FrameError carries a message saying why the command could not be
	// run or followed to its end.
	FrameError byte = '!'
)

// MaxFrame bounds a frame's data.
const MaxFrame = 1 << 20

// ErrFrameTooLarge is returned for a frame longer than [MaxFrame].
var ErrFrameTooLarge = errors.New("mpi: frame longer than 1 MiB")

// WriteFrame writes one frame: its kind, the data's length as 4 bytes big
// endian, and the data.
func WriteFrame(w io.Writer, kind byte, data []byte) error {
	if len(data) > MaxFrame {
		return ErrFrameTooLarge
	}
	buf := make([]byte, 5+len(data))
	buf[0] = kind
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(data)))
	copy(buf[5:], data)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame written by [WriteFrame]. A stream that ends
// between frames gives io.EOF; one that ends inside a frame gives
// io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (kind byte, data []byte, err error) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(head[1:])
	if n > MaxFrame {
		return 0, nil, ErrFrameTooLarge
	}
	data = make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return head[0], data, nil
}

// ExitFrame is the data of a [FrameExit] frame for status.
func ExitFrame(status int) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(int32(status)))
}

// frameWriter writes whole frames from several goroutines, flushing after
// each when the underlying writer can (an HTTP response).
type frameWriter struct {
	mu    sync.Mutex
	w     io.Writer
	flush func()
}

func (fw *frameWriter) write(kind byte, data []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for len(data) > MaxFrame {
		if err := WriteFrame(fw.w, kind, data[:MaxFrame]); err != nil {
			return err
		}
		data = data[MaxFrame:]
	}
	err := WriteFrame(fw.w, kind, data)
	if err == nil && fw.flush != nil {
		fw.flush()
	}
	return err
}

// streamWriter is an io.Writer of frames of one kind.
type streamWriter struct {
	fw   *frameWriter
	kind byte
}

func (s streamWriter) Write(p []byte) (int, error) {
	if err := s.fw.write(s.kind, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Relay copies frames from r to w (flushing after each when flush is not
// nil) until the final exit or error frame, which it also copies, and
// returns. It is what the agents do on each hop of a launch. A stream that
// ends before its final frame is an error.
func Relay(w io.Writer, flush func(), r io.Reader) error {
	fw := &frameWriter{w: w, flush: flush}
	for {
		kind, data, err := ReadFrame(r)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("mpi: launch stream broke off: %w", err)
		}
		if err := fw.write(kind, data); err != nil {
			return err
		}
		if kind == FrameExit || kind == FrameError {
			return nil
		}
	}
}

// Follow reads a launch's frames from r, writes its output to stdout and
// stderr, and returns its exit status. An error frame, or a stream that
// ends before the exit frame, is an error.
func Follow(r io.Reader, stdout, stderr io.Writer) (int, error) {
	for {
		kind, data, err := ReadFrame(r)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return -1, fmt.Errorf("mpi: launch stream broke off before the exit status: %w", err)
		}
		switch kind {
		case FrameStdout:
			stdout.Write(data)
		case FrameStderr:
			stderr.Write(data)
		case FrameExit:
			if len(data) != 4 {
				return -1, fmt.Errorf("mpi: exit frame of %d bytes, want 4", len(data))
			}
			return int(int32(binary.BigEndian.Uint32(data))), nil
		case FrameError:
			return -1, errors.New(string(data))
		default:
			return -1, fmt.Errorf("mpi: unexpected frame kind %q in a launch stream", kind)
		}
	}
}
