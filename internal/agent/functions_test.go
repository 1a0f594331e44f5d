package agent

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/sandbox"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// echoBundle is a bundle whose shell bootstrap answers each invocation
// with its payload, and its version.
func echoBundle(t *testing.T) ([]byte, *api.FunctionVersion) {
	t.Helper()
	return shellBundle(t, "echo", `echo "echoing $BODY"
  curl -sS -X POST --data-binary "$BODY" "$API/invocation/$ID/response" >/dev/null`)
}

// shellBundle is a bundle of function fn whose shell bootstrap runs
// answer for each invocation, with the invocation's payload in $BODY, its
// request id in $ID and the Runtime API's base URL in $API; and its
// version 1.
func shellBundle(t *testing.T, fn, answer string) ([]byte, *api.FunctionVersion) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the test bootstrap needs it")
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	h := &zip.FileHeader{Name: "bootstrap", Method: zip.Deflate}
	h.SetMode(0o755)
	w, _ := zw.CreateHeader(h)
	io.WriteString(w, `#!/bin/sh
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H="$(mktemp)"
  BODY="$(curl -sS -D "$H" "$API/invocation/next")"
  ID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  `+answer+`
done
`)
	zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), &api.FunctionVersion{Version: 1, Bundle: "/clusters/c1/.functions/" + fn + "/1.zip",
		SHA256: hex.EncodeToString(sum[:]), Size: int64(buf.Len()), Config: api.FunctionConfig{}.Resolved()}
}

// newFunctionAgent is an agent of cluster c1 with its function pool on
// the exec driver, serving only the function routes.
func newFunctionAgent(t *testing.T, zipBytes []byte) (*Agent, http.Handler) {
	t.Helper()
	// A parent cgroup of its own: a new driver sweeps its parent's
	// children, which must not be another test's runs.
	rnd := make([]byte, 4)
	rand.Read(rnd)
	d, err := sandbox.NewExec(discardLog(), "shoal/agent-fn-test-"+hex.EncodeToString(rnd))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "n1", Zone: "z1", DataDir: t.TempDir()}, log: discardLog(), driver: d,
		cluster: "c1", metrics: newAgentMetrics(), caps: capability.NewVerifier(time.Now)}
	fetch := func(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error {
		_, err := w.Write(zipBytes)
		return err
	}
	if err := a.startFunctions(fetch); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.closeFunctions()
		d.Close()
	})
	mux := http.NewServeMux()
	a.functionRoutes(mux)
	mux.Handle("GET /metrics", a.metrics.handler())
	return a, mux
}

// call sends a request to h and returns the status and body.
func call(h http.Handler, method, path string, body any, cs *tls.ConnectionState) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	r := httptest.NewRequest(method, path, rd)
	r.TLS = cs
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec.Code, rec.Body.Bytes()
}

// callInvoke posts inv to the agent's invoke route as a framed body and
// reads a framed answer back into res (left zero for an error answer).
func callInvoke(h http.Handler, inv *api.SandboxInvocation) (code int, res api.SandboxResult, body []byte) {
	meta, _ := json.Marshal(inv)
	r := httptest.NewRequest("POST", "/v1/agent/functions/invoke", io.MultiReader(bytes.NewReader(meta), bytes.NewReader(inv.Payload)))
	r.Header.Set(api.HeaderMetaLength, strconv.Itoa(len(meta)))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if api.IsFramed(rec.Header()) {
		p, err := api.ReadFramed(rec.Header(), bytes.NewReader(rec.Body.Bytes()), api.MaxInvokePayload, &res)
		if err != nil {
			panic(err)
		}
		res.Payload = p
	}
	return rec.Code, res, rec.Body.Bytes()
}

func TestFunctionRoutes(t *testing.T) {
	z, v := echoBundle(t)
	a, h := newFunctionAgent(t, z)
	inv := func(start bool, cluster string) *api.SandboxInvocation {
		return &api.SandboxInvocation{RequestID: "req-" + cluster, Function: "echo", Cluster: cluster, Version: v,
			Payload: []byte("hello"), Start: start}
	}

	code, res, body := callInvoke(h, inv(false, "c1"))
	if code != http.StatusConflict || !res.Declined || res.Node != "n1" {
		t.Errorf("invoke without an idle sandbox: %d %s, want 409 declined", code, body)
	}
	code, res, body = callInvoke(h, inv(true, "c1"))
	if code != http.StatusOK || string(res.Payload) != "hello" || !res.Cold {
		t.Fatalf("cold invocation: %d %s, want 200 and the payload echoed", code, body)
	}
	waitFor(t, "the sandbox to wait for the next invocation", func() bool {
		r := a.fns.Report()
		return len(r.Sandboxes) == 1 && r.Sandboxes[0].State == api.SandboxIdle
	})
	code, res, body = callInvoke(h, inv(false, "c1"))
	if code != http.StatusOK || string(res.Payload) != "hello" || res.Cold {
		t.Errorf("warm invocation: %d %s, want 200 and the payload echoed", code, body)
	}
	code, _, body = callInvoke(h, inv(true, "c2"))
	if code != http.StatusConflict || !strings.Contains(string(body), "not a member of cluster") {
		t.Errorf("invocation of another cluster's function: %d %s, want 409 naming the cluster", code, body)
	}
	code, _, body = callInvoke(h, &api.SandboxInvocation{Function: "bad/name", Cluster: "c1", Version: v})
	if code != http.StatusBadRequest {
		t.Errorf("invalid function name: %d %s, want 400", code, body)
	}
	code, body = call(h, "POST", "/v1/agent/functions/invoke", inv(true, "c1"), nil) // plain JSON, no frame
	if code != http.StatusBadRequest || !strings.Contains(string(body), api.HeaderMetaLength) {
		t.Errorf("an unframed invocation: %d %s, want 400 naming the missing header", code, body)
	}

	code, body = call(h, "GET", "/v1/agent/functions", nil, nil)
	var rep api.SandboxReport
	json.Unmarshal(body, &rep)
	if code != http.StatusOK || len(rep.Sandboxes) != 1 || len(rep.Functions) != 1 || rep.Functions[0].Invocations != 2 {
		t.Errorf("report: %d %s", code, body)
	}

	code, body = call(h, "GET", "/v1/agent/functions/logs?cluster=c1&function=echo&request_id=req-c1", nil, nil)
	var recs []*api.FunctionLogRecord
	json.Unmarshal(body, &recs)
	if code != http.StatusOK || len(recs) != 2 || !strings.Contains(recs[0].Log, "echoing hello") {
		t.Errorf("logs: %d %s, want the 2 invocations' records", code, body)
	}
	since := neturl.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339Nano))
	code, body = call(h, "GET", "/v1/agent/functions/logs?cluster=c1&function=echo&since="+since, nil, nil)
	if code != http.StatusOK || string(bytes.TrimSpace(body)) != "[]" {
		t.Errorf("logs since the future: %d %s, want 200 []", code, body)
	}
	for _, q := range []string{"cluster=c1&function=echo&since=yesterday", "cluster=c1&function=../x", "cluster=c2&function=echo"} {
		if code, body := call(h, "GET", "/v1/agent/functions/logs?"+q, nil, nil); code != http.StatusBadRequest && code != http.StatusConflict {
			t.Errorf("logs?%s: %d %s, want 400 or 409", q, code, body)
		}
	}

	set := &api.ProvisionedSet{Functions: []*api.ProvisionedFunction{
		{Function: "echo", Cluster: "c1", Version: v, Count: 2},
		{Function: "other", Cluster: "c2", Version: v, Count: 3}, // not this node's cluster: ignored
	}}
	if code, body := call(h, "PUT", "/v1/agent/functions/provisioned", set, nil); code != http.StatusNoContent {
		t.Fatalf("provisioned: %d %s, want 204", code, body)
	}
	waitFor(t, "2 provisioned sandboxes", func() bool {
		n := 0
		for _, s := range a.fns.Report().Sandboxes {
			if s.Provisioned && s.State == api.SandboxIdle && s.Function == "echo" {
				n++
			}
		}
		return n == 2 && len(a.fns.Report().Sandboxes) == 2
	})

	code, body = call(h, "GET", "/metrics", nil, nil)
	for _, want := range []string{
		`shoal_agent_fn_invocations_total{function="echo",outcome="ok"} 2`,
		`shoal_agent_fn_cold_starts_total 1`,
		`shoal_agent_fn_warm_hits_total 1`,
		`shoal_agent_fn_declines_total 1`,
		`shoal_agent_fn_sandboxes{state="idle"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestFunctionRoutesServersOnly: with TLS, only a caller with a server
// certificate may use the function routes.
func TestFunctionRoutesServersOnly(t *testing.T) {
	a, h := newFunctionAgent(t, nil)
	a.cfg.TLS = &tlsfiles.Identity{}
	role := func(r tlsfiles.Role) *tls.ConnectionState {
		return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{DNSNames: []string{tlsfiles.RoleName(r)}}}}}
	}
	for _, tc := range []struct {
		name string
		cs   *tls.ConnectionState
		want int
	}{
		{"no certificate", &tls.ConnectionState{}, http.StatusForbidden},
		{"agent certificate", role(tlsfiles.RoleAgent), http.StatusForbidden},
		{"client certificate", role(tlsfiles.RoleClient), http.StatusForbidden},
		{"server certificate", role(tlsfiles.RoleServer), http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(h, "GET", "/v1/agent/functions", nil, tc.cs)
			if code != tc.want {
				t.Errorf("GET /v1/agent/functions: %d %s, want %d", code, body, tc.want)
			}
			if code == http.StatusForbidden && !strings.Contains(string(body), `"code":"forbidden"`) {
				t.Errorf("refusal %s lacks the error code", body)
			}
		})
	}
}
