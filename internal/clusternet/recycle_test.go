package clusternet

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-dev/shoal/internal/testutil/freenet"
)

// nsState is what a task sees of its namespace's network.
type nsState struct {
	links  string // names, space-separated
	mtu    int    // eth0's
	addrs  string // eth0's, space-separated
	routes string // main table, "dst via gw", space-separated
	tables int    // nftables tables
}

// readNS reads the state of the namespace at path.
func readNS(t *testing.T, path string) nsState {
	t.Helper()
	var s nsState
	err := inNS(path, func() error {
		links, err := listLinks()
		if err != nil {
			return err
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
			if l.Attrs().Name != "eth0" {
				continue
			}
			s.mtu = l.Attrs().MTU
			addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, unix.AF_INET) })
			if err != nil {
				return err
			}
			var as []string
			for _, a := range addrs {
				as = append(as, a.IPNet.String())
			}
			s.addrs = strings.Join(as, " ")
		}
		s.links = strings.Join(names, " ")
		routes, err := dump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
		if err != nil {
			return err
		}
		var rs []string
		for _, r := range routes {
			dst := "default"
			if r.Dst != nil && r.Dst.IP.To4() != nil && !r.Dst.IP.Equal(net.IPv4zero) {
				dst = r.Dst.String()
			}
			if r.Gw != nil {
				dst += " via " + r.Gw.String()
			}
			rs = append(rs, dst)
		}
		slices.Sort(rs)
		s.routes = strings.Join(rs, " ")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	s.tables = len(tables)
	return s
}

// TestRecycle checks that the namespace of an ended task serves the next
// task, with its address, routes and links put back if the task changed
// them, and that a new cluster or Remove leaves none behind.
func TestRecycle(t *testing.T) {
	needRoot(t)
	m := newTestManager(t, uniqueNode(t, "recycle"), -1)
	subnet := freenet.Prefix(t, clusterRange, 20)
	block := freenet.Sub(subnet, 2, 24)
	n := Network{
		Cluster: "one", VNI: 4611, Subnet: subnet, Block: block,
		Overlay: netip.AddrPortFrom(loop, freeUDPPort(t)), EndpointPort: 1,
	}
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	a, err := m.AddTask("a")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := m.AddTask("a"); err != nil || again != a {
		t.Fatalf("AddTask twice = %v, %v, want %v", again, err, a)
	}
	clean := readNS(t, a.NetNS)
	gw := n.gateway()
	want := nsState{
		links:  "lo eth0",
		mtu:    defaultMTU,
		addrs:  netip.PrefixFrom(nthAddr(block, 2), subnet.Bits()).String(),
		routes: subnet.String() + " default via " + gw.String(), // sorted
	}
	if clean != want {
		t.Fatalf("new namespace %+v, want %+v", clean, want)
	}

	// The next task gets the same namespace and address.
	if err := m.RemoveTask("a"); err != nil {
		t.Fatal(err)
	}
	b, err := m.AddTask("b")
	if err != nil {
		t.Fatal(err)
	}
	if b != a {
		t.Errorf("task after a removal got %v, want the recycled %v", b, a)
	}
	if got := readNS(t, b.NetNS); got != want {
		t.Errorf("recycled namespace %+v, want %+v", got, want)
	}

	// A root task changes its network; the next one gets it back.
	other := netip.PrefixFrom(nthAddr(block, 9), subnet.Bits())
	err = inNS(b.NetNS, func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrDel(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(b.Addr, subnet.Bits()))}); err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(other)}); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("192.0.2.0/24")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: dst}); err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(eth, 1200); err != nil {
			return err
		}
		la := netlink.NewLinkAttrs()
		la.Name = "extra0"
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "extra1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(b.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(&nftables.Table{Name: "task", Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	ns.Close()
	if err := m.RemoveTask("b"); err != nil {
		t.Fatal(err)
	}
	c2, err := m.AddTask("c")
	if err != nil {
		t.Fatal(err)
	}
	if c2 != a {
		t.Errorf("task after a changed task got %v, want the recycled %v", c2, a)
	}
	if got := readNS(t, c2.NetNS); got != want {
		t.Errorf("recycled namespace of a task that changed it %+v, want %+v", got, want)
	}

	// It still carries traffic: task d reaches task c.
	d, err := m.AddTask("d")
	if err != nil {
		t.Fatal(err)
	}
	port := listenTCP(t, c2.NetNS, netip.AddrPortFrom(c2.Addr, 0).String())
	if err := reach(d.NetNS, netip.AddrPortFrom(c2.Addr, port)); err != nil {
		t.Errorf("task to recycled task: %v", err)
	}

	// Another cluster takes none of the first's namespaces along, ready
	// ones included.
	if err := m.RemoveTask("c"); err != nil {
		t.Fatal(err)
	}
	n2 := n
	n2.Cluster, n2.VNI = "two", 4612
	if err := m.Apply(n2); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{c2.NetNS, d.NetNS} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s of the old cluster: %v, want gone", p, err)
		}
	}
	e, err := m.AddTask("e")
	if err != nil {
		t.Fatal(err)
	}
	if e.NetNS == a.NetNS || e.Addr != nthAddr(block, 2) {
		t.Errorf("first task of the new cluster = %v", e)
	}
	if err := m.RemoveTask("e"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, m)
}
