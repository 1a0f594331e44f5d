package invoke

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// BenchmarkWarmInvoke compares a warm invocation through the invoke
// handler (client -> handler -> fake agent) with a direct HTTP call of
// the same fake agent (client -> agent): the difference is the invoke
// path's overhead, one extra hop included.
func BenchmarkWarmInvoke(b *testing.B) {
	for _, size := range []int{16, 64 << 10} {
		payload := []byte(`{"s":"` + strings.Repeat("x", size) + `"}`)
		a := newFakeAgent(b, "n1", 0, 1)
		cat := &fakeCatalog{fns: []*api.Function{testFunction("c1", "hello", 1, api.FunctionConfig{Concurrency: 1000})},
			agents: map[string][]Agent{"c1": {a.agent()}}}
		e := newTestEnv(b, cat, nil, true)
		client := NewAgentClient(nil)
		defer client.CloseIdleConnections()

		meta, _ := json.Marshal(&api.SandboxInvocation{RequestID: "r", Function: "hello", Cluster: "c1",
			Version: cat.fns[0].Versions[0]})
		direct := append(meta, payload...)
		post := func(b *testing.B, url string, body []byte) {
			req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
			req.Header.Set(api.HeaderMetaLength, strconv.Itoa(len(meta))) // read by the agent only
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		b.Run(fmt.Sprintf("direct/%dB", size), func(b *testing.B) {
			b.ReportAllocs()
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				post(b, a.srv.URL+agentInvokePath, direct)
				lat = append(lat, time.Since(t0))
			}
			reportP50(b, lat)
		})
		b.Run(fmt.Sprintf("handler/%dB", size), func(b *testing.B) {
			b.ReportAllocs()
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				post(b, e.srv.URL+"/v1/clusters/c1/functions/hello/invocations", payload)
				lat = append(lat, time.Since(t0))
			}
			reportP50(b, lat)
		})
		b.Run(fmt.Sprintf("Invoke/%dB", size), func(b *testing.B) {
			// The routing core alone, without the client's hop.
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.v.Invoke(b.Context(), &Request{Cluster: "c1", Function: "hello", RequestID: "r", Payload: payload}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// reportP50 reports the median of the iterations' latencies.
func reportP50(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}
