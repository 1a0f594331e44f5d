package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// driverMode is one way of running the exec driver under test.
type driverMode struct {
	name    string
	isolate bool
}

// testModes returns the modes this process can test: always the
// unisolated driver, and the isolated one when running as root.
func testModes() []driverMode {
	modes := []driverMode{{name: "plain"}}
	if os.Geteuid() == 0 {
		modes = append(modes, driverMode{name: "isolated", isolate: true})
	}
	return modes
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces and cgroups")
	}
}

var testSeq atomic.Int64

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testParent returns a cgroup parent name unique to this test process.
func testParent() string {
	return fmt.Sprintf("shoal-sandbox-test-%d-%d", os.Getpid(), testSeq.Add(1))
}

// newTestExec returns a driver under a fresh parent cgroup, closed (and
// the parent removed) when the test ends.
func newTestExec(t testing.TB, isolate bool) *Exec {
	t.Helper()
	return newTestExecParent(t, isolate, testParent())
}

func newTestExecParent(t testing.TB, isolate bool, parent string) *Exec {
	t.Helper()
	e, err := newExec(discardLogger(), parent, isolate)
	if err != nil {
		t.Fatalf("newExec: %v", err)
	}
	if got := e.Isolated(); got != isolate {
		t.Fatalf("Isolated() = %v, want %v", got, isolate)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// testSpec returns a spec running cmd in a fresh directory, with output
// files in that directory and a minimal PATH.
func testSpec(t testing.TB, cmd ...string) *Spec {
	t.Helper()
	dir := t.TempDir()
	return &Spec{
		ID:      "run-" + strconv.FormatInt(testSeq.Add(1), 10),
		Dir:     dir,
		Command: cmd,
		Env:     []string{"PATH=/usr/bin:/bin"},
		Stdout:  filepath.Join(dir, "stdout"),
		Stderr:  filepath.Join(dir, "stderr"),
	}
}

func start(t testing.TB, e *Exec, spec *Spec) Handle {
	t.Helper()
	h, err := e.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start(%q): %v", spec.Command, err)
	}
	return h
}

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read output: %v", err)
	}
	return string(b)
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewExec(t *testing.T) {
	for _, parent := range []string{"", "/abs", "a/../b", "a/", "a//b", ".."} {
		if e, err := newExec(discardLogger(), parent, false); err == nil {
			e.Close()
			t.Errorf("newExec(parent %q): got nil error, want one", parent)
		}
	}
	var buf bytes.Buffer
	e, err := newExec(slog.New(slog.NewTextHandler(&buf, nil)), testParent(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := strings.Count(buf.String(), "\n"); got != 1 || !strings.Contains(buf.String(), "reason=") {
		t.Errorf("log = %q, want one line giving the reason isolation is off", buf.String())
	}
}

func TestExecRun(t *testing.T) {
	tests := []struct {
		name       string
		cmd        []string
		env        []string // nil keeps testSpec's
		noEnv      bool     // run with a nil Env
		wantCode   int
		wantStdout func(dir string) string
		wantStderr string
	}{
		{name: "exit 0", cmd: []string{"/bin/true"}},
		{name: "exit 3", cmd: []string{"sh", "-c", "exit 3"}, wantCode: 3},
		{
			name:       "stdout and stderr",
			cmd:        []string{"sh", "-c", "echo out; echo err >&2"},
			wantStdout: func(string) string { return "out\n" },
			wantStderr: "err\n",
		},
		{
			name:       "env exactly",
			cmd:        []string{"/usr/bin/env"},
			env:        []string{"A=1", "B=two words"},
			wantStdout: func(string) string { return "A=1\nB=two words\n" },
		},
		{name: "nil env is empty", cmd: []string{"/usr/bin/env"}, noEnv: true},
		{
			name:       "cwd",
			cmd:        []string{"/bin/pwd", "-P"},
			wantStdout: func(dir string) string { return dir + "\n" },
		},
	}
	for _, m := range testModes() {
		e := newTestExec(t, m.isolate)
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				spec := testSpec(t, tt.cmd...)
				if tt.env != nil {
					spec.Env = tt.env
				}
				if tt.noEnv {
					spec.Env = nil
				}
				dir, err := filepath.EvalSymlinks(spec.Dir)
				if err != nil {
					t.Fatal(err)
				}
				before := time.Now()
				res := start(t, e, spec).Wait()
				if res.Err != nil {
					t.Fatalf("Wait: Err = %v", res.Err)
				}
				if res.ExitCode != tt.wantCode || res.Signal != 0 {
					t.Errorf("exit code, signal = %d, %d, want %d, 0", res.ExitCode, res.Signal, tt.wantCode)
				}
				if res.Started.Before(before) || res.Finished.Before(res.Started) {
					t.Errorf("Started, Finished = %v, %v, want after %v and in order", res.Started, res.Finished, before)
				}
				wantStdout := ""
				if tt.wantStdout != nil {
					wantStdout = tt.wantStdout(dir)
				}
				if got := readFile(t, spec.Stdout); got != wantStdout {
					t.Errorf("stdout = %q, want %q", got, wantStdout)
				}
				if got := readFile(t, spec.Stderr); got != tt.wantStderr {
					t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
				}
			})
		}
	}
}

func TestExecOutputAppends(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			e := newTestExec(t, m.isolate)
			spec := testSpec(t, "sh", "-c", "echo out; echo err >&2")
			spec.Stderr = spec.Stdout
			if err := os.WriteFile(spec.Stdout, []byte("old\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			start(t, e, spec).Wait()
			if got, want := readFile(t, spec.Stdout), "old\nout\nerr\n"; got != want {
				t.Errorf("output = %q, want %q", got, want)
			}
		})
	}
}

func TestExecSignalDeath(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			h := start(t, newTestExec(t, m.isolate), testSpec(t, "sleep", "100"))
			if err := h.Signal(int(syscall.SIGKILL)); err != nil {
				t.Fatalf("Signal: %v", err)
			}
			res := h.Wait()
			if res.Signal != int(syscall.SIGKILL) || res.ExitCode != 128+9 {
				t.Errorf("signal, exit code = %d, %d, want 9, 137", res.Signal, res.ExitCode)
			}
			if err := h.Signal(int(syscall.SIGTERM)); err != nil {
				t.Errorf("Signal after the end: got %v, want nil", err)
			}
		})
	}
}

func TestExecStartErrors(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cmd  []string
		dir  string
		want string // in the error message
	}{
		{name: "missing path", cmd: []string{"/no/such/binary"}, want: "/no/such/binary"},
		{name: "missing in PATH", cmd: []string{"no-such-binary-xyz"}, want: "no-such-binary-xyz"},
		{name: "not executable", cmd: []string{notExec}, want: notExec},
		{name: "missing dir", cmd: []string{"/bin/true"}, dir: "/no/such/dir", want: "working directory"},
	}
	for _, m := range testModes() {
		e := newTestExec(t, m.isolate)
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				spec := testSpec(t, tt.cmd...)
				if tt.dir != "" {
					spec.Dir = tt.dir
				}
				h, err := e.Start(context.Background(), spec)
				if err == nil {
					t.Fatalf("Start: got handle %d, want error", h.PID())
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Start: got %v, want an error naming %q", err, tt.want)
				}
				if m.isolate {
					for _, d := range e.cg.dirs(spec.ID) {
						if _, err := os.Stat(d); !os.IsNotExist(err) {
							t.Errorf("cgroup %s left behind: stat error %v", d, err)
						}
					}
				}
			})
		}
	}
}

func TestExecInvalidSpec(t *testing.T) {
	e := newTestExec(t, false)
	for _, spec := range []*Spec{
		{ID: "a/b", Command: []string{"/bin/true"}},
		{ID: "..", Command: []string{"/bin/true"}},
		{ID: "ok"},
	} {
		if _, err := e.Start(context.Background(), spec); err == nil {
			t.Errorf("Start(ID %q, Command %q): got nil error, want one", spec.ID, spec.Command)
		}
	}
}

func TestExecWaitConcurrent(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			h := start(t, newTestExec(t, m.isolate), testSpec(t, "sh", "-c", "exit 5"))
			results := make([]*ExitResult, 8)
			var wg sync.WaitGroup
			for i := range results {
				wg.Go(func() { results[i] = h.Wait() })
			}
			wg.Wait()
			for i, r := range results {
				if r != results[0] {
					t.Errorf("Wait #%d = %p, want the same result %p", i, r, results[0])
				}
			}
			if results[0].ExitCode != 5 {
				t.Errorf("exit code = %d, want 5", results[0].ExitCode)
			}
		})
	}
}

// BenchmarkExecTrue measures the driver's start and wait of /bin/true; set
// it against BenchmarkRawForkExecTrue.
func BenchmarkExecTrue(b *testing.B) {
	modes := []struct {
		name        string
		isolate     bool
		cpu, memory int64
	}{
		{name: "plain"},
		{name: "isolated", isolate: true},
		{name: "isolated-limits", isolate: true, cpu: 500, memory: 64},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			if m.isolate {
				requireRoot(b)
			}
			e := newTestExec(b, m.isolate)
			spec := testSpec(b, "/bin/true")
			spec.CPU, spec.MemoryMB = m.cpu, m.memory
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				spec.ID = "bench-" + strconv.Itoa(i)
				h, err := e.Start(ctx, spec)
				if err != nil {
					b.Fatal(err)
				}
				if res := h.Wait(); res.ExitCode != 0 {
					b.Fatalf("exit code = %d, want 0", res.ExitCode)
				}
			}
		})
	}
}

// BenchmarkRawForkExecTrue is the baseline: os/exec running /bin/true.
func BenchmarkRawForkExecTrue(b *testing.B) {
	for b.Loop() {
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
	}
}
