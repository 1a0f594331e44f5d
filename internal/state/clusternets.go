package state

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/hashicorp/go-memdb"
)

// Cluster networks. Every cluster gets a private subnet of the servers'
// cluster networks (--cluster-networks, a /SubnetBits each), allocated in
// the Raft write that creates it and freed by the one that deletes it,
// and the egress networks its tasks may reach. The record is internal:
// reads of clusters show the subnet and egress through api.Cluster.

// Defaults of the servers' cluster networks: 2,048 clusters of 4,094
// addresses each.
const (
	DefaultClusterNetworks   = "10.128.0.0/9"
	DefaultClusterSubnetBits = 20
)

// clusterNet is a cluster's network as stored.
type clusterNet struct {
	Cluster string
	// Index is the subnet's position in the cluster networks; it also
	// names the cluster's overlay network (VXLAN id).
	Index  int
	Subnet string
	Egress []string
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
func (tx *writeTxn) allocateNetwork(cluster, networks string, bits int, egress []string) (*clusterNet, error) {
	if networks == "" {
		networks, bits = DefaultClusterNetworks, DefaultClusterSubnetBits
	}
	pool, err := netip.ParsePrefix(networks)
	if err != nil || !pool.Addr().Is4() || pool.Masked() != pool || bits < pool.Bits() || bits > 30 {
		return nil, fmt.Errorf("%w: the servers' cluster networks %q with /%d subnets are not a valid IPv4 division", ErrInvalid, networks, bits)
	}
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
	base := pool.Addr().As4()
	addr := binary.BigEndian.Uint32(base[:]) + uint32(idx)<<(32-bits)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], addr)
	n := &clusterNet{Cluster: cluster, Index: idx, Subnet: netip.PrefixFrom(netip.AddrFrom4(b), bits).String(), Egress: egress}
	return n, tx.put(tableClusterNets, n)
}

// freeNetwork frees a deleted cluster's subnet.
func (tx *writeTxn) freeNetwork(cluster string) error {
	if n := first[*clusterNet](tx.Txn, nil, tableClusterNets, cluster); n != nil {
		return tx.del(tableClusterNets, n)
	}
	return nil
}
