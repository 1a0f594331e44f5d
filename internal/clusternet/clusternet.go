// Package clusternet gives the tasks of a node their cluster's private
// network.
//
// Every task runs in a network namespace of its own with one interface,
// eth0, on the cluster's subnet. On a node, the tasks of the cluster hang
// off a bridge owned by the node; between nodes, the cluster's L2 network is
// carried by a VXLAN device (one VNI per cluster) attached to that bridge,
// which replicates broadcast and unknown traffic to every peer node's
// underlay address. The bridge holds the node's gateway address, the first
// host address of the node's block of the subnet.
//
// One nftables table per node (family inet) enforces the isolation: a task
// reaches the host only at one TCP port on its gateway (the agent's
// endpoint), reaches the outside only towards the Egress prefixes
// (masqueraded through the node) and never the Deny prefixes, and nothing
// reaches a task that it did not ask for. Tasks of different clusters are on
// different bridges and VNIs, and the host does not route between them.
//
// Several agents may share one host network namespace (dev mode and tests):
// every device name, namespace file and the nftables table derive from the
// node name, and each agent has its own VXLAN UDP port. See [Manager].
package clusternet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Errors returned by [Manager].
var (
	// ErrNoNetwork is returned by AddTask when no network was applied.
	ErrNoNetwork = errors.New("clusternet: no cluster network on this node")
	// ErrFull is returned by AddTask when the node's block has no free
	// address.
	ErrFull = errors.New("clusternet: no free address in the node's block")
)

// Config configures a [Manager].
type Config struct {
	Node     string       // node name; names of devices and the nft table derive from it
	StateDir string       // netns files are bind-mounted under StateDir/netns/
	PoolSize int          // task namespaces kept ready ahead of demand (0: default 4; <0: none)
	Log      *slog.Logger // nil: discard
}

// defaultPoolSize is the pool size when Config.PoolSize is 0.
const defaultPoolSize = 4

// Network is a cluster's network as seen by one member node.
type Network struct {
	Cluster string
	VNI     uint32
	// Subnet is the cluster's subnet, e.g. 10.128.0.0/18. A task's eth0
	// gets an address with this prefix length: all tasks of the cluster
	// are on-link.
	Subnet netip.Prefix
	// Block is this node's part of Subnet, e.g. 10.128.3.0/24. The
	// gateway is Block.Addr().Next(); tasks get the other host addresses
	// of Block.
	Block netip.Prefix
	// Overlay is this node's VXLAN local (underlay) address and UDP port.
	Overlay netip.AddrPort
	// Peers are the other member nodes' overlay addresses.
	Peers []netip.AddrPort
	// Egress are the outside networks tasks may reach (masqueraded); may
	// be empty.
	Egress []netip.Prefix
	// Deny are never reachable from tasks, even inside Egress.
	Deny []netip.Prefix
	// EndpointPort is the only host TCP port tasks may reach (on the
	// gateway).
	EndpointPort uint16
	// DNSPort, when not 0, is the node's resolver on the gateway (UDP and
	// TCP): every DNS query of a task (to port 53 of any address) goes
	// there instead.
	DNSPort uint16
}

// sameIdentity reports whether a and b are the same cluster network on
// this node, so that its task namespaces stay valid when moving from a to b.
func (a *Network) sameIdentity(b *Network) bool {
	return a.Cluster == b.Cluster && a.VNI == b.VNI && a.Subnet == b.Subnet && a.Block == b.Block
}

// gateway is the node's address on the cluster network.
func (a *Network) gateway() netip.Addr { return a.Block.Addr().Next() }

// clone returns a deep copy of a.
func (a *Network) clone() Network {
	c := *a
	c.Peers = slices.Clone(a.Peers)
	c.Egress = slices.Clone(a.Egress)
	c.Deny = slices.Clone(a.Deny)
	return c
}

// validate checks that n can be applied.
func (n *Network) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("clusternet: network %q: "+format, append([]any{n.Cluster}, args...)...)
	}
	switch {
	case n.Cluster == "":
		return bad("empty cluster name")
	case n.VNI == 0 || n.VNI >= 1<<24:
		return bad("VNI %d out of range 1..16777215", n.VNI)
	case !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || n.Subnet.Masked() != n.Subnet:
		return bad("subnet %v is not an IPv4 network prefix", n.Subnet)
	case !n.Block.IsValid() || !n.Block.Addr().Is4() || n.Block.Masked() != n.Block:
		return bad("block %v is not an IPv4 network prefix", n.Block)
	case n.Block.Bits() < n.Subnet.Bits() || !n.Subnet.Contains(n.Block.Addr()):
		return bad("block %v is not inside subnet %v", n.Block, n.Subnet)
	case n.Block.Bits() > 30:
		return bad("block %v has no room for a gateway and a task", n.Block)
	case !n.Overlay.IsValid() || n.Overlay.Port() == 0 || !n.Overlay.Addr().Is4():
		return bad("overlay %v is not an IPv4 address and port", n.Overlay)
	case n.EndpointPort == 0:
		return bad("no endpoint port")
	}
	for _, p := range n.Peers {
		if !p.IsValid() || p.Port() == 0 || !p.Addr().Is4() {
			return bad("peer %v is not an IPv4 address and port", p)
		}
	}
	for _, p := range slices.Concat(n.Egress, n.Deny) {
		if !p.IsValid() || !p.Addr().Is4() {
			return bad("egress or deny prefix %v is not IPv4", p)
		}
	}
	return nil
}

// Manager owns the cluster network of one node: its bridge, VXLAN device,
// nftables table and the network namespaces of its tasks.
//
// A Manager is safe for concurrent use. Lock ordering: topo before mu.
// topo serialises changes of the kernel objects (Apply, Remove, Sweep and
// the building of a task namespace); mu guards the fields below it and is
// never held across a netlink call that builds or tears down a namespace.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	names names
	pool  int // wanted number of ready namespaces

	topo   sync.Mutex
	shared bool // the namespace directory is a shared mount; guarded by topo

	mu      sync.Mutex
	cur     *Network            // nil when no network is applied
	gen     uint64              // bumped whenever the task namespaces become invalid
	tasks   map[string]*taskNS  // by task id
	ready   []*taskNS           // the pool, oldest first
	used    map[netip.Addr]bool // addresses of tasks, ready and in-flight namespaces
	seq     uint32              // numbers namespaces and veths
	refused uint64              // drops counted by nft tables this Manager replaced

	reaping int        // background removals of task namespaces under way
	reaped  *sync.Cond // on mu; signalled when reaping drops

	wake   chan struct{} // pokes the pool filler
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup
	closed sync.Once
}

// names are the kernel object names of one node.
type names struct {
	bridge string // "shb" + 8 hex
	vxlan  string // "shx" + 8 hex
	veth   string // prefix of host-side veths: "shv" + 6 hex, then 6 hex
	table  string // nft table "shoal_" + 8 hex
	probe  string // prefix of the names New probes the kernel with: "shp" + 8 hex
	nsDir  string // StateDir/netns
	nsFile string // prefix of namespace files: 8 hex + "-"
}

func nodeNames(node, stateDir string) names {
	// The state directory is part of the name: two installations on one
	// host may both have a node-1.
	h := fnv.New32a()
	h.Write([]byte(node + "\x00" + stateDir))
	x := fmt.Sprintf("%08x", h.Sum32())
	return names{
		bridge: "shb" + x,
		vxlan:  "shx" + x,
		veth:   "shv" + x[:6],
		table:  "shoal_" + x,
		probe:  "shp" + x,
		nsDir:  filepath.Join(stateDir, "netns"),
		nsFile: x + "-",
	}
}

// New returns the Manager of node cfg.Node and starts its pool filler. It
// fails if the process is not root, or if the kernel lacks bridges, VXLAN,
// veth pairs, or nftables with NAT: it tries each out on objects it
// deletes right away.
func New(cfg Config) (*Manager, error) {
	if cfg.Node == "" || cfg.StateDir == "" {
		return nil, errors.New("clusternet: config needs a node name and a state directory")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("clusternet: cluster networks need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	}
	nm := nodeNames(cfg.Node, cfg.StateDir)
	if err := probeNftables(nm.probe); err != nil {
		return nil, fmt.Errorf("clusternet: kernel lacks nftables with NAT and masquerade: %w", err)
	}
	if err := probeLinks(nm); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:   cfg,
		log:   log.With("node", cfg.Node),
		names: nm,
		pool:  cfg.PoolSize,
		tasks: map[string]*taskNS{},
		used:  map[netip.Addr]bool{},
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	m.reaped = sync.NewCond(&m.mu)
	if m.pool == 0 {
		m.pool = defaultPoolSize
	}
	if m.pool > 0 {
		m.wg.Add(1)
		go m.fillPool()
	}
	return m, nil
}

// Apply creates this node's cluster network, or converges it to n. It is
// idempotent. Changes of Peers, Overlay, Egress, Deny and EndpointPort
// leave running tasks alone; a different Cluster, VNI, Subnet or Block
// first tears the old network down, task namespaces included.
//
// The nftables table is replaced in one atomic netlink batch. When n has
// Egress prefixes, Apply turns on IPv4 forwarding (net.ipv4.ip_forward=1)
// for the host network namespace and logs that it did; it never turns it
// off again, since other software on the host may rely on it.
func (m *Manager) Apply(n Network) error {
	if err := n.validate(); err != nil {
		return err
	}
	n = n.clone()
	m.topo.Lock()
	defer m.topo.Unlock()

	m.mu.Lock()
	old := m.cur
	m.mu.Unlock()
	if old != nil && !old.sameIdentity(&n) {
		m.log.Info("clusternet: replacing cluster network", "old_cluster", old.Cluster, "cluster", n.Cluster)
		if err := m.teardown(); err != nil {
			return err
		}
		old = nil
	}
	br, err := m.ensureBridge(&n)
	if err != nil {
		return err
	}
	if err := m.ensureVxlan(&n, old, br); err != nil {
		return err
	}
	if err := m.writeRules(&n); err != nil {
		return err
	}
	if len(n.Egress) > 0 {
		if err := m.enableForwarding(); err != nil {
			return err
		}
	}
	m.mu.Lock()
	if old == nil {
		m.gen++
	}
	m.cur = &n
	m.mu.Unlock()
	m.poke()
	if old == nil {
		m.log.Info("clusternet: cluster network up", "cluster", n.Cluster, "vni", n.VNI, "block", n.Block, "bridge", m.names.bridge)
	}
	return nil
}

// Current returns the network last applied, and false when there is none.
func (m *Manager) Current() (Network, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return Network{}, false
	}
	return m.cur.clone(), true
}

// Gateway returns the node's address on the cluster network, or the zero
// address when there is no network.
func (m *Manager) Gateway() netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return netip.Addr{}
	}
	return m.cur.gateway()
}

// Remove tears down everything of this node's cluster network: the task
// namespaces (ready or in use), the bridge, the VXLAN device and the
// nftables table. It is idempotent.
func (m *Manager) Remove() error {
	m.topo.Lock()
	defer m.topo.Unlock()
	return m.teardown()
}

// Sweep removes whatever an earlier agent with this node name left behind:
// devices, namespace files and the nftables table. The agent calls it at
// start, before [Manager.Apply]. It also forgets this Manager's own state,
// like [Manager.Remove].
func (m *Manager) Sweep() error {
	return m.Remove()
}

// teardown forgets the network and removes every kernel object of this
// node, found by name so that leftovers of an earlier agent go too. The
// caller holds m.topo.
func (m *Manager) teardown() error {
	m.waitReaped()
	m.mu.Lock()
	m.cur = nil
	m.gen++
	m.tasks = map[string]*taskNS{}
	m.ready = nil
	m.used = map[netip.Addr]bool{}
	m.mu.Unlock()

	var errs []error
	// Namespaces first: their death takes the veths along.
	errs = append(errs, m.removeNamespaceFiles())
	m.shared = false
	errs = append(errs, m.removeLinks())
	n, err := m.deleteTable()
	errs = append(errs, err)
	m.mu.Lock()
	m.refused += n
	m.mu.Unlock()
	return errors.Join(errs...)
}

// Close stops the pool filler. It does not tear the network down: the
// agent decides whether to call [Manager.Remove].
func (m *Manager) Close() error {
	m.closed.Do(func() { close(m.done) })
	m.wg.Wait()
	m.waitReaped()
	return nil
}

// poke wakes the pool filler.
func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}
