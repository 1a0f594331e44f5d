package clusternet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// recycleCap bounds the ready pool that namespaces of ended tasks return
// to, when the pool size is smaller. A namespace beyond it is destroyed.
// Each kept namespace holds an address of the block and a veth pair (some
// tens of KiB of kernel memory) until a task takes it or the network goes.
const recycleCap = 64

// keep is how many ready namespaces RemoveTask may return to the pool.
func (m *Manager) keep() int { return max(m.pool, recycleCap) }

// scrub makes t, whose task has ended, fit for the next task of network n:
// it puts back what a task that is root in its namespace could have
// changed there and that the next task would see or suffer. Everything is
// read first and written only if it differs, so a namespace the task left
// alone costs three netlink dumps and an nftables table list:
//
//   - links: lo and eth0 up, eth0 with its MTU; any other device (the task
//     made it) is deleted;
//   - addresses: eth0 has exactly t.addr on n.Subnet, lo only 127.0.0.1/8;
//   - routes of the main table: only the subnet's on-link route and the
//     default route via the gateway;
//   - nftables: any ruleset is flushed.
//
// It does not reset neighbour entries, policy routing rules, other routing
// tables or sysctls of the namespace; they affect only the traffic of the
// task in the namespace, which the node's firewall outside still confines.
// An eth0 that is gone or is no veth makes the namespace unusable, and
// scrub fails.
func (m *Manager) scrub(t *taskNS, n *Network) error {
	ns, err := netns.GetFromPath(t.path)
	if err != nil {
		return fmt.Errorf("clusternet: open %s: %w", t.path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("clusternet: netlink in %s: %w", t.path, err)
	}
	defer h.Close()
	if err := scrubLinks(h, t, n); err != nil {
		return fmt.Errorf("clusternet: scrub %s: %w", t.path, err)
	}
	if err := flushNft(ns); err != nil {
		return fmt.Errorf("clusternet: scrub %s: %w", t.path, err)
	}
	return nil
}

// scrubLinks puts back t's links, addresses and routes, through h.
func scrubLinks(h *netlink.Handle, t *taskNS, n *Network) error {
	links, err := dump(h.LinkList)
	if err != nil {
		return err
	}
	var eth, lo netlink.Link
	for _, l := range links {
		switch name := l.Attrs().Name; {
		case name == "lo":
			lo = l
		case name == "eth0" && l.Type() == "veth":
			eth = l
		default:
			if err := h.LinkDel(l); err != nil && !isNotFound(err) {
				return fmt.Errorf("remove link %s: %w", name, err)
			}
		}
	}
	if eth == nil || lo == nil {
		return errors.New("eth0 or lo is gone")
	}
	if eth.Attrs().MTU != t.mtu {
		if err := h.LinkSetMTU(eth, t.mtu); err != nil {
			return fmt.Errorf("eth0 MTU: %w", err)
		}
	}
	for _, l := range []netlink.Link{lo, eth} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(l); err != nil {
				return fmt.Errorf("%s up: %w", l.Attrs().Name, err)
			}
		}
	}

	addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return err
	}
	want := netip.PrefixFrom(t.addr, n.Subnet.Bits())
	loop := netip.MustParsePrefix("127.0.0.1/8")
	have := false
	for _, a := range addrs {
		p, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		got := netip.PrefixFrom(p.Unmap(), ones)
		switch {
		case a.LinkIndex == eth.Attrs().Index && got == want:
			have = true
			continue
		case a.LinkIndex == lo.Attrs().Index && (got == loop || p == netip.IPv6Loopback()):
			continue
		}
		l := eth
		if a.LinkIndex == lo.Attrs().Index {
			l = lo
		}
		if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s: %w", got, err)
		}
	}
	if !have {
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
			return fmt.Errorf("eth0 address %s: %w", want, err)
		}
	}

	routes, err := dump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return err
	}
	gw := n.gateway()
	haveDefault := false
	for _, r := range routes {
		dst := netip.Prefix{}
		if r.Dst != nil {
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(a.Unmap(), ones)
		}
		rgw, _ := netip.AddrFromSlice(r.Gw)
		onEth := r.LinkIndex == eth.Attrs().Index
		switch {
		case onEth && dst == n.Subnet && !rgw.IsValid() && r.Protocol == unix.RTPROT_KERNEL:
			continue
		case onEth && (r.Dst == nil || dst.Bits() == 0) && rgw.Unmap() == gw && !haveDefault:
			haveDefault = true
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s: %w", r, err)
		}
	}
	if !haveDefault {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice())}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// flushNft flushes the nftables ruleset of namespace ns, if it has one.
func flushNft(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("list nft tables: %w", err)
	}
	if len(tables) == 0 {
		return nil
	}
	c.FlushRuleset()
	if err := c.Flush(); err != nil {
		return fmt.Errorf("flush nft ruleset: %w", err)
	}
	return nil
}
