package server

import (
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/pool"
	"github.com/shoal-dev/shoal/internal/state"
)

// --- status ---

func (s *Server) handleLeader(w http.ResponseWriter, r *http.Request) {
	addr, _ := s.raft.LeaderWithID()
	writeJSON(w, http.StatusOK, string(addr))
}

func (s *Server) handlePeers(w http.ResponseWriter, r *http.Request) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeErr(w, err)
		return
	}
	peers := []string{}
	for _, sv := range cf.Configuration().Servers {
		if sv.Suffrage == raft.Voter {
			peers = append(peers, string(sv.Address))
		}
	}
	sort.Strings(peers)
	writeJSON(w, http.StatusOK, peers)
}

func (s *Server) handleServers(w http.ResponseWriter, r *http.Request) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeErr(w, err)
		return
	}
	known := map[string]*api.ServerInfo{}
	for _, sv := range s.store.Snapshot().Servers(nil) {
		known[sv.RaftAddr] = sv
	}
	leader, _ := s.raft.LeaderWithID()
	out := []api.ServerInfo{}
	for _, sv := range cf.Configuration().Servers {
		info := api.ServerInfo{Name: string(sv.ID), RaftAddr: string(sv.Address),
			Voter: sv.Suffrage == raft.Voter, Leader: sv.Address == leader}
		if k := known[string(sv.Address)]; k != nil {
			info.HTTPAddr = k.HTTPAddr
		}
		out = append(out, info)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleSelf answers discovery at bootstrap: this server and the servers
// it has heard of, from the state or from their own discovery requests. A
// discovering server introduces itself with ?name=&raft_addr=&http_addr=.
func (s *Server) handleSelf(w http.ResponseWriter, r *http.Request) {
	// Only servers (which present the operator token) introduce
	// themselves: a cluster's token must not add addresses this server
	// would dial (Raft discovery, queue routes).
	if q := r.URL.Query(); q.Get("name") != "" && principalOf(r).Operator() {
		s.noteCaller(api.ServerInfo{Name: q.Get("name"), RaftAddr: q.Get("raft_addr"), HTTPAddr: q.Get("http_addr"), QueueAddr: q.Get("queue_addr")})
	}
	out := []api.ServerInfo{s.Info()}
	seen := map[string]bool{s.cfg.Name: true}
	for _, sv := range s.store.Snapshot().Servers(nil) {
		if !seen[sv.Name] {
			seen[sv.Name] = true
			out = append(out, *sv)
		}
	}
	for _, sv := range s.discoveryCallers() {
		if !seen[sv.Name] {
			out = append(out, sv)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := s.addVoter(&req); err != nil {
		writeErr(w, err)
		return
	}
	respondWrite(w, s.raft.LastIndex(), nil)
}

func (s *Server) handleRegisterServer(w http.ResponseWriter, r *http.Request) {
	var req state.ServerUpsertRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := api.ValidateName("server.name", req.Server.Name); err != nil {
		writeErr(w, err)
		return
	}
	s.write(w, fsm.ServerUpsert, &req)
}

// write applies one entry and answers with its result.
func (s *Server) write(w http.ResponseWriter, t fsm.MessageType, req any) {
	v, idx, err := s.apply(t, req)
	if err != nil {
		writeErr(w, err)
		return
	}
	respondWrite(w, idx, v)
}

// --- nodes ---

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	s.query(w, r, []string{state.TableNodes}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		n := snap.Nodes(ws)
		if n == nil {
			n = []*api.Node{}
		}
		return n, nil
	})
}

func (s *Server) handleNode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.query(w, r, []string{state.TableNodes}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		n := snap.Node(ws, name)
		if n == nil {
			return nil, fmt.Errorf("%w: no node named %q", state.ErrNotFound, name)
		}
		return n, nil
	})
}

func (s *Server) handleNodeWork(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	since, err := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
	if err != nil && r.URL.Query().Get("since") != "" {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, "since: not a non-negative integer")
		return
	}
	s.query(w, r, []string{state.TableNodes, state.TableTasks, state.TableClusters, state.TableCapabilityKeys}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		n := snap.Node(ws, name)
		if n == nil {
			return nil, fmt.Errorf("%w: no node named %q", state.ErrNotFound, name)
		}
		work := &api.NodeWork{Node: n, Runs: []api.RunRef{}, Tasks: []*api.Task{},
			CapabilityKeys: s.capabilityKeys(snap.CapabilityKeys(ws))}
		if c := snap.Cluster(ws, n.Cluster); c != nil && n.Cluster != "" {
			work.ClusterToken = c.Token
			work.Network = nodeNetwork(snap, ws, n)
		}
		for _, t := range snap.NodeTasks(ws, name) {
			work.Runs = append(work.Runs, api.RunRef{Task: t.ID, RunID: t.RunID})
			if t.ModifyIndex > since {
				work.Tasks = append(work.Tasks, t)
			}
		}
		return work, nil
	})
}

func (s *Server) handleNodeRegister(w http.ResponseWriter, r *http.Request) {
	var reg api.NodeRegistration
	if !decodeBody(w, r, &reg) {
		return
	}
	if reg.Name != r.PathValue("name") {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("name: %q does not match the URL's node %q", reg.Name, r.PathValue("name")))
		return
	}
	if err := reg.Validate(); err != nil {
		writeErr(w, err)
		return
	}
	s.heartbeats.beat(reg.Name, s.now())
	s.write(w, fsm.NodeRegister, &state.NodeRegisterRequest{Reg: reg, Now: s.now()})
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var hb api.Heartbeat
	if !decodeBody(w, r, &hb) {
		return
	}
	n := s.store.Snapshot().Node(nil, name)
	if n == nil {
		writeErr(w, fmt.Errorf("%w: node %q is not registered", state.ErrNotFound, name))
		return
	}
	s.heartbeats.beat(name, s.now())
	s.metrics.heartbeats.Inc()
	if hb.Leaving {
		now := s.now()
		s.write(w, fsm.NodeState, &state.NodeStateRequest{Name: name, State: api.NodeDown, Reason: "agent shut down",
			KeepUntil: now.Add(s.cfg.RejoinGrace), Now: now})
		return
	}
	if hb.Ready && (n.State == api.NodeDown || n.State == api.NodeInitializing) {
		if _, _, err := s.apply(fsm.NodeState, &state.NodeStateRequest{Name: name, State: api.NodeReady, Now: s.now()}); err != nil {
			writeErr(w, err)
			return
		}
	}
	ttl := s.cfg.HeartbeatTTL
	writeJSON(w, http.StatusOK, api.HeartbeatResponse{TTL: api.Duration(ttl), Interval: api.Duration(ttl / 4)})
}

func (s *Server) handleTaskUpdates(w http.ResponseWriter, r *http.Request) {
	var u api.TaskUpdates
	if !decodeBody(w, r, &u) {
		return
	}
	if u.Node != r.PathValue("name") {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("node: %q does not match the URL's node %q", u.Node, r.PathValue("name")))
		return
	}
	for i, up := range u.Updates {
		if a, err := netip.ParseAddr(up.Addr); up.Addr != "" && (err != nil || !a.Is4()) {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("updates[%d].addr: %q is not an IPv4 address", i, up.Addr))
			return
		}
	}
	s.write(w, fsm.TaskUpdate, &state.TaskUpdateRequest{Updates: u, Now: s.now()})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	var req api.DrainRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Deadline < 0 || req.Deadline.D() > api.MaxDrainDeadline {
		writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("deadline: must be between 0 and %s", api.MaxDrainDeadline))
		return
	}
	if req.Deadline == 0 {
		req.Deadline = api.Duration(time.Minute)
	}
	now := s.now()
	s.write(w, fsm.NodeDrain, &state.NodeDrainRequest{Name: r.PathValue("name"), Deadline: now.Add(req.Deadline.D()), Disable: req.Disable, Now: now})
}

func (s *Server) handlePool(w http.ResponseWriter, r *http.Request) {
	s.query(w, r, []string{state.TableNodes}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		p := &api.PoolStatus{ByZone: map[string]int{}, StartingByZone: map[string]int{}, Nodes: []*api.Node{}}
		nodes := snap.Nodes(ws)
		zones := pool.Count(nodes)
		for z, c := range zones {
			p.ByZone[z] = 0 // counted below
			if c.Starting > 0 {
				p.StartingByZone[z] = c.Starting
			}
		}
		p.WantedByZone = pool.Wanted(pool.Policy{MinPerZone: s.cfg.PoolMinPerZone, MaxNew: -1}, zones)
		for _, n := range nodes {
			switch {
			case n.State == api.NodeDown:
				p.Down++
			case n.State == api.NodeDraining:
				p.Draining++
			case n.Cluster != "":
				p.Reserved++
			case n.State == api.NodeReady:
				p.Idle++
				p.ByZone[n.Zone]++
				p.Nodes = append(p.Nodes, n)
			}
		}
		return p, nil
	})
}

// --- clusters ---

func (s *Server) handleClusters(w http.ResponseWriter, r *http.Request) {
	s.query(w, r, []string{state.TableClusters, state.TableNodes}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		out := []*api.Cluster{}
		p := principalOf(r)
		for _, c := range snap.Clusters(ws) {
			if p.Sees(c.Name) {
				out = append(out, clusterView(snap, ws, c, p))
			}
		}
		return out, nil
	})
}

// clusterView is a copy of a stored cluster with its health, which depends
// on its members' nodes and so is derived when answering, as principal p
// may see it: only operators see the cluster's token (a cluster's own
// tasks reach the API through their node's endpoint, which holds it, and
// must not be able to read it there).
func clusterView(snap *state.Snapshot, ws memdb.WatchSet, c *api.Cluster, p principal) *api.Cluster {
	v := *c
	if !p.Operator() {
		v.Token = ""
	}
	v.State, v.Problems = snap.ClusterHealth(ws, c)
	v.Subnet, v.Egress = snap.ClusterNetwork(ws, c.Name)
	return &v
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.query(w, r, []string{state.TableClusters, state.TableNodes}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		c := snap.Cluster(ws, name)
		if c == nil || !principalOf(r).Sees(name) {
			return nil, fmt.Errorf("%w: no cluster named %q", state.ErrNotFound, name)
		}
		return clusterView(snap, ws, c, principalOf(r)), nil
	})
}

func (s *Server) handleClusterCreate(w http.ResponseWriter, r *http.Request) {
	var req api.ClusterRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		writeErr(w, err)
		return
	}
	token, err := newToken()
	if err != nil {
		writeErr(w, err)
		return
	}
	ca, err := s.newClusterCA(req.Name)
	if err != nil {
		writeErr(w, err)
		return
	}
	v, idx, err := s.apply(fsm.ClusterCreate, &state.ClusterCreateRequest{Req: req, Now: s.now(), Token: token, CA: ca,
		Networks: s.cfg.ClusterNetworks, SubnetBits: s.cfg.ClusterSubnetBits, NodeBits: s.cfg.NodeSubnetBits})
	if err != nil {
		writeErr(w, err)
		return
	}
	// Answered as reads show it: with its health and network.
	respondWrite(w, idx, clusterView(s.store.Snapshot(), nil, v.(*api.Cluster), principalOf(r)))
}

// handleClusterToken replaces a cluster's API token, for when it leaked:
// the old token stops working at once, including in tasks already running
// (they get the new one when they next start).
func (s *Server) handleClusterToken(w http.ResponseWriter, r *http.Request) {
	token, err := newToken()
	if err != nil {
		writeErr(w, err)
		return
	}
	s.write(w, fsm.ClusterToken, &state.ClusterTokenRequest{Name: r.PathValue("name"), Token: token, Now: s.now()})
}

func (s *Server) handleClusterResize(w http.ResponseWriter, r *http.Request) {
	var req api.ClusterResize
	if !decodeBody(w, r, &req) {
		return
	}
	s.write(w, fsm.ClusterResize, &state.ClusterResizeRequest{Name: r.PathValue("name"), Nodes: req.Nodes, Now: s.now()})
}

func (s *Server) handleClusterDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v, idx, err := s.apply(fsm.ClusterDelete, &state.ClusterDeleteRequest{Name: name, Now: s.now()})
	if err != nil {
		writeErr(w, err)
		return
	}
	// A cluster made later with the same name must find none of this
	// one's queued events or dead letters.
	if q := s.queue.Load(); q != nil {
		if err := q.PurgeCluster(r.Context(), name); err != nil {
			s.log.Warn("purging a deleted cluster's queued events and dead letters", "cluster", name, "err", err)
		}
	}
	respondWrite(w, idx, v)
}

// --- jobs ---

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	cluster := r.URL.Query().Get("cluster")
	if p := principalOf(r); !p.Operator() {
		if cluster != "" && !allowCluster(w, r, cluster) {
			return
		}
		cluster = p.Cluster
	}
	s.query(w, r, []string{state.TableJobs}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		j := snap.Jobs(ws, cluster)
		if j == nil {
			j = []*api.Job{}
		}
		return j, nil
	})
}

// summaryEvents is how many of its last events a job summary shows.
const summaryEvents = 10

// handleJob answers a job's summary: counts by state and group, its last
// events and a few failing tasks, read from counters and small indexes
// whatever the job's size. Tasks are listed by handleJobTasks.
func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// The tasks table too: a retried task can change the summary's failing
	// tasks without a write to the job's row.
	s.query(w, r, []string{state.TableJobs, state.TableTasks}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		j := snap.JobSummary(ws, id, summaryEvents)
		if j == nil || !principalOf(r).Sees(j.Cluster) {
			return nil, fmt.Errorf("%w: no job named %q", state.ErrNotFound, id)
		}
		return j, nil
	})
}

// handleJobTasks answers one page of a job's tasks:
// ?state=&group=&limit=&offset=.
func (s *Server) handleJobTasks(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	q := r.URL.Query()
	f := &api.TaskFilter{State: q.Get("state"), Group: q.Get("group")}
	for _, p := range []struct {
		name string
		to   *int
	}{{"limit", &f.Limit}, {"offset", &f.Offset}} {
		if v := q.Get(p.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("%s: %q is not an integer", p.name, v))
				return
			}
			*p.to = n
		}
	}
	if err := f.Validate(); err != nil {
		writeErr(w, err)
		return
	}
	s.query(w, r, []string{state.TableJobs, state.TableTasks}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		j := snap.Job(ws, id)
		if j == nil || !principalOf(r).Sees(j.Cluster) {
			return nil, fmt.Errorf("%w: no job named %q", state.ErrNotFound, id)
		}
		snap.WatchTables(ws, state.TableTasks)
		return snap.TaskPage(ws, id, f)
	})
}

func (s *Server) handleJobSubmit(w http.ResponseWriter, r *http.Request) {
	var spec api.JobSpec
	if !decodeBody(w, r, &spec) {
		return
	}
	if err := spec.Validate(); err != nil {
		writeErr(w, err)
		return
	}
	if !allowCluster(w, r, spec.Cluster) {
		return
	}
	v, idx, err := s.apply(fsm.JobSubmit, &state.JobSubmitRequest{Spec: spec, Now: s.now()})
	if err != nil {
		writeErr(w, err)
		return
	}
	respondWrite(w, idx, &api.JobSubmitResponse{ID: v.(*api.Job).ID, Index: idx})
}

func (s *Server) handleJobCancel(w http.ResponseWriter, r *http.Request) {
	if j := s.store.Snapshot().Job(nil, r.PathValue("id")); j != nil && !principalOf(r).Sees(j.Cluster) {
		writeErr(w, fmt.Errorf("%w: no job named %q", state.ErrNotFound, r.PathValue("id")))
		return
	}
	s.write(w, fsm.JobCancel, &state.JobCancelRequest{ID: r.PathValue("id"), Now: s.now()})
}
