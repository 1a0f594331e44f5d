package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusternet"
	"github.com/shoal-dev/shoal/internal/taskdns"
)

// Task networks. As root, every task runs in a network namespace of its
// own on its cluster's private network (package clusternet); the agent
// keeps the host's network (servers, other agents, replication), which
// tasks cannot reach. What a task needs from Shoal it reaches through the
// node's endpoint: an HTTP server on the node's gateway address of the
// cluster network, the only host port a task may connect to. The endpoint
// serves the local routes (MPI remote launch, checkpoint commits) and
// passes every other /v1/ request to a server with the cluster's token,
// so that tasks act as their cluster without ever holding its token.

// Task network modes (Config.TaskNetwork).
const (
	TaskNetworkAuto = "auto" // on when the agent runs as root and the kernel allows
	TaskNetworkOn   = "on"   // required: the agent fails to start without it
	TaskNetworkOff  = "off"  // tasks share the host's network
)

// DefaultEndpointPort is the TCP port of a node's endpoint on its gateway.
const DefaultEndpointPort = 7472

// taskNet is the agent's side of its tasks' networks.
type taskNet struct {
	mgr  *clusternet.Manager // nil: tasks share the host's network
	port uint16              // the endpoint's port
	// overlay is the node's VXLAN address, advertised to the servers.
	overlay netip.AddrPort

	mu       sync.Mutex
	want     *api.NodeNetwork // what the servers last said; nil: none
	applied  *api.NodeNetwork // the network last applied; nil: none
	retry    *time.Timer      // set while a failed change waits to be retried
	gateway  netip.Addr
	endpoint *http.Server
	// resolver answers the tasks' DNS queries on the gateway (names.go),
	// for resolverCluster, relaying outside names when resolverEgress.
	resolver        *taskdns.Server
	resolverCluster string
	resolverEgress  bool
}

// setupNetwork decides whether tasks get networks of their own and, if so,
// clears what an earlier agent of this node left.
func (a *Agent) setupNetwork() error {
	mode := a.cfg.TaskNetwork
	switch mode {
	case "", TaskNetworkAuto, TaskNetworkOn, TaskNetworkOff:
	default:
		return fmt.Errorf("agent: --task-network %q: want auto, on or off", mode)
	}
	port := a.cfg.EndpointPort
	if port == 0 {
		port = DefaultEndpointPort
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("agent: --endpoint-port %d: want a TCP port, 1 to 65535", port)
	}
	a.net = &taskNet{port: uint16(port)}
	if mode == TaskNetworkOff {
		return nil
	}
	isolated := false
	if d, ok := a.driver.(interface{ Isolated() bool }); ok {
		isolated = d.Isolated()
	}
	var err error
	switch {
	case !isolated:
		err = errors.New("tasks are not isolated (the agent does not run as root, or its sandbox driver has no namespaces)")
	default:
		err = a.openNetwork()
	}
	if err != nil {
		if mode == TaskNetworkOn {
			return fmt.Errorf("agent: --task-network on: %w", err)
		}
		a.log.Warn("tasks share the host's network: no private cluster networks on this node", "reason", err)
		a.net.mgr = nil
	}
	return nil
}

// openNetwork makes the clusternet manager and picks the overlay address.
func (a *Agent) openNetwork() error {
	overlay, err := a.overlayAddr()
	if err != nil {
		return err
	}
	mgr, err := clusternet.New(clusternet.Config{Node: a.cfg.Name, StateDir: filepath.Join(a.cfg.DataDir, "net"),
		PoolSize: a.cfg.NetworkPool, Log: a.log})
	if err != nil {
		return err
	}
	if err := mgr.Sweep(); err != nil {
		mgr.Close()
		return fmt.Errorf("clearing the networks an earlier agent left: %w", err)
	}
	a.net.mgr, a.net.overlay = mgr, overlay
	a.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "shoal_agent_refused_packets_total",
		Help: "Packets from or to this node's tasks that its firewall dropped: to other clusters, servers, agents, or outside the cluster's egress."},
		func() float64 {
			n, err := mgr.Refused()
			if err != nil {
				return 0
			}
			return float64(n)
		}))
	return nil
}

// overlayAddr is Config.OverlayAddr, or the host of the advertised
// address with a free UDP port.
func (a *Agent) overlayAddr() (netip.AddrPort, error) {
	if a.cfg.OverlayAddr != "" {
		ap, err := netip.ParseAddrPort(a.cfg.OverlayAddr)
		if err != nil || !ap.Addr().Is4() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("--overlay-addr %q: want an IPv4 address and UDP port such as 192.0.2.7:4789", a.cfg.OverlayAddr)
		}
		return ap, nil
	}
	host, _, err := net.SplitHostPort(a.cfg.AdvertiseAddr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("advertised address %q: %w", a.cfg.AdvertiseAddr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Is4() || ip.IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("the advertised address %q is not an IPv4 address: give --overlay-addr", a.cfg.AdvertiseAddr)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("finding a free UDP port for the overlay: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

// overlayAdvertised is the overlay address the node registers; empty when
// its tasks get no networks.
func (a *Agent) overlayAdvertised() string {
	if a.net == nil || a.net.mgr == nil {
		return ""
	}
	return a.net.overlay.String()
}

// syncNetwork brings the node's network to what the servers say: the
// cluster's network while the node is a member, none otherwise. Runs of
// a cluster the node left lose their network with it. A change that fails
// is tried again every second until it succeeds or the servers say
// something else.
func (a *Agent) syncNetwork(want *api.NodeNetwork) {
	n := a.net
	if n == nil || n.mgr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.want = want
	a.convergeLocked()
}

// convergeLocked applies n.want; n.mu is held.
func (a *Agent) convergeLocked() {
	n := a.net
	if reflect.DeepEqual(n.applied, n.want) {
		return
	}
	if err := a.applyLocked(n.want); err != nil {
		a.log.Error("changing the node's cluster network; will retry", "err", err)
		if n.retry == nil && a.ctx.Err() == nil {
			n.retry = time.AfterFunc(time.Second, func() {
				n.mu.Lock()
				defer n.mu.Unlock()
				n.retry = nil
				if a.ctx.Err() == nil {
					a.convergeLocked()
				}
			})
		}
	}
}

// applyLocked makes want the node's network; n.mu is held.
func (a *Agent) applyLocked(want *api.NodeNetwork) error {
	n := a.net
	if want == nil {
		n.stopEndpoint()
		if err := n.mgr.Remove(); err != nil {
			return fmt.Errorf("removing the network of cluster %s, which the node left: %w", n.applied.Cluster, err)
		}
		a.log.Info("removed the cluster network", "cluster", n.applied.Cluster)
		n.applied, n.gateway = nil, netip.Addr{}
		return nil
	}
	nw, err := a.clusterNetwork(want)
	if err != nil {
		return fmt.Errorf("the servers sent a network the node cannot use: %w", err)
	}
	if err := n.mgr.Apply(nw); err != nil {
		return fmt.Errorf("applying the network of cluster %s: %w", want.Cluster, err)
	}
	egress := len(want.Egress) > 0
	if gw := n.mgr.Gateway(); gw != n.gateway || n.endpoint == nil || n.resolverCluster != want.Cluster || n.resolverEgress != egress {
		n.stopEndpoint()
		if err := a.startEndpoint(gw); err != nil {
			return fmt.Errorf("starting the tasks' endpoint on %s: %w", gw, err)
		}
		dns, err := a.startResolver(gw, want.Cluster, egress)
		if err != nil {
			n.stopEndpoint()
			return fmt.Errorf("starting the tasks' resolver on %s: %w", gw, err)
		}
		n.gateway, n.resolver, n.resolverCluster, n.resolverEgress = gw, dns, want.Cluster, egress
	}
	if n.applied == nil || n.applied.Cluster != want.Cluster {
		a.log.Info("joined the cluster network", "cluster", want.Cluster, "subnet", want.Subnet, "block", want.Block,
			"vni", want.VNI, "peers", len(want.Peers), "endpoint", net.JoinHostPort(n.gateway.String(), strconv.Itoa(int(n.port))))
	}
	n.applied = want
	return nil
}

// clusterNetwork converts the servers' description of the node's network.
func (a *Agent) clusterNetwork(w *api.NodeNetwork) (clusternet.Network, error) {
	nw := clusternet.Network{Cluster: w.Cluster, VNI: w.VNI, Overlay: a.net.overlay, EndpointPort: a.net.port, DNSPort: 53}
	var err error
	if nw.Subnet, err = netip.ParsePrefix(w.Subnet); err != nil {
		return nw, fmt.Errorf("subnet: %w", err)
	}
	if nw.Block, err = netip.ParsePrefix(w.Block); err != nil {
		return nw, fmt.Errorf("block: %w", err)
	}
	for _, p := range w.Peers {
		ap, err := netip.ParseAddrPort(p.Overlay)
		if err != nil {
			return nw, fmt.Errorf("peer %s: %w", p.Node, err)
		}
		nw.Peers = append(nw.Peers, ap)
	}
	for _, lists := range []struct {
		in  []string
		out *[]netip.Prefix
	}{{w.Egress, &nw.Egress}, {w.Deny, &nw.Deny}} {
		for _, s := range lists.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nw, err
			}
			*lists.out = append(*lists.out, p)
		}
	}
	return nw, nil
}

// endpointAddr is the endpoint's URL for the tasks of cluster; empty when
// they share the host's network.
func (a *Agent) endpointAddr(cluster string) string {
	n := a.net
	if n == nil || n.mgr == nil {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.applied == nil || n.applied.Cluster != cluster || n.endpoint == nil {
		return ""
	}
	return "http://" + net.JoinHostPort(n.gateway.String(), strconv.Itoa(int(n.port)))
}

// attachRun gives run r a network namespace on its cluster's network
// when the node has one, and frees it when the run is done.
func (a *Agent) attachRun(r *run) (netns string, err error) {
	if a.endpointAddr(r.task.Cluster) == "" {
		return "", nil
	}
	tn, err := a.net.mgr.AddTask(r.sandbox)
	if err != nil {
		return "", err
	}
	r.addr, r.netns = tn.Addr, tn.NetNS
	go func() {
		<-r.done
		if err := a.net.mgr.RemoveTask(r.sandbox); err != nil {
			a.log.Warn("removing a run's network namespace", "task", r.task.ID, "err", err)
		}
	}()
	return tn.NetNS, nil
}

// startEndpoint serves the tasks' endpoint on the gateway.
func (a *Agent) startEndpoint(gw netip.Addr) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(gw.String(), strconv.Itoa(int(a.net.port))))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/local/launch", a.handleLocalLaunch)
	mux.HandleFunc("POST /v1/local/checkpoint", a.handleCheckpointCommit)
	mux.Handle("/v1/", a.apiProxy())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	a.net.endpoint = srv
	return nil
}

// stopEndpoint closes the endpoint and the resolver; n.mu is held.
func (n *taskNet) stopEndpoint() {
	if n.endpoint != nil {
		n.endpoint.Close()
		n.endpoint = nil
	}
	if n.resolver != nil {
		n.resolver.Close()
		n.resolver, n.resolverCluster = nil, ""
	}
}

// closeNetwork tears the node's network down at shutdown, once its runs
// have stopped: nothing of it must outlive the agent on the host (the
// next agent applies it again if the node is still a member).
func (a *Agent) closeNetwork() {
	if n := a.net; n != nil && n.mgr != nil {
		n.mu.Lock()
		n.stopEndpoint()
		if n.retry != nil {
			n.retry.Stop()
		}
		if err := n.mgr.Remove(); err != nil {
			a.log.Warn("removing the node's cluster network at shutdown", "err", err)
		}
		n.mu.Unlock()
		n.mgr.Close()
	}
}

// apiProxy passes a task's API request to a server with the token of the
// node's cluster, which the servers confine to that cluster. Whatever
// credentials the request carries are dropped.
func (a *Agent) apiProxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			target, _ := url.Parse(a.serverURL())
			pr.SetURL(target)
			pr.Out.Header.Del("Authorization")
			a.mu.Lock()
			token := a.clusterToken
			a.mu.Unlock()
			if token != "" {
				pr.Out.Header.Set("Authorization", "Bearer "+token)
			}
		},
		Transport: a.client.HTTP.Transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			logError(w, http.StatusBadGateway, api.CodeUnavailable, "the node's agent could not reach a server: "+err.Error())
		},
	}
}

// serverURL is the server the endpoint passes requests to: the one the
// agent's own client uses, which moves on to the next server when one
// stops answering the agent's heartbeats and watches.
func (a *Agent) serverURL() string { return a.client.Addr() }
