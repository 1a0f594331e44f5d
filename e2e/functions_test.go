package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// writeBytes writes data to a file in a fresh temp dir and returns its path.
func writeBytes(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// hello is the answer of examples/functions/hello-go.
type hello struct {
	Greeting string `json:"greeting"`
	Calls    int    `json:"calls"`
}

// invoke calls a function through the API and returns the result.
func invoke(t *testing.T, in *testutil.Installation, cluster, name string, o *api.InvokeOptions) *api.FunctionResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := in.Client.InvokeFunction(ctx, cluster, name, o)
	if err != nil {
		t.Fatalf("invoking %s/%s: %v", cluster, name, err)
	}
	return r
}

// invokeHello invokes a hello-go function and decodes its answer.
func invokeHello(t *testing.T, in *testutil.Installation, cluster, name, payload string) hello {
	t.Helper()
	r := invoke(t, in, cluster, name, &api.InvokeOptions{Payload: []byte(payload)})
	if r.StatusCode != 200 || r.FunctionError != "" {
		t.Fatalf("invoking %s with %s: status %d, function error %q: %s", name, payload, r.StatusCode, r.FunctionError, r.Payload)
	}
	var h hello
	if err := json.Unmarshal(r.Payload, &h); err != nil {
		t.Fatalf("answer %q: %v", r.Payload, err)
	}
	return h
}

// functionError decodes Lambda's error document.
func functionError(t *testing.T, r *api.FunctionResult) (typ, msg string) {
	t.Helper()
	var doc struct {
		ErrorType    string `json:"errorType"`
		ErrorMessage string `json:"errorMessage"`
	}
	if err := json.Unmarshal(r.Payload, &doc); err != nil {
		t.Fatalf("error document %q: %v", r.Payload, err)
	}
	return doc.ErrorType, doc.ErrorMessage
}

func fnStatus(t *testing.T, in *testutil.Installation, name string) *api.FunctionStatus {
	t.Helper()
	var st api.FunctionStatus
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fn", "status", name, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// TestFunctions deploys the aws-lambda-go example and drives every kind of
// invocation through the real binaries: warm reuse, DryRun, Tail logs,
// function errors, timeouts, out-of-memory kills, logs and versions.
func TestFunctions(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	bundle := writeBytes(t, "hello.zip", testutil.HelloGoBundle(t))
	var deployed api.Function
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", bundle, "--timeout", "2s", "--memory", "128", "-o", "json")), &deployed); err != nil || deployed.Latest != 1 {
		t.Fatalf("shoal fn deploy -o json: %+v %v", deployed, err)
	}

	// The first call starts a sandbox; the second finds it warm: the
	// bootstrap's own call counter goes on.
	if h := invokeHello(t, in, "c1", "hello", `{"name":"Ada"}`); h.Greeting != "Hello, Ada" || h.Calls != 1 {
		t.Fatalf("first call: %+v, want Hello, Ada and call 1", h)
	}
	if h := invokeHello(t, in, "c1", "hello", `{"name":"Grace"}`); h.Calls != 2 {
		t.Fatalf("second call: %+v, want call 2 of the same sandbox", h)
	}
	out := mustShoal(t, in, "fn", "invoke", "hello", "--payload", `{"name":"CLI"}`)
	if !strings.Contains(out, "Hello, CLI") {
		t.Errorf("shoal fn invoke printed %q", out)
	}

	// DryRun checks and answers 204 without running anything.
	if r := invoke(t, in, "c1", "hello", &api.InvokeOptions{Type: api.InvokeDryRun, Payload: []byte(`{}`)}); r.StatusCode != 204 {
		t.Errorf("DryRun: status %d, want 204", r.StatusCode)
	}

	// Tail returns the end of the invocation's log with its request id.
	r := invoke(t, in, "c1", "hello", &api.InvokeOptions{Tail: true, Payload: []byte(`{"name":"tail"}`)})
	if !strings.Contains(r.LogTail, "START RequestId: "+r.RequestID) || !strings.Contains(r.LogTail, "END RequestId: "+r.RequestID) {
		t.Errorf("log tail of %s:\n%s", r.RequestID, r.LogTail)
	}
	if r.Version != "1" {
		t.Errorf("executed version %q, want 1", r.Version)
	}

	// A function error is an answer, not a failure of the service.
	r = invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{"name":"error"}`)})
	if r.StatusCode != 200 || r.FunctionError != "Unhandled" {
		t.Fatalf("function error: status %d, X-Amz-Function-Error %q", r.StatusCode, r.FunctionError)
	}
	if _, msg := functionError(t, r); msg == "" {
		t.Errorf("function error without a message: %s", r.Payload)
	}
	if _, errOut, code := in.Shoal("fn", "invoke", "hello", "--payload", `{"name":"error"}`); code == 0 || !strings.Contains(errOut, "Unhandled") {
		t.Errorf("shoal fn invoke of a failing call: exit %d, stderr %q", code, errOut)
	}

	// A timeout kills the sandbox; the next call gets a new one.
	r = invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{"name":"slow","sleep_ms":10000}`)})
	if _, msg := functionError(t, r); r.FunctionError != "Unhandled" || !strings.Contains(msg, "Task timed out after 2.00 seconds") {
		t.Errorf("timeout: %q %s", r.FunctionError, r.Payload)
	}
	invokeHello(t, in, "c1", "hello", `{"name":"after the timeout"}`)

	// Memory is enforced by the sandbox's cgroup.
	if os.Geteuid() == 0 {
		r = invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{"name":"hog","alloc_mib":512}`)})
		if typ, msg := functionError(t, r); typ != "Runtime.OutOfMemory" {
			t.Errorf("out of memory: type %q message %q", typ, msg)
		}
	}

	// Each invocation's output is kept with its request id.
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		recs, err := in.Client.FunctionLogs(context.Background(), "c1", "hello", time.Time{}, r.RequestID)
		if err != nil || len(recs) != 1 {
			return false, fmt.Sprintf("logs of %s: %v %v", r.RequestID, recs, err)
		}
		return strings.Contains(recs[0].Log, "START RequestId: "+r.RequestID), "log: " + recs[0].Log
	})
	if out := mustShoal(t, in, "fn", "logs", "hello"); !strings.Contains(out, r.RequestID) {
		t.Errorf("shoal fn logs does not show %s:\n%s", r.RequestID, out)
	}
	followLogs(t, in)

	// A new deploy is a new version; the old one can still be named.
	mustShoal(t, in, "fn", "update", "hello", "--env", "GREETING=Hi")
	if r := invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{}`)}); r.Version != "2" {
		t.Errorf("after update: executed version %q, want 2", r.Version)
	}
	if r := invoke(t, in, "c1", "hello", &api.InvokeOptions{Version: 1, Payload: []byte(`{}`)}); r.Version != "1" {
		t.Errorf("version 1 named: executed version %q", r.Version)
	}
	st := fnStatus(t, in, "hello")
	if st.Function.Latest != 2 || st.Invocations == 0 || st.WarmHits == 0 {
		t.Errorf("status: latest %d, invocations %d, warm hits %d", st.Function.Latest, st.Invocations, st.WarmHits)
	}
}

// TestFunctionsBadInput: every bad input gets an error naming the problem
// and changes nothing.
func TestFunctionsBadInput(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	good := writeBytes(t, "hello.zip", testutil.HelloGoBundle(t))
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", good)
	before := mustShoal(t, in, "fn", "list", "-o", "json")

	noBootstrap := writeBytes(t, "nb.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"main": {Data: []byte("x"), Mode: 0o755}}))
	notZip := writeFile(t, "not.zip", "this is not a zip")
	big := `{"pad":"` + strings.Repeat("x", api.MaxInvokePayload) + `"}`
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fn", "deploy", "bad", "--cluster", "c1", "--zip", notZip}, "zip"},
		{[]string{"fn", "deploy", "bad", "--cluster", "c1", "--zip", noBootstrap}, "bootstrap"},
		{[]string{"fn", "deploy", "a/b", "--cluster", "c1", "--zip", good}, "a/b"},
		{[]string{"fn", "deploy", strings.Repeat("f", 65), "--cluster", "c1", "--zip", good}, "64"},
		{[]string{"fn", "deploy", "bad", "--cluster", "c1", "--zip", good, "--memory", "64"}, "memory"},
		{[]string{"fn", "deploy", "bad", "--cluster", "c1", "--zip", good, "--timeout", "1h"}, "timeout"},
		{[]string{"fn", "deploy", "bad", "--cluster", "nosuch", "--zip", good}, "nosuch"},
		{[]string{"fn", "invoke", "nosuch", "--cluster", "c1"}, "nosuch"},
		{[]string{"fn", "invoke", "hello", "--version", "9"}, "9"},
		{[]string{"fn", "invoke", "hello", "--payload", "{not json"}, "JSON"},
		{[]string{"fn", "invoke", "hello", "--payload", "@" + writeFile(t, "big.json", big)}, "6"},
	} {
		_, errOut, code := in.Shoal(tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("shoal %s: exit %d, stderr %q, want an error naming %q", strings.Join(tc.args, " ")[:min(80, len(strings.Join(tc.args, " ")))], code, errOut, tc.want)
		}
	}

	// The servers check what the CLI checks.
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		zip  []byte
		cfg  api.FunctionConfig
	}{
		{"bad", []byte("not a zip"), api.FunctionConfig{}},
		{"bad", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap/": {Mode: 0o755 | os.ModeDir}}), api.FunctionConfig{}},
		{"bad", testutil.HelloGoBundle(t), api.FunctionConfig{MemoryMiB: 20000}},
		{"a:b", testutil.HelloGoBundle(t), api.FunctionConfig{}},
	} {
		if _, err := in.Client.DeployFunction(ctx, "c1", tc.name, &api.FunctionDeploy{Cluster: "c1", Zip: tc.zip, Config: tc.cfg}); err == nil {
			t.Errorf("server accepted deploy of %q with %+v", tc.name, tc.cfg)
		}
	}
	_, err := in.Client.InvokeFunction(ctx, "c1", "hello", &api.InvokeOptions{Payload: []byte(big)})
	if err == nil || !strings.Contains(err.Error(), "6") {
		t.Errorf("a payload over 6 MB: %v", err)
	}
	if after := mustShoal(t, in, "fn", "list", "-o", "json"); after != before {
		t.Errorf("bad input changed the functions:\nbefore %s\nafter  %s", before, after)
	}
}

// TestFunctionsAWSCLI: the Debian aws CLI invokes a function with a
// request signed by the cluster's name and token, and a wrong secret is
// refused.
func TestFunctionsAWSCLI(t *testing.T) {
	requireAWSCLI(t)
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", writeBytes(t, "hello.zip", testutil.HelloGoBundle(t)))
	c, _, err := in.Client.Cluster(context.Background(), "c1", nil)
	if err != nil || c.Token == "" {
		t.Fatalf("cluster token: %v %q", err, c.Token)
	}
	run := func(key, secret string, args ...string) (string, string, error) {
		return awsLambdaInvoke(t, in, key, secret, args...)
	}
	out, errOut, err := run("c1", c.Token, "--function-name", "hello", "--payload", `{"name":"aws"}`, "--log-type", "Tail", "out.json")
	if err != nil || !strings.Contains(out, "Hello, aws") || !strings.Contains(out, "LogResult") {
		t.Fatalf("aws lambda invoke: %v\nout: %s\nstderr: %s", err, out, errOut)
	}
	// The operator signs with access key id "operator"; on this open
	// installation any secret does, but a cluster's key needs its token.
	if out, errOut, err := run("operator", "anything", "--function-name", "c1:function:hello", "--payload", `{"name":"op"}`, "out.json"); err != nil || !strings.Contains(out, "Hello, op") {
		t.Errorf("aws lambda invoke as operator: %v\n%s\n%s", err, out, errOut)
	}
	if _, errOut, err := run("c1", c.Token+"x", "--function-name", "hello", "out.json"); err == nil || !strings.Contains(errOut, "InvalidSignatureException") {
		t.Errorf("a wrong secret: %v, stderr %q", err, errOut)
	}
	if _, errOut, err := run("c1", c.Token, "--function-name", "nosuch", "out.json"); err == nil || !strings.Contains(errOut, "ResourceNotFoundException") {
		t.Errorf("an unknown function: %v, stderr %q", err, errOut)
	}

	// A client context reaches the runtime, in Lambda's header, from the
	// aws CLI and from shoal fn invoke.
	mustShoal(t, in, "fn", "deploy", "ctx", "--cluster", "c1", "--zip",
		writeBytes(t, "ctx.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(echoClientContext), Mode: 0o755}})))
	const cc = `{"client":{"app_title":"aws"},"custom":{"k":"v"}}`
	out, errOut, err = run("c1", c.Token, "--function-name", "ctx", "--client-context", base64.StdEncoding.EncodeToString([]byte(cc)), "out.json")
	if err != nil || !strings.HasPrefix(out, cc) {
		t.Errorf("aws lambda invoke --client-context: %v\nout: %s\nstderr: %s\nwant the function to answer %s", err, out, errOut, cc)
	}
	if out := mustShoal(t, in, "fn", "invoke", "ctx", "--client-context", `{"custom":{"from":"shoal"}}`); !strings.Contains(out, `{"custom":{"from":"shoal"}}`) {
		t.Errorf("shoal fn invoke --client-context: %s", out)
	}
	if _, errOut, err := run("c1", c.Token, "--function-name", "ctx", "--client-context", "bm90IGpzb24=", "out.json"); err == nil || !strings.Contains(errOut, "InvalidRequestContentException") {
		t.Errorf("a client context that is not JSON: %v, stderr %q", err, errOut)
	}
}

// echoClientContext is a shell bootstrap that answers each invocation
// with the Lambda-Runtime-Client-Context header it got ({} without one).
const echoClientContext = `#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
while :; do
  curl -sS -D headers -o /dev/null "$api/next"
  id=$(tr -d '\r' < headers | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: //p')
  cc=$(tr -d '\r' < headers | sed -n 's/^[Ll]ambda-[Rr]untime-[Cc]lient-[Cc]ontext: //p')
  curl -sS -o /dev/null -X POST --data-binary "${cc:-{\}}" "$api/$id/response"
done
`

// awsCLI is Debian's aws CLI (v2), which .ci/run installs, used before
// any other on PATH.
const awsCLI = "/usr/bin/aws"

func requireAWSCLI(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(awsCLI); err != nil {
		t.Skip("/usr/bin/aws is not installed (.ci/run installs Debian's awscli)")
	}
}

// awsLambdaInvoke runs `aws lambda invoke ... out.json` against the
// installation's first server with the given credentials and returns
// out.json plus stdout, stderr and the exit error. An empty key sends
// the request unsigned.
func awsLambdaInvoke(t *testing.T, in *testutil.Installation, key, secret string, args ...string) (string, string, error) {
	t.Helper()
	dir := t.TempDir()
	base := []string{"lambda", "invoke", "--endpoint-url", "https://" + in.Servers[0].HTTPAddr, "--cli-binary-format", "raw-in-base64-out"}
	if key == "" {
		base = append(base, "--no-sign-request")
	}
	cmd := exec.Command(awsCLI, append(base, args...)...)
	cmd.Dir = dir
	cmd.Env = []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH"), "AWS_ACCESS_KEY_ID=" + key, "AWS_SECRET_ACCESS_KEY=" + secret,
		"AWS_DEFAULT_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true", "AWS_CA_BUNDLE=" + in.TLS.Files(tlsfiles.RoleClient).CACert}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	b, _ := os.ReadFile(filepath.Join(dir, "out.json"))
	return string(b) + stdout.String(), stderr.String(), err
}

// TestFunctionsAWSCLIOperatorToken: on an installation with an operator
// token, the operator signs with access key id "operator" and that token;
// another secret, and an unsigned request, are refused.
func TestFunctionsAWSCLIOperatorToken(t *testing.T) {
	requireAWSCLI(t)
	const token = "operator-secret-for-the-test"
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1, Token: token})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", writeBytes(t, "hello.zip", testutil.HelloGoBundle(t)))
	if out, errOut, err := awsLambdaInvoke(t, in, "operator", token, "--function-name", "hello", "--payload", `{"name":"op"}`, "out.json"); err != nil || !strings.Contains(out, "Hello, op") {
		t.Errorf("as operator with the operator token: %v\n%s\n%s", err, out, errOut)
	}
	if _, errOut, err := awsLambdaInvoke(t, in, "operator", token+"x", "--function-name", "hello", "out.json"); err == nil || !strings.Contains(errOut, "InvalidSignatureException") {
		t.Errorf("as operator with another secret: %v, stderr %q", err, errOut)
	}
	if out, errOut, err := awsLambdaInvoke(t, in, "", "", "--function-name", "hello", "out.json"); err == nil {
		t.Errorf("an unsigned request was served: %s %s", out, errOut)
	}
}

// TestFunctionsProbingAndAgentKill: concurrent calls spread sandboxes over
// the cluster's nodes by probing; warm sandboxes are found again; after
// kill -9 of an agent holding sandboxes, calls go on succeeding elsewhere.
func TestFunctionsProbingAndAgentKill(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3")
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", writeBytes(t, "hello.zip", testutil.HelloGoBundle(t)))
	burst := func(n int) {
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				invokeHello(t, in, "c1", "hello", `{"name":"burst","sleep_ms":300}`)
			}()
		}
		wg.Wait()
	}
	burst(6)
	burst(6)
	st := fnStatus(t, in, "hello")
	nodes := map[string]int{}
	for _, sb := range st.Sandboxes {
		nodes[sb.Node]++
	}
	if len(nodes) < 2 || st.WarmHits == 0 || st.ColdStarts == 0 {
		t.Fatalf("after two bursts: sandboxes per node %v, warm hits %d, cold starts %d", nodes, st.WarmHits, st.ColdStarts)
	}
	hc := in.HTTPClient(tlsfiles.RoleServer)
	srv := in.Servers[0].HTTPAddr
	if probes := metricSum(t, hc, srv, "shoal_server_fn_probes_count"); probes == 0 {
		t.Errorf("no probes counted")
	}
	if hits := metricSum(t, hc, srv, "shoal_server_fn_warm_hits_total"); hits == 0 {
		t.Errorf("no warm hits counted")
	}

	var victim string
	for n := range nodes {
		victim = n
		break
	}
	in.Agent(victim).Kill9()
	for i := 0; i < 8; i++ {
		invokeHello(t, in, "c1", "hello", fmt.Sprintf(`{"name":"after %d"}`, i))
	}
}

// TestFunctionsProvisioned: --provisioned 2 keeps two sandboxes initialised
// ahead of demand, so the first call is warm, and after kill -9 of an agent
// holding one, it is made again on another node.
func TestFunctionsProvisioned(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3")
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", writeBytes(t, "hello.zip", testutil.HelloGoBundle(t)), "--provisioned", "2")
	ready := func(avoid string) func() (bool, string) {
		return func() (bool, string) {
			st := fnStatus(t, in, "hello")
			n := 0
			for _, sb := range st.Sandboxes {
				if sb.Provisioned && sb.State == api.SandboxIdle && sb.Node != avoid {
					n++
				}
			}
			return n == 2, fmt.Sprintf("%d provisioned idle sandboxes off %q (target %d)", n, avoid, st.ProvisionedTarget)
		}
	}
	testutil.WaitFor(t, 30*time.Second, ready(""))
	invokeHello(t, in, "c1", "hello", `{"name":"first"}`)
	if st := fnStatus(t, in, "hello"); st.ColdStarts != 0 || st.WarmHits != 1 {
		t.Errorf("the first call was not warm: cold starts %d, warm hits %d", st.ColdStarts, st.WarmHits)
	}
	victim := fnStatus(t, in, "hello").Sandboxes[0].Node
	in.Agent(victim).Kill9()
	testutil.WaitFor(t, 60*time.Second, ready(victim))
}

// TestFunctionInitFailure: a bootstrap that dies at start reports an init
// error and is not restarted in a tight loop; one that never asks for an
// invocation is killed after the function's timeout.
func TestFunctionInitFailure(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	crash := testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), Mode: 0o755}})
	mute := testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte("#!/bin/sh\nexec sleep 600\n"), Mode: 0o755}})
	mustShoal(t, in, "fn", "deploy", "crash", "--cluster", "c1", "--zip", writeBytes(t, "crash.zip", crash))
	mustShoal(t, in, "fn", "deploy", "mute", "--cluster", "c1", "--zip", writeBytes(t, "mute.zip", mute), "--timeout", "1s")

	nodes, _, err := in.Client.Nodes(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var agentAddr string
	for _, n := range nodes {
		agentAddr = n.Addr
	}
	hc := in.HTTPClient(tlsfiles.RoleAgent)
	for i := 0; i < 5; i++ {
		r := invoke(t, in, "c1", "crash", &api.InvokeOptions{Payload: []byte(`{}`)})
		if typ, _ := functionError(t, r); r.FunctionError != "Unhandled" || !strings.HasPrefix(typ, "Runtime.") {
			t.Fatalf("call %d of a crashing bootstrap: %q %s", i, r.FunctionError, r.Payload)
		}
	}
	if starts := metricSum(t, hc, agentAddr, "shoal_agent_fn_cold_starts_total"); starts > 2 {
		t.Errorf("a crashing bootstrap was started %d times for 5 quick calls", starts)
	}
	r := invoke(t, in, "c1", "mute", &api.InvokeOptions{Payload: []byte(`{}`)})
	if r.FunctionError != "Unhandled" {
		t.Errorf("a bootstrap that never asks for work: %q %s", r.FunctionError, r.Payload)
	}
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		out, _ := exec.Command("pgrep", "-f", "sleep 600").Output()
		return len(strings.TrimSpace(string(out))) == 0, "still running: " + string(out)
	})
}

// TestFunctionsProvisionedAuto: with --provisioned auto the ready set is
// sized from the function's own recent concurrency, so a second burst like
// the first meets warm sandboxes although the on-demand ones of the first
// were reclaimed (the agents' idle timeout is 3 s here).
func TestFunctionsProvisionedAuto(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, AgentArgs: []string{"--fn-idle-timeout", "3s"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	mustShoal(t, in, "fn", "deploy", "hello", "--cluster", "c1", "--zip", writeBytes(t, "hello.zip", testutil.HelloGoBundle(t)), "--provisioned", "auto")
	burst := func() {
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				invokeHello(t, in, "c1", "hello", `{"name":"burst","sleep_ms":500}`)
			}()
		}
		wg.Wait()
	}
	burst()
	// The forecast: a peak of 4 busy at once, plus a quarter (at least
	// one) spare.
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		st := fnStatus(t, in, "hello")
		ready := 0
		for _, sb := range st.Sandboxes {
			if sb.Provisioned && sb.State == api.SandboxIdle {
				ready++
			}
		}
		return st.ProvisionedTarget == 5 && ready == 5 && len(st.Sandboxes) == 5,
			fmt.Sprintf("target %d, %d provisioned ready of %d sandboxes", st.ProvisionedTarget, ready, len(st.Sandboxes))
	})
	before := fnStatus(t, in, "hello")
	burst()
	after := fnStatus(t, in, "hello")
	if after.ColdStarts != before.ColdStarts || after.WarmHits-before.WarmHits != 4 {
		t.Errorf("second burst: %d cold starts, %d warm hits, want 0 and 4", after.ColdStarts-before.ColdStarts, after.WarmHits-before.WarmHits)
	}
}

// followLogs checks that shoal fn logs --follow prints each new
// invocation of c1's hello once, as it ends, and nothing from before
// --since.
func followLogs(t *testing.T, in *testutil.Installation) {
	t.Helper()
	before := invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{"name":"before"}`)})
	time.Sleep(10 * time.Millisecond)
	since := time.Now()
	cmd := exec.Command(in.Bin, "fn", "logs", "hello", "--follow", "--since", since.Format(time.RFC3339Nano))
	cmd.Env = append(append(os.Environ(), in.CLIEnv()...), "SHOAL_ADDR="+in.Addrs(), "SHOAL_TOKEN="+in.Opts.Token)
	var out testutil.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	output := out.String
	var ids []string
	for _, name := range []string{"followed-1", "followed-2"} {
		ids = append(ids, invoke(t, in, "c1", "hello", &api.InvokeOptions{Payload: []byte(`{"name":"` + name + `"}`)}).RequestID)
		time.Sleep(600 * time.Millisecond) // more than one poll between them
	}
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		o := output()
		for _, id := range ids {
			if !strings.Contains(o, "END RequestId: "+id) {
				return false, "shoal fn logs --follow has not printed " + id + ":\n" + o
			}
		}
		return true, ""
	})
	time.Sleep(time.Second) // two more polls: nothing is printed twice
	o := output()
	for _, id := range ids {
		if n := strings.Count(o, "START RequestId: "+id); n != 1 {
			t.Errorf("shoal fn logs --follow printed %s %d times, want once:\n%s", id, n, o)
		}
	}
	if strings.Contains(o, before.RequestID) {
		t.Errorf("shoal fn logs --follow --since %s printed %s, which ended before then:\n%s", since.Format(time.RFC3339Nano), before.RequestID, o)
	}
}

// TestFunctionConcurrencyAcrossServers: a function's concurrency limit
// holds for the whole cluster, whichever servers the invocations come
// through: with a limit of 2, two invocations held at a gate run (one
// through each of two servers) and a third, through the third server, is
// refused with TooManyRequestsException; once they end, calls run again.
func TestFunctionConcurrencyAcrossServers(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Servers: 3, Agents: 2})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	gate := filepath.Join(t.TempDir(), "gate")
	bundle := writeBytes(t, "gated.zip", testutil.ZipBundle(t, map[string]testutil.BundleFile{"bootstrap": {Data: []byte(gated), Mode: 0o755}}))
	mustShoal(t, in, "fn", "deploy", "gated", "--cluster", "c1", "--zip", bundle, "--env", "GATE="+gate, "--timeout", "60s", "--concurrency", "2")
	clients := make([]*api.Client, 3)
	for i := range clients {
		clients[i] = in.NewClient([]string{in.Servers[i].HTTPAddr}, in.Opts.Token)
		defer clients[i].Close()
	}
	call := func(i int) (*api.FunctionResult, error) {
		return clients[i].InvokeFunction(context.Background(), "c1", "gated", &api.InvokeOptions{Payload: []byte(`{}`)})
	}
	// A deploy is acknowledged once the leader applied it; the other
	// servers know it once they have too.
	for i := range clients {
		testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
			r, err := clients[i].InvokeFunction(context.Background(), "c1", "gated", &api.InvokeOptions{Type: api.InvokeDryRun})
			return err == nil && r.StatusCode == 204, fmt.Sprintf("server %d: %v", i+1, err)
		})
	}
	held := make(chan error, 2)
	for i := range 2 {
		go func() {
			r, err := call(i)
			if err == nil && (r.StatusCode != 200 || r.FunctionError != "") {
				err = fmt.Errorf("status %d, function error %q", r.StatusCode, r.FunctionError)
			}
			held <- err
		}()
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		busy := 0
		for _, sb := range fnStatus(t, in, "gated").Sandboxes {
			if sb.State == api.SandboxBusy {
				busy++
			}
		}
		return busy == 2, fmt.Sprintf("%d invocations running", busy)
	})
	if _, err := call(2); err == nil || !strings.Contains(err.Error(), "concurrency limit") {
		t.Errorf("a third invocation through the third server: %v, want it refused at the concurrency limit", err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-held; err != nil {
			t.Errorf("a held invocation: %v", err)
		}
	}
	if r, err := call(2); err != nil || r.StatusCode != 200 {
		t.Errorf("after the held ones ended: %v %+v, want it run", err, r)
	}
}
