package clusternet

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-dev/shoal/internal/testutil/freenet"
)

// loop is the underlay address of every node in these tests.
var loop = netip.MustParseAddr("127.0.0.1")

// hostAddrs returns the host namespace's IPv4 addresses outside the test
// networks.
func hostAddrs(t *testing.T, subnet1, subnet2, egress netip.Prefix) []netip.Addr {
	t.Helper()
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, unix.AF_INET) })
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if !subnet1.Contains(ip) && !subnet2.Contains(ip) && !egress.Contains(ip) {
			out = append(out, ip)
		}
	}
	return out
}

// TestClusterNetwork runs two nodes of one cluster and a node of another
// cluster in the host namespace and checks who reaches whom.
func TestClusterNetwork(t *testing.T) {
	needRoot(t)
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil {
		t.Cleanup(func() { _ = os.WriteFile("/proc/sys/net/ipv4/ip_forward", b, 0o644) })
	}
	endpoint := listenTCP(t, "", "0.0.0.0:0")
	other := listenTCP(t, "", "0.0.0.0:0") // a host service tasks must not reach

	subnet1, subnet2 := freenet.Prefix(t, clusterRange, 20), freenet.Prefix(t, clusterRange, 20)
	blockA, blockB, blockC := freenet.Sub(subnet1, 1, 24), freenet.Sub(subnet1, 2, 24), freenet.Sub(subnet2, 1, 24)
	egress := freenet.Prefix(t, outsideRange, 24)
	outside, denied := nthAddr(egress, 2), nthAddr(egress, 3)

	pa, pb, pc := freeUDPPort(t), freeUDPPort(t), freeUDPPort(t)
	a := newTestManager(t, uniqueNode(t, "a"), 0)
	b := newTestManager(t, uniqueNode(t, "b"), -1)
	c := newTestManager(t, uniqueNode(t, "c"), 2)
	netA := Network{
		Cluster: "one", VNI: 4101, Subnet: subnet1, Block: blockA,
		Overlay: netip.AddrPortFrom(loop, pa), Peers: []netip.AddrPort{netip.AddrPortFrom(loop, pb)},
		EndpointPort: endpoint,
	}
	netB := netA
	netB.Block, netB.Overlay, netB.Peers = blockB, netip.AddrPortFrom(loop, pb), []netip.AddrPort{netip.AddrPortFrom(loop, pa)}
	netC := Network{
		Cluster: "two", VNI: 4102, Subnet: subnet2, Block: blockC,
		Overlay:      netip.AddrPortFrom(loop, pc),
		Egress:       []netip.Prefix{egress},
		Deny:         []netip.Prefix{netip.PrefixFrom(denied, 32)},
		EndpointPort: endpoint,
	}
	for _, x := range []struct {
		m *Manager
		n Network
	}{{a, netA}, {b, netB}, {c, netC}} {
		if err := x.m.Apply(x.n); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := a.Gateway(), nthAddr(blockA, 1); got != want {
		t.Errorf("Gateway() = %v, want %v", got, want)
	}

	ta, err := a.AddTask("job/1#a")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.AddTask("job/1#b")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := c.AddTask("job/2#c")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tb.Addr, nthAddr(blockB, 2); got != want {
		t.Errorf("first task of B has %v, want %v", got, want)
	}
	portB := listenTCP(t, tb.NetNS, "0.0.0.0:0")
	portA := listenTCP(t, ta.NetNS, "0.0.0.0:0")

	t.Run("same cluster across vxlan", func(t *testing.T) {
		if err := reach(ta.NetNS, netip.AddrPortFrom(tb.Addr, portB)); err != nil {
			t.Errorf("task of A to task of B: %v", err)
		}
		if err := reach(tb.NetNS, netip.AddrPortFrom(ta.Addr, portA)); err != nil {
			t.Errorf("task of B to task of A: %v", err)
		}
		if !udpReachable(t, ta.NetNS, tb.NetNS, tb.Addr) {
			t.Error("UDP from task of A to task of B did not arrive")
		}
	})

	t.Run("endpoint", func(t *testing.T) {
		for _, x := range []struct {
			name string
			ns   string
			gw   netip.Addr
		}{{"A", ta.NetNS, a.Gateway()}, {"B", tb.NetNS, b.Gateway()}, {"C", tc.NetNS, c.Gateway()}} {
			if err := reach(x.ns, netip.AddrPortFrom(x.gw, endpoint)); err != nil {
				t.Errorf("task of %s to its endpoint: %v", x.name, err)
			}
		}
	})

	before, err := c.Refused()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("isolation", func(t *testing.T) {
		refused := []struct {
			name string
			ns   string
			to   netip.AddrPort
		}{
			{"C to task of A", tc.NetNS, netip.AddrPortFrom(ta.Addr, portA)},
			{"C to task of B", tc.NetNS, netip.AddrPortFrom(tb.Addr, portB)},
			{"C to gateway of A", tc.NetNS, netip.AddrPortFrom(a.Gateway(), endpoint)},
			{"C to 127.0.0.1", tc.NetNS, netip.AddrPortFrom(loop, other)},
			{"C to another port of its gateway", tc.NetNS, netip.AddrPortFrom(c.Gateway(), other)},
			{"A to gateway of B", ta.NetNS, netip.AddrPortFrom(b.Gateway(), endpoint)},
			{"A to gateway of C", ta.NetNS, netip.AddrPortFrom(c.Gateway(), endpoint)},
		}
		for _, h := range hostAddrs(t, subnet1, subnet2, egress) {
			refused = append(refused, struct {
				name string
				ns   string
				to   netip.AddrPort
			}{"C to host address " + h.String(), tc.NetNS, netip.AddrPortFrom(h, other)})
		}
		for _, r := range refused {
			if err := dialFrom(r.ns, r.to); err == nil {
				t.Errorf("%s (%v): connected, want refused", r.name, r.to)
			}
		}
		if udpReachable(t, tc.NetNS, ta.NetNS, ta.Addr) {
			t.Error("UDP from C reached the task of A")
		}
		if udpReachable(t, ta.NetNS, tc.NetNS, tc.Addr) {
			t.Error("UDP from A reached the task of C")
		}
	})

	t.Run("egress", func(t *testing.T) {
		out := newTestNet(t, netip.PrefixFrom(nthAddr(egress, 1), 24), outside, denied)
		port := listenTCP(t, out.path, "0.0.0.0:0")
		if err := reach(tc.NetNS, netip.AddrPortFrom(outside, port)); err != nil {
			t.Errorf("task of C to egress %v: %v", outside, err)
		}
		if err := dialFrom(tc.NetNS, netip.AddrPortFrom(denied, port)); err == nil {
			t.Errorf("task of C reached denied %v", denied)
		}
		if err := dialFrom(ta.NetNS, netip.AddrPortFrom(outside, port)); err == nil {
			t.Errorf("task of A (no egress) reached %v", outside)
		}
	})

	t.Run("refused counter", func(t *testing.T) {
		after, err := c.Refused()
		if err != nil {
			t.Fatal(err)
		}
		if after <= before {
			t.Errorf("Refused() = %d after refusals, was %d", after, before)
		}
	})

	t.Run("apply is idempotent and changes peers in place", func(t *testing.T) {
		if err := a.Apply(netA); err != nil {
			t.Fatal(err)
		}
		moved := netA
		moved.Peers = append(moved.Peers, netip.AddrPortFrom(loop, freeUDPPort(t)))
		if err := a.Apply(moved); err != nil {
			t.Fatal(err)
		}
		if got, _ := a.Current(); len(got.Peers) != 2 {
			t.Errorf("Current().Peers = %v, want 2 peers", got.Peers)
		}
		if err := a.Apply(netA); err != nil {
			t.Fatal(err)
		}
		if err := reach(ta.NetNS, netip.AddrPortFrom(tb.Addr, portB)); err != nil {
			t.Errorf("task of A to task of B after peer changes: %v", err)
		}
		alone := netA
		alone.Peers = nil
		if err := a.Apply(alone); err != nil {
			t.Fatal(err)
		}
		if err := dialFrom(ta.NetNS, netip.AddrPortFrom(tb.Addr, portB)); err == nil {
			t.Error("task of A reached B with B no longer a peer")
		}
		if err := a.Apply(netA); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("remove task", func(t *testing.T) {
		if err := c.RemoveTask("job/2#c"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveTask("job/2#c"); err != nil {
			t.Fatalf("second RemoveTask: %v", err)
		}
		// The namespace is recycled: it waits in the ready pool.
		c.mu.Lock()
		recycled := slices.ContainsFunc(c.ready, func(r *taskNS) bool { return r.path == tc.NetNS })
		c.mu.Unlock()
		if !recycled {
			t.Errorf("netns %s not in the ready pool after RemoveTask", tc.NetNS)
		}
	})

	t.Run("remove", func(t *testing.T) {
		if err := c.Remove(); err != nil {
			t.Fatal(err)
		}
		if err := c.Remove(); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
		checkGone(t, c)
		if _, ok := c.Current(); ok {
			t.Error("Current() reports a network after Remove")
		}
		if _, err := c.AddTask("x"); !errors.Is(err, ErrNoNetwork) {
			t.Errorf("AddTask after Remove: %v, want ErrNoNetwork", err)
		}
	})
}

// TestSweepAfterCrash drops a Manager without Remove and has a new one of
// the same node clean up.
func TestSweepAfterCrash(t *testing.T) {
	needRoot(t)
	node := uniqueNode(t, "crash")
	dir := t.TempDir()
	m, err := New(Config{Node: node, StateDir: dir, PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	subnet1 := freenet.Prefix(t, clusterRange, 20)
	n := Network{
		Cluster: "one", VNI: 4201, Subnet: subnet1, Block: freenet.Sub(subnet1, 1, 24),
		Overlay: netip.AddrPortFrom(loop, freeUDPPort(t)), EndpointPort: 1,
	}
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddTask("t1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pool to fill", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.ready) == 2
	})
	m.Close() // the agent dies: no Remove

	again, err := New(Config{Node: node, StateDir: dir, PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if len(leftovers(t, again)) == 0 {
		t.Fatal("nothing left to sweep; the test is broken")
	}
	if err := again.Sweep(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, again)
	if err := os.Remove(again.names.nsDir); err != nil {
		t.Errorf("netns directory still in use after Sweep: %v", err)
	}
}

// TestAddresses checks address allocation, reuse and ErrFull.
func TestAddresses(t *testing.T) {
	needRoot(t)
	m := newTestManager(t, uniqueNode(t, "addr"), -1)
	if _, err := m.AddTask("x"); !errors.Is(err, ErrNoNetwork) {
		t.Fatalf("AddTask before Apply: %v, want ErrNoNetwork", err)
	}
	subnet1 := freenet.Prefix(t, clusterRange, 20)
	block := freenet.Sub(subnet1, 3*32, 29)
	n := Network{
		Cluster: "one", VNI: 4301, Subnet: subnet1, Block: block,
		Overlay: netip.AddrPortFrom(loop, freeUDPPort(t)), EndpointPort: 1,
	}
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range 5 {
		tn, err := m.AddTask(string(rune('a' + i)))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tn.Addr.String())
	}
	var want []string
	for i := 2; i <= 6; i++ {
		want = append(want, nthAddr(block, i).String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	if _, err := m.AddTask("full"); !errors.Is(err, ErrFull) {
		t.Errorf("AddTask in a full block: %v, want ErrFull", err)
	}
	if err := m.RemoveTask("b"); err != nil {
		t.Fatal(err)
	}
	tn, err := m.AddTask("again")
	if err != nil {
		t.Fatal(err)
	}
	if want := nthAddr(block, 3); tn.Addr != want {
		t.Errorf("address after a removal %v, want %v", tn.Addr, want)
	}

	// Another cluster replaces the first, task namespaces included.
	n2 := n
	n2.Cluster, n2.VNI = "two", 4302
	if err := m.Apply(n2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tn.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("task namespace of the old cluster: %v, want gone", err)
	}
	if tn, err := m.AddTask("new"); err != nil || tn.Addr != nthAddr(block, 2) {
		t.Errorf("AddTask in the new cluster = %v, %v", tn, err)
	}
}

// TestTaskNamespace checks what a task sees in its namespace.
func TestTaskNamespace(t *testing.T) {
	needRoot(t)
	m := newTestManager(t, uniqueNode(t, "ns"), -1)
	subnet1 := freenet.Prefix(t, clusterRange, 20)
	blockA := freenet.Sub(subnet1, 1, 24)
	n := Network{
		Cluster: "one", VNI: 4401, Subnet: subnet1, Block: blockA,
		Overlay: netip.AddrPortFrom(loop, freeUDPPort(t)), EndpointPort: 1,
	}
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	tn, err := m.AddTask("t")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var mtu int
	var addr string
	err = inNS(tn.NetNS, func() error {
		links, err := listLinks()
		if err != nil {
			return err
		}
		for _, l := range links {
			names = append(names, l.Attrs().Name)
			if l.Attrs().Name == "eth0" {
				mtu = l.Attrs().MTU
				addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, unix.AF_INET) })
				if err != nil {
					return err
				}
				for _, a := range addrs {
					addr = a.IPNet.String()
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names, " "), "lo eth0"; got != want {
		t.Errorf("links %q, want %q", got, want)
	}
	if mtu != defaultMTU {
		t.Errorf("eth0 MTU %d, want %d", mtu, defaultMTU)
	}
	if want := netip.PrefixFrom(nthAddr(blockA, 2), 20).String(); addr != want {
		t.Errorf("eth0 address %s, want %s", addr, want)
	}
}

// TestNewAtOnce starts Managers of several nodes at once, as agents that
// start together on one host do: their kernel probes must not collide.
func TestNewAtOnce(t *testing.T) {
	needRoot(t)
	const nodes = 6
	errc := make(chan error, nodes)
	for i := range nodes {
		go func() {
			m, err := New(Config{Node: uniqueNode(t, "probe") + string(rune('a'+i)), StateDir: t.TempDir(), PoolSize: -1})
			if err == nil {
				err = m.Close()
			}
			errc <- err
		}()
	}
	for range nodes {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}
