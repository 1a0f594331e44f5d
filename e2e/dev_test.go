package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestDevMode starts `shoal dev`, checks that its agents join, that the
// pool provider tops up the pool when a cluster takes every node, and that
// Ctrl-C (SIGINT) leaves no process running.
func TestDevMode(t *testing.T) {
	bin := testutil.Binary(t)
	dir := t.TempDir()
	addr := testutil.FreeAddr(t)
	cmd := exec.Command(bin, "dev", "--agents", "2", "--zones", "2", "--pool-min", "1",
		"--dir", dir, "--addr", addr, "--agent-cpu", "1000", "--agent-memory", "1024")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("shoal dev stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
	})
	c := api.NewClient([]string{addr}, "")
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		p, _, err := c.Pool(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		return p.Idle >= 2, fmt.Sprintf("%d idle nodes", p.Idle)
	})
	if !strings.Contains(out.String(), "http://"+addr) {
		t.Errorf("shoal dev output %q does not print the API address", out.String())
	}
	if _, err := c.CreateCluster(context.Background(), &api.ClusterRequest{Name: "c1", Nodes: 2, Zones: 2}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		p, _, err := c.Pool(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		return p.Idle >= 1, fmt.Sprintf("pool has %d idle nodes; the provider should start one", p.Idle)
	})

	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shoal dev exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("shoal dev did not stop within 30s of SIGINT")
	}
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		left := processesMentioning(dir)
		return len(left) == 0, fmt.Sprintf("processes still running: %v", left)
	})
}

// processesMentioning lists pids whose command line contains s.
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}
