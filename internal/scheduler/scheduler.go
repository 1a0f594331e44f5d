// Package scheduler decides where tasks run. It sees the cluster state only
// through the read-only [State] interface and returns placements; the
// leader submits them as a plan through Raft, and the FSM applies only the
// placements that are still valid (optimistic concurrency). The scheduler
// therefore never writes state and may run on a stale snapshot safely.
//
// Placement bin-packs by cpu and memory inside a zone and spreads a job's
// tasks over the cluster's zones: for each task it tries the zones holding
// the fewest tasks of the job first, and in a zone the best-fitting of a
// few feasible nodes, starting where the previous placement left off.
//
// A pass never reads every task of a large job: a job's tasks that were
// never placed have no rows (see state's tasks.go) and come as ranges, of
// which the pass takes what fits; the spread of a job over zones is
// counted from the tasks placed on the cluster's nodes.
//
// A task with DFS inputs goes first to the feasible node holding the most
// bytes of them in live replicas; only when none has room does it fall
// back to the spread above (and then reads its inputs over the network).
package scheduler

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// State is what the scheduler reads. *state.Snapshot implements it.
type State interface {
	// PlaceableTasks returns the task rows that need a node.
	PlaceableTasks(ws memdb.WatchSet) []*api.Task
	// UnplacedJobs returns the jobs whose groups have tasks never placed:
	// group i's tasks from GroupStatus[i].Materialized to its Count.
	UnplacedJobs(ws memdb.WatchSet) []*api.Job
	// NodeTasks returns the tasks placed on a node.
	NodeTasks(ws memdb.WatchSet, node string) []*api.Task
	Job(ws memdb.WatchSet, id string) *api.Job
	Cluster(ws memdb.WatchSet, name string) *api.Cluster
	Node(ws memdb.WatchSet, name string) *api.Node
	// InputBytes returns, per node, how many bytes of the given DFS files
	// it holds in live replicas.
	InputBytes(paths []string) map[string]int64
}

// MaxPlacements bounds one plan so that one Raft entry stays small.
const MaxPlacements = 5000

// candidates is how many feasible nodes of a zone are compared for best fit.
const candidates = 4

// Result is one scheduling pass.
type Result struct {
	Placements []state.Placement
	// Waiting counts tasks that are eligible but fit nowhere now.
	Waiting int
	// Wake is the earliest time a task held back by retry backoff becomes
	// eligible; zero if none is.
	Wake time.Time
	// Gangs are placed each as a whole or not at all.
	Gangs []state.GangPlacement
}

// work is one unit waiting for nodes: a task row, one group's range of
// tasks never placed (task nil, indexes from index to the group's count),
// or a whole gang. Its placer, chosen by its job's type, places it.
type work struct {
	created  uint64
	job      string
	group    string
	index    int
	task     *api.Task
	unplaced *api.Job
	gi       int
	gang     []*api.Task
	placer   placer
}

// A placer places one unit of work in a pass.
type placer func(p *pass, w *work)

// placers chooses, by job type, how a job's waiting rows become units of
// work and how they are placed: batch tasks one by one (next to their
// inputs when they have some), mpi gangs all at once on distinct nodes
// (gang.go).
var placers = map[string]struct {
	queue func(j *api.Job, rows []*api.Task) []work
	place placer
}{
	api.JobBatch: {queue: queueTasks, place: placeTask},
	api.JobMPI:   {queue: queueGang, place: placeGang},
}

// pass is the state of one scheduling pass.
type pass struct {
	st       State
	now      time.Time
	res      *Result
	clusters map[string]*clusterView
	locality map[string]map[string]int64 // inputs key -> node -> bytes
	// gangTasks counts the tasks of the gangs placed so far.
	gangTasks int
}

func (p *pass) view(name string) *clusterView {
	cv, ok := p.clusters[name]
	if !ok {
		cv = newClusterView(p.st, name)
		p.clusters[name] = cv
	}
	return cv
}

// full reports whether the plan has reached its size, and then asks for
// another pass at once.
func (p *pass) full() bool {
	if len(p.res.Placements)+p.gangTasks >= MaxPlacements {
		p.res.Wake = p.now
		return true
	}
	return false
}

func (p *pass) wakeAt(t time.Time) {
	if p.res.Wake.IsZero() || t.Before(p.res.Wake) {
		p.res.Wake = t
	}
}

// Plan computes placements for the work waiting for nodes, oldest job
// first.
func Plan(st State, now time.Time) *Result {
	p := &pass{st: st, now: now, res: &Result{}, clusters: map[string]*clusterView{}, locality: map[string]map[string]int64{}}
	var queue []work
	rows := map[string][]*api.Task{}
	var jobs []string
	for _, t := range st.PlaceableTasks(nil) {
		if _, ok := rows[t.JobID]; !ok {
			jobs = append(jobs, t.JobID)
		}
		rows[t.JobID] = append(rows[t.JobID], t)
	}
	for _, id := range jobs {
		j := st.Job(nil, id)
		if j == nil {
			continue
		}
		pl, ok := placers[j.Type]
		if !ok {
			pl = placers[api.JobBatch]
		}
		for _, w := range pl.queue(j, rows[id]) {
			w.placer = pl.place
			queue = append(queue, w)
		}
	}
	for _, j := range st.UnplacedJobs(nil) {
		for gi, gs := range j.GroupStatus {
			if gs.Materialized < j.Groups[gi].Count {
				queue = append(queue, work{created: j.CreateIndex, job: j.ID, group: gs.Name, index: gs.Materialized,
					unplaced: j, gi: gi, placer: placeRange})
			}
		}
	}
	slices.SortFunc(queue, func(a, b work) int {
		return cmp.Or(cmp.Compare(a.created, b.created), cmp.Compare(a.job, b.job),
			cmp.Compare(a.group, b.group), cmp.Compare(a.index, b.index))
	})
	for i := range queue {
		if p.full() {
			break
		}
		queue[i].placer(p, &queue[i])
	}
	return p.res
}

// queueTasks makes one unit of work of each waiting row of a batch job.
func queueTasks(_ *api.Job, rows []*api.Task) []work {
	out := make([]work, len(rows))
	for i, t := range rows {
		out[i] = work{created: t.CreateIndex, job: t.JobID, group: t.Group, index: t.Index, task: t}
	}
	return out
}

// placeRange places as many of a group's tasks never placed as fit.
func placeRange(p *pass, w *work) {
	j := w.unplaced
	cv := p.view(j.Cluster)
	zc := cv.jobZones(j.ID)
	g := &j.Groups[w.gi]
	if cv.blocked {
		p.res.Waiting += g.Count - w.index
		return
	}
	for i := w.index; i < g.Count; i++ {
		if p.full() {
			break
		}
		n := cv.place(g.Resources, zc)
		if n == nil {
			p.res.Waiting += g.Count - i // same shape: none of the rest fits either
			break
		}
		zc[n.zone.name]++
		p.res.Placements = append(p.res.Placements, state.Placement{TaskID: state.TaskID(j.ID, g.Name, i),
			Node: n.name, TaskModifyIndex: j.CreateIndex})
	}
}

// placeTask places one batch task row: next to its inputs if it has some
// and a holder has room, else spread over the cluster's zones.
func placeTask(p *pass, w *work) {
	t := w.task
	if t.NotBefore.After(p.now) {
		p.wakeAt(t.NotBefore)
		return
	}
	cv := p.view(t.Cluster)
	if cv.blocked {
		p.res.Waiting++
		return
	}
	zc := cv.jobZones(t.JobID)
	var n *nodeView
	if len(t.Inputs) > 0 {
		key := strings.Join(t.Inputs, "\x00")
		loc, ok := p.locality[key]
		if !ok {
			loc = p.st.InputBytes(t.Inputs)
			p.locality[key] = loc
		}
		n = cv.placeNear(t.Resources, loc, zc)
	}
	if n == nil {
		n = cv.place(t.Resources, zc)
	}
	if n == nil {
		p.res.Waiting++
		return
	}
	zc[n.zone.name]++
	p.res.Placements = append(p.res.Placements, state.Placement{TaskID: t.ID, Node: n.name, TaskModifyIndex: t.ModifyIndex})
}

type nodeView struct {
	name        string
	zone        *zoneView
	free        api.Resources
	cap         api.Resources
	schedulable bool
}

type zoneView struct {
	name   string
	nodes  []*nodeView
	cursor int
	// full remembers shapes that fit on no node of the zone; free space only
	// shrinks during a pass, so they stay full.
	full map[api.Resources]bool
}

type clusterView struct {
	// blocked is set when a gang waits for room in the cluster: younger
	// work must not take the nodes it waits for, or a gang could wait
	// forever behind a stream of small tasks.
	blocked bool
	zones   []*zoneView
	byName  map[string]*nodeView
	// zonesOf counts, per job, its tasks placed in each zone.
	zonesOf map[string]map[string]int
}

// jobZones returns the count of job's tasks per zone of the cluster.
func (cv *clusterView) jobZones(job string) map[string]int {
	zc, ok := cv.zonesOf[job]
	if !ok {
		zc = map[string]int{}
		cv.zonesOf[job] = zc
	}
	return zc
}

func newClusterView(st State, name string) *clusterView {
	cv := &clusterView{byName: map[string]*nodeView{}, zonesOf: map[string]map[string]int{}}
	c := st.Cluster(nil, name)
	if c == nil {
		return cv
	}
	zones := map[string]*zoneView{}
	for _, nn := range c.Nodes {
		n := st.Node(nil, nn)
		if n == nil {
			continue
		}
		z := zones[n.Zone]
		if z == nil {
			z = &zoneView{name: n.Zone, full: map[api.Resources]bool{}}
			zones[n.Zone] = z
			cv.zones = append(cv.zones, z)
		}
		v := &nodeView{name: n.Name, zone: z, schedulable: n.Schedulable() && n.Cluster == name,
			cap:  api.Resources{CPU: n.CPU, MemoryMB: n.MemoryMB},
			free: api.Resources{CPU: n.CPU - n.Used.CPU, MemoryMB: n.MemoryMB - n.Used.MemoryMB}}
		cv.byName[n.Name] = v
		if v.schedulable {
			z.nodes = append(z.nodes, v)
		}
		// The tasks placed on the cluster's nodes, not every task of its
		// jobs: a pass costs O(placed), however large the jobs.
		for _, t := range st.NodeTasks(nil, n.Name) {
			cv.jobZones(t.JobID)[n.Zone]++
		}
	}
	slices.SortFunc(cv.zones, func(a, b *zoneView) int { return cmp.Compare(a.name, b.name) })
	return cv
}

// place picks a node for r, trying zones with fewer of the job's tasks
// first, and reserves r on it.
func (cv *clusterView) place(r api.Resources, jobZones map[string]int) *nodeView {
	order := slices.Clone(cv.zones)
	slices.SortStableFunc(order, func(a, b *zoneView) int { return cmp.Compare(jobZones[a.name], jobZones[b.name]) })
	for _, z := range order {
		if n := z.bestFit(r); n != nil {
			n.free.CPU -= r.CPU
			n.free.MemoryMB -= r.MemoryMB
			return n
		}
	}
	return nil
}

// placeNear picks the feasible node holding the most bytes and reserves r
// on it; among equal holders, the one whose zone runs fewest of the job's
// tasks, then the first by name. It returns nil when no holder has room.
func (cv *clusterView) placeNear(r api.Resources, bytes map[string]int64, jobZones map[string]int) *nodeView {
	var best *nodeView
	for name, b := range bytes {
		n := cv.byName[name]
		if n == nil || !n.schedulable || n.free.CPU < r.CPU || n.free.MemoryMB < r.MemoryMB || b <= 0 {
			continue
		}
		if best == nil {
			best = n
			continue
		}
		if c := cmp.Or(cmp.Compare(bytes[best.name], b), cmp.Compare(jobZones[n.zone.name], jobZones[best.zone.name]),
			cmp.Compare(name, best.name)); c < 0 {
			best = n
		}
	}
	if best != nil {
		best.free.CPU -= r.CPU
		best.free.MemoryMB -= r.MemoryMB
	}
	return best
}

// bestFit scans the zone from its cursor for up to [candidates] nodes with
// room for r and returns the one left fullest, moving the cursor to it so
// that the next task packs onto the same node.
func (z *zoneView) bestFit(r api.Resources) *nodeView {
	if len(z.nodes) == 0 || z.full[r] {
		return nil
	}
	var best *nodeView
	bestIdx, bestScore, found := 0, 0.0, 0
	for i := 0; i < len(z.nodes) && found < candidates; i++ {
		idx := (z.cursor + i) % len(z.nodes)
		n := z.nodes[idx]
		if n.free.CPU < r.CPU || n.free.MemoryMB < r.MemoryMB {
			continue
		}
		found++
		// Fraction of the node left free after placing r; lower packs better.
		score := float64(n.free.CPU-r.CPU)/float64(max(n.cap.CPU, 1)) +
			float64(n.free.MemoryMB-r.MemoryMB)/float64(max(n.cap.MemoryMB, 1))
		if best == nil || score < bestScore {
			best, bestIdx, bestScore = n, idx, score
		}
	}
	if best == nil {
		z.full[r] = true
		return nil
	}
	z.cursor = bestIdx
	return best
}
