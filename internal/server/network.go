package server

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// nodeNetwork is node n's part of its cluster's private network: the
// block and overlay id from the state, the other members' overlay
// addresses, and the addresses of every server and node, which tasks must
// never reach even where the cluster's egress would cover them.
func nodeNetwork(snap *state.Snapshot, ws memdb.WatchSet, n *api.Node) *api.NodeNetwork {
	nw := snap.NodeNetwork(ws, n.Cluster, n.Name)
	if nw == nil {
		return nil
	}
	deny := map[netip.Prefix]bool{}
	addHost := func(hostport string) {
		if _, rest, ok := strings.Cut(hostport, "://"); ok {
			hostport = rest
		}
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			host = hostport
		}
		if a, err := netip.ParseAddr(host); err == nil && a.Is4() && !a.IsUnspecified() {
			deny[netip.PrefixFrom(a, 32)] = true
		}
	}
	for _, m := range snap.Nodes(ws) {
		for _, a := range []string{m.Addr, m.PeerAddr, m.OverlayAddr} {
			addHost(a)
		}
		if m.Name != n.Name && m.Cluster == n.Cluster && m.OverlayAddr != "" {
			nw.Peers = append(nw.Peers, api.NetworkPeer{Node: m.Name, Overlay: m.OverlayAddr})
		}
	}
	for _, sv := range snap.Servers(ws) {
		addHost(sv.RaftAddr)
		addHost(sv.HTTPAddr)
	}
	for p := range deny {
		nw.Deny = append(nw.Deny, p.String())
	}
	slices.Sort(nw.Deny)
	return nw
}
