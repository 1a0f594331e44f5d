package functions_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/functions"
	"github.com/shoal-dev/shoal/internal/invoke"
	"github.com/shoal-dev/shoal/internal/state"
	shoaltest "github.com/shoal-dev/shoal/internal/testutil"
)

func sum(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

func TestSpread(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	for _, tt := range []struct {
		target int
		nodes  []string
	}{
		{0, nodes}, {1, nodes}, {2, nodes}, {3, nodes}, {7, nodes}, {100, nodes},
		{5, []string{"a"}}, {5, nil}, {2, []string{"a", "b", "c", "d", "e"}},
	} {
		t.Run(fmt.Sprintf("%d over %d", tt.target, len(tt.nodes)), func(t *testing.T) {
			got := invoke.Spread(tt.target, tt.nodes, "c/f")
			want := tt.target
			if len(tt.nodes) == 0 {
				want = 0
			}
			if sum(got) != want {
				t.Errorf("got %v, which sums to %d, want %d", got, sum(got), want)
			}
			lo, hi := tt.target, 0
			for _, n := range tt.nodes {
				lo, hi = min(lo, got[n]), max(hi, got[n])
			}
			if len(tt.nodes) > 0 && hi-lo > 1 {
				t.Errorf("got %v: uneven", got)
			}
			if again := invoke.Spread(tt.target, tt.nodes, "c/f"); !cmp.Equal(again, got) {
				t.Errorf("not stable: %v, then %v", got, again)
			}
		})
	}
	// Remainders of different functions do not all land on one node.
	first := map[string]int{}
	for i := range 30 {
		for n, c := range invoke.Spread(1, nodes, fmt.Sprintf("c/f%d", i)) {
			first[n] += c
		}
	}
	if len(first) < 2 {
		t.Errorf("30 functions of 1 sandbox all went to %v", first)
	}
}

func TestForecastAndTarget(t *testing.T) {
	peaks := func(p ...int) *api.FunctionCounters { return &api.FunctionCounters{Peaks: p, PeakSlot: 1000} }
	at := func(slot int64, p ...int) *api.FunctionCounters {
		return &api.FunctionCounters{Peaks: p, PeakSlot: slot}
	}
	old := make([]int, api.ForecastSlots+1)
	old[api.ForecastSlots-1], old[api.ForecastSlots] = 8, 50
	for _, tt := range []struct {
		name     string
		counters []*api.FunctionCounters
		want     int
	}{
		{"no agents", nil, 0},
		{"idle", []*api.FunctionCounters{peaks(0, 0, 0)}, 0},
		{"one busy", []*api.FunctionCounters{peaks(1)}, 2},
		{"peak summed slot by slot", []*api.FunctionCounters{peaks(3, 0, 1), peaks(1, 4, 0)}, 5}, // peak 4
		// Polled across a slot's end: the second agent's slot 1000 is its Peaks[1].
		{"slots aligned by number", []*api.FunctionCounters{at(1000, 3, 0, 1), at(1001, 0, 1, 4, 0)}, 5},
		{"peak in the oldest slot, one beyond the window", []*api.FunctionCounters{peaks(old...)}, 10}, // 8 + 2
		{"large", []*api.FunctionCounters{peaks(60), peaks(40)}, 125},
	} {
		if got := functions.Forecast(tt.counters); got != tt.want {
			t.Errorf("%s: Forecast = %d, want %d", tt.name, got, tt.want)
		}
	}
	for _, tt := range []struct {
		cfg  api.FunctionConfig
		peak int
		want int
	}{
		{api.FunctionConfig{}, 5, 0},
		{api.FunctionConfig{Provisioned: "0"}, 5, 0},
		{api.FunctionConfig{Provisioned: "3"}, 100, 3},
		{api.FunctionConfig{Provisioned: "50", Concurrency: 10}, 0, 10},
		{api.FunctionConfig{Provisioned: "auto"}, 4, 5},
		{api.FunctionConfig{Provisioned: "auto", Concurrency: 3}, 4, 3},
	} {
		if got := functions.Target(tt.cfg, []*api.FunctionCounters{peaks(tt.peak)}); got != tt.want {
			t.Errorf("Target(%+v, peak %d) = %d, want %d", tt.cfg, tt.peak, got, tt.want)
		}
	}
}

func fnOf(name, provisioned string, latest int) *api.Function {
	f := &api.Function{Name: name, Cluster: "c", Latest: latest}
	for v := 1; v <= latest; v++ {
		f.Versions = append(f.Versions, &api.FunctionVersion{Version: v, Config: api.FunctionConfig{Provisioned: provisioned}.Resolved()})
	}
	return f
}

func TestPlan(t *testing.T) {
	fns := []*api.Function{fnOf("b", "3", 2), fnOf("a", "auto", 1), fnOf("idle", "", 1)}
	counters := map[string][]*api.FunctionCounters{"a": {{Peaks: []int{1}}, {Peaks: []int{1}}}} // peak 2 -> 3
	describe := func(sets map[string]*api.ProvisionedSet) map[string]string {
		out := map[string]string{}
		for node, set := range sets {
			var parts []string
			for _, f := range set.Functions {
				parts = append(parts, fmt.Sprintf("%s@%d=%d", f.Function, f.Version.Version, f.Count))
			}
			out[node] = strings.Join(parts, " ")
		}
		return out
	}
	targets, sets := functions.Plan(fns, []string{"n1", "n2", "n3"}, counters)
	if want := map[string]int{"a": 3, "b": 3, "idle": 0}; !cmp.Equal(targets, want) {
		t.Errorf("targets: got %v, want %v", targets, want)
	}
	if got, want := describe(sets), map[string]string{"n1": "a@1=1 b@2=1", "n2": "a@1=1 b@2=1", "n3": "a@1=1 b@2=1"}; !cmp.Equal(got, want) {
		t.Errorf("sets over 3 nodes: got %v, want %v", got, want)
	}
	// n2 is down: its share moves to the others.
	_, sets = functions.Plan(fns, []string{"n1", "n3"}, counters)
	total := map[string]int{}
	for node, set := range sets {
		if node == "n2" {
			t.Errorf("the down node n2 got %v", set)
		}
		for _, f := range set.Functions {
			total[f.Function] += f.Count
		}
	}
	if want := map[string]int{"a": 3, "b": 3}; !cmp.Equal(total, want) {
		t.Errorf("over 2 nodes: totals %v, want %v", total, want)
	}
	if _, sets := functions.Plan(fns, nil, counters); len(sets) != 0 {
		t.Errorf("with no ready node: got sets %v, want none", sets)
	}
}

// TestProvisionLoop runs the leader loop against fake agents: the fixed
// target is spread over the cluster's ready nodes, moved when a node goes
// down, and dropped when the function goes.
func TestProvisionLoop(t *testing.T) {
	e := newEnv(t, false)
	a1, a2, a3 := e.addNode("n1", "a"), e.addNode("n2", "a"), e.addNode("n3", "a")
	e.cluster("c", 3)
	if _, status, msg := e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Zip: bundle(t, "1"), Config: api.FunctionConfig{Provisioned: "4"}}); status != 200 {
		t.Fatalf("deploy: %d %s", status, msg)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); e.svc.LeaderLoops()[0](stop) }()
	t.Cleanup(func() { close(stop); <-done })

	counts := func(agents ...*fakeAgent) (map[string]int, string) {
		out := map[string]int{}
		for _, a := range agents {
			if set := a.lastSet(); set != nil {
				for _, f := range set.Functions {
					if f.Function == "f" && f.Cluster == "c" && f.Version != nil && f.Version.Version == 1 {
						out[a.node] += f.Count
					}
				}
			}
		}
		return out, fmt.Sprint(out)
	}
	shoaltest.WaitFor(t, 10*time.Second, func() (bool, string) {
		got, msg := counts(a1, a2, a3)
		return sum(got) == 4 && len(got) == 3, "sets: " + msg
	})
	if got := e.gauge("shoal_server_fn_provisioned_target", "c", "f"); got != 4 {
		t.Errorf("shoal_server_fn_provisioned_target{c,f}: got %v, want 4", got)
	}

	// An unchanged set is sent again once resendInterval has passed (an
	// agent may have restarted), not before; an agent that failed is
	// tried again.
	n1 := a1.puts()
	a3.setFail(true)
	e.advance(11 * time.Second)
	shoaltest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return a1.puts() > n1, fmt.Sprintf("n1 was sent %d sets, as before", a1.puts())
	})
	n3 := a3.puts()
	a3.setFail(false)
	shoaltest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return a3.puts() > n3, "n3 not sent its set again after failing"
	})

	// n2 goes down: its share moves to n1 and n3.
	e.must(fsm.NodeState, &state.NodeStateRequest{Name: "n2", State: api.NodeDown, Now: t0})
	shoaltest.WaitFor(t, 10*time.Second, func() (bool, string) {
		got, msg := counts(a1, a3)
		return sum(got) == 4, "sets of n1 and n3: " + msg
	})

	// A new version with no provisioned sandboxes: the agents are told to
	// keep none.
	if _, status, msg := e.deploy(operatorToken, "c", "f", api.FunctionDeploy{Update: true}); status != 200 {
		t.Fatalf("update: %d %s", status, msg)
	}
	shoaltest.WaitFor(t, 10*time.Second, func() (bool, string) {
		s1, s3 := a1.lastSet(), a3.lastSet()
		return len(s1.Functions) == 0 && len(s3.Functions) == 0, fmt.Sprintf("n1 %+v, n3 %+v", s1, s3)
	})
}
