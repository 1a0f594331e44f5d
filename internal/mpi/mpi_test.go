package mpi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	frames := []struct {
		kind byte
		data []byte
	}{{FrameStdout, []byte("hello\n")}, {FrameStderr, nil}, {FrameStdout, bytes.Repeat([]byte("x"), MaxFrame)}, {FrameExit, ExitFrame(-3)}}
	for _, f := range frames {
		if err := WriteFrame(&buf, f.kind, f.data); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range frames {
		kind, data, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if kind != want.kind || !bytes.Equal(data, want.data) {
			t.Fatalf("frame %d: got kind %q with %d bytes, want %q with %d", i, kind, len(data), want.kind, len(want.data))
		}
	}
	if _, _, err := ReadFrame(&buf); err != io.EOF {
		t.Fatalf("after the last frame: got %v, want io.EOF", err)
	}
	if err := WriteFrame(&buf, FrameStdout, make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: got %v, want ErrFrameTooLarge", err)
	}
	WriteFrame(&buf, FrameStdout, []byte("abcdef"))
	if _, _, err := ReadFrame(bytes.NewReader(buf.Bytes()[:7])); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated frame: got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestFollow(t *testing.T) {
	var in bytes.Buffer
	WriteFrame(&in, FrameStdout, []byte("out"))
	WriteFrame(&in, FrameStderr, []byte("err"))
	WriteFrame(&in, FrameExit, ExitFrame(7))
	var out, errOut bytes.Buffer
	status, err := Follow(&in, &out, &errOut)
	if err != nil || status != 7 || out.String() != "out" || errOut.String() != "err" {
		t.Fatalf("got status %d, err %v, stdout %q, stderr %q; want 7, nil, out, err", status, err, out.String(), errOut.String())
	}
	in.Reset()
	WriteFrame(&in, FrameStdout, []byte("partial"))
	if _, err := Follow(&in, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "broke off") {
		t.Fatalf("stream without exit frame: got %v, want an error saying it broke off", err)
	}
	in.Reset()
	WriteFrame(&in, FrameError, []byte("no such run"))
	if _, err := Follow(&in, io.Discard, io.Discard); err == nil || err.Error() != "no such run" {
		t.Fatalf("error frame: got %v, want %q", err, "no such run")
	}
}

// startHost runs a wrapper serving launches (no command) until the test
// ends, and returns its secret and the file its copies of output go to.
func startHost(t *testing.T) (secret string, logs *os.File) {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	secret = hex.EncodeToString(b)
	logs, err := os.Create(t.TempDir() + "/logs")
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{Secret: secret, Stdout: logs, Stderr: logs, Signals: make(chan os.Signal)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := h.Run(ctx); err != nil {
			t.Errorf("wrapper: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done; logs.Close() })
	waitFor(t, "the wrapper's socket", func() bool {
		c, err := DialHost(context.Background(), "", secret, []string{"true"})
		if err != nil {
			return false
		}
		io.Copy(io.Discard, c)
		c.Close()
		return true
	})
	return secret, logs
}

func TestHostRunsCommandsWithTheSecret(t *testing.T) {
	secret, logs := startHost(t)
	conn, err := DialHost(context.Background(), "", secret, []string{"echo", "out;", "echo", "err", ">&2;", "exit", "3"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out, errOut bytes.Buffer
	status, err := Follow(conn, &out, &errOut)
	if err != nil || status != 3 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Fatalf("got status %d, err %v, stdout %q, stderr %q; want 3, nil, \"out\\n\", \"err\\n\"", status, err, out.String(), errOut.String())
	}
	logged, _ := os.ReadFile(logs.Name())
	if !strings.Contains(string(logged), "out\n") || !strings.Contains(string(logged), "err\n") {
		t.Fatalf("the task's logs got %q, want both lines of output", logged)
	}

	// A request without the secret is refused and runs nothing.
	marker := t.TempDir() + "/ran"
	c, err := dialRaw(SocketName(secret), SocketRequest{Secret: "wrong", Command: []string{"touch", marker}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Follow(c, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "wrong run secret") {
		t.Fatalf("wrong secret: got %v, want a refusal naming the wrong secret", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a request with the wrong secret ran its command")
	}
}

func TestHostKillsCommandWhenRequesterDisconnects(t *testing.T) {
	secret, _ := startHost(t)
	// The shell prints its own pid and its background child's, and waits.
	conn, err := DialHost(context.Background(), "", secret, []string{"sleep", "300", "&", "echo", "$$", "$!;", "wait"})
	if err != nil {
		t.Fatal(err)
	}
	kind, data, err := ReadFrame(conn)
	if err != nil || kind != FrameStdout {
		t.Fatalf("got frame %q %q, %v; want the pids on stdout", kind, data, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		t.Fatalf("got %q, want two pids", data)
	}
	conn.Close()
	for _, pid := range pids {
		waitFor(t, "process "+strconv.Itoa(pid)+" to end", func() bool { return !alive(pid) })
	}
}

// alive reports whether pid is a process that has not ended (zombies
// count as ended).
func alive(pid int) bool {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	i := strings.LastIndexByte(line, ')')
	return i < 0 || i+2 >= len(line) || line[i+2] != 'Z'
}

// dialRaw sends req as it is on the socket name, secret included.
func dialRaw(name string, req SocketRequest) (io.ReadWriteCloser, error) {
	conn, err := net.Dial("unix", name)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(req)
	if err := WriteFrame(conn, FrameRequest, b); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestHostLaunchRunsCommand(t *testing.T) {
	logs, err := os.Create(t.TempDir() + "/logs")
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	run := func(sigs chan os.Signal, command ...string) (int, error) {
		b := make([]byte, 16)
		rand.Read(b)
		h := &Host{Secret: hex.EncodeToString(b), Command: command, Stdout: logs, Stderr: logs, Signals: sigs}
		return h.Run(context.Background())
	}
	if status, err := run(make(chan os.Signal), "/bin/sh", "-c", "echo launched; exit 5"); status != 5 || err != nil {
		t.Errorf("got status %d, %v; want 5, nil", status, err)
	}
	if out, _ := os.ReadFile(logs.Name()); string(out) != "launched\n" {
		t.Errorf("the task's logs got %q, want the command's output", out)
	}
	// SIGTERM to the wrapper reaches the command.
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	if status, err := run(sigs, "/bin/sleep", "300"); status != 128+int(syscall.SIGTERM) || err != nil {
		t.Errorf("got status %d, %v; want %d (killed by SIGTERM), nil", status, err, 128+int(syscall.SIGTERM))
	}
}
