package e2e

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// capTTL is the capability lifetime of TestDataPortCapabilities' servers:
// short, so that the test can watch one expire, and long enough for every
// read and write the test makes with a fresh one.
const capTTL = 12 * time.Second

// TestDataPortCapabilities checks that an agent's data port serves chunk
// reads, writes and deletes, and task logs, only with a capability a
// server issued for that operation on that chunk or task: raw requests
// with none, a made-up one, one signed by another key, an expired one,
// one for another operation and one for another chunk are refused, the
// refusals are counted in the agent's /metrics, and the file still reads
// back intact.
func TestDataPortCapabilities(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3,
		ServerArgs: []string{"--capability-ttl", capTTL.String()}})
	ctx := t.Context()
	hc := in.HTTPClient(tlsfiles.RoleAgent)
	data, other := randomBytes(21, 600000), randomBytes(22, 1000)
	putData(t, in, "/caps/a.bin", data, "--chunk-size", "256KiB")
	putData(t, in, "/caps/b.bin", other)

	fa, err := in.Client.FSStat(ctx, "/caps/a.bin")
	if err != nil {
		t.Fatal(err)
	}
	fb, err := in.Client.FSStat(ctx, "/caps/b.bin")
	if err != nil {
		t.Fatal(err)
	}
	stated := time.Now()
	chunk, otherChunk := fa.Chunks[0], fb.Chunks[0]
	if chunk.Capability == "" || otherChunk.Capability == "" {
		t.Fatalf("stat gave no read capabilities: %+v, %+v", chunk, otherChunk)
	}
	addr := chunk.Replicas[0].Addr
	before := refusedOn(t, hc, addr)

	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	signedElsewhere := func(op capability.Op) string {
		return capability.Sign(stranger, capability.Grant{Op: op, Chunk: chunk.ID, Expires: time.Now().Add(time.Hour)})
	}
	type attempt struct {
		name, method, token string
		want                int
	}
	var attempts []attempt
	for _, m := range []struct {
		method string
		op     capability.Op
	}{{http.MethodGet, capability.OpRead}, {http.MethodPut, capability.OpWrite}, {http.MethodDelete, capability.OpDelete}} {
		attempts = append(attempts,
			attempt{"no capability", m.method, "", http.StatusUnauthorized},
			attempt{"made up", m.method, "let-me-in", http.StatusForbidden},
			attempt{"signed by another key", m.method, signedElsewhere(m.op), http.StatusForbidden},
			attempt{"another chunk's", m.method, otherChunk.Capability, http.StatusForbidden},
		)
		if m.method != http.MethodGet {
			attempts = append(attempts, attempt{"the read capability", m.method, chunk.Capability, http.StatusForbidden})
		}
	}
	for _, a := range attempts {
		if got, body := chunkRequest(t, hc, a.method, addr, chunk.ID, a.token); got != a.want {
			t.Errorf("%s of chunk %s with %s: %d %s, want %d", a.method, chunk.ID, a.name, got, body, a.want)
		}
	}
	// The read capability does read the chunk.
	if got, body := chunkRequest(t, hc, http.MethodGet, addr, chunk.ID, chunk.Capability); got != http.StatusOK || int64(len(body)) != chunk.Length {
		t.Errorf("GET with the read capability: %d, %d bytes; want 200 and %d bytes", got, len(body), chunk.Length)
	}
	// Once it expired, it no longer does.
	time.Sleep(time.Until(stated.Add(capTTL + 2*time.Second)))
	if got, body := chunkRequest(t, hc, http.MethodGet, addr, chunk.ID, chunk.Capability); got != http.StatusForbidden || !strings.Contains(body, "expired") {
		t.Errorf("GET with an expired read capability: %d %s, want 403 saying it expired", got, body)
	}
	after := refusedOn(t, hc, addr)
	if want := before + len(attempts) + 1; after < want {
		t.Errorf("shoal_agent_refused_total on %s went from %d to %d, want at least %d", addr, before, after, want)
	}

	// Nothing changed: every replica still holds the chunk and the files
	// read back whole (with fresh capabilities).
	fa2, err := in.Client.FSStat(ctx, "/caps/a.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(fa2.Chunks[0].Replicas) != len(chunk.Replicas) {
		t.Errorf("chunk %s has replicas %+v after the refused requests, had %+v", chunk.ID, fa2.Chunks[0].Replicas, chunk.Replicas)
	}
	checkSame(t, "a.bin after refused requests", download(t, in, "/caps/a.bin"), data)
	if out := mustShoal(t, in, "fs", "cat", "/caps/b.bin"); out != string(other) {
		t.Errorf("fs cat of b.bin: %d bytes, want %d", len(out), len(other))
	}

	// Task logs: through the servers they work; straight from the agent
	// without a capability they do not.
	mustShoal(t, in, "cluster", "create", "logs", "--nodes", "1")
	id := submit(t, in, `
name: capped-logs
cluster: logs
groups:
  - name: g
    count: 1
    command: [sh, -c, "echo hello from the task"]
`)
	waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	if logs := mustShoal(t, in, "job", "logs", id, "--task", "0"); !strings.Contains(logs, "hello from the task") {
		t.Errorf("job logs: %q", logs)
	}
	task := jobJSON(t, in, id).Tasks[0]
	n, err := in.Client.Node(ctx, task.Node)
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{"task": {task.ID}, "run": {strconv.FormatUint(task.RunID, 10)}, "stream": {"stdout"}}
	for _, tt := range []struct {
		name, token string
		want        int
	}{
		{"no capability", "", http.StatusUnauthorized},
		{"a chunk's read capability", fa2.Chunks[0].Capability, http.StatusForbidden},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Addr+"/v1/agent/logs?"+q.Encode(), nil)
		if tt.token != "" {
			req.Header.Set(api.CapabilityHeader, tt.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want || strings.Contains(string(body), "hello from the task") {
			t.Errorf("agent logs with %s: %d %q, want %d", tt.name, resp.StatusCode, body, tt.want)
		}
	}
}

// chunkRequest sends a raw chunk request to a data node and returns the
// status and body.
func chunkRequest(t *testing.T, hc *http.Client, method, addr, id, token string) (int, string) {
	t.Helper()
	var body io.Reader
	if method == http.MethodPut {
		body = strings.NewReader("overwritten by a stranger")
	}
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+"/v1/chunks/"+url.PathEscape(id), body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set(api.CapabilityHeader, token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s chunk %s on %s: %v", method, id, addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// refusedOn sums shoal_agent_refused_total on the agent at addr.
func refusedOn(t *testing.T, hc *http.Client, addr string) int {
	t.Helper()
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "shoal_agent_refused_total{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += int(v)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("agent metrics: %s", resp.Status)
	}
	return total
}
