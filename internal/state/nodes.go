package state

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Node returns the named node, or nil.
func (s *Snapshot) Node(ws memdb.WatchSet, name string) *api.Node {
	return first[*api.Node](s.txn, ws, tableNodes, name)
}

// Nodes returns all nodes sorted by name.
func (s *Snapshot) Nodes(ws memdb.WatchSet) []*api.Node {
	return collect[*api.Node](s.txn, ws, tableNodes, "id")
}

// NodeTasks returns the tasks placed on a node, which its agent should run.
func (s *Snapshot) NodeTasks(ws memdb.WatchSet, node string) []*api.Task {
	var out []*api.Task
	for _, t := range collect[*api.Task](s.txn, ws, tableTasks, "node", node) {
		if t.Placed() {
			out = append(out, t)
		}
	}
	return out
}

// Servers returns the known control-plane servers.
func (s *Snapshot) Servers(ws memdb.WatchSet) []*api.ServerInfo {
	return collect[*api.ServerInfo](s.txn, ws, tableServers, "id")
}

// first returns the object with the given id, or the zero T, and adds a
// channel that fires when it changes to ws.
func first[T any](txn *memdb.Txn, ws memdb.WatchSet, table, id string) T {
	var zero T
	ch, raw, err := txn.FirstWatch(table, "id", id)
	if ws != nil && ch != nil {
		ws.Add(ch)
	}
	if err != nil || raw == nil {
		return zero
	}
	return raw.(T)
}

// collect returns every object of an index lookup and adds a channel that
// fires when any of them changes to ws.
func collect[T any](txn *memdb.Txn, ws memdb.WatchSet, table, index string, args ...any) []T {
	it, err := txn.Get(table, index, args...)
	if err != nil {
		return nil
	}
	if ws != nil {
		ws.Add(it.WatchCh())
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(T))
	}
	return out
}

// nodeForWrite returns a copy of the node that tx will write at commit.
func (tx *writeTxn) nodeForWrite(name string) (*api.Node, error) {
	if n, ok := tx.nodes[name]; ok {
		return n, nil
	}
	raw, err := tx.First(tableNodes, "id", name)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: no node named %q", ErrNotFound, name)
	}
	c := *raw.(*api.Node)
	tx.nodes[name] = &c
	return &c, nil
}

// node reads a node as tx sees it, including uncommitted changes.
func (tx *writeTxn) node(name string) *api.Node {
	if n, ok := tx.nodes[name]; ok {
		return n
	}
	raw, _ := tx.First(tableNodes, "id", name)
	if raw == nil {
		return nil
	}
	return raw.(*api.Node)
}

// allNodes returns every node as tx sees it, sorted by name.
func (tx *writeTxn) allNodes() []*api.Node {
	var out []*api.Node
	for _, n := range collect[*api.Node](tx.Txn, nil, tableNodes, "id") {
		out = append(out, tx.node(n.Name))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RegisterNode adds a node to the pool or updates a known node. A known
// node that was ready goes back to initializing until its agent says it is
// ready; a down node stays down until its agent heartbeats.
func (s *Store) RegisterNode(index uint64, req *NodeRegisterRequest) error {
	if err := req.Reg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return s.write(index, func(tx *writeTxn) error {
		r := req.Reg
		n := tx.node(r.Name)
		if n == nil {
			n = &api.Node{Name: r.Name, State: api.NodeInitializing, Registered: req.Now,
				StateSince: req.Now, CreateIndex: index}
			tx.nodes[r.Name] = n
		} else if n, _ = tx.nodeForWrite(r.Name); n.State == api.NodeReady {
			n.State, n.StateSince = api.NodeInitializing, req.Now
		}
		n.Zone, n.Addr, n.CPU, n.MemoryMB, n.Labels = r.Zone, r.Addr, r.CPU, r.MemoryMB, r.Labels
		n.Socket = r.Socket
		n.PeerAddr = r.PeerAddr
		n.OverlayAddr = r.OverlayAddr
		return nil
	})
}

// SetNodeState marks a node ready or down. Marking a node down makes its
// tasks lost (to be placed elsewhere without using up an attempt) and
// replaces it in its cluster with a pool node, unless it stopped in an
// orderly way (KeepUntil): then it stays a member, expected back, until
// KeepUntil; a later request with Expired replaces it if it is not back.
// A node that comes back joins the pool, or its cluster if it is still a
// member.
func (s *Store) SetNodeState(index uint64, req *NodeStateRequest) error {
	if req.State != api.NodeReady && req.State != api.NodeDown {
		return fmt.Errorf("%w: node state %q cannot be set directly", ErrInvalid, req.State)
	}
	if req.Expired && req.State != api.NodeDown {
		return fmt.Errorf("%w: only a down node's membership can expire", ErrInvalid)
	}
	return s.write(index, func(tx *writeTxn) error {
		if req.Expired {
			return tx.expireMember(req)
		}
		// Checked before nodeForWrite: a no-op must not bump the node's
		// ModifyIndex and wake blocking queries.
		if cur := tx.node(req.Name); cur != nil && (cur.State == req.State ||
			req.State == api.NodeReady && cur.State == api.NodeDraining) { // drain is ended only by the operator
			return nil
		}
		n, err := tx.nodeForWrite(req.Name)
		if err != nil {
			return err
		}
		n.State, n.StateSince = req.State, req.Now
		switch req.State {
		case api.NodeDown:
			reason := "node " + n.Name + " down"
			if req.Reason != "" {
				reason += " (" + req.Reason + ")"
			}
			if err := tx.evictTasks(n.Name, api.TaskLost, reason, req.Now, true); err != nil {
				return err
			}
			if req.KeepUntil.After(req.Now) && n.Cluster != "" && tx.isMember(n.Cluster, n.Name) {
				n.ExpectedBack = req.KeepUntil
				err := tx.clusterEvent(n.Cluster, req.Now, "member-stopped", fmt.Sprintf("%s stopped%s; it stays a member, with its data, until %s",
					n.Name, strings.TrimPrefix(reason, "node "+n.Name+" down"), req.KeepUntil.UTC().Format(time.RFC3339)))
				if err != nil {
					return err
				}
			} else if err := tx.detachNode(n, reason, req.Now); err != nil {
				return err
			}
		case api.NodeReady:
			if !n.ExpectedBack.IsZero() {
				n.ExpectedBack = time.Time{}
				if n.Cluster != "" {
					if err := tx.clusterEvent(n.Cluster, req.Now, "member-back", n.Name+" is back"); err != nil {
						return err
					}
				}
			}
		}
		return tx.healClusters(req.Now)
	})
}

// expireMember replaces in its cluster a down node that was expected back
// by now and is not. Anything else (the node back, or not yet due) is a
// no-op.
func (tx *writeTxn) expireMember(req *NodeStateRequest) error {
	cur := tx.node(req.Name)
	if cur == nil {
		return fmt.Errorf("%w: no node named %q", ErrNotFound, req.Name)
	}
	if cur.State != api.NodeDown || cur.ExpectedBack.IsZero() || req.Now.Before(cur.ExpectedBack) {
		return nil
	}
	n, err := tx.nodeForWrite(req.Name)
	if err != nil {
		return err
	}
	n.ExpectedBack = time.Time{}
	if err := tx.detachNode(n, "not back in time", req.Now); err != nil {
		return err
	}
	return tx.healClusters(req.Now)
}

// DrainNode starts draining a node: no new tasks; tasks not yet started are
// moved at once, running ones at the deadline. A cluster member being
// drained is replaced from the pool right away. Disable ends a drain; the
// node returns to the pool.
func (s *Store) DrainNode(index uint64, req *NodeDrainRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		n, err := tx.nodeForWrite(req.Name)
		if err != nil {
			return err
		}
		if req.Disable {
			if n.State != api.NodeDraining {
				return fmt.Errorf("%w: node %q is not draining", ErrConflict, n.Name)
			}
			if n.Tasks > 0 {
				// Returning it to the pool now would let another cluster
				// reserve a node that still runs this cluster's tasks.
				return fmt.Errorf("%w: node %q still runs %d tasks of cluster %q; end the drain once they are gone",
					ErrConflict, n.Name, n.Tasks, n.Cluster)
			}
			n.State, n.StateSince, n.DrainDeadline = api.NodeReady, req.Now, req.Now
			if n.Cluster != "" && !tx.isMember(n.Cluster, n.Name) {
				n.Cluster = ""
			}
			return tx.healClusters(req.Now)
		}
		if n.State == api.NodeDown {
			return fmt.Errorf("%w: node %q is down", ErrConflict, n.Name)
		}
		n.State, n.StateSince, n.DrainDeadline = api.NodeDraining, req.Now, req.Deadline
		reason := "node " + n.Name + " draining"
		// The member leaves its cluster's list before its tasks move:
		// moving its last task detaches the node (releaseIfIdle), and the
		// cluster must not go on listing a node that left it.
		if n.Cluster != "" {
			if err := tx.removeMember(n.Cluster, n.Name, reason, req.Now); err != nil {
				return err
			}
		}
		if err := tx.evictTasks(n.Name, api.TaskPending, reason, req.Now, false); err != nil {
			return err
		}
		tx.releaseIfIdle(n)
		return tx.healClusters(req.Now)
	})
}

// DrainDeadline moves every task still placed on a draining node whose
// deadline has passed.
func (s *Store) DrainDeadline(index uint64, req *DrainDeadlineRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		// Checked before nodeForWrite so that a no-op writes nothing.
		if cur := tx.node(req.Name); cur != nil && (cur.State != api.NodeDraining || req.Now.Before(cur.DrainDeadline)) {
			return nil
		}
		n, err := tx.nodeForWrite(req.Name)
		if err != nil {
			return err
		}
		err = tx.evictTasks(n.Name, api.TaskPending, "drain deadline of node "+n.Name+" passed", req.Now, true)
		if err != nil {
			return err
		}
		tx.releaseIfIdle(n)
		return nil
	})
}

// releaseIfIdle detaches a draining node from its cluster once it runs
// nothing.
func (tx *writeTxn) releaseIfIdle(n *api.Node) {
	if n.State == api.NodeDraining && n.Tasks == 0 {
		n.Cluster = ""
	}
}

// evictTasks ends the run of every task placed on a node, as lost (the
// node is down) or moved (state pending: drain, shrink), without using up
// an attempt; the job's kind decides what follows. With running false
// only tasks not yet running are moved.
func (tx *writeTxn) evictTasks(node, state, reason string, now time.Time, running bool) error {
	for _, t := range collect[*api.Task](tx.Txn, nil, tableTasks, "node", node) {
		if !t.Placed() || (!running && t.State == api.TaskRunning) {
			continue
		}
		cur := tx.currentTask(t.ID)
		if cur == nil || !cur.Placed() || cur.Node != node || cur.RunID != t.RunID {
			continue // a gang restart earlier in this loop already ended it
		}
		if err := kindOf(tx.job(t.JobID)).runEnded(tx, cur, runEnd{State: state, Message: reason, Node: node, Evicted: true}, now); err != nil {
			return err
		}
	}
	return nil
}

// fits reports whether r fits in what is left of n.
func fits(n *api.Node, r api.Resources) bool {
	return n.Used.CPU+r.CPU <= n.CPU && n.Used.MemoryMB+r.MemoryMB <= n.MemoryMB
}
