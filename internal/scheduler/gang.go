package scheduler

import (
	"cmp"
	"slices"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// queueGang makes one unit of work of an mpi job's gang once every task of
// it waits for a node: a gang is never half placed, and while some of its
// tasks are still being stopped it is not placed at all.
func queueGang(j *api.Job, rows []*api.Task) []work {
	if len(j.Groups) == 0 || len(rows) != j.Groups[0].Count {
		return nil
	}
	gang := slices.Clone(rows)
	slices.SortFunc(gang, func(a, b *api.Task) int { return cmp.Compare(a.Index, b.Index) })
	return []work{{created: j.CreateIndex, job: j.ID, group: api.MPIGroup, gang: gang}}
}

// placeGang places a whole gang on distinct nodes of its cluster or none
// of it. It takes nodes zone by zone in turn (the zones with the most
// usable nodes first), the best fit in each, so that a gang spans as many
// zones as it can; the launcher (task 0) gets the first. A gang that does
// not fit now waits, whole, and younger work of its cluster waits behind
// it (first come, first served), so that it is not starved.
func placeGang(p *pass, w *work) {
	gang := w.gang
	for _, t := range gang {
		if t.NotBefore.After(p.now) {
			p.wakeAt(t.NotBefore)
			return
		}
	}
	r := gang[0].Resources
	cv := p.view(gang[0].Cluster)
	if cv.blocked {
		p.res.Waiting += len(gang)
		return
	}
	zones := slices.Clone(cv.zones)
	slices.SortStableFunc(zones, func(a, b *zoneView) int { return cmp.Compare(len(b.nodes), len(a.nodes)) })
	var picked []*nodeView
	used := map[*nodeView]bool{}
	for progress := true; progress && len(picked) < len(gang); {
		progress = false
		for _, z := range zones {
			if len(picked) == len(gang) {
				break
			}
			if n := z.bestFitExcept(r, used); n != nil {
				picked = append(picked, n)
				used[n] = true
				progress = true
			}
		}
	}
	if len(picked) < len(gang) {
		// It waits, queued: younger work of the cluster waits behind it.
		cv.blocked = true
		p.res.Waiting += len(gang)
		return
	}
	g := state.GangPlacement{Job: w.job}
	zc := cv.jobZones(w.job)
	for i, n := range picked {
		n.free.CPU -= r.CPU
		n.free.MemoryMB -= r.MemoryMB
		zc[n.zone.name]++
		g.Placements = append(g.Placements, state.Placement{TaskID: gang[i].ID, Node: n.name, TaskModifyIndex: gang[i].ModifyIndex})
	}
	p.res.Gangs = append(p.res.Gangs, g)
	p.gangTasks += len(gang)
}

// bestFitExcept returns the node of the zone with room for r, not in
// used, left fullest by r; nil if none.
func (z *zoneView) bestFitExcept(r api.Resources, used map[*nodeView]bool) *nodeView {
	var best *nodeView
	bestScore := 0.0
	for _, n := range z.nodes {
		if used[n] || n.free.CPU < r.CPU || n.free.MemoryMB < r.MemoryMB {
			continue
		}
		score := float64(n.free.CPU-r.CPU)/float64(max(n.cap.CPU, 1)) +
			float64(n.free.MemoryMB-r.MemoryMB)/float64(max(n.cap.MemoryMB, 1))
		if best == nil || score < bestScore {
			best, bestScore = n, score
		}
	}
	return best
}
