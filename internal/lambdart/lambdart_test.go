package lambdart

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

// TestGoBootstrapWarmReuse runs an unmodified aws-lambda-go bootstrap:
// the first invocation starts it, the next ones reuse it, as its
// in-memory count shows.
func TestGoBootstrapWarmReuse(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{Env: map[string]string{"TEST_ENV": "hello"}})

	res := tp.invoke(t, v, `{}`, true)
	if res.FunctionError != "" || !res.Cold {
		t.Fatalf("first invocation: %+v (%s), want a cold success", res, res.Payload)
	}
	got := decode[goResponse](t, res.Payload)
	if got.Count != 1 || got.Env != "hello" || got.ARN != "arn:aws:lambda:shoal:c1:function:fn" {
		t.Errorf("first answer: %+v", got)
	}
	first := res.Sandbox
	for want := 2; want <= 4; want++ {
		res := tp.warm(t, v, `{"print":"line from the function"}`)
		if res.Declined || res.FunctionError != "" || res.Cold || res.Sandbox != first {
			t.Fatalf("invocation %d: %+v (%s), want a warm success in %s", want, res, res.Payload, first)
		}
		if got := decode[goResponse](t, res.Payload); got.Count != want {
			t.Errorf("invocation %d: count %d, want %d (warm reuse)", want, got.Count, want)
		}
		if !strings.Contains(string(res.LogTail), "line from the function") || !strings.Contains(string(res.LogTail), "REPORT RequestId: ") {
			t.Errorf("log tail %q lacks the function's line or the REPORT line", res.LogTail)
		}
	}
	waitFor(t, "the sandbox to be idle", func() bool { return len(tp.sandboxesOf(api.SandboxIdle)) == 1 })
	rep := tp.Report()
	if len(rep.Sandboxes) != 1 || rep.Sandboxes[0].State != api.SandboxIdle || rep.Sandboxes[0].Invocations != 4 {
		t.Errorf("sandboxes: %+v", rep.Sandboxes)
	}
	if len(rep.Functions) != 1 {
		t.Fatalf("functions: %+v", rep.Functions)
	}
	f := rep.Functions[0]
	if f.Invocations != 4 || f.WarmHits != 3 || f.ColdStarts != 1 || f.Busy != 0 || len(f.Peaks) != api.ForecastSlots || f.Peaks[0] != 1 {
		t.Errorf("counters: %+v", f)
	}
	recs := tp.Logs(testCluster, "fn", time.Time{}, "")
	if len(recs) != 4 {
		t.Fatalf("%d log records, want 4", len(recs))
	}
	last := recs[3]
	for _, want := range []string{"START RequestId: " + last.RequestID + " Version: 1", "line from the function", "END RequestId: " + last.RequestID, "REPORT RequestId: " + last.RequestID} {
		if !strings.Contains(last.Log, want) {
			t.Errorf("log %q lacks %q", last.Log, want)
		}
	}
	if strings.Count(last.Log, "START") != 1 {
		t.Errorf("log of one invocation holds another's: %q", last.Log)
	}
	if got := tp.Logs(testCluster, "fn", time.Time{}, recs[1].RequestID); len(got) != 1 || got[0].RequestID != recs[1].RequestID {
		t.Errorf("logs by request id: %+v", got)
	}
	if got := tp.Logs(testCluster, "fn", last.Start.Add(time.Nanosecond), ""); len(got) != 0 {
		t.Errorf("logs since after the last start: %d records, want 0", len(got))
	}
}

// TestDeclineWithoutIdleSandbox: without an idle sandbox and without
// Start, the pool declines at once and starts nothing.
func TestDeclineWithoutIdleSandbox(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o755, Data: "#!/bin/sh\nexit 1\n"}), api.FunctionConfig{})
	res := tp.invoke(t, v, `{}`, false)
	if diff := cmp.Diff(&api.SandboxResult{Declined: true, Node: "n1"}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if tp.b.fetches != 0 || len(tp.Report().Sandboxes) != 0 {
		t.Errorf("a declined invocation fetched %d bundles and left %d sandboxes", tp.b.fetches, len(tp.Report().Sandboxes))
	}
}

// TestFunctionFailures covers what a function may do wrong: return an
// error, run past its timeout, exit, answer too much.
func TestFunctionFailures(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{Timeout: api.Duration(time.Second)})
	for _, tc := range []struct {
		name, payload       string
		errType, msg        string
		sandboxSurvives     bool
		outcome, logContent string
	}{
		{name: "error", payload: `{"error":"boom"}`, errType: "errorString", msg: "boom", sandboxSurvives: true, outcome: "error"},
		// aws-lambda-go reports a panic, then exits: the sandbox
		// must not be handed another invocation.
		{name: "panic", payload: `{"panic":"kaboom"}`, errType: "string", msg: "kaboom", outcome: "error"},
		{name: "timeout", payload: `{"sleep_ms":30000}`, errType: "Sandbox.Timedout", msg: "Task timed out after 1.00 seconds",
			outcome: "timeout", logContent: "Task timed out after 1.00 seconds"},
		{name: "exit", payload: `{"exit":3}`, errType: "Runtime.ExitError", msg: "Runtime exited with error: exit status 3",
			outcome: "crash", logContent: "exit status 3"},
		{name: "too large", payload: `{"big_mb":7}`, errType: "Function.ResponseSizeTooLarge", msg: "exceeded maximum allowed payload size",
			outcome: "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := tp.invoke(t, v, tc.payload, true)
			if res.FunctionError != "Unhandled" || res.ErrorType != tc.errType {
				t.Fatalf("result %+v (%s), want an Unhandled %s", res, res.Payload, tc.errType)
			}
			doc := decode[errorDoc](t, res.Payload)
			if doc.Type != tc.errType || !strings.Contains(doc.Message, tc.msg) {
				t.Errorf("error document %+v, want type %s and a message with %q", doc, tc.errType, tc.msg)
			}
			recs := tp.Logs(testCluster, "fn", time.Time{}, "")
			rec := recs[len(recs)-1]
			if rec.Outcome != tc.outcome || !strings.Contains(rec.Log, tc.logContent) {
				t.Errorf("log record outcome %q, log %q; want %q with %q", rec.Outcome, rec.Log, tc.outcome, tc.logContent)
			}
			if tc.sandboxSurvives {
				// The sandbox serves the next invocation.
				res := tp.warm(t, v, `{}`)
				if res.Declined || res.FunctionError != "" {
					t.Errorf("after a %s: %+v (%s), want a warm success", tc.name, res, res.Payload)
				}
			} else {
				waitFor(t, "the failed sandbox to end", func() bool {
					for _, s := range tp.sandboxesOf("") {
						if s.ID == res.Sandbox {
							return false
						}
					}
					return true
				})
			}
		})
	}
}

// TestOutOfMemory: a function that outgrows its memory is killed by its
// cgroup and the invocation says so.
func TestOutOfMemory(t *testing.T) {
	tp := newTestPool(t, nil)
	if !tp.driver.Isolated() {
		t.Skip("the exec driver has no cgroups here (not root, or no usable cgroup hierarchy): memory is not limited")
	}
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{MemoryMiB: 128, Timeout: api.Duration(20 * time.Second)})
	res := tp.invoke(t, v, `{"alloc_mb":600}`, true)
	if res.ErrorType != "Runtime.OutOfMemory" {
		t.Fatalf("result %+v (%s), want Runtime.OutOfMemory", res, res.Payload)
	}
	if doc := decode[errorDoc](t, res.Payload); !strings.Contains(doc.Message, "out of memory: limit 128 MiB") {
		t.Errorf("message %q does not name the limit", doc.Message)
	}
}

// TestShellBootstrap runs a bootstrap that speaks the Runtime API with
// curl, and checks the environment Lambda gives.
func TestShellBootstrap(t *testing.T) {
	tp := newTestPool(t, nil)
	z := shBootstrap(t, `set -eu
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H="$(mktemp)"
  BODY="$(curl -sS -D "$H" "$API/invocation/next")"
  ID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  DL="$(grep -i '^Lambda-Runtime-Deadline-Ms:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  echo "handling $ID"
  OUT="$BODY|$AWS_LAMBDA_FUNCTION_NAME|$AWS_LAMBDA_FUNCTION_MEMORY_SIZE|$AWS_LAMBDA_FUNCTION_VERSION|$_HANDLER|$AWS_REGION|$TZ|$(pwd)|$HOME|$([ -x "$LAMBDA_TASK_ROOT/bootstrap" ] && echo root-ok)|$([ "$DL" -gt 0 ] && echo dl-ok)"
  curl -sS -X POST --data-binary "$OUT" "$API/invocation/$ID/response" >/dev/null
  rm -f "$H"
done
`)
	v := tp.b.version("fn", 3, z, api.FunctionConfig{Handler: "my.handler", MemoryMiB: 256})
	res := tp.invoke(t, v, `hi`, true)
	if res.FunctionError != "" {
		t.Fatalf("result %+v (%s)", res, res.Payload)
	}
	f := strings.Split(string(res.Payload), "|")
	if len(f) != 11 {
		t.Fatalf("answer %q", res.Payload)
	}
	want := []string{"hi", "fn", "256", "3", "my.handler", "shoal", ":UTC", f[8], f[8], "root-ok", "dl-ok"}
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
	if !strings.HasSuffix(f[8], "/work") {
		t.Errorf("working directory %q is not the sandbox's work directory", f[8])
	}
	res2 := tp.warm(t, v, `again`)
	if res2.Sandbox != res.Sandbox || !strings.HasPrefix(string(res2.Payload), "again|") {
		t.Errorf("second invocation %+v (%s), want a warm answer", res2, res2.Payload)
	}
}

// TestRuntimeAPIBadRequestIDs: answers for a request id the sandbox does
// not hold are refused with 400 and Lambda's error document; the
// invocation goes on.
func TestRuntimeAPIBadRequestIDs(t *testing.T) {
	tp := newTestPool(t, nil)
	z := shBootstrap(t, `set -u
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H="$(mktemp)"
  curl -sS -D "$H" -o /dev/null "$API/invocation/next"
  ID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  R1="$(curl -sS -o "$H.1" -w '%{http_code}' -X POST -d x "$API/invocation/not-$ID/response")"
  R2="$(curl -sS -o "$H.2" -w '%{http_code}' -X POST -d x "$API/invocation/not-$ID/error")"
  R3="$(curl -sS -o "$H.3" -w '%{http_code}' -X POST -d x "$API/init/error")"
  R4="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -d ok "$API/invocation/$ID/response")"
  echo "$R4" > "$HOME/last-status"
  R5="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -d again "$API/invocation/$ID/response")"
  echo "$R1 $(cat "$H.1") $R2 $(cat "$H.2") $R3 $(cat "$H.3") $R4 $R5" >> "$HOME/results"
done
`)
	v := tp.b.version("fn", 1, z, api.FunctionConfig{})
	res := tp.invoke(t, v, `{}`, true)
	if res.FunctionError != "" || string(res.Payload) != "ok" {
		t.Fatalf("result %+v (%s), want ok", res, res.Payload)
	}
	results := filepath.Join(tp.cfg.Dir, "sandboxes", res.Sandbox, "work", "results")
	waitFor(t, "the bootstrap's results", func() bool { return lines(results) == 1 })
	b := readFile(t, results)
	want := `400 {"errorMessage":"Invalid request ID: \"not-` + "%s" + `\"","errorType":"InvalidRequestID"} ` +
		`400 {"errorMessage":"Invalid request ID: \"not-%s\"","errorType":"InvalidRequestID"} ` +
		`403 {"errorMessage":"the runtime already asked for an invocation: init is over","errorType":"InvalidStateTransition"} 202 400` + "\n"
	want = strings.ReplaceAll(want, "%s", recID(t, tp))
	if b != want {
		t.Errorf("Runtime API answers:\n got %q\nwant %q", b, want)
	}
}

func recID(t *testing.T, tp *testPool) string {
	recs := tp.Logs(testCluster, "fn", time.Time{}, "")
	if len(recs) == 0 {
		t.Fatal("no log record")
	}
	return recs[len(recs)-1].RequestID
}

// TestInitFailureBackoff: a bootstrap that fails before asking for an
// invocation fails the invocation, and cold starts of the version fail
// at once for a while without starting a process.
func TestInitFailureBackoff(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tp := newTestPool(t, func(c *Config) { c.Now = clock.Now })
	starts := filepath.Join(t.TempDir(), "starts")
	for _, tc := range []struct {
		name, script, errType, msg, logged string
	}{
		{"crash", `echo start >> "$STARTS"; echo "cannot init" >&2; exit 2`, "Runtime.ExitError", "exit status 2", "cannot init"},
		{"init error", `echo start >> "$STARTS"
echo "reporting the init error"
curl -sS -X POST -H 'Lambda-Runtime-Function-Error-Type: Runtime.ConfigError' \
  -d '{"errorMessage":"missing setting","errorType":"ConfigError"}' "http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/init/error"
sleep 60`, "Runtime.ConfigError", "missing setting", "reporting the init error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tp.b.version("fn", 1, shBootstrap(t, tc.script), api.FunctionConfig{Env: map[string]string{"STARTS": starts + tc.name}})
			want := func(res *api.SandboxResult) {
				t.Helper()
				doc := decode[errorDoc](t, res.Payload)
				if res.FunctionError != "Unhandled" || res.ErrorType != tc.errType || doc.Type != tc.errType || !strings.Contains(doc.Message, tc.msg) {
					t.Errorf("result %+v (%s), want %s with %q", res, res.Payload, tc.errType, tc.msg)
				}
			}
			first := tp.invoke(t, v, `{}`, true)
			want(first)
			if n := lines(starts + tc.name); n != 1 {
				t.Fatalf("%d starts, want 1", n)
			}
			if !strings.Contains(string(first.LogTail), "INIT_REPORT") || !strings.Contains(string(first.LogTail), tc.errType) {
				t.Errorf("log tail %q lacks the INIT_REPORT line", first.LogTail)
			}
			recs := tp.Logs(testCluster, "fn", time.Time{}, "")
			if len(recs) == 0 || !strings.Contains(recs[len(recs)-1].Log, tc.logged) {
				t.Errorf("log records %+v lack the bootstrap's output %q", recs, tc.logged)
			}
			// Within the backoff: the same error, no new process.
			clock.Advance(500 * time.Millisecond)
			want(tp.invoke(t, v, `{}`, true))
			if n := lines(starts + tc.name); n != 1 {
				t.Errorf("%d starts within the backoff window, want 1", n)
			}
			waitFor(t, "the failed sandbox to be gone", func() bool { return len(tp.sandboxesOf("")) == 0 })
			// Past it, a start is tried again.
			clock.Advance(time.Second)
			want(tp.invoke(t, v, `{}`, true))
			if n := lines(starts + tc.name); n != 2 {
				t.Errorf("%d starts after the backoff window, want 2", n)
			}
			// The window doubled: 1.5 s later still held back.
			clock.Advance(1500 * time.Millisecond)
			want(tp.invoke(t, v, `{}`, true))
			if n := lines(starts + tc.name); n != 2 {
				t.Errorf("%d starts within the doubled window, want 2", n)
			}
		})
	}
}

// TestProvisionedKept: the pool keeps the provisioned count, replacing a
// sandbox killed with SIGKILL, serves invocations from them, and turns
// them into on-demand ones when the entry goes.
func TestProvisionedKept(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{})
	set := &api.ProvisionedSet{Functions: []*api.ProvisionedFunction{{Function: "fn", Cluster: testCluster, Version: v, Count: 2}}}
	if err := tp.SetProvisioned(set); err != nil {
		t.Fatal(err)
	}
	provisionedIdle := func() []*api.SandboxInfo {
		var out []*api.SandboxInfo
		for _, s := range tp.sandboxesOf(api.SandboxIdle) {
			if s.Provisioned {
				out = append(out, s)
			}
		}
		return out
	}
	waitFor(t, "2 provisioned sandboxes", func() bool { return len(provisionedIdle()) == 2 })
	res := tp.warm(t, v, `{}`)
	if res.Declined || res.Cold || res.FunctionError != "" {
		t.Fatalf("invocation on provisioned sandboxes: %+v (%s)", res, res.Payload)
	}

	victim := provisionedIdle()[0].ID
	tp.mu.Lock()
	pid := tp.sandboxes[victim].h.PID()
	tp.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a replacement of the killed sandbox", func() bool {
		got := provisionedIdle()
		return len(got) == 2 && got[0].ID != victim && got[1].ID != victim
	})

	if err := tp.SetProvisioned(&api.ProvisionedSet{}); err != nil {
		t.Fatal(err)
	}
	all := tp.sandboxesOf("")
	if len(all) != 2 {
		t.Fatalf("%d sandboxes after the entry went, want 2 on-demand ones", len(all))
	}
	for _, s := range all {
		if s.Provisioned {
			t.Errorf("sandbox %s still provisioned", s.ID)
		}
	}
}

// TestIdleReclaim: an on-demand sandbox idle past the idle timeout is
// stopped; a provisioned one is kept.
func TestIdleReclaim(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tp := newTestPool(t, func(c *Config) { c.Now = clock.Now; c.IdleTimeout = time.Minute })
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{})
	v2 := tp.b.version("fn", 2, goBootstrap(t), api.FunctionConfig{Env: map[string]string{"V": "2"}})
	if err := tp.SetProvisioned(&api.ProvisionedSet{Functions: []*api.ProvisionedFunction{{Function: "fn", Cluster: testCluster, Version: v2, Count: 1}}}); err != nil {
		t.Fatal(err)
	}
	res := tp.invoke(t, v, `{}`, true)
	if res.FunctionError != "" {
		t.Fatalf("%+v", res)
	}
	waitFor(t, "the provisioned sandbox", func() bool { return len(tp.sandboxesOf(api.SandboxIdle)) == 2 })
	clock.Advance(30 * time.Second)
	tp.reclaimIdle()
	if n := len(tp.sandboxesOf(api.SandboxIdle)); n != 2 {
		t.Fatalf("%d idle sandboxes before the idle timeout, want 2", n)
	}
	clock.Advance(31 * time.Second)
	tp.reclaimIdle()
	waitFor(t, "the idle sandbox to be reclaimed", func() bool {
		s := tp.sandboxesOf("")
		return len(s) == 1 && s[0].Provisioned && s[0].Version == 2
	})
	if res := tp.invoke(t, v, `{}`, false); !res.Declined {
		t.Errorf("invocation after the reclaim: %+v, want declined", res)
	}
}

// TestResponseTooLargeKeepsCounting is in TestFunctionFailures; this
// checks Load, the busy count the servers balance on.
func TestLoadCountsBusySandboxes(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{Timeout: api.Duration(20 * time.Second)})
	done := make(chan *api.SandboxResult)
	go func() { done <- tp.invoke(t, v, `{"sleep_ms":20000}`, true) }()
	waitFor(t, "a busy sandbox", func() bool { return len(tp.sandboxesOf(api.SandboxBusy)) == 1 })
	res := tp.invoke(t, v, `{}`, false)
	if !res.Declined || res.Load != 1 {
		t.Errorf("while one is busy: %+v, want declined with load 1", res)
	}
	if f := tp.Report().Functions[0]; f.Busy != 1 || f.Peaks[0] != 1 {
		t.Errorf("counters while busy: %+v", f)
	}
	tp.Close()
	if res := <-done; res.FunctionError == "" {
		t.Errorf("invocation cut by Close: %+v, want a function error", res)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRetainCluster: when the node leaves a cluster, its sandboxes stop
// and its functions' code and logs are removed.
func TestRetainCluster(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{})
	if res := tp.invoke(t, v, `{}`, true); res.FunctionError != "" {
		t.Fatalf("%+v", res)
	}
	tp.RetainCluster(testCluster)
	if n := len(tp.sandboxesOf("")); n != 1 {
		t.Fatalf("%d sandboxes after retaining their cluster, want 1", n)
	}
	tp.RetainCluster("other")
	waitFor(t, "the cluster's sandboxes, bundles and logs to go", func() bool {
		_, errB := os.Stat(filepath.Join(tp.cfg.Dir, "bundles", testCluster))
		_, errL := os.Stat(filepath.Join(tp.cfg.Dir, "logs", testCluster))
		return len(tp.sandboxesOf("")) == 0 && os.IsNotExist(errB) && os.IsNotExist(errL)
	})
	if recs := tp.Logs(testCluster, "fn", time.Time{}, ""); len(recs) != 0 {
		t.Errorf("%d log records left", len(recs))
	}
}

// TestConcurrentColdStarts: simultaneous cold starts of a version each
// get a sandbox of their own, from one fetch of the bundle.
func TestConcurrentColdStarts(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{})
	const n = 5
	type answer struct {
		res *api.SandboxResult
		err error
	}
	results := make(chan answer, n)
	for i := range n {
		go func() {
			res, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: fmt.Sprint("r", i), Function: "fn",
				Cluster: testCluster, Version: v, Payload: []byte(`{"sleep_ms":200}`), Start: true})
			results <- answer{res, err}
		}()
	}
	seen := map[string]bool{}
	for range n {
		a := <-results
		if a.err != nil {
			t.Fatal(a.err)
		}
		res := a.res
		if res.FunctionError != "" || !res.Cold {
			t.Errorf("result %+v (%s), want a cold success", res, res.Payload)
		}
		seen[res.Sandbox] = true
	}
	if len(seen) != n {
		t.Errorf("%d sandboxes served %d simultaneous invocations, want %d", len(seen), n, n)
	}
	if tp.b.fetches != 1 {
		t.Errorf("the bundle was fetched %d times, want once", tp.b.fetches)
	}
	waitFor(t, "all sandboxes idle", func() bool { return len(tp.sandboxesOf(api.SandboxIdle)) == n })
	if f := tp.Report().Functions[0]; f.Peaks[0] != n || f.ColdStarts != n {
		t.Errorf("counters %+v, want a peak of %d and %d cold starts", f, n, n)
	}
}

// TestNoRoom: a cold start whose memory does not fit beside the node's
// other sandboxes (Config.Room) is refused with ErrNoRoom, and nothing is
// left of it.
func TestNoRoom(t *testing.T) {
	tp := newTestPool(t, func(c *Config) { c.Room = func() int64 { return 200 } })
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{MemoryMiB: 128, Timeout: api.Duration(20 * time.Second)})
	done := make(chan *api.SandboxResult)
	go func() { done <- tp.invoke(t, v, `{"sleep_ms":20000}`, true) }()
	waitFor(t, "a busy sandbox", func() bool { return len(tp.sandboxesOf(api.SandboxBusy)) == 1 })
	_, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: "second", Function: "fn",
		Cluster: testCluster, Version: v, Payload: []byte(`{}`), Start: true})
	if !errors.Is(err, ErrNoRoom) {
		t.Errorf("a second 128 MiB sandbox in 200 MiB: %v, want ErrNoRoom", err)
	}
	if n := len(tp.Report().Sandboxes); n != 1 {
		t.Errorf("%d sandboxes after the refusal, want 1", n)
	}
	tp.Close()
	<-done
}

// TestShare: an invocation with a share is declined (AtShare) while the
// agent runs that many invocations of the function, whatever the version,
// warm or starting; without a share, or below it, it runs.
func TestShare(t *testing.T) {
	tp := newTestPool(t, nil)
	v1 := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{Timeout: api.Duration(20 * time.Second)})
	v2 := tp.b.version("fn", 2, goBootstrap(t), api.FunctionConfig{})
	call := func(v *api.FunctionVersion, payload string, share int) *api.SandboxResult {
		t.Helper()
		res, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: newRequestID(rand.Reader), Function: "fn",
			Cluster: testCluster, Version: v, Payload: []byte(payload), Start: true, Share: share})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	running := func() int {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		if c := tp.counters[fnKey{testCluster, "fn"}]; c != nil {
			return c.running
		}
		return 0
	}
	done := make(chan *api.SandboxResult)
	go func() { done <- call(v1, `{"sleep_ms":1000}`, 1) }()
	waitFor(t, "a running invocation", func() bool { return running() == 1 })
	if res := call(v2, `{}`, 1); !res.Declined || !res.AtShare {
		t.Errorf("another version at a share of 1 while one runs: %+v, want declined at its share", res)
	}
	if res := call(v2, `{}`, 2); res.Declined || res.FunctionError != "" {
		t.Errorf("at a share of 2 while one runs: %+v, want it run", res)
	}
	if res := call(v2, `{}`, 0); res.Declined || res.FunctionError != "" {
		t.Errorf("without a share: %+v, want it run", res)
	}
	if res := <-done; res.Declined || res.FunctionError != "" {
		t.Errorf("the first invocation: %+v", res)
	}
	if res := call(v1, `{}`, 1); res.Declined {
		t.Errorf("after the first ended, at a share of 1: %+v, want it run", res)
	}
	if n := running(); n != 0 {
		t.Errorf("running after every invocation ended: %d, want none", n)
	}
}

// TestClientContext: the caller's client context reaches an aws-lambda-go
// runtime in Lambda-Runtime-Client-Context, and its context object.
func TestClientContext(t *testing.T) {
	tp := newTestPool(t, nil)
	v := tp.b.version("fn", 1, goBootstrap(t), api.FunctionConfig{})
	res, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: "r1", Function: "fn", Cluster: testCluster,
		Version: v, Payload: []byte(`{}`), Start: true,
		ClientContext: `{"client":{"app_title":"shoal test"},"custom":{"k":"v"}}`})
	if err != nil {
		t.Fatal(err)
	}
	got := decode[goResponse](t, res.Payload)
	if got.AppTitle != "shoal test" || got.Custom["k"] != "v" {
		t.Errorf("the function saw app title %q and custom %v; want \"shoal test\" and k=v", got.AppTitle, got.Custom)
	}
	res = tp.warm(t, v, `{}`)
	if got := decode[goResponse](t, res.Payload); got.AppTitle != "" || len(got.Custom) != 0 {
		t.Errorf("the next invocation, without a client context, saw %q %v", got.AppTitle, got.Custom)
	}
}
