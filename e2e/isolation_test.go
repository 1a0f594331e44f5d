package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// These tests check the cluster networks: each task in a network
// namespace of its own on its cluster's subnet, an overlay between nodes,
// nothing between clusters, and no way from a task to the control plane.
// They need root (namespaces, bridges, nftables).

var addrRE = regexp.MustCompile(`(?m)^addr=(\S+)$`)

// probeJob is a one-task job of cluster that prints its address and runs
// script (sh), with the netprobe at $PROBE. A task asking for all of a
// node's CPU (2000 millicores in these installations) has a node to
// itself, which is how the tests put tasks on distinct nodes.
func probeJob(t *testing.T, cluster, name, script string) string {
	return fmt.Sprintf(`
name: %s
cluster: %s
groups:
  - name: p
    count: 1
    command: ["/bin/sh", "-c", %q]
    env: {PROBE: %q}
    resources: {cpu: 2000, memory: 64}
    max_attempts: 1
`, name, cluster, "echo addr=$SHOAL_TASK_ADDR; "+script, testutil.NetProbe(t))
}

// taskLog returns task 0's stdout of job id.
func taskLog(t *testing.T, in *testutil.Installation, id string) string {
	out, _, _ := in.Shoal("job", "logs", id, "--task", "0")
	return out
}

// startListener runs a listening probe job and returns its job id and
// address once it listens.
func startListener(t *testing.T, in *testutil.Installation, cluster, name string) (string, string) {
	t.Helper()
	id := submit(t, in, probeJob(t, cluster, name, "exec $PROBE listen 9000"))
	var addr string
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		out := taskLog(t, in, id)
		if m := addrRE.FindStringSubmatch(out); m != nil && strings.Contains(out, "listening") {
			addr = m[1]
			return true, ""
		}
		return false, "listener log: " + out
	})
	return id, addr
}

// runProbe runs a probe job to its end and returns its output.
func runProbe(t *testing.T, in *testutil.Installation, cluster, name, script string) string {
	t.Helper()
	id := submit(t, in, probeJob(t, cluster, name, script))
	waitJobEnd(t, in, id, 60*time.Second)
	return taskLog(t, in, id)
}

func mustLine(t *testing.T, out, line string) {
	t.Helper()
	if !strings.Contains(out, line) {
		t.Errorf("want %q in the probe's output:\n%s", line, out)
	}
}

func nodeOf(t *testing.T, in *testutil.Installation, name string) *api.Node {
	n, err := in.Client.Node(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cluster networks need root")
	}
}

// TestClusterNetworkIsolation: agents sharing the host's network, as in
// shoal dev. Tasks of one cluster reach each other across nodes (over the
// overlay); a task of another cluster cannot exchange a packet with them,
// TCP or UDP, nor reach the other cluster's gateway; tasks hold no token
// and reach the API through their node's endpoint, as their cluster.
func TestClusterNetworkIsolation(t *testing.T) {
	requireRoot(t)
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, AgentArgs: []string{"--task-network", "on"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	mustShoal(t, in, "cluster", "create", "c2", "--nodes", "1")

	l1, c1addr := startListener(t, in, "c1", "l1")
	l2, c2addr := startListener(t, in, "c2", "l2")
	c2, _, err := in.Client.Cluster(context.Background(), "c2", nil)
	if err != nil {
		t.Fatal(err)
	}
	c2gw := gatewayOf(t, in, c2.Nodes[0])

	mustShoal(t, in, "fs", "put", writeFile(t, "secret.txt", "c2's secret\n"), "/clusters/c2/secret.txt")
	out := runProbe(t, in, "c1", "attacker", strings.Join([]string{
		"echo token=[$SHOAL_TOKEN] api=$SHOAL_ADDR",
		// Its own files, through the endpoint; not another cluster's.
		"echo mine | shoal fs put - /clusters/c1/mine.txt && shoal fs cat /clusters/c1/mine.txt | sed 's/^/read=/'",
		"shoal fs cat /clusters/c2/secret.txt; echo c2read=$?",
		"$PROBE tcp " + c1addr + ":9000 " + c2addr + ":9000 " + c2gw + ":7472",
		// By name, through the node's resolver: "<job>-<index>".
		"getent hosts " + l1 + "-0 | sed 's/^/name=/'",
		"$PROBE tcp " + l1 + "-0:9000",
		"$PROBE udp " + c1addr + ":9000 " + c2addr + ":9000",
		// Root in its namespace, it claims an address of c2's subnet, so
		// that c2's task is on-link: its ARP requests reach only c1's L2.
		"ip addr add " + spoofed(c2addr) + " dev eth0 && $PROBE tcp " + c2addr + ":9000 | sed 's/^/spoofed /'",
		"$PROBE get $SHOAL_ADDR/v1/clusters/c1",
		"$PROBE get $SHOAL_ADDR/v1/clusters/c2",
	}, "; "))
	mustLine(t, out, "token=[]")
	mustLine(t, out, "read=mine")
	if strings.Contains(out, "c2's secret") || strings.Contains(out, "c2read=0") {
		t.Errorf("a c1 task read c2's file through the endpoint:\n%s", out)
	}
	mustLine(t, out, "tcp "+c1addr+":9000 ok")
	mustLine(t, out, "tcp "+c2addr+":9000 refused")
	mustLine(t, out, "spoofed tcp "+c2addr+":9000 refused")
	mustLine(t, out, "name="+c1addr)
	mustLine(t, out, "tcp "+l1+"-0:9000 ok")
	mustLine(t, out, "tcp "+c2gw+":7472 refused")
	if !regexp.MustCompile(`get http://\S+/v1/clusters/c1 200 `).MatchString(out) {
		t.Errorf("the endpoint did not answer for the task's own cluster:\n%s", out)
	}
	if strings.Contains(out, "shoal-") {
		t.Errorf("a task read its cluster's token through the endpoint:\n%s", out)
	}
	// Another cluster does not exist for c1's principal.
	if !regexp.MustCompile(`get http://\S+/v1/clusters/c2 404 `).MatchString(out) {
		t.Errorf("the endpoint let a c1 task see c2:\n%s", out)
	}
	attacker := addrRE.FindStringSubmatch(out)
	if attacker == nil {
		t.Fatalf("no address in the attacker's output:\n%s", out)
	}
	// c1's listener heard the attacker (TCP and UDP); c2's heard nothing.
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		l1 := taskLog(t, in, l1)
		return strings.Contains(l1, "tcp-from "+attacker[1]) && strings.Contains(l1, "udp-from "+attacker[1]), l1
	})
	if got := taskLog(t, in, l2); strings.Contains(got, "-from") {
		t.Errorf("a c2 task heard from a c1 task:\n%s", got)
	}
	// The refusals were counted on the nodes' /metrics.
	hc := in.HTTPClient(tlsfiles.RoleAgent)
	refused := 0
	for _, a := range in.Agents {
		refused += metricSum(t, hc, nodeOf(t, in, a.Name).Addr, "shoal_agent_refused_packets_total")
	}
	if refused == 0 {
		t.Error("no node counted a refused packet")
	}

	// Deleting the clusters removes their networks from every node.
	for _, c := range []string{"c1", "c2"} {
		mustShoal(t, in, "cluster", "delete", c)
	}
	waitNoNetworkLeft(t, in)
	for _, a := range in.Agents {
		if left, _ := os.ReadDir(filepath.Join(in.Dir, a.Name, "net", "netns")); len(left) > 0 {
			t.Errorf("%s kept %d network namespaces after its cluster was deleted", a.Name, len(left))
		}
	}
}

// spoofed is an address of the /18 of addr (c2's subnet) with the prefix
// length, for a task of another cluster to put on its interface.
func spoofed(addr string) string {
	a := netip.MustParseAddr(addr).As4()
	a[3] = 250
	return netip.AddrFrom4(a).String() + "/18"
}

// waitNoNetworkLeft waits until no interface of the installation's nodes
// is left: their bridges, overlay devices and task veths all carry the
// suffix each agent logged with its bridge's name.
func waitNoNetworkLeft(t *testing.T, in *testutil.Installation) {
	t.Helper()
	var suffixes []string
	for _, a := range in.Agents {
		for _, m := range regexp.MustCompile(`bridge=shb([0-9a-f]{8})`).FindAllStringSubmatch(a.Log(), -1) {
			suffixes = append(suffixes, m[1])
		}
	}
	if len(suffixes) == 0 {
		t.Fatal("no agent logged a bridge")
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		out, _ := exec.Command("ip", "-o", "link").Output()
		var left []string
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			for _, x := range suffixes {
				if strings.HasPrefix(f[1], "shb"+x) || strings.HasPrefix(f[1], "shx"+x) || strings.HasPrefix(f[1], "shv"+x[:6]) {
					left = append(left, f[1])
				}
			}
		}
		return len(left) == 0, fmt.Sprintf("interfaces left: %v", left)
	})
}

// gatewayOf is the gateway address of node's block: the first address of
// the block, read from the node's bridge.
func gatewayOf(t *testing.T, in *testutil.Installation, node string) string {
	t.Helper()
	var gw string
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		out, err := exec.Command("ip", "-o", "-4", "addr").Output()
		if err != nil {
			return false, err.Error()
		}
		// The node's agent logs its endpoint when it joins the network.
		log := in.Agent(node).Log()
		m := regexp.MustCompile(`endpoint=(\d+\.\d+\.\d+\.\d+):\d+`).FindAllStringSubmatch(log, -1)
		if len(m) == 0 {
			return false, "no endpoint in " + node + "'s log"
		}
		gw = m[len(m)-1][1]
		return strings.Contains(string(out), " "+gw+"/"), "gateway " + gw + " not on any interface"
	})
	return gw
}

// TestClusterNetworkAcrossHosts: agents in network namespaces of their own
// acting as separate machines, so that the overlay really crosses hosts.
// A task reaches a task of its cluster on another host, reaches an
// outside address its cluster's egress allows, and reaches no server and
// no agent port, even inside its egress.
func TestClusterNetworkAcrossHosts(t *testing.T) {
	requireRoot(t)
	hosts := testutil.NetHosts(t, 2)
	// An outside service on the test network, which egress allows.
	if out, err := exec.Command("ip", "addr", "add", "198.51.100.2/24", "dev", hosts.Bridge).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	outside, err := net.Listen("tcp", "198.51.100.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	go func() {
		for {
			c, err := outside.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, ServerIP: hosts.BridgeIP, AgentHosts: hosts.Hosts,
		AgentArgs: []string{"--task-network", "on"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2", "--egress", "198.51.100.0/24")

	_, peer := startListener(t, in, "c1", "l1")
	var targets []string
	for _, n := range []string{"node-1", "node-2"} {
		nd := nodeOf(t, in, n)
		targets = append(targets, nd.Addr, nd.PeerAddr)
	}
	targets = append(targets, in.Servers[0].HTTPAddr, in.Servers[0].RaftAddr)
	out := runProbe(t, in, "c1", "prober", strings.Join([]string{
		"$PROBE tcp " + peer + ":9000 " + outside.Addr().String() + " " + strings.Join(targets, " "),
		"$PROBE get $SHOAL_ADDR/v1/clusters/c1",
	}, "; "))
	mustLine(t, out, "tcp "+peer+":9000 ok")
	mustLine(t, out, "tcp "+outside.Addr().String()+" ok")
	for _, a := range targets {
		mustLine(t, out, "tcp "+a+" refused")
	}
	if !regexp.MustCompile(`get http://\S+/v1/clusters/c1 200 `).MatchString(out) {
		t.Errorf("the endpoint did not answer:\n%s", out)
	}
	if prober := addrRE.FindStringSubmatch(out); prober == nil || prober[1] == peer {
		t.Errorf("prober and listener share an address or the prober has none:\n%s", out)
	}
}

// metricSum sums the samples of metric name on the agent at addr.
func metricSum(t *testing.T, hc *http.Client, addr, name string) int {
	t.Helper()
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	total := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == name || strings.HasPrefix(f[0], name+"{")) {
			v, _ := strconv.ParseFloat(f[1], 64)
			total += int(v)
		}
	}
	return total
}

// TestEndpointSurvivesServerKill: a task's calls through its node's
// endpoint go on working after kill -9 of the server the node's agent
// talks to (the first of its --servers), leader or not.
func TestEndpointSurvivesServerKill(t *testing.T) {
	requireRoot(t)
	in := testutil.StartInstallation(t, testutil.Options{Servers: 3, Agents: 1, AgentArgs: []string{"--task-network", "on"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	id := submit(t, in, probeJob(t, "c1", "asker",
		`while :; do if shoal job status $SHOAL_JOB_ID >/dev/null 2>err; then echo "ok $(date +%s%N)"; else echo "fail $(date +%s%N) $(cat err)"; fi; sleep 0.2; done`))
	okSince := func(since time.Time) bool {
		for _, l := range strings.Split(taskLog(t, in, id), "\n") {
			var ns int64
			if _, err := fmt.Sscanf(l, "ok %d", &ns); err == nil && time.Unix(0, ns).After(since) {
				return true
			}
		}
		return false
	}
	start := time.Now()
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		return okSince(start), "no call through the endpoint succeeded yet: " + taskLog(t, in, id)
	})
	in.Servers[0].Kill9()
	killed := time.Now()
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		return okSince(killed.Add(5 * time.Second)), "no call through the endpoint succeeded after the kill: " + taskLog(t, in, id)
	})
}
