package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusternet"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/testutil/freenet"
)

// netPath is a pair of network namespaces that can reach each other: a
// client in cli dials a server in srv at addr.
type netPath struct {
	name     string
	srv, cli netns.NsHandle
	addr     netip.Addr
}

// netFigures is what one measurement of a netPath gave.
type netFigures struct {
	gbps float64       // bulk TCP throughput, Gbit/s
	rtt  time.Duration // median round trip of a 1-byte TCP ping-pong
}

// Sizes of the network measurements; knobs SHOAL_BENCH_NET_SECONDS and
// SHOAL_BENCH_NET_TRIPS.
const (
	netBulkWrite   = 1 << 20 // bytes per write of the bulk transfer
	netWarmupTrips = 1000    // untimed round trips before the timed ones
)

// BenchmarkClusterNetworkTCP measures TCP between two tasks of one cluster
// on different nodes: two clusternet Managers in the host namespace (two
// nodes, each the other's VXLAN peer over 127.0.0.1 with its own UDP
// port), one task namespace on each. From goroutines locked to threads in
// the task namespaces it measures the throughput of a bulk transfer
// (1 MiB writes for SHOAL_BENCH_NET_SECONDS, default 3) and the median
// round trip of a 1-byte ping-pong (SHOAL_BENCH_NET_TRIPS, default
// 20,000).
//
// The baseline is the same code between two plain network namespaces
// joined by one veth pair (kernel default MTU, 1500), measured in the same
// round. Two more paths, also in every round, say where the cost goes:
// the same veth pair at the cluster network's MTU (1450 over a loopback
// underlay), and two tasks of one node (bridge and firewall, no VXLAN).
//
// Rounds (SHOAL_BENCH_NET_ROUNDS, default 5) rotate the order of the
// paths (SHOAL_BENCH_NET_PATHS, say "cluster", keeps only some, for
// profiles); each figure is reported as the median with its range (-min,
// -max), and so are the ratios cluster/baseline.
func BenchmarkClusterNetworkTCP(b *testing.B) {
	needRoot(b)
	rounds := envInt(b, "SHOAL_BENCH_NET_ROUNDS", 5)
	dur := time.Duration(envInt(b, "SHOAL_BENCH_NET_SECONDS", 3)) * time.Second
	trips := envInt(b, "SHOAL_BENCH_NET_TRIPS", 20000)

	subnet := freenet.Prefix(b, clusterRange, 20)
	pa, pb := freeUDPPort(b), freeUDPPort(b)
	loop := netip.MustParseAddr("127.0.0.1")
	netA := clusternet.Network{
		Cluster: "bench", VNI: 4601, Subnet: subnet, Block: freenet.Sub(subnet, 1, 24),
		Overlay: netip.AddrPortFrom(loop, pa), Peers: []netip.AddrPort{netip.AddrPortFrom(loop, pb)},
		EndpointPort: 1,
	}
	netB := netA
	netB.Block, netB.Overlay, netB.Peers = freenet.Sub(subnet, 2, 24), netip.AddrPortFrom(loop, pb), []netip.AddrPort{netip.AddrPortFrom(loop, pa)}
	ma, mb := newBenchManager(b, "bench-a"), newBenchManager(b, "bench-b")
	if err := ma.Apply(netA); err != nil {
		b.Fatal(err)
	}
	if err := mb.Apply(netB); err != nil {
		b.Fatal(err)
	}
	a1, a2, b1 := benchTask(b, ma, "net/1#a"), benchTask(b, ma, "net/1#a2"), benchTask(b, mb, "net/1#b")

	veth := newVethPair(b, 0)
	veth1450 := newVethPair(b, 1450)
	paths := []netPath{
		{name: "veth", srv: veth.srv, cli: veth.cli, addr: veth.addr},
		{name: "cluster", srv: b1.h, cli: a1.h, addr: b1.addr},
		{name: "veth-1450", srv: veth1450.srv, cli: veth1450.cli, addr: veth1450.addr},
		{name: "same-node", srv: a2.h, cli: a1.h, addr: a2.addr},
	}
	if only := os.Getenv("SHOAL_BENCH_NET_PATHS"); only != "" {
		// For profiles: measure only these paths (comma-separated
		// names); the ratios of absent paths are NaN.
		paths = slices.DeleteFunc(paths, func(p netPath) bool { return !slices.Contains(strings.Split(only, ","), p.name) })
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := map[string][]netFigures{}
		for r := range rounds {
			var line []string
			for k := range paths {
				p := paths[(k+r)%len(paths)]
				f, err := measurePath(p, dur, trips)
				if err != nil {
					b.Fatalf("round %d, %s: %v", r+1, p.name, err)
				}
				got[p.name] = append(got[p.name], f)
				line = append(line, fmt.Sprintf("%s %.2f Gbit/s %v", p.name, f.gbps, f.rtt))
			}
			b.Logf("round %d: %s", r+1, strings.Join(line, "; "))
		}
		report := func(unit string, xs []float64) {
			med, lo, hi := spread(xs)
			b.ReportMetric(med, unit)
			b.ReportMetric(lo, "min-"+unit)
			b.ReportMetric(hi, "max-"+unit)
		}
		gbps := func(name string) []float64 {
			var v []float64
			for _, f := range got[name] {
				v = append(v, f.gbps)
			}
			return v
		}
		rttUS := func(name string) []float64 {
			var v []float64
			for _, f := range got[name] {
				v = append(v, float64(f.rtt)/float64(time.Microsecond))
			}
			return v
		}
		ratios := func(num, den []float64) []float64 {
			var v []float64
			if len(num) == 0 || len(num) != len(den) {
				return []float64{math.NaN()}
			}
			for j := range num {
				v = append(v, num[j]/den[j])
			}
			return v
		}
		for _, p := range paths {
			report(p.name+"-Gbit/s", gbps(p.name))
			report(p.name+"-rtt-us", rttUS(p.name))
		}
		report("tput-ratio", ratios(gbps("cluster"), gbps("veth")))
		report("rtt-ratio", ratios(rttUS("cluster"), rttUS("veth")))
		report("tput-ratio-vs-veth-1450", ratios(gbps("cluster"), gbps("veth-1450")))
	}
}

// measurePath measures the bulk throughput and then the ping-pong round
// trip of p. Both ends run on goroutines locked to threads in their
// namespaces.
func measurePath(p netPath, dur time.Duration, trips int) (netFigures, error) {
	ports := make(chan int, 1)
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- inNS(p.srv, func() error {
			ln, err := net.Listen("tcp4", netip.AddrPortFrom(p.addr, 0).String())
			if err != nil {
				close(ports)
				return err
			}
			defer ln.Close()
			ports <- ln.Addr().(*net.TCPAddr).Port
			return serveBulkThenEcho(ln)
		})
	}()
	port, ok := <-ports
	if !ok {
		return netFigures{}, <-srvErr
	}
	dst := netip.AddrPortFrom(p.addr, uint16(port)).String()
	var f netFigures
	err := inNS(p.cli, func() error {
		var err error
		if f.gbps, err = bulkSend(dst, dur); err != nil {
			return fmt.Errorf("bulk transfer: %w", err)
		}
		if f.rtt, err = pingPong(dst, trips); err != nil {
			return fmt.Errorf("ping-pong: %w", err)
		}
		return nil
	})
	return f, errors.Join(err, <-srvErr)
}

// serveBulkThenEcho accepts two connections on ln: the first it reads to
// the end and answers with the number of bytes read (8 bytes, big
// endian); the second it echoes byte by byte.
func serveBulkThenEcho(ln net.Listener) error {
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Minute))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, netBulkWrite))
	if err == nil {
		_, err = c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	}
	c.Close()
	if err != nil {
		return err
	}
	c, err = ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
}

// bulkSend connects to dst, writes for dur and returns the throughput in
// Gbit/s: the bytes the server read over the time until it confirmed them.
func bulkSend(dst string, dur time.Duration) (float64, error) {
	c, err := net.DialTimeout("tcp4", dst, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dur + time.Minute))
	buf := make([]byte, netBulkWrite)
	_, _ = rand.Read(buf)
	start := time.Now()
	for time.Since(start) < dur {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	var count [8]byte
	if _, err := io.ReadFull(c, count[:]); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	return float64(binary.BigEndian.Uint64(count[:])) * 8 / elapsed.Seconds() / 1e9, nil
}

// pingPong connects to dst, sends one byte and waits for it back, trips
// times after netWarmupTrips untimed ones, and returns the median round
// trip.
func pingPong(dst string, trips int) (time.Duration, error) {
	c, err := net.DialTimeout("tcp4", dst, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, trips)
	for i := range netWarmupTrips + trips {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
		if i >= netWarmupTrips {
			rtts = append(rtts, time.Since(start))
		}
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// benchTaskNS is a task namespace of a clusternet Manager, held open.
type benchTaskNS struct {
	h    netns.NsHandle
	addr netip.Addr
}

// newBenchManager starts a Manager without a pool whose network is
// removed when the benchmark ends, whatever happens.
func newBenchManager(b *testing.B, prefix string) *clusternet.Manager {
	b.Helper()
	m, err := clusternet.New(clusternet.Config{Node: uniqueNode(prefix), StateDir: b.TempDir(), PoolSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := m.Close(); err != nil {
			b.Errorf("Close: %v", err)
		}
		if err := m.Remove(); err != nil {
			b.Errorf("Remove: %v", err)
		}
	})
	return m
}

// benchTask adds task id to m and opens its namespace.
func benchTask(b *testing.B, m *clusternet.Manager, id string) benchTaskNS {
	b.Helper()
	t, err := m.AddTask(id)
	if err != nil {
		b.Fatal(err)
	}
	h, err := netns.GetFromPath(t.NetNS)
	if err != nil {
		b.Fatal(err)
	}
	// Cleanups run last in, first out: the handle is closed before the
	// Manager removes the network.
	b.Cleanup(func() { h.Close() })
	return benchTaskNS{h: h, addr: t.Addr}
}

// vethPair is two plain network namespaces joined by one veth pair; the
// server end has addr.
type vethPair struct {
	srv, cli netns.NsHandle
	addr     netip.Addr
}

// newVethPair makes two network namespaces, held only by their handles
// (closing them destroys the namespaces), joined by a veth pair with the
// given MTU (0: the kernel's default). The addresses are from TEST-NET-1
// (RFC 5737); they exist only inside the two namespaces.
func newVethPair(b *testing.B, mtu int) vethPair {
	b.Helper()
	srv, cli := newAnonNS(b), newAnonNS(b)
	x := make([]byte, 3)
	_, _ = rand.Read(x)
	name := "shbv" + hex.EncodeToString(x)
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.Namespace = name, mtu, netlink.NsFd(cli)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(srv)}); err != nil {
		b.Fatal(err)
	}
	hc, err := netlink.NewHandleAt(cli)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Deleting one end deletes the pair; the namespaces' handles
		// (closed next) would take it along too.
		if l, err := hc.LinkByName(name); err == nil {
			if err := hc.LinkDel(l); err != nil {
				b.Errorf("removing veth %s: %v", name, err)
			}
		}
		hc.Close()
	})
	hs, err := netlink.NewHandleAt(srv)
	if err != nil {
		b.Fatal(err)
	}
	defer hs.Close()
	srvAddr, cliAddr := netip.MustParsePrefix("192.0.2.2/24"), netip.MustParsePrefix("192.0.2.1/24")
	for _, e := range []struct {
		h    *netlink.Handle
		link string
		addr netip.Prefix
	}{{hc, name, cliAddr}, {hs, "eth0", srvAddr}} {
		l, err := e.h.LinkByName(e.link)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: e.addr.Addr().AsSlice(), Mask: net.CIDRMask(e.addr.Bits(), 32)}}); err != nil {
			b.Fatal(err)
		}
		for _, n := range []string{"lo", e.link} {
			l, err := e.h.LinkByName(n)
			if err == nil {
				err = e.h.LinkSetUp(l)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	waitUntil(b, "the veth pair to come up", func() bool {
		l1, err1 := hc.LinkByName(name)
		l2, err2 := hs.LinkByName("eth0")
		return err1 == nil && err2 == nil && l1.Attrs().OperState == netlink.OperUp && l2.Attrs().OperState == netlink.OperUp
	})
	return vethPair{srv: srv, cli: cli, addr: srvAddr.Addr()}
}

// newAnonNS makes a network namespace held only by the returned handle,
// which is closed when the benchmark ends.
func newAnonNS(b *testing.B) netns.NsHandle {
	b.Helper()
	type result struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			c <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New() // switches this thread into it
		if serr := netns.Set(orig); serr != nil {
			c <- result{h: h, err: errors.Join(err, serr)} // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		c <- result{h: h, err: err}
	}()
	r := <-c
	if r.h.IsOpen() {
		b.Cleanup(func() { r.h.Close() })
	}
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.h
}

// inNS runs fn in the network namespace h (see clusternet.InNamespace).
func inNS(h netns.NsHandle, fn func() error) error {
	return clusternet.InNamespace(fmt.Sprintf("/proc/self/fd/%d", int(h)), fn)
}

// needRoot skips benchmarks that build kernel objects when not root.
func needRoot(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
}

// uniqueNode returns a node name no other run uses, so that leftovers of
// a killed run never collide.
func uniqueNode(prefix string) string {
	x := make([]byte, 4)
	_, _ = rand.Read(x)
	return prefix + "-" + hex.EncodeToString(x)
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(b *testing.B) uint16 {
	b.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// waitUntil polls cond until it holds, or fails the benchmark after 10s.
func waitUntil(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clusterRange is where cluster subnets come from: the benchmarking range
// (RFC 2544), as in the clusternet tests.
var clusterRange = netip.MustParsePrefix("198.18.0.0/15")

// BenchmarkTaskStartNetwork compares task starts with and without a
// network namespace of their own: two installations of three agents
// (2,000 millicores each, one cluster over all three, its subnet from
// taskStartNetworks), one with
// --task-network on and one with --task-network off, each run jobs of 200
// /bin/true tasks (100 millicores each, so 60 run at once), timed from
// submission to completion. After a warm-up job on each (and a check that
// tasks do, or do not, get a namespace of their own), rounds
// (SHOAL_BENCH_NET_ROUNDS, default 5) alternate between the two, in
// alternating order. Reported: the median time per job of each, with its
// range, and the overhead ratio on/off of each round; and, to say where
// the time goes, the CPU time per task of the agents and of the whole
// machine during each job.
func BenchmarkTaskStartNetwork(b *testing.B) {
	needRoot(b)
	const tasks = 200
	rounds := envInt(b, "SHOAL_BENCH_NET_ROUNDS", 5)
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		b.Fatal(err)
	}
	start := func(mode string) *testutil.Installation {
		// Every installation's servers would give their first cluster
		// the same subnet (10.128.0.0/18), whose gateways clash with
		// those of other installations on this host.
		nets := freenet.Prefix(b, taskStartNetworks, 18)
		in := testutil.StartInstallation(b, testutil.Options{Agents: 3, AgentCPU: 2000, AgentMemory: 8192,
			AgentArgs:  []string{"--task-network", mode},
			ServerArgs: []string{"--cluster-networks", nets.String()}})
		if _, err := in.Client.CreateCluster(context.Background(), &api.ClusterRequest{Name: "c1", Nodes: 3}); err != nil {
			b.Fatal(err)
		}
		return in
	}
	on, off := start("on"), start("off")
	for _, x := range []struct {
		in   *testutil.Installation
		test string
	}{{on, "!="}, {off, "="}} {
		runTrueJob(b, x.in, tasks, 5*time.Minute) // warm-up
		check := fmt.Sprintf(`[ "$(readlink /proc/self/ns/net)" %s %q ]`, x.test, hostNS)
		runCheckJob(b, x.in, check)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var onT, offT, ratio, onAgent, offAgent, onHost, offHost []float64
		for r := range rounds {
			var t, agentCPU, hostCPU [2]time.Duration
			for k := range 2 {
				which := (k + r) % 2
				in := []*testutil.Installation{on, off}[which]
				a0, h0 := agentsCPU(b, in), hostBusy(b)
				t[which] = runTrueJob(b, in, tasks, 5*time.Minute)
				agentCPU[which], hostCPU[which] = agentsCPU(b, in)-a0, hostBusy(b)-h0
			}
			b.Logf("round %d: on %v, off %v, ratio %.3f; CPU per task: agents on %v, off %v; machine on %v, off %v",
				r+1, t[0], t[1], t[0].Seconds()/t[1].Seconds(),
				agentCPU[0]/tasks, agentCPU[1]/tasks, hostCPU[0]/tasks, hostCPU[1]/tasks)
			onT = append(onT, t[0].Seconds())
			offT = append(offT, t[1].Seconds())
			ratio = append(ratio, t[0].Seconds()/t[1].Seconds())
			perTask := func(d time.Duration) float64 { return d.Seconds() * 1000 / tasks }
			onAgent, offAgent = append(onAgent, perTask(agentCPU[0])), append(offAgent, perTask(agentCPU[1]))
			onHost, offHost = append(onHost, perTask(hostCPU[0])), append(offHost, perTask(hostCPU[1]))
		}
		for _, m := range []struct {
			unit string
			v    []float64
		}{{"on-s/job", onT}, {"off-s/job", offT}, {"ratio", ratio},
			{"on-agent-ms/task", onAgent}, {"off-agent-ms/task", offAgent},
			{"on-machine-ms/task", onHost}, {"off-machine-ms/task", offHost}} {
			med, lo, hi := spread(m.v)
			b.ReportMetric(med, m.unit)
			b.ReportMetric(lo, "min-"+m.unit)
			b.ReportMetric(hi, "max-"+m.unit)
		}
	}
}

// agentsCPU is the CPU time (user and system) the agents of in have used.
func agentsCPU(b *testing.B, in *testutil.Installation) time.Duration {
	var sum time.Duration
	for _, a := range in.Agents {
		sum += procCPU(b, a.PID())
	}
	return sum
}

// hostBusy is the CPU time the whole machine has spent busy (user, nice,
// system, irq and softirq, from /proc/stat), whoever spent it: it counts
// the kernel's deferred work, such as the cleanup of network namespaces,
// that no process is charged with. Other work on the machine adds noise.
func hostBusy(b *testing.B) time.Duration {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq ...
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			b.Fatalf("parsing /proc/stat: %q", line)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// taskStartNetworks is where BenchmarkTaskStartNetwork takes its servers'
// cluster networks from: the half of 10.0.0.0/8 below the servers' default.
var taskStartNetworks = netip.MustParsePrefix("10.0.0.0/9")

// runCheckJob runs a one-task job of sh -c script on cluster c1 and fails
// the benchmark unless it completes.
func runCheckJob(b *testing.B, in *testutil.Installation, script string) {
	b.Helper()
	res, err := in.Client.SubmitJob(context.Background(), &api.JobSpec{Name: "check", Cluster: "c1", Groups: []api.GroupSpec{{
		Name: "t", Count: 1, Command: []string{"/bin/sh", "-c", script}}}})
	if err != nil {
		b.Fatal(err)
	}
	if j := waitJob(b, in.Client, res.ID, time.Minute); j.State != api.JobComplete {
		b.Fatalf("check %s: job %s ended %s", script, j.ID, j.State)
	}
}
