package state

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Cluster networks. Every cluster gets a private subnet of the servers'
// cluster networks (--cluster-networks, a /SubnetBits each), allocated in
// the Raft write that creates it and freed by the one that deletes it,
// and the egress networks its tasks may reach. The record is internal:
// reads of clusters show the subnet and egress through api.Cluster.

// Defaults of the servers' cluster networks: 512 clusters of up to 64
// nodes, each node with a /24 of its cluster's subnet for its tasks (253
// addresses besides its gateway).
const (
	DefaultClusterNetworks   = "10.128.0.0/9"
	DefaultClusterSubnetBits = 18
	DefaultNodeSubnetBits    = 24
)

// maxNodeSubnetBits leaves a node's block at least 13 task addresses.
const maxNodeSubnetBits = 28

// clusterNet is a cluster's network as stored.
type clusterNet struct {
	Cluster string
	// Index is the subnet's position in the cluster networks; it also
	// names the cluster's overlay network (VXLAN id).
	Index  int
	Subnet string
	Egress []string
	// NodeBits is the prefix length of each member node's block of the
	// subnet; Blocks holds each member's block index within the subnet.
	// A node gets the lowest free block when it joins the cluster and
	// frees it when it leaves, all in the write that changes membership.
	NodeBits int
	Blocks   map[string]int
	// Freed holds, for each block a node left, the Raft index of the
	// write that freed it. A joining node gets a block never used, or the
	// one freed longest ago: the node that left may still hold the
	// block's gateway address on its host for a while (an agent not yet
	// told, a dead agent whose host is the same, as in shoal dev).
	Freed map[int]uint64
}

// VNI is the id of the cluster's overlay network (VXLAN): its subnet's
// position plus one.
func (n *clusterNet) VNI() uint32 { return uint32(n.Index) + 1 }

// NodeNetwork is what a member node needs to join its cluster's network:
// nil when the cluster has no network record or the node no block.
func (s *Snapshot) NodeNetwork(ws memdb.WatchSet, cluster, node string) *api.NodeNetwork {
	n := first[*clusterNet](s.txn, ws, tableClusterNets, cluster)
	if n == nil {
		return nil
	}
	idx, ok := n.Blocks[node]
	if !ok {
		return nil
	}
	subnet := netip.MustParsePrefix(n.Subnet)
	return &api.NodeNetwork{Cluster: cluster, VNI: n.VNI(), Subnet: n.Subnet,
		Block: nthPrefix(subnet.Addr(), n.NodeBits, idx).String(), Egress: n.Egress}
}

// nthPrefix is the idx-th /bits network counted from base.
func nthPrefix(base netip.Addr, bits, idx int) netip.Prefix {
	b := base.As4()
	addr := binary.BigEndian.Uint32(b[:]) + uint32(idx)<<(32-bits)
	binary.BigEndian.PutUint32(b[:], addr)
	return netip.PrefixFrom(netip.AddrFrom4(b), bits)
}

// ClusterNetwork returns a cluster's subnet and egress networks; empty for
// a cluster created before clusters had networks.
func (s *Snapshot) ClusterNetwork(ws memdb.WatchSet, cluster string) (subnet string, egress []string) {
	if n := first[*clusterNet](s.txn, ws, tableClusterNets, cluster); n != nil {
		return n.Subnet, n.Egress
	}
	return "", nil
}

// maxSubnets bounds how many subnets the cluster networks are divided
// into, so that allocation stays cheap whatever the configuration.
const maxSubnets = 1 << 16

// allocateNetwork gives cluster the lowest free subnet of networks (a
// CIDR, split into /bits subnets) and records its egress networks, which
// must not overlap the cluster networks.
func (tx *writeTxn) allocateNetwork(cluster, networks string, bits, nodeBits int, egress []string) (*clusterNet, error) {
	if networks == "" {
		networks, bits = DefaultClusterNetworks, DefaultClusterSubnetBits
	}
	if nodeBits == 0 {
		nodeBits = max(DefaultNodeSubnetBits, bits)
	}
	if err := ValidateNetworks(networks, bits, nodeBits); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	pool := netip.MustParsePrefix(networks)
	for i, e := range egress {
		if p, err := netip.ParsePrefix(e); err == nil && p.Overlaps(pool) {
			return nil, fmt.Errorf("%w: egress[%d]: %s overlaps the cluster networks %s", ErrInvalid, i, e, pool)
		}
	}
	used := map[int]bool{}
	for _, n := range collect[*clusterNet](tx.Txn, nil, tableClusterNets, "id") {
		used[n.Index] = true
	}
	count := min(1<<(bits-pool.Bits()), maxSubnets)
	idx := -1
	for i := 0; i < count; i++ {
		if !used[i] {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("%w: all %d cluster networks of %s are in use; delete a cluster or give the servers a larger --cluster-networks",
			ErrNoRoom, count, pool)
	}
	n := &clusterNet{Cluster: cluster, Index: idx, Subnet: nthPrefix(pool.Addr(), bits, idx).String(), Egress: egress,
		NodeBits: nodeBits, Blocks: map[string]int{}}
	return n, tx.put(tableClusterNets, n)
}

// ValidateNetworks checks the servers' cluster networks: an IPv4 CIDR
// divided into /bits cluster subnets, each divided into /nodeBits node
// blocks.
func ValidateNetworks(networks string, bits, nodeBits int) error {
	pool, err := netip.ParsePrefix(networks)
	switch {
	case err != nil || !pool.Addr().Is4() || pool.Masked() != pool:
		return fmt.Errorf("the cluster networks %q are not an IPv4 network in CIDR form (e.g. %s)", networks, DefaultClusterNetworks)
	case bits < pool.Bits() || bits > maxNodeSubnetBits:
		return fmt.Errorf("cluster subnets of /%d do not divide the cluster networks %s (between /%d and /%d)", bits, pool, pool.Bits(), maxNodeSubnetBits)
	case nodeBits < bits || nodeBits > maxNodeSubnetBits:
		return fmt.Errorf("node blocks of /%d do not divide cluster subnets of /%d (between /%d and /%d)", nodeBits, bits, bits, maxNodeSubnetBits)
	}
	return nil
}

// syncBlocks gives each node whose cluster this write changed a block of
// its new cluster's subnet and frees its block of the old one. Nodes are
// taken in name order: the FSM must stay deterministic.
func (tx *writeTxn) syncBlocks() error {
	names := make([]string, 0, len(tx.nodes))
	for name := range tx.nodes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		old := ""
		if raw, _ := tx.First(tableNodes, "id", name); raw != nil {
			old = raw.(*api.Node).Cluster
		}
		if now := tx.nodes[name].Cluster; now != old {
			if err := tx.setBlock(old, name, false); err != nil {
				return err
			}
			if err := tx.setBlock(now, name, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// setBlock gives node a block of cluster's subnet (join) or frees it. A
// cluster without a network record (none, or deleted in this write) is
// left alone.
func (tx *writeTxn) setBlock(cluster, node string, join bool) error {
	if cluster == "" {
		return nil
	}
	n := first[*clusterNet](tx.Txn, nil, tableClusterNets, cluster)
	if n == nil || n.NodeBits == 0 {
		return nil
	}
	if _, has := n.Blocks[node]; has == join {
		return nil
	}
	c := *n
	c.Blocks = maps.Clone(n.Blocks)
	if c.Blocks == nil {
		c.Blocks = map[string]int{}
	}
	c.Freed = maps.Clone(n.Freed)
	if c.Freed == nil {
		c.Freed = map[int]uint64{}
	}
	if !join {
		c.Freed[c.Blocks[node]] = tx.index
		delete(c.Blocks, node)
		return tx.put(tableClusterNets, &c)
	}
	used := map[int]bool{}
	for _, i := range c.Blocks {
		used[i] = true
	}
	subnet := netip.MustParsePrefix(c.Subnet)
	count := 1 << (c.NodeBits - subnet.Bits())
	best := -1
	for i := 0; i < count; i++ {
		if !used[i] && (best < 0 || c.Freed[i] < c.Freed[best]) {
			best = i
		}
	}
	if best >= 0 {
		c.Blocks[node] = best
		delete(c.Freed, best)
		return tx.put(tableClusterNets, &c)
	}
	return fmt.Errorf("%w: cluster %s's network %s has room for %d nodes of /%d each; give the servers a smaller --node-subnet-bits for new clusters",
		ErrNoRoom, cluster, c.Subnet, count, c.NodeBits)
}

// freeNetwork frees a deleted cluster's subnet.
func (tx *writeTxn) freeNetwork(cluster string) error {
	if n := first[*clusterNet](tx.Txn, nil, tableClusterNets, cluster); n != nil {
		return tx.del(tableClusterNets, n)
	}
	return nil
}
