package clusternet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// vxlanOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4, UDP,
// VXLAN and inner Ethernet headers.
const vxlanOverhead = 50

// defaultMTU is the MTU of the cluster network when the underlay device
// does not tell otherwise (a 1500-byte Ethernet underlay, or loopback).
const defaultMTU = 1500 - vxlanOverhead

// overlayMTU is the MTU of the cluster network's devices: the MTU of the
// underlay device holding the overlay address, less the VXLAN overhead.
// Loopback (dev mode) and unknown devices give [defaultMTU].
func overlayMTU(local netip.Addr) int {
	links, err := listLinks()
	if err != nil {
		return defaultMTU
	}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, unix.AF_INET) })
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == local && l.Attrs().MTU > vxlanOverhead+576 {
				return l.Attrs().MTU - vxlanOverhead
			}
		}
	}
	return defaultMTU
}

// ensureBridge creates the node's bridge, or converges an existing one: up,
// with exactly the gateway address, no IPv6, and ARP answered only for
// addresses on the bridge itself. The last matters when several nodes share
// a host namespace: otherwise a node's bridge would answer ARP for another
// node's gateway across the VXLAN.
func (m *Manager) ensureBridge(n *Network) (netlink.Link, error) {
	name := m.names.bridge
	mtu := overlayMTU(n.Overlay.Addr())
	br, err := netlink.LinkByName(name)
	if err != nil {
		if !isNotFound(err) {
			return nil, fmt.Errorf("clusternet: bridge %s: %w", name, err)
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.HardwareAddr = name, mtu, m.bridgeMAC()
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("clusternet: create bridge %s (kernel without bridge support?): %w", name, err)
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("clusternet: bridge %s: %w", name, err)
		}
	} else if br.Type() != "bridge" {
		return nil, fmt.Errorf("clusternet: %s exists and is a %s, not a bridge", name, br.Type())
	}
	if err := writeSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
		m.log.Warn("clusternet: cannot disable IPv6 on the bridge", "bridge", name, "err", err)
	}
	if err := writeSysctl("net/ipv4/conf/"+name+"/arp_ignore", "1"); err != nil {
		return nil, fmt.Errorf("clusternet: bridge %s: %w", name, err)
	}
	want := netip.PrefixFrom(n.gateway(), n.Block.Bits())
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(br, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("clusternet: bridge %s addresses: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(p.Unmap(), ones) == want {
			have = true
			continue
		}
		if err := netlink.AddrDel(br, &a); err != nil {
			return nil, fmt.Errorf("clusternet: bridge %s: remove address %s: %w", name, a.IPNet, err)
		}
	}
	if !have {
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
			return nil, fmt.Errorf("clusternet: bridge %s: add address %s: %w", name, want, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("clusternet: bridge %s up: %w", name, err)
	}
	return br, nil
}

// bridgeMAC is the MAC address of the node's bridge: locally administered
// and derived from the node name. Left to itself, a bridge takes the lowest
// MAC of its ports, so the gateway's MAC would change as tasks come and go
// and every task's ARP entry for the gateway would go stale.
func (m *Manager) bridgeMAC() net.HardwareAddr {
	h := fnv.New64a()
	h.Write([]byte("bridge/" + m.cfg.Node))
	b := binary.BigEndian.AppendUint64(nil, h.Sum64())
	b[0] = b[0]&0xfc | 0x02 // unicast, locally administered
	return net.HardwareAddr(b[:6])
}

// vxlanLearning reports whether the VXLAN device may learn remote MACs.
// A learned entry records the sender's IP with the device's own UDP port,
// so learning is only right when every peer listens on that same port;
// otherwise (several nodes on one host, each with its own port) unicast
// frames are flooded to all peers through the all-zero entries instead.
func vxlanLearning(n *Network) bool {
	for _, p := range n.Peers {
		if p.Port() != n.Overlay.Port() {
			return false
		}
	}
	return true
}

// ensureVxlan creates the node's VXLAN device on the bridge, or, when the
// device is as old left it, only converges its peers. old is the network
// applied before, nil when this Manager has not configured the device.
func (m *Manager) ensureVxlan(n, old *Network, br netlink.Link) error {
	name := m.names.vxlan
	learning := vxlanLearning(n)
	vx, err := netlink.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("clusternet: vxlan %s: %w", name, err)
	}
	reuse := vx != nil && old != nil && old.Overlay == n.Overlay && vxlanLearning(old) == learning
	if vx != nil && !reuse {
		if err := netlink.LinkDel(vx); err != nil {
			return fmt.Errorf("clusternet: remove vxlan %s: %w", name, err)
		}
		vx = nil
	}
	var stale []netip.AddrPort
	if vx == nil {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.MasterIndex = name, br.Attrs().MTU, br.Attrs().Index
		dev := &netlink.Vxlan{
			LinkAttrs: la,
			VxlanId:   int(n.VNI),
			SrcAddr:   n.Overlay.Addr().AsSlice(),
			Port:      int(n.Overlay.Port()),
			Learning:  learning,
		}
		if err := netlink.LinkAdd(dev); err != nil {
			return fmt.Errorf("clusternet: create vxlan %s (vni %d, port %d; kernel without VXLAN, or port taken?): %w", name, n.VNI, n.Overlay.Port(), err)
		}
		if vx, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("clusternet: vxlan %s: %w", name, err)
		}
		_ = writeSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1")
	} else {
		for _, p := range old.Peers {
			if !slices.Contains(n.Peers, p) {
				stale = append(stale, p)
			}
		}
	}
	for _, p := range stale {
		if err := fdbFlood(vx.Attrs().Index, p, false); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("clusternet: vxlan %s: remove peer %v: %w", name, p, err)
		}
	}
	for _, p := range n.Peers {
		if old != nil && reuse && slices.Contains(old.Peers, p) {
			continue
		}
		if err := fdbFlood(vx.Attrs().Index, p, true); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("clusternet: vxlan %s: add peer %v: %w", name, p, err)
		}
	}
	if err := netlink.LinkSetUp(vx); err != nil {
		return fmt.Errorf("clusternet: vxlan %s up: %w", name, err)
	}
	return nil
}

// fdbFlood adds (or deletes) the all-zero-MAC forwarding entry of VXLAN
// device ifindex that replicates broadcast and unknown frames to peer
// ("bridge fdb append 00:00:00:00:00:00 dev vx dst IP port PORT"). The
// netlink library has no field for the destination port, so the request is
// built here.
func fdbFlood(ifindex int, peer netip.AddrPort, add bool) error {
	proto, flags := unix.RTM_DELNEIGH, unix.NLM_F_ACK
	if add {
		proto, flags = unix.RTM_NEWNEIGH, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_APPEND
	}
	req := nl.NewNetlinkRequest(proto, flags)
	req.AddData(&netlink.Ndmsg{
		Family: unix.AF_BRIDGE,
		Index:  uint32(ifindex),
		State:  netlink.NUD_PERMANENT,
		Flags:  netlink.NTF_SELF,
	})
	req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, make([]byte, 6)))
	ip := peer.Addr().As4()
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, ip[:]))
	port := binary.BigEndian.AppendUint16(nil, peer.Port())
	req.AddData(nl.NewRtAttr(netlink.NDA_PORT, port))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// probeLinks checks that the kernel can make the devices a cluster network
// needs, by making one of each (not up, so no UDP port is taken) and
// deleting them.
//
// The kernel refuses a second VXLAN device with the VNI and UDP port of an
// existing one, even one that is down, so the probe's VNI and port derive
// from the node's names, the process and a random number: agents that start
// at once on one host, or a cluster network on the host, do not collide with
// it. It tries once more, with other numbers, if one does.
func probeLinks(nm names) error {
	la := func(suffix string) netlink.LinkAttrs {
		a := netlink.NewLinkAttrs()
		a.Name = nm.probe[:len(nm.probe)-1] + suffix
		return a
	}
	vxlan := func() netlink.Link {
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%d/%d", nm.probe, os.Getpid(), rand.Uint64())
		x := h.Sum64()
		vni := 1 + int(x%(1<<24-1))
		port := 49152 + int((x>>32)%16384)
		return &netlink.Vxlan{LinkAttrs: la("x"), VxlanId: vni, Port: port}
	}
	devs := []struct {
		what string
		link func() netlink.Link
	}{
		{"bridge", func() netlink.Link { return &netlink.Bridge{LinkAttrs: la("b")} }},
		{"VXLAN", vxlan},
		{"veth", func() netlink.Link {
			return &netlink.Veth{LinkAttrs: la("v"), PeerName: nm.probe[:len(nm.probe)-1] + "w"}
		}},
	}
	var errs []error
	for _, d := range devs {
		link := d.link()
		if l, err := netlink.LinkByName(link.Attrs().Name); err == nil {
			_ = netlink.LinkDel(l) // left by an earlier probe that died
		}
		err := netlink.LinkAdd(link)
		if errors.Is(err, unix.EEXIST) {
			link = d.link()
			err = netlink.LinkAdd(link)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("clusternet: kernel cannot make a %s device: %w", d.what, err))
			continue
		}
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("clusternet: remove probe device %s: %w", link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// removeLinks deletes the node's bridge, VXLAN device and host-side veths.
func (m *Manager) removeLinks() error {
	links, err := listLinks()
	if err != nil {
		return fmt.Errorf("clusternet: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if name != m.names.bridge && name != m.names.vxlan && !strings.HasPrefix(name, m.names.veth) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("clusternet: remove %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// enableForwarding turns on IPv4 forwarding in the host namespace, which
// masqueraded egress needs.
func (m *Manager) enableForwarding() error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("clusternet: egress needs IPv4 forwarding: %w", err)
	}
	m.log.Info("clusternet: turned on IPv4 forwarding for task egress", "sysctl", "net.ipv4.ip_forward=1")
	return nil
}

// writeSysctl writes value to /proc/sys/<key>, in the network namespace
// of the calling thread.
func writeSysctl(key, value string) error {
	return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}

// isNotFound reports whether err says a link does not exist.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// ipNet converts p to the form netlink wants.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// listLinks lists the host's links.
func listLinks() ([]netlink.Link, error) { return dump(netlink.LinkList) }

// dump runs a netlink dump, again when the kernel interrupted it (links or
// addresses came or went meanwhile, as they do while other tasks start).
func dump[T any](list func() (T, error)) (T, error) {
	for tries := 1; ; tries++ {
		v, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || tries == 10 {
			return v, err
		}
	}
}
