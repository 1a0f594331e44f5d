package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// fnRounds is how many rounds each function benchmark runs; figures are
// the median of the rounds, with their range.
const fnRounds = 5

// greet is the work of examples/functions/hello-go, done by the baseline
// HTTP server too.
func greet(body []byte) ([]byte, error) {
	var in struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"greeting": "Hello, " + in.Name, "calls": 1})
}

// latencies runs total calls from clients goroutines and returns each
// call's latency and the calls per second.
func latencies(b *testing.B, clients, total int, call func() error) ([]time.Duration, float64) {
	out := make([]time.Duration, total)
	var wg sync.WaitGroup
	next := make(chan int, total)
	for i := 0; i < total; i++ {
		next <- i
	}
	close(next)
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				if err := call(); err != nil {
					b.Error(err)
					return
				}
				out[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	rate := float64(total) / time.Since(start).Seconds()
	slices.Sort(out)
	return out, rate
}

func pct(d []time.Duration, p float64) time.Duration { return d[int(float64(len(d)-1)*p)] }

// medianRange returns the median of xs and its range.
func medianRange(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkFunctionInvoke measures warm invocations through the Invoke
// API of `shoal dev`-like processes (one server, one agent, plain HTTP as
// the baseline uses) against a plain HTTP request to a Go HTTP server
// doing the same work on the same machine: latency with 1 and 32 clients
// (p50, p99) and throughput with 32 clients, with a small payload; and
// latency with 1 client and a 64 KiB payload (a 64 KiB name, so a 64 KiB
// greeting back).
func BenchmarkFunctionInvoke(b *testing.B) {
	in := testutil.StartInstallation(b, testutil.Options{Agents: 1, Insecure: true, AgentMemory: 16384})
	if _, _, code := in.Shoal("cluster", "create", "c1", "--nodes", "1"); code != 0 {
		b.Fatal("cluster create failed")
	}
	ctx := context.Background()
	if _, err := in.Client.DeployFunction(ctx, "c1", "hello", &api.FunctionDeploy{Cluster: "c1", Zip: testutil.HelloGoBundle(b),
		Config: api.FunctionConfig{Concurrency: 64}}); err != nil {
		b.Fatal(err)
	}
	small := []byte(`{"name":"bench"}`)
	large := []byte(`{"name":"` + strings.Repeat("x", 64<<10) + `"}`)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	invokeURL := "http://" + in.Servers[0].HTTPAddr + "/2015-03-31/functions/hello/invocations"
	shoalCall := func(payload []byte) func() error {
		return func() error {
			resp, err := hc.Post(invokeURL, "application/json", bytes.NewReader(payload))
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Amz-Function-Error") != "" {
				return fmt.Errorf("invoke: %s %s", resp.Status, body)
			}
			return nil
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	base := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		out, err := greet(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Write(out)
	})}
	go base.Serve(ln)
	defer base.Close()
	baseURL := "http://" + ln.Addr().String() + "/"
	baseCall := func(payload []byte) func() error {
		return func() error {
			resp, err := hc.Post(baseURL, "application/json", bytes.NewReader(payload))
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
	}
	// Warm up: sandboxes for 32 concurrent clients, connections.
	latencies(b, 32, 320, shoalCall(small))
	latencies(b, 32, 320, baseCall(small))

	type figures struct{ p50, p99, base50, base99 []float64 }
	var one, many, big figures
	var ratio, srates, brates []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for round := 0; round < fnRounds; round++ {
			for _, c := range []struct {
				clients, total int
				payload        []byte
				f              *figures
			}{{1, 1000, small, &one}, {32, 4000, small, &many}, {1, 300, large, &big}} {
				s, srate := latencies(b, c.clients, c.total, shoalCall(c.payload))
				bl, brate := latencies(b, c.clients, c.total, baseCall(c.payload))
				c.f.p50 = append(c.f.p50, ms(pct(s, 0.5)))
				c.f.p99 = append(c.f.p99, ms(pct(s, 0.99)))
				c.f.base50 = append(c.f.base50, ms(pct(bl, 0.5)))
				c.f.base99 = append(c.f.base99, ms(pct(bl, 0.99)))
				if c.f == &many {
					ratio = append(ratio, srate/brate)
					srates, brates = append(srates, srate), append(brates, brate)
				}
			}
		}
	}
	b.StopTimer()
	for _, f := range []struct {
		name string
		f    figures
	}{{"1 client", one}, {"32 clients", many}, {"1 client, 64 KiB payload", big}} {
		var over50, over99 []float64
		for r := range f.f.p50 {
			over50 = append(over50, f.f.p50[r]-f.f.base50[r])
			over99 = append(over99, f.f.p99[r]-f.f.base99[r])
		}
		m, lo, hi := medianRange(over50)
		m99, lo99, hi99 := medianRange(over99)
		p50, _, _ := medianRange(f.f.p50)
		b50, _, _ := medianRange(f.f.base50)
		p99, _, _ := medianRange(f.f.p99)
		b99, _, _ := medianRange(f.f.base99)
		b.Logf("%s: warm invoke p50 %.3f ms (plain HTTP %.3f ms), overhead %.3f ms (%.3f–%.3f); p99 %.3f ms (plain HTTP %.3f ms), overhead %.3f ms (%.3f–%.3f)",
			f.name, p50, b50, m, lo, hi, p99, b99, m99, lo99, hi99)
	}
	if st, err := in.Client.FunctionStatus(ctx, "c1", "hello"); err == nil {
		b.Logf("after the runs: %d sandboxes, %d invocations, %d cold starts, warm hit rate %.4f", len(st.Sandboxes), st.Invocations, st.ColdStarts, st.WarmHitRate)
	}
	m, lo, hi := medianRange(ratio)
	sr, _, _ := medianRange(srates)
	br, _, _ := medianRange(brates)
	b.Logf("32 clients: %.0f invocations/s, plain HTTP %.0f requests/s: throughput ratio %.3f (%.3f–%.3f)", sr, br, m, lo, hi)
	b.ReportMetric(m, "throughput-ratio")
}

// BenchmarkFunctionColdStart measures an invocation that finds no warm
// sandbox (each of a new version, so the agent starts one: bundle from
// its cache, sandbox, bootstrap, first /next), against fork/exec of the
// same bootstrap answering one invocation from a minimal Runtime API
// server in this process; and the first invocation of a provisioned
// sandbox, against the next (warm) one of the same sandbox.
func BenchmarkFunctionColdStart(b *testing.B) {
	in := testutil.StartInstallation(b, testutil.Options{Agents: 1, Insecure: true, AgentMemory: 16384})
	if _, _, code := in.Shoal("cluster", "create", "c1", "--nodes", "1"); code != 0 {
		b.Fatal("cluster create failed")
	}
	ctx := context.Background()
	bundle := testutil.HelloGoBundle(b)
	if _, err := in.Client.DeployFunction(ctx, "c1", "cold", &api.FunctionDeploy{Cluster: "c1", Zip: bundle}); err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"name":"cold"}`)
	const perRound = 10
	var cold, prov, warm, fork []float64
	bootstrap := unpackBootstrap(b, bundle)
	for i := 0; i < b.N; i++ {
		for round := 0; round < fnRounds; round++ {
			var cs, ps, ws, fs []time.Duration
			for k := 0; k < perRound; k++ {
				// A new version has no sandbox yet.
				env := map[string]string{"ROUND": fmt.Sprint(round*perRound + k)}
				if _, err := in.Client.DeployFunction(ctx, "c1", "cold", &api.FunctionDeploy{Cluster: "c1", Update: true, KeepConfig: true,
					Config: api.FunctionConfig{Env: env}}); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				r, err := in.Client.InvokeFunction(ctx, "c1", "cold", &api.InvokeOptions{Payload: payload})
				if err != nil || r.FunctionError != "" {
					b.Fatalf("cold invoke: %v %+v", err, r)
				}
				cs = append(cs, time.Since(t0))
				fs = append(fs, forkExecBootstrap(b, bootstrap, payload))
			}
			// Provisioned: a version with one sandbox made ahead of demand.
			for k := 0; k < 3; k++ {
				name := fmt.Sprintf("prov-%d-%d", round, k)
				if _, err := in.Client.DeployFunction(ctx, "c1", name, &api.FunctionDeploy{Cluster: "c1", Zip: bundle,
					Config: api.FunctionConfig{Provisioned: "1"}}); err != nil {
					b.Fatal(err)
				}
				waitProvisioned(b, in, name)
				t0 := time.Now()
				if r, err := in.Client.InvokeFunction(ctx, "c1", name, &api.InvokeOptions{Payload: payload}); err != nil || r.FunctionError != "" {
					b.Fatalf("provisioned invoke: %v %+v", err, r)
				}
				ps = append(ps, time.Since(t0))
				// The baseline of a provisioned start: a warm call of the
				// same sandbox, once it waits for the next invocation.
				waitProvisioned(b, in, name)
				t0 = time.Now()
				if r, err := in.Client.InvokeFunction(ctx, "c1", name, &api.InvokeOptions{Payload: payload}); err != nil || r.FunctionError != "" {
					b.Fatalf("warm invoke: %v %+v", err, r)
				}
				ws = append(ws, time.Since(t0))
				in.Client.DeleteFunction(ctx, "c1", name)
			}
			slices.Sort(cs)
			slices.Sort(ps)
			slices.Sort(ws)
			slices.Sort(fs)
			cold = append(cold, ms(cs[len(cs)/2]))
			prov = append(prov, ms(ps[len(ps)/2]))
			warm = append(warm, ms(ws[len(ws)/2]))
			fork = append(fork, ms(fs[len(fs)/2]))
		}
	}
	c, clo, chi := medianRange(cold)
	p, plo, phi := medianRange(prov)
	f, flo, fhi := medianRange(fork)
	wm, wlo, whi := medianRange(warm)
	b.Logf("cold start p50 %.2f ms (%.2f–%.2f); provisioned %.2f ms (%.2f–%.2f); fork/exec of the bootstrap %.2f ms (%.2f–%.2f); cold / (2 x fork/exec + 10 ms) = %.2f",
		c, clo, chi, p, plo, phi, f, flo, fhi, c/(2*f+10))
	b.Logf("provisioned start %.2f ms against a warm call of the same sandbox %.2f ms (%.2f–%.2f): ratio %.2f", p, wm, wlo, whi, p/wm)
	b.ReportMetric(c, "cold-ms")
	b.ReportMetric(f, "forkexec-ms")
}

// waitProvisioned waits until function name has an idle provisioned
// sandbox.
func waitProvisioned(b *testing.B, in *testutil.Installation, name string) {
	testutil.WaitFor(b, 30*time.Second, func() (bool, string) {
		st, err := in.Client.FunctionStatus(context.Background(), "c1", name)
		if err != nil {
			return false, err.Error()
		}
		for _, sb := range st.Sandboxes {
			if sb.Provisioned && sb.State == api.SandboxIdle {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d sandboxes", len(st.Sandboxes))
	})
}

// unpackBootstrap writes the bundle's bootstrap to a temp file.
func unpackBootstrap(b *testing.B, bundle []byte) string {
	dir := b.TempDir()
	p := filepath.Join(dir, "bootstrap")
	zipPath := filepath.Join(dir, "b.zip")
	if err := os.WriteFile(zipPath, bundle, 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("unzip", "-q", "-o", zipPath, "-d", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("unzip: %v %s", err, out)
	}
	return p
}

// forkExecBootstrap starts the bootstrap against a one-invocation Runtime
// API served here and returns the time until its answer arrives.
func forkExecBootstrap(b *testing.B, bootstrap string, payload []byte) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var once sync.Once
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/2018-06-01/runtime/invocation/next":
			select {
			case <-done:
				<-r.Context().Done()
				return
			default:
			}
			w.Header().Set("Lambda-Runtime-Aws-Request-Id", "bench")
			w.Header().Set("Lambda-Runtime-Deadline-Ms", fmt.Sprint(time.Now().Add(time.Minute).UnixMilli()))
			w.Header().Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:shoal:bench:function:hello")
			w.Write(payload)
		case r.Method == http.MethodPost:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusAccepted)
			once.Do(func() { close(done) })
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	t0 := time.Now()
	cmd := exec.Command(bootstrap)
	cmd.Env = []string{"AWS_LAMBDA_RUNTIME_API=" + ln.Addr().String(), "AWS_LAMBDA_FUNCTION_NAME=hello",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128", "AWS_LAMBDA_FUNCTION_VERSION=1"}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	<-done
	d := time.Since(t0)
	cmd.Process.Kill()
	cmd.Wait()
	return d
}

// BenchmarkFunctionProvisionedAuto measures what --provisioned auto buys:
// bursts of 8 concurrent calls, each after the agents reclaimed idle
// on-demand sandboxes (--fn-idle-timeout 2s), to a function with
// provisioned "auto" and, as the baseline, to the same function without
// provisioned sandboxes. It reports the share of the calls of bursts 2 to
// 6 that found a warm sandbox (the first burst has no history).
func BenchmarkFunctionProvisionedAuto(b *testing.B) {
	in := testutil.StartInstallation(b, testutil.Options{Agents: 2, Insecure: true, AgentMemory: 16384,
		AgentArgs: []string{"--fn-idle-timeout", "2s"}})
	if _, _, code := in.Shoal("cluster", "create", "c1", "--nodes", "2"); code != 0 {
		b.Fatal("cluster create failed")
	}
	ctx := context.Background()
	bundle := testutil.HelloGoBundle(b)
	for name, prov := range map[string]string{"auto": "auto", "none": "0"} {
		if _, err := in.Client.DeployFunction(ctx, "c1", name, &api.FunctionDeploy{Cluster: "c1", Zip: bundle,
			Config: api.FunctionConfig{Provisioned: prov}}); err != nil {
			b.Fatal(err)
		}
	}
	burst := func(name string) {
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := in.Client.InvokeFunction(ctx, "c1", name, &api.InvokeOptions{Payload: []byte(`{"name":"b","sleep_ms":200}`)})
				if err != nil || r.FunctionError != "" {
					b.Errorf("invoke %s: %v %+v", name, err, r)
				}
			}()
		}
		wg.Wait()
	}
	counts := func(name string) (warm, total uint64) {
		st, err := in.Client.FunctionStatus(ctx, "c1", name)
		if err != nil {
			b.Fatal(err)
		}
		return st.WarmHits, st.Invocations
	}
	for i := 0; i < b.N; i++ {
		for _, name := range []string{"auto", "none"} {
			burst(name)
			w0, n0 := counts(name)
			for k := 0; k < 5; k++ {
				time.Sleep(4 * time.Second) // past the idle timeout: on-demand sandboxes are gone
				burst(name)
			}
			w1, n1 := counts(name)
			st, _ := in.Client.FunctionStatus(ctx, "c1", name)
			b.Logf("%s: warm hit rate of bursts 2-6: %.2f (%d of %d); provisioned target %d", name,
				float64(w1-w0)/float64(n1-n0), w1-w0, n1-n0, st.ProvisionedTarget)
		}
	}
}
