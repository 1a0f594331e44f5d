package clusternet

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TaskNet is a task's place on the cluster network.
type TaskNet struct {
	NetNS string     // path of the task's network namespace file (bind mount), for sandbox.Spec.NetNS
	Addr  netip.Addr // the task's address on the cluster network
}

// taskNS is one task network namespace, ready in the pool or in use.
type taskNS struct {
	path string     // bind mount of the namespace
	veth string     // host side of the veth pair, on the bridge
	addr netip.Addr // eth0's address
	mtu  int        // eth0's MTU
	gen  uint64     // Manager.gen it was built for
}

// AddTask gives task id (any string, e.g. "job/3#runid") a network
// namespace on the cluster network. It takes a ready namespace from the
// pool when there is one, and builds one otherwise. Adding a task that
// already has a namespace returns that namespace. It returns [ErrNoNetwork]
// when no network is applied and [ErrFull] when the node's block has no
// free address.
func (m *Manager) AddTask(id string) (TaskNet, error) {
	m.mu.Lock()
	if t, ok := m.tasks[id]; ok {
		m.mu.Unlock()
		return TaskNet{NetNS: t.path, Addr: t.addr}, nil
	}
	if m.cur == nil {
		m.mu.Unlock()
		return TaskNet{}, ErrNoNetwork
	}
	if len(m.ready) > 0 {
		t := m.ready[0]
		m.ready = m.ready[1:]
		m.tasks[id] = t
		m.mu.Unlock()
		m.poke()
		return TaskNet{NetNS: t.path, Addr: t.addr}, nil
	}
	m.mu.Unlock()

	t, err := m.build()
	if errors.Is(err, ErrFull) && m.waitReaped() {
		t, err = m.build() // addresses of removed tasks are free now
	}
	if err != nil {
		return TaskNet{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.tasks[id]; ok || t.gen != m.gen {
		// Added concurrently, or the network changed meanwhile: this
		// namespace is not wanted; a ready one serves the next add.
		if t.gen == m.gen {
			m.ready = append(m.ready, t)
		} else {
			go m.discard(t)
		}
		if t, ok := m.tasks[id]; ok {
			return TaskNet{NetNS: t.path, Addr: t.addr}, nil
		}
		return TaskNet{}, ErrNoNetwork
	}
	m.tasks[id] = t
	return TaskNet{NetNS: t.path, Addr: t.addr}, nil
}

// RemoveTask frees the network namespace of task id. Removing an unknown
// task is a no-op.
//
// The namespace is recycled: after [Manager.scrub] puts back what the task
// may have changed, it joins the ready pool, address and veth pair
// included, and the next AddTask takes it with no kernel work. Building and
// destroying a namespace costs milliseconds of CPU (netlink requests, the
// kernel's conntrack walks when a device goes down, its deferred namespace
// cleanup); recycling costs a few netlink dumps. Only namespaces beyond
// [recycleCap] (or the pool size, if larger), namespaces of a network that
// has since been replaced, and namespaces that cannot be scrubbed are
// destroyed.
//
// Recycling assumes that no process of the task is left in the namespace:
// the agent calls RemoveTask once the run's sandbox is gone, and the
// sandbox runs a task in a PID namespace of its own, whose end kills every
// process in it. A process that escaped would share the next task's
// network.
//
// A destroyed namespace's file is gone when RemoveTask returns; deleting
// the veth pair takes the kernel tens of milliseconds (it waits for an RCU
// grace period), so that happens in the background, and the address is free
// for another task once it is done.
func (m *Manager) RemoveTask(id string) error {
	m.mu.Lock()
	t, ok := m.tasks[id]
	delete(m.tasks, id)
	var n Network
	recycle := ok && m.cur != nil && t.gen == m.gen && len(m.ready) < m.keep()
	if recycle {
		n = m.cur.clone()
	}
	m.mu.Unlock()
	if !ok {
		return nil
	}
	if recycle {
		err := m.scrub(t, &n)
		if err == nil {
			m.mu.Lock()
			if t.gen == m.gen && len(m.ready) < m.keep() {
				m.ready = append(m.ready, t)
				m.mu.Unlock()
				return nil
			}
			m.mu.Unlock()
		} else if m.current(t) {
			// (A namespace of a network torn down meanwhile is
			// expected to fail.)
			m.log.Warn("clusternet: task namespace not reusable", "netns", t.path, "err", err)
		}
	}
	err := removeNSFile(t.path)
	m.mu.Lock()
	m.reaping++
	m.mu.Unlock()
	go func() {
		m.discard(t)
		m.mu.Lock()
		m.reaping--
		m.reaped.Broadcast()
		m.mu.Unlock()
		m.poke()
	}()
	return err
}

// current reports whether t belongs to the network applied now.
func (m *Manager) current(t *taskNS) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return t.gen == m.gen
}

// waitReaped waits until the background removals of task namespaces are
// done, and reports whether there were any.
func (m *Manager) waitReaped() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	any := m.reaping > 0
	for m.reaping > 0 {
		m.reaped.Wait()
	}
	return any
}

// discard destroys a namespace nobody will use and frees its address.
func (m *Manager) discard(t *taskNS) {
	if err := destroyNS(t); err != nil {
		m.log.Warn("clusternet: removing an unused task namespace", "netns", t.path, "err", err)
	}
	m.mu.Lock()
	if t.gen == m.gen {
		delete(m.used, t.addr)
	}
	m.mu.Unlock()
}

// build makes one task namespace for the current network, with the lowest
// free address of the block. It holds m.topo, so the network cannot change
// under it.
func (m *Manager) build() (*taskNS, error) {
	m.topo.Lock()
	defer m.topo.Unlock()
	m.mu.Lock()
	if m.cur == nil {
		m.mu.Unlock()
		return nil, ErrNoNetwork
	}
	n := m.cur.clone()
	addr, ok := m.freeAddr(&n)
	if !ok {
		m.mu.Unlock()
		return nil, ErrFull
	}
	m.used[addr] = true
	m.seq++
	seq := m.seq & 0xffffff
	t := &taskNS{
		path: filepath.Join(m.names.nsDir, fmt.Sprintf("%s%06x", m.names.nsFile, seq)),
		veth: fmt.Sprintf("%s%06x", m.names.veth, seq),
		addr: addr,
		gen:  m.gen,
	}
	m.mu.Unlock()

	if err := m.setupNS(t, &n); err != nil {
		derr := destroyNS(t)
		m.mu.Lock()
		if t.gen == m.gen {
			delete(m.used, addr)
		}
		m.mu.Unlock()
		return nil, errors.Join(err, derr)
	}
	return t, nil
}

// freeAddr returns the lowest host address of the block that is neither
// the gateway nor used. The caller holds m.mu.
func (m *Manager) freeAddr(n *Network) (netip.Addr, bool) {
	last := lastAddr(n.Block)
	for a := n.gateway().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if !m.used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// lastAddr is the broadcast address of IPv4 prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// setupNS creates t's namespace, bind-mounted at t.path, and its veth pair:
// eth0 inside with t.addr on the cluster subnet and a default route via
// the gateway, the host side on the bridge.
func (m *Manager) setupNS(t *taskNS, n *Network) error {
	if err := m.shareNSDir(); err != nil {
		return err
	}
	if err := newNamedNS(t.path); err != nil {
		return err
	}
	ns, err := netns.GetFromPath(t.path)
	if err != nil {
		return fmt.Errorf("clusternet: open %s: %w", t.path, err)
	}
	defer ns.Close()
	br, err := netlink.LinkByName(m.names.bridge)
	if err != nil {
		return fmt.Errorf("clusternet: bridge %s: %w", m.names.bridge, err)
	}
	mtu := br.Attrs().MTU
	t.mtu = mtu
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.MasterIndex = t.veth, mtu, br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("clusternet: create veth %s: %w", t.veth, err)
	}
	_ = writeSysctl("net/ipv6/conf/"+t.veth+"/disable_ipv6", "1")
	host, err := netlink.LinkByName(t.veth)
	if err != nil {
		return fmt.Errorf("clusternet: veth %s: %w", t.veth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("clusternet: veth %s up: %w", t.veth, err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("clusternet: netlink in %s: %w", t.path, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("clusternet: lo in %s: %w", t.path, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("clusternet: eth0 in %s: %w", t.path, err)
	}
	addr := netip.PrefixFrom(t.addr, n.Subnet.Bits())
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("clusternet: eth0 in %s: address %s: %w", t.path, addr, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("clusternet: eth0 in %s up: %w", t.path, err)
	}
	gw := n.gateway()
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice()), Dst: nil}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("clusternet: default route via %s in %s: %w", gw, t.path, err)
	}
	return waitCarrier(h, t.veth)
}

// carrierWait bounds how long a new veth pair may take to come up.
const carrierWait = 2 * time.Second

// waitCarrier waits until the new veth pair carries frames: eth0 (seen
// through h) is operationally up, and the host side is a forwarding port
// of the bridge. Both happen asynchronously in the kernel's link watch
// after the pair is set up; until then frames are dropped, and a task's
// first ARP request lost that way costs its first connection a
// one-second retransmission.
func waitCarrier(h *netlink.Handle, hostVeth string) error {
	deadline := time.Now().Add(carrierWait)
	for {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("clusternet: eth0: %w", err)
		}
		state, err := os.ReadFile("/sys/class/net/" + hostVeth + "/brport/state")
		forwarding := strings.TrimSpace(string(state)) == "3" // BR_STATE_FORWARDING
		if errors.Is(err, fs.ErrNotExist) {
			// /sys belongs to another network namespace (the agent was
			// started with nsenter --net): the host side being up is the
			// best sign there is.
			host, err := netlink.LinkByName(hostVeth)
			forwarding = err == nil && host.Attrs().OperState == netlink.OperUp
		}
		if eth.Attrs().OperState == netlink.OperUp && forwarding {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clusternet: veth %s not forwarding after %v (eth0 %v, bridge port state %q)",
				hostVeth, carrierWait, eth.Attrs().OperState, strings.TrimSpace(string(state)))
		}
		time.Sleep(time.Millisecond)
	}
}

// newNamedNS creates a network namespace and bind-mounts it at path, on
// a thread switched into it and back (onSwitchedThread).
func newNamedNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("clusternet: netns file: %w", err)
	}
	f.Close()
	unshare := func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("clusternet: new netns: %w", err)
		}
		return nil
	}
	return onSwitchedThread(unshare, func() error {
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("clusternet: bind-mount netns at %s: %w", path, err)
		}
		// New devices, eth0 included, get no IPv6: tasks would otherwise
		// solicit routers on the bridge, which the firewall drops and
		// counts as refused. And eth0 announces its address when it comes
		// up (gratuitous ARP), so that peers drop what they cached for an
		// earlier task with the same address.
		_ = writeSysctl("net/ipv6/conf/all/disable_ipv6", "1")
		_ = writeSysctl("net/ipv6/conf/default/disable_ipv6", "1")
		_ = writeSysctl("net/ipv4/conf/default/arp_notify", "1")
		return nil
	})
}

// destroyNS removes t's veth and unmounts and removes its namespace file.
// Processes still in the namespace keep it alive, but without the veth it
// has no network.
func destroyNS(t *taskNS) error {
	var errs []error
	if l, err := netlink.LinkByName(t.veth); err == nil {
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("clusternet: remove veth %s: %w", t.veth, err))
		}
	}
	errs = append(errs, removeNSFile(t.path))
	return errors.Join(errs...)
}

// removeNSFile unmounts and removes a namespace file; a missing file is
// fine.
func removeNSFile(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("clusternet: unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("clusternet: remove %s: %w", path, err)
	}
	return nil
}

// shareNSDir makes the namespace directory a shared mount point, as
// "ip netns" does with /run/netns: a task's mount namespace is a copy of
// the host's, and with a private copy the task would hold every namespace
// mounted at its start alive until it ends. Shared, unmounts propagate.
func (m *Manager) shareNSDir() error {
	if m.shared {
		return nil
	}
	dir := m.names.nsDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("clusternet: %w", err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil && isMountPoint(dir) {
		m.shared = true
		return nil
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("clusternet: bind-mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("clusternet: make %s shared: %w", dir, err)
	}
	m.shared = true
	return nil
}

// isMountPoint reports whether dir is the root of a mount in this mount
// namespace.
func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	abs, _ := filepath.Abs(dir)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == abs {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeNamespaceFiles unmounts and removes every namespace file of this
// node, then the shared mount of the namespace directory.
func (m *Manager) removeNamespaceFiles() error {
	entries, err := os.ReadDir(m.names.nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("clusternet: %w", err)
	}
	var errs []error
	others := false
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), m.names.nsFile) {
			others = true
			continue
		}
		errs = append(errs, removeNSFile(filepath.Join(m.names.nsDir, e.Name())))
	}
	if !others && isMountPoint(m.names.nsDir) {
		if err := unix.Unmount(m.names.nsDir, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("clusternet: unmount %s: %w", m.names.nsDir, err))
		}
	}
	return errors.Join(errs...)
}

// fillPool keeps m.pool namespaces ready while a network is applied. It
// runs until Close.
func (m *Manager) fillPool() {
	defer m.wg.Done()
	for {
		select {
		case <-m.done:
			return
		case <-m.wake:
		}
		for {
			m.mu.Lock()
			want := m.cur != nil && len(m.ready) < m.pool
			m.mu.Unlock()
			if !want {
				break
			}
			select {
			case <-m.done:
				return
			default:
			}
			t, err := m.build()
			if errors.Is(err, ErrFull) || errors.Is(err, ErrNoNetwork) {
				break
			}
			if err != nil {
				m.log.Warn("clusternet: preparing a task namespace", "err", err)
				select {
				case <-m.done:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			m.mu.Lock()
			if t.gen == m.gen {
				m.ready = append(m.ready, t)
				t = nil
			}
			m.mu.Unlock()
			if t != nil {
				m.discard(t)
			}
		}
	}
}
