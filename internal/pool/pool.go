// Package pool holds the warm pool's refill policy: given how many ready
// idle nodes each zone has and how many are already on their way, how many
// nodes to add in which zone. It is a pure function so that every
// provisioner uses the same answer: `shoal dev`'s pool provider starts
// agents with it, and the servers publish it in the pool status
// (api.PoolStatus.WantedByZone) for a real installation's provisioner.
//
// The policy: every zone should hold MinPerZone ready idle nodes. A zone's
// deficit is MinPerZone minus its idle nodes minus the nodes already
// starting there (an agent started but not yet registered, or registered
// and still initializing); a node is never asked for twice, so a
// provisioner that acts on every answer starts exactly as many nodes as are
// missing and never bursts. When a limit (MaxNew) allows fewer nodes than
// the zones lack, the zones lacking most come first, ties broken by zone
// name, so the answer is deterministic.
package pool

import (
	"github.com/shoal-dev/shoal/api"
)

// ZoneCount is what a zone of the pool holds.
type ZoneCount struct {
	// Idle is the number of ready nodes not in any cluster.
	Idle int
	// Starting is the number of nodes on their way to being idle: started
	// but not registered yet, or registered and still initializing.
	Starting int
}

// Policy is the refill policy.
type Policy struct {
	// MinPerZone is the number of ready idle nodes every zone should
	// hold; 0 wants nothing.
	MinPerZone int
	// MaxNew caps the number of nodes to add in total; negative means no
	// cap. A provisioner passes the room it has left (for example
	// `shoal dev --max-agents` minus the agents running).
	MaxNew int
}

// Wanted returns, for each zone of zones that lacks nodes, how many to add
// there. Zones that lack nothing are absent; the result is never nil.
func Wanted(p Policy, zones map[string]ZoneCount) map[string]int {
	type deficit struct {
		zone string
		n    int
	}
	var ds []deficit
	for z, c := range zones {
		if n := p.MinPerZone - c.Idle - c.Starting; n > 0 {
			ds = append(ds, deficit{z, n})
		}
	}
	out := map[string]int{}
	for budget := p.MaxNew; budget != 0 && len(ds) > 0; budget-- {
		// One node at a time to the zone that lacks most after the nodes
		// given so far, ties to the first zone by name.
		best := 0
		for i, d := range ds {
			if d.n > ds[best].n || d.n == ds[best].n && d.zone < ds[best].zone {
				best = i
			}
		}
		out[ds[best].zone]++
		if ds[best].n--; ds[best].n == 0 {
			ds = append(ds[:best], ds[best+1:]...)
		}
	}
	return out
}

// Count tallies nodes by zone: ready nodes outside any cluster are idle,
// initializing ones outside any cluster are starting. Every zone that has
// a node, in any state, is present, so a zone whose nodes all died is
// still one to refill.
func Count(nodes []*api.Node) map[string]ZoneCount {
	out := map[string]ZoneCount{}
	for _, n := range nodes {
		c := out[n.Zone]
		if n.Cluster == "" {
			switch n.State {
			case api.NodeReady:
				c.Idle++
			case api.NodeInitializing:
				c.Starting++
			}
		}
		out[n.Zone] = c
	}
	return out
}
