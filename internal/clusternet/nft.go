package clusternet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// refusedCounter names the nft counter object every drop rule updates.
const refusedCounter = "refused"

// probeNftables checks that the kernel has what the node's table needs:
// nftables with inet filter and NAT chains, masquerading and named
// counters. It adds a table with one of each and deletes it in the same
// batch, so nothing stays behind.
func probeNftables(name string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	c.AddObj(&nftables.NamedObj{Table: t, Name: refusedCounter, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Hooknum: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource, Type: nftables.ChainTypeNAT, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: slices.Concat(ctEstablished(), []expr.Any{&expr.Masq{}})})
	c.DelTable(t)
	return c.Flush()
}

// writeRules replaces the node's nft table with the rules for n, in one
// atomic batch. The drops the old table counted are carried over into
// m.refused first, since replacing the table resets its counter.
//
// Rules name the bridge and n's prefixes, never a task, so tasks come and
// go without a rule change:
//
//	raw (prerouting, priority raw):
//	             iif br udp/tcp dport 53 return
//	             iif br ip saddr Subnet daddr Subnet daddr != gw notrack
//	input:       iif br ct established,related accept
//	             iif br ip saddr Block tcp daddr gw dport EndpointPort accept
//	             iif br ip saddr Block udp/tcp daddr gw dport DNSPort accept
//	             iif br counter drop
//	prerouting:  iif br ip saddr Block udp/tcp dport 53 dnat to gw:DNSPort
//	forward:     iif br oif br accept          (bridged: br_netfilter)
//	             iif br daddr Deny counter drop
//	             iif br daddr Egress accept
//	             iif br counter drop
//	             oif br ct established,related accept
//	             oif br counter drop
//	postrouting: ip saddr Block daddr Egress oif != br masquerade
//
// The input accept is limited to the node's own block so that a task of
// another node of the cluster, which reaches this bridge over the VXLAN,
// cannot use this node's endpoint.
func (m *Manager) writeRules(n *Network) error {
	prev, err := m.readCounter()
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("clusternet: nftables: %w", err)
	}
	t := &nftables.Table{Name: m.names.table, Family: nftables.TableFamilyINet}
	c.AddTable(t) // so that the delete below cannot fail
	c.DelTable(t)
	c.AddTable(t)
	c.AddObj(&nftables.NamedObj{Table: t, Name: refusedCounter, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})

	accept := nftables.ChainPolicyAccept
	chain := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority, typ nftables.ChainType) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Hooknum: hook, Priority: prio, Type: typ, Policy: &accept})
	}
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	br := m.names.bridge
	gw := n.gateway()

	// Traffic between tasks needs no connection tracking: the forward
	// chain accepts it whole. Skipping conntrack (which br_netfilter
	// would run on every bridged frame) is most of what the firewall
	// costs throughput. Queries to port 53 stay tracked, for the DNAT.
	raw := chain("raw", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw, nftables.ChainTypeFilter)
	if n.DNSPort != 0 {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(raw, ifname(expr.MetaKeyIIFNAME, br, true), dport(proto, 53), verdict(expr.VerdictReturn))
		}
	}
	rule(raw, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(12, n.Subnet), addrIn(16, n.Subnet),
		addrNot(16, gw), []expr.Any{&expr.Notrack{}})

	in := chain("input", nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	rule(in, ifname(expr.MetaKeyIIFNAME, br, true), ctEstablished(), verdict(expr.VerdictAccept))
	rule(in, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(12, n.Block), addrIn(16, netip.PrefixFrom(gw, 32)),
		tcpDport(n.EndpointPort), verdict(expr.VerdictAccept))
	if n.DNSPort != 0 {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(in, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(12, n.Block), addrIn(16, netip.PrefixFrom(gw, 32)),
				dport(proto, n.DNSPort), verdict(expr.VerdictAccept))
		}
	}
	rule(in, ifname(expr.MetaKeyIIFNAME, br, true), refuse())

	if n.DNSPort != 0 {
		// Tasks keep the host's resolv.conf: whatever resolver it names,
		// their queries go to the node's.
		pre := chain("prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, nftables.ChainTypeNAT)
		a := gw.As4()
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rule(pre, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(12, n.Block), dport(proto, 53), []expr.Any{
				&expr.Immediate{Register: 1, Data: a[:]},
				&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, n.DNSPort)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			})
		}
	}

	fwd := chain("forward", nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br, true), ifname(expr.MetaKeyOIFNAME, br, true), verdict(expr.VerdictAccept))
	for _, p := range n.Deny {
		rule(fwd, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(16, p), refuse())
	}
	for _, p := range n.Egress {
		rule(fwd, ifname(expr.MetaKeyIIFNAME, br, true), ipv4(), addrIn(16, p), verdict(expr.VerdictAccept))
	}
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br, true), refuse())
	rule(fwd, ifname(expr.MetaKeyOIFNAME, br, true), ctEstablished(), verdict(expr.VerdictAccept))
	rule(fwd, ifname(expr.MetaKeyOIFNAME, br, true), refuse())

	post := chain("postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nftables.ChainTypeNAT)
	for _, p := range n.Egress {
		rule(post, ipv4(), addrIn(12, n.Block), addrIn(16, p), ifname(expr.MetaKeyOIFNAME, br, false), []expr.Any{&expr.Masq{}})
	}

	if err := c.Flush(); err != nil {
		return fmt.Errorf("clusternet: write nft table %s (kernel without nf_tables NAT?): %w", m.names.table, err)
	}
	m.mu.Lock()
	m.refused += prev
	m.mu.Unlock()
	return nil
}

// deleteTable deletes the node's nft table and returns the drops it had
// counted. A missing table is fine. A counter that cannot be read does
// not keep the table from going.
func (m *Manager) deleteTable() (uint64, error) {
	prev, cerr := m.readCounter()
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("clusternet: nftables: %w", err)
	}
	t := &nftables.Table{Name: m.names.table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("clusternet: delete nft table %s: %w", m.names.table, err)
	}
	return prev, cerr
}

// readCounter returns the packets the node's table counted as refused, 0
// when there is no table.
func (m *Manager) readCounter() (uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("clusternet: nftables: %w", err)
	}
	// The library does not wrap the kernel's ENOENT for a missing table,
	// so look for the table first.
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("clusternet: list nft tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == m.names.table }) {
		return 0, nil
	}
	t := &nftables.Table{Name: m.names.table, Family: nftables.TableFamilyINet}
	obj, err := c.GetObject(&nftables.NamedObj{Table: t, Name: refusedCounter, Type: nftables.ObjTypeCounter})
	if err != nil {
		return 0, fmt.Errorf("clusternet: read nft counter: %w", err)
	}
	no, ok := obj.(*nftables.NamedObj)
	if !ok {
		return 0, nil
	}
	ctr, ok := no.Obj.(*expr.Counter)
	if !ok {
		return 0, nil
	}
	return ctr.Packets, nil
}

// Refused returns how many packets the node's firewall dropped: packets
// from tasks to anything but the endpoint and the allowed egress, and
// packets towards tasks that they did not ask for. The count survives
// Apply and Remove for the life of the Manager.
func (m *Manager) Refused() (uint64, error) {
	n, err := m.readCounter()
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refused + n, nil
}

// ifname matches the input or output interface name (key) against name,
// or anything but name when eq is false.
func ifname(key expr.MetaKey, name string, eq bool) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// ipv4 matches IPv4 packets, so that network header offsets mean IPv4
// fields.
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// addrIn matches the IPv4 address at offset (12 source, 16 destination)
// of the network header against prefix p. It must follow ipv4().
func addrIn(offset uint32, p netip.Prefix) []expr.Any {
	a := p.Masked().Addr().As4()
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}
	if p.Bits() == 0 {
		return nil
	}
	if p.Bits() == 32 {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]}}
	}
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

// addrNot matches the IPv4 address at offset of the network header when
// it is not a. It must follow ipv4().
func addrNot(offset uint32, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b[:]},
	}
}

// tcpDport matches TCP packets to port.
func tcpDport(port uint16) []expr.Any { return dport(unix.IPPROTO_TCP, port) }

// dport matches packets of protocol proto (TCP or UDP) to port.
func dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// ctEstablished matches packets of established or related connections.
func ctEstablished() []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// refuse counts the packet as refused and drops it.
func refuse() []expr.Any {
	return []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: refusedCounter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// verdict ends the rule with kind.
func verdict(kind expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: kind}}
}
