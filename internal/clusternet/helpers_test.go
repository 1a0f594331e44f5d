package clusternet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// needRoot skips tests that build kernel objects when not root.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root")
	}
}

// uniqueNode returns a node name no other test run uses, so that leftovers
// of a killed run never collide.
func uniqueNode(tb testing.TB, prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// newTestManager starts a Manager whose network is removed, and whose
// leftovers are checked for, when the test ends.
func newTestManager(tb testing.TB, node string, pool int) *Manager {
	tb.Helper()
	m, err := New(Config{Node: node, StateDir: tb.TempDir(), PoolSize: pool})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
		if err := m.Remove(); err != nil {
			tb.Errorf("Remove: %v", err)
		}
		checkGone(tb, m)
	})
	return m
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(tb testing.TB) uint16 {
	tb.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// leftovers lists the kernel objects of m's node that still exist: links
// named after it, and its nft table.
func leftovers(tb testing.TB, m *Manager) []string {
	tb.Helper()
	var left []string
	links, err := listLinks()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range links {
		n := l.Attrs().Name
		if n == m.names.bridge || n == m.names.vxlan || strings.HasPrefix(n, m.names.veth) {
			left = append(left, "link "+n)
		}
	}
	c, err := nftables.New()
	if err != nil {
		tb.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		tb.Fatal(err)
	}
	for _, t := range tables {
		if t.Name == m.names.table {
			left = append(left, "nft table "+t.Name)
		}
	}
	entries, _ := os.ReadDir(m.names.nsDir)
	for _, e := range entries {
		left = append(left, "netns file "+e.Name())
	}
	return left
}

// checkGone fails the test when m's node left kernel objects behind.
func checkGone(tb testing.TB, m *Manager) {
	tb.Helper()
	if left := leftovers(tb, m); len(left) > 0 {
		tb.Errorf("node %s left behind: %v", m.cfg.Node, left)
	}
}

// inNS runs fn in the network namespace at path (see InNamespace).
func inNS(path string, fn func() error) error { return InNamespace(path, fn) }

// listenTCP starts a TCP echo-free listener in the namespace at path (the
// host's when path is empty) that accepts and closes connections, and
// returns its port.
func listenTCP(tb testing.TB, path, addr string) uint16 {
	tb.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}
	var err error
	if path == "" {
		err = listen()
	} else {
		err = inNS(path, listen)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dialTimeout bounds attempts that a firewall drop turns into silence.
const dialTimeout = 400 * time.Millisecond

// reachTimeout bounds attempts that must succeed: long enough for a SYN
// retransmission on a busy machine.
const reachTimeout = 3 * time.Second

// dialFrom connects from the namespace at path to addr and reads the
// listener's greeting, giving up after dialTimeout.
func dialFrom(path string, addr netip.AddrPort) error {
	return dialFromWithin(path, addr, dialTimeout)
}

// reach is dialFrom for connections that must succeed.
func reach(path string, addr netip.AddrPort) error {
	return dialFromWithin(path, addr, reachTimeout)
}

func dialFromWithin(path string, addr netip.AddrPort, timeout time.Duration) error {
	return inNS(path, func() error {
		c, err := net.DialTimeout("tcp4", addr.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(b) != "hi" {
			return fmt.Errorf("got %q, want %q", b, "hi")
		}
		return nil
	})
}

// udpReachable sends a datagram from the namespace at from to a UDP
// listener in the namespace at to (on addr) and reports whether it
// arrived.
func udpReachable(tb testing.TB, from, to string, addr netip.Addr) bool {
	tb.Helper()
	var pc net.PacketConn
	err := inNS(to, func() (err error) {
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer pc.Close()
	dst := pc.LocalAddr().String()
	err = inNS(from, func() error {
		c, err := net.Dial("udp4", dst)
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("x")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false
	}
	_ = pc.SetReadDeadline(time.Now().Add(dialTimeout))
	buf := make([]byte, 16)
	_, _, err = pc.ReadFrom(buf)
	return err == nil
}

// testNet is a network namespace the test made, joined to the host by a
// veth pair; the host side gets hostAddr, the namespace side addrs.
type testNet struct {
	path string
}

// newTestNet makes a namespace reachable from the host through a veth
// whose host side has hostAddr; the namespace side gets addrs (the first
// with hostAddr's prefix length, the others as /32).
func newTestNet(tb testing.TB, hostAddr netip.Prefix, addrs ...netip.Addr) *testNet {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "ns")
	if err := newNamedNS(path); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := removeNSFile(path); err != nil {
			tb.Error(err)
		}
	})
	ns, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "shtst" + hex.EncodeToString(b)
	la := netlink.NewLinkAttrs()
	la.Name = name
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				tb.Error(err)
			}
		}
	})
	host, err := netlink.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(hostAddr)}); err != nil {
		tb.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		tb.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		tb.Fatal(err)
	}
	for i, a := range addrs {
		bits := 32
		if i == 0 {
			bits = hostAddr.Bits()
		}
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, bits))}); err != nil {
			tb.Fatal(err)
		}
	}
	for _, l := range []string{"lo", "eth0"} {
		link, err := h.LinkByName(l)
		if err == nil {
			err = h.LinkSetUp(link)
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	// Frames are dropped until the kernel's link watch has seen the pair
	// come up.
	waitFor(tb, "the test veth pair to come up", func() bool {
		eth, err1 := h.LinkByName("eth0")
		host, err2 := netlink.LinkByName(name)
		return err1 == nil && err2 == nil && eth.Attrs().OperState == netlink.OperUp && host.Attrs().OperState == netlink.OperUp
	})
	return &testNet{path: path}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nthAddr returns the address i after the start of prefix p.
func nthAddr(p netip.Prefix, i int) netip.Addr {
	a := p.Masked().Addr()
	for range i {
		a = a.Next()
	}
	return a
}

// Ranges the tests take their networks from: benchmarking (RFC 2544) for
// cluster subnets, shared address space (RFC 6598) for the outside.
var (
	clusterRange = netip.MustParsePrefix("198.18.0.0/15")
	outsideRange = netip.MustParsePrefix("100.64.0.0/10")
)
