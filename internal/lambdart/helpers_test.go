package lambdart

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/sandbox"
	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

// testCluster is the cluster of every test function.
const testCluster = "c1"

// bundles is an in-memory store of bundles, the tests' FetchFunc.
type bundles struct {
	mu      sync.Mutex
	byHash  map[string][]byte
	fetches int
}

func (b *bundles) fetch(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error {
	b.mu.Lock()
	z, ok := b.byHash[v.SHA256]
	b.fetches++
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("no bundle %s", v.Bundle)
	}
	_, err := w.Write(z)
	return err
}

// version stores zip and returns a version of function fn made from it.
func (b *bundles) version(fn string, n int, z []byte, conf api.FunctionConfig) *api.FunctionVersion {
	sum := sha256.Sum256(z)
	h := hex.EncodeToString(sum[:])
	b.mu.Lock()
	if b.byHash == nil {
		b.byHash = map[string][]byte{}
	}
	b.byHash[h] = z
	b.mu.Unlock()
	return &api.FunctionVersion{Version: n, Bundle: api.ClusterRoot(testCluster) + "/.functions/" + fn + "/" + h + ".zip",
		SHA256: h, Size: int64(len(z)), Config: conf.Resolved()}
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testPool is a pool on the real exec driver with its bundles.
type testPool struct {
	*Pool
	b      *bundles
	driver *sandbox.Exec
}

// newTestPool starts a pool; change cfg through mod.
func newTestPool(t *testing.T, mod func(*Config)) *testPool {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rnd := make([]byte, 4)
	rand.Read(rnd)
	d, err := sandbox.NewExec(log, "shoal/lambdart-test-"+hex.EncodeToString(rnd))
	if err != nil {
		t.Fatal(err)
	}
	b := &bundles{}
	cfg := Config{Node: "n1", Dir: t.TempDir(), Driver: d, Fetch: b.fetch, Log: log}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		d.Close()
	})
	return &testPool{Pool: p, b: b, driver: d}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

var (
	testfnOnce sync.Once
	testfnZip  []byte
	testfnErr  error
)

// goBootstrap returns the zip of a bundle whose bootstrap is testfn, an
// aws-lambda-go program built once per test binary.
func goBootstrap(t *testing.T) []byte {
	t.Helper()
	testfnOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lambdart-testfn-")
		if err != nil {
			testfnErr = err
			return
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "bootstrap")
		cmd := exec.Command("go", "build", "-o", path, "./internal/testfn")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			testfnErr = fmt.Errorf("go build testfn: %v\n%s", err, out)
			return
		}
		bin, err := os.ReadFile(path)
		if err != nil {
			testfnErr = err
			return
		}
		testfnZip = testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o755, Data: string(bin)})
	})
	if testfnErr != nil {
		t.Fatal(testfnErr)
	}
	return testfnZip
}

// shBootstrap returns the zip of a bundle whose bootstrap is script.
func shBootstrap(t *testing.T, script string) []byte {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the shell bootstraps need it")
	}
	return testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o755, Data: "#!/bin/sh\n" + script})
}

// invoke runs one invocation and fails the test on a pool error.
func (tp *testPool) invoke(t *testing.T, v *api.FunctionVersion, payload string, start bool) *api.SandboxResult {
	t.Helper()
	res, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: newRequestID(rand.Reader), Function: "fn",
		Cluster: testCluster, Version: v, Payload: []byte(payload), Start: start, Tail: true})
	if err != nil {
		t.Fatalf("Invoke(%s): %v", payload, err)
	}
	return res
}

// warm waits until a sandbox of v is idle (its runtime asked for the
// next invocation) and invokes it there, without a cold start.
func (tp *testPool) warm(t *testing.T, v *api.FunctionVersion, payload string) *api.SandboxResult {
	t.Helper()
	waitFor(t, "an idle sandbox", func() bool {
		for _, s := range tp.sandboxesOf(api.SandboxIdle) {
			if s.Version == v.Version {
				return true
			}
		}
		return false
	})
	return tp.invoke(t, v, payload, false)
}

// goResponse is testfn's answer.
type goResponse struct {
	Count     int               `json:"count"`
	RequestID string            `json:"request_id"`
	ARN       string            `json:"arn"`
	Env       string            `json:"env"`
	AppTitle  string            `json:"app_title"`
	Custom    map[string]string `json:"custom"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %q: %v", b, err)
	}
	return v
}

// errorDoc is Lambda's error document.
type errorDoc struct {
	Message string `json:"errorMessage"`
	Type    string `json:"errorType"`
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sandboxesOf returns the pool's sandboxes in state (all when "").
func (tp *testPool) sandboxesOf(state string) []*api.SandboxInfo {
	var out []*api.SandboxInfo
	for _, s := range tp.Report().Sandboxes {
		if state == "" || s.State == state {
			out = append(out, s)
		}
	}
	return out
}

// lines counts the lines of a file (0 when it is missing).
func lines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}
