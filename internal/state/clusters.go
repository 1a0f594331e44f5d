package state

import (
	"crypto/subtle"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// maxEvents bounds the history kept per cluster and per job.
const maxEvents = 200

// Cluster returns the named cluster, or nil.
func (s *Snapshot) Cluster(ws memdb.WatchSet, name string) *api.Cluster {
	return first[*api.Cluster](s.txn, ws, tableClusters, name)
}

// Clusters returns all clusters sorted by name.
func (s *Snapshot) Clusters(ws memdb.WatchSet) []*api.Cluster {
	return collect[*api.Cluster](s.txn, ws, tableClusters, "id")
}

// ClusterByToken returns the cluster whose API token is token, or nil. The
// comparison takes the same time whatever the tokens share, and an empty
// token matches nothing.
func (s *Snapshot) ClusterByToken(token string) *api.Cluster {
	if token == "" {
		return nil
	}
	var found *api.Cluster
	for _, c := range s.Clusters(nil) {
		if subtle.ConstantTimeCompare([]byte(c.Token), []byte(token)) == 1 {
			found = c
		}
	}
	return found
}

// SetClusterToken replaces a cluster's API token; the old one stops
// working at once.
func (s *Store) SetClusterToken(index uint64, req *ClusterTokenRequest) (*api.Cluster, error) {
	if req.Token == "" {
		return nil, fmt.Errorf("%w: token: must not be empty", ErrInvalid)
	}
	var out *api.Cluster
	err := s.write(index, func(tx *writeTxn) error {
		c, err := tx.clusterForWrite(req.Name)
		if err != nil {
			return err
		}
		c.Token = req.Token
		c.Events = addEvent(c.Events, req.Now, "token", "API token replaced")
		out = c
		return tx.putCluster(c)
	})
	return out, err
}

func (tx *writeTxn) cluster(name string) *api.Cluster {
	raw, _ := tx.First(tableClusters, "id", name)
	if raw == nil {
		return nil
	}
	return raw.(*api.Cluster)
}

// clusterForWrite returns a copy of a cluster with its own slices.
func (tx *writeTxn) clusterForWrite(name string) (*api.Cluster, error) {
	c := tx.cluster(name)
	if c == nil {
		return nil, fmt.Errorf("%w: no cluster named %q", ErrNotFound, name)
	}
	nc := *c
	nc.Nodes = slices.Clone(c.Nodes)
	nc.Events = slices.Clone(c.Events)
	return &nc, nil
}

func (tx *writeTxn) putCluster(c *api.Cluster) error {
	c.ModifyIndex = tx.index
	return tx.put(tableClusters, c)
}

func (tx *writeTxn) isMember(cluster, node string) bool {
	c := tx.cluster(cluster)
	return c != nil && slices.Contains(c.Nodes, node)
}

// clusterEvent records an event in a cluster's history, if it exists.
func (tx *writeTxn) clusterEvent(name string, now time.Time, typ, msg string) error {
	c, err := tx.clusterForWrite(name)
	if err != nil {
		return nil // cluster already gone
	}
	c.Events = addEvent(c.Events, now, typ, msg)
	return tx.putCluster(c)
}

func addEvent(events []api.Event, now time.Time, typ, msg string) []api.Event {
	events = append(events, api.Event{Time: now, Type: typ, Message: msg})
	if len(events) > maxEvents {
		events = slices.Delete(events, 1, len(events)-maxEvents+1) // keep the first
	}
	return events
}

// poolByZone returns the ready, unreserved nodes grouped by zone, each
// group sorted by name.
func (tx *writeTxn) poolByZone() map[string][]*api.Node {
	pool := map[string][]*api.Node{}
	for _, n := range tx.allNodes() {
		if n.State == api.NodeReady && n.Cluster == "" {
			pool[n.Zone] = append(pool[n.Zone], n)
		}
	}
	return pool
}

// pickPoolNodes chooses count pool nodes, each time from the zone with the
// fewest nodes already chosen or in have (zone counts of existing members),
// so that a cluster spreads over as many zones as possible. The choice is
// deterministic.
func pickPoolNodes(pool map[string][]*api.Node, have map[string]int, count int) []*api.Node {
	var picked []*api.Node
	used := map[string]int{}
	for z, c := range have {
		used[z] = c
	}
	for len(picked) < count {
		best := ""
		for z, nodes := range pool {
			if len(nodes) == 0 {
				continue
			}
			if best == "" || used[z] < used[best] ||
				(used[z] == used[best] && (len(nodes) > len(pool[best]) || (len(nodes) == len(pool[best]) && z < best))) {
				best = z
			}
		}
		if best == "" {
			break
		}
		picked = append(picked, pool[best][0])
		pool[best] = pool[best][1:]
		used[best]++
	}
	return picked
}

func describePool(pool map[string][]*api.Node) string {
	total := 0
	var zones []string
	for z, nodes := range pool {
		if len(nodes) > 0 {
			total += len(nodes)
			zones = append(zones, fmt.Sprintf("%s: %d", z, len(nodes)))
		}
	}
	sort.Strings(zones)
	if total == 0 {
		return "the pool has no ready nodes"
	}
	return fmt.Sprintf("the pool has %d ready nodes in %d zones (%s)", total, len(zones), strings.Join(zones, ", "))
}

func (tx *writeTxn) reserve(c *api.Cluster, nodes []*api.Node) error {
	for _, p := range nodes {
		n, err := tx.nodeForWrite(p.Name)
		if err != nil {
			return err
		}
		n.Cluster = c.Name
		c.Nodes = append(c.Nodes, n.Name)
	}
	sort.Strings(c.Nodes)
	return nil
}

func zoneCounts(tx *writeTxn, names []string) map[string]int {
	m := map[string]int{}
	for _, name := range names {
		if n := tx.node(name); n != nil {
			m[n.Zone]++
		}
	}
	return m
}

// CreateCluster reserves req.Nodes ready pool nodes over at least req.Zones
// zones, or changes nothing and says what is missing.
func (s *Store) CreateCluster(index uint64, req *ClusterCreateRequest) (*api.Cluster, error) {
	r := req.Req
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var out *api.Cluster
	err := s.write(index, func(tx *writeTxn) error {
		if tx.cluster(r.Name) != nil {
			return fmt.Errorf("%w: cluster %q already exists", ErrConflict, r.Name)
		}
		pool := tx.poolByZone()
		desc := describePool(pool)
		picked := pickPoolNodes(pool, nil, r.Nodes)
		zones := map[string]bool{}
		for _, n := range picked {
			zones[n.Zone] = true
		}
		if len(picked) < r.Nodes || len(zones) < r.Zones {
			return fmt.Errorf("%w: cluster %q needs %d nodes in at least %d zones; %s",
				ErrNoRoom, r.Name, r.Nodes, r.Zones, desc)
		}
		c := &api.Cluster{Name: r.Name, Size: r.Nodes, MinZones: r.Zones, Created: req.Now, CreateIndex: index,
			Token: req.Token}
		if err := tx.reserve(c, picked); err != nil {
			return err
		}
		c.Events = addEvent(nil, req.Now, "created", fmt.Sprintf("reserved %d nodes in %d zones: %s",
			len(picked), len(zones), strings.Join(c.Nodes, ", ")))
		if req.CA != nil {
			if err := tx.putCA(req.CA); err != nil {
				return err
			}
		}
		if _, err := tx.allocateNetwork(c.Name, req.Networks, req.SubnetBits, req.NodeBits, r.Egress); err != nil {
			return err
		}
		out = c
		return tx.putCluster(c)
	})
	return out, err
}

// ResizeCluster grows a cluster from the pool or shrinks it, moving the
// tasks of released nodes to the remaining ones.
func (s *Store) ResizeCluster(index uint64, req *ClusterResizeRequest) (*api.Cluster, error) {
	if req.Nodes < 1 || req.Nodes > api.MaxClusterNodes {
		return nil, fmt.Errorf("%w: nodes: must be between 1 and %d, got %d", ErrInvalid, api.MaxClusterNodes, req.Nodes)
	}
	var out *api.Cluster
	err := s.write(index, func(tx *writeTxn) error {
		c, err := tx.clusterForWrite(req.Name)
		if err != nil {
			return err
		}
		if req.Nodes < c.MinZones {
			return fmt.Errorf("%w: nodes: cluster %q must span %d zones, so it needs at least %d nodes",
				ErrInvalid, c.Name, c.MinZones, c.MinZones)
		}
		switch {
		case req.Nodes > len(c.Nodes):
			pool := tx.poolByZone()
			desc := describePool(pool)
			picked := pickPoolNodes(pool, zoneCounts(tx, c.Nodes), req.Nodes-len(c.Nodes))
			if len(picked) < req.Nodes-len(c.Nodes) {
				return fmt.Errorf("%w: cluster %q needs %d more nodes; %s",
					ErrNoRoom, c.Name, req.Nodes-len(c.Nodes), desc)
			}
			if err := tx.reserve(c, picked); err != nil {
				return err
			}
		case req.Nodes < len(c.Nodes):
			if err := tx.shrink(c, req.Nodes, req.Now); err != nil {
				return err
			}
		}
		c.Events = addEvent(c.Events, req.Now, "resized", fmt.Sprintf("size %d -> %d", c.Size, req.Nodes))
		c.Size = req.Nodes
		out = c
		return tx.putCluster(c)
	})
	return out, err
}

// shrink releases members, least busy first, keeping MinZones zones.
func (tx *writeTxn) shrink(c *api.Cluster, size int, now time.Time) error {
	members := make([]*api.Node, 0, len(c.Nodes))
	for _, name := range c.Nodes {
		if n := tx.node(name); n != nil {
			members = append(members, n)
		}
	}
	sort.Slice(members, func(i, j int) bool {
		if members[i].Tasks != members[j].Tasks {
			return members[i].Tasks < members[j].Tasks
		}
		return members[i].Name > members[j].Name
	})
	zones := map[string]int{}
	for _, n := range members {
		zones[n.Zone]++
	}
	release := map[string]bool{}
	for _, n := range members {
		if len(c.Nodes)-len(release) <= size {
			break
		}
		if zones[n.Zone] == 1 && len(zones) <= c.MinZones {
			continue // releasing it would drop a zone the cluster must span
		}
		release[n.Name] = true
		if zones[n.Zone]--; zones[n.Zone] == 0 {
			delete(zones, n.Zone)
		}
	}
	if len(c.Nodes)-len(release) > size {
		return fmt.Errorf("%w: cluster %q cannot shrink to %d nodes and still span %d zones", ErrInvalid, c.Name, size, c.MinZones)
	}
	// In member order, not map order: the FSM must be deterministic (a
	// gang restart names the first of its tasks evicted).
	for _, name := range c.Nodes {
		if !release[name] {
			continue
		}
		if err := tx.evictTasks(name, api.TaskPending, "cluster "+c.Name+" shrunk", now, true); err != nil {
			return err
		}
		n, err := tx.nodeForWrite(name)
		if err != nil {
			return err
		}
		n.Cluster = ""
	}
	c.Nodes = slices.DeleteFunc(c.Nodes, func(n string) bool { return release[n] })
	return nil
}

// DeleteCluster cancels the cluster's jobs, deletes its functions and
// returns its nodes to the pool.
func (s *Store) DeleteCluster(index uint64, req *ClusterDeleteRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		c := tx.cluster(req.Name)
		if c == nil {
			return fmt.Errorf("%w: no cluster named %q", ErrNotFound, req.Name)
		}
		for _, j := range collect[*api.Job](tx.Txn, nil, tableJobs, "cluster", c.Name) {
			if err := tx.cancelJob(j.ID, "cluster "+c.Name+" deleted", req.Now); err != nil {
				return err
			}
		}
		for _, n := range collect[*api.Node](tx.Txn, nil, tableNodes, "cluster", c.Name) {
			nn, err := tx.nodeForWrite(n.Name)
			if err != nil {
				return err
			}
			nn.Cluster = ""
		}
		if err := tx.deleteClusterRecords(c.Name); err != nil {
			return err
		}
		if err := tx.deleteFunctions(c.Name); err != nil {
			return err
		}
		if err := tx.freeNetwork(c.Name); err != nil {
			return err
		}
		if err := tx.del(tableClusters, c); err != nil {
			return err
		}
		return tx.healClusters(req.Now)
	})
}

// removeMember takes a node out of a cluster's member list (the node may
// stay attached while it drains) and records why.
func (tx *writeTxn) removeMember(cluster, node, reason string, now time.Time) error {
	c, err := tx.clusterForWrite(cluster)
	if err != nil {
		return nil // cluster already gone
	}
	if !slices.Contains(c.Nodes, node) {
		return nil
	}
	c.Nodes = slices.DeleteFunc(c.Nodes, func(n string) bool { return n == node })
	c.Events = addEvent(c.Events, now, "member-lost", fmt.Sprintf("%s left the cluster: %s", node, reason))
	return tx.putCluster(c)
}

// detachNode removes a node from its cluster entirely.
func (tx *writeTxn) detachNode(n *api.Node, reason string, now time.Time) error {
	if n.Cluster == "" {
		return nil
	}
	err := tx.removeMember(n.Cluster, n.Name, reason, now)
	n.Cluster = ""
	return err
}

// healClusters draws pool nodes for every cluster below its size, keeping
// its zones spread, and swaps idle members for pool nodes in zones that a
// cluster spanning too few zones lacks. A cluster that cannot be filled
// records that once and is filled when nodes join the pool.
func (tx *writeTxn) healClusters(now time.Time) error {
	var pool map[string][]*api.Node
	for _, c := range collect[*api.Cluster](tx.Txn, nil, tableClusters, "id") {
		full := len(c.Nodes) >= c.Size
		if full && len(zoneCounts(tx, c.Nodes)) >= c.MinZones {
			continue
		}
		if pool == nil {
			pool = tx.poolByZone()
		}
		if full {
			if err := tx.spreadCluster(c.Name, pool, now); err != nil {
				return err
			}
			continue
		}
		nc, err := tx.clusterForWrite(c.Name)
		if err != nil {
			return err
		}
		picked := pickPoolNodes(pool, zoneCounts(tx, nc.Nodes), c.Size-len(c.Nodes))
		if len(picked) == 0 {
			last := nc.Events[len(nc.Events)-1]
			if last.Type != "short" {
				nc.Events = addEvent(nc.Events, now, "short", fmt.Sprintf("%d of %d nodes; no ready pool node to draw; waiting for one", len(nc.Nodes), nc.Size))
				if err := tx.putCluster(nc); err != nil {
					return err
				}
			}
			continue
		}
		if err := tx.reserve(nc, picked); err != nil {
			return err
		}
		names := make([]string, len(picked))
		for i, p := range picked {
			names[i] = fmt.Sprintf("%s (zone %s)", p.Name, p.Zone)
		}
		msg := "drew from the pool: " + strings.Join(names, ", ")
		if z := len(zoneCounts(tx, nc.Nodes)); z < nc.MinZones {
			msg += fmt.Sprintf("; the cluster spans %d zones, fewer than the %d asked for, as the pool has no node in another zone", z, nc.MinZones)
		}
		nc.Events = addEvent(nc.Events, now, "replaced", msg)
		if err := tx.putCluster(nc); err != nil {
			return err
		}
	}
	return nil
}

// spreadCluster brings a cluster that spans fewer zones than it asked for
// back towards its spread: for each zone it lacks that has a ready pool
// node, it returns to the pool an idle, ready member of a zone holding
// several members and reserves the pool node instead. Busy members are
// never moved (no running task is stopped for spread); the cluster
// rebalances further as soon as one of them is idle. pool is updated.
func (tx *writeTxn) spreadCluster(name string, pool map[string][]*api.Node, now time.Time) error {
	c, err := tx.clusterForWrite(name)
	if err != nil {
		return nil
	}
	changed := false
	for {
		zones := zoneCounts(tx, c.Nodes)
		if len(zones) >= c.MinZones {
			break
		}
		var add *api.Node
		for _, z := range slices.Sorted(maps.Keys(pool)) {
			if zones[z] == 0 && len(pool[z]) > 0 {
				add = pool[z][0]
				break
			}
		}
		var drop *api.Node
		for _, m := range c.Nodes {
			n := tx.node(m)
			if n == nil || n.State != api.NodeReady || n.Tasks > 0 || zones[n.Zone] < 2 {
				continue
			}
			if drop == nil || zones[n.Zone] > zones[drop.Zone] {
				drop = n
			}
		}
		if add == nil || drop == nil {
			break
		}
		dn, err := tx.nodeForWrite(drop.Name)
		if err != nil {
			return err
		}
		dn.Cluster = ""
		c.Nodes = slices.DeleteFunc(c.Nodes, func(m string) bool { return m == drop.Name })
		pool[add.Zone] = pool[add.Zone][1:]
		if err := tx.reserve(c, []*api.Node{add}); err != nil {
			return err
		}
		c.Events = addEvent(c.Events, now, "rebalanced", fmt.Sprintf("%s (zone %s) replaces idle %s (zone %s): the cluster spans %d of the %d zones asked for",
			add.Name, add.Zone, drop.Name, drop.Zone, len(zoneCounts(tx, c.Nodes)), c.MinZones))
		changed = true
	}
	if !changed {
		return nil
	}
	return tx.putCluster(c)
}

// respreadOnIdle gives a cluster spanning too few zones a chance to swap a
// member that has just become idle.
func (tx *writeTxn) respreadOnIdle(n *api.Node, now time.Time) error {
	if n.Cluster == "" || n.Tasks > 0 || n.State != api.NodeReady {
		return nil
	}
	c := tx.cluster(n.Cluster)
	if c == nil || len(zoneCounts(tx, c.Nodes)) >= c.MinZones {
		return nil
	}
	return tx.spreadCluster(c.Name, tx.poolByZone(), now)
}

// ClusterHealth says whether a cluster is healthy or degraded, and why:
// members not ready (with when a stopped one is expected back), fewer
// members than its size, fewer zones than it asked for.
func (s *Snapshot) ClusterHealth(ws memdb.WatchSet, c *api.Cluster) (string, []string) {
	var problems []string
	zones := map[string]bool{}
	for _, name := range c.Nodes {
		n := s.Node(ws, name)
		if n == nil {
			continue
		}
		zones[n.Zone] = true
		switch {
		case n.State == api.NodeDown && !n.ExpectedBack.IsZero():
			problems = append(problems, fmt.Sprintf("%s is down; it stays a member until %s", n.Name, n.ExpectedBack.UTC().Format(time.RFC3339)))
		case n.State != api.NodeReady:
			problems = append(problems, fmt.Sprintf("%s is %s", n.Name, n.State))
		}
	}
	if len(c.Nodes) < c.Size {
		problems = append(problems, fmt.Sprintf("%d of %d nodes: no ready pool node to draw", len(c.Nodes), c.Size))
	}
	if len(zones) < c.MinZones {
		problems = append(problems, fmt.Sprintf("spans %d zones, fewer than the %d asked for: no ready pool node in another zone, or no idle member to move", len(zones), c.MinZones))
	}
	if len(problems) > 0 {
		return api.ClusterDegraded, problems
	}
	return api.ClusterHealthy, nil
}
