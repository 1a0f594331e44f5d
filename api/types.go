// Package api holds Shoal's wire types and the Go client that the CLI, the
// agent and the tests use to talk to a Shoal server over HTTP/JSON.
//
// The JSON field names here are a contract: job files use the same names, and
// users script against `-o json` output. Fields may be added; none may be
// renamed or removed.
package api

import (
	"slices"
	"strings"
	"time"
)

// Node states.
const (
	NodeInitializing = "initializing"
	NodeReady        = "ready"
	NodeDraining     = "draining"
	NodeDown         = "down"
)

// Node is one machine (or, in dev mode, one process) running `shoal agent`.
type Node struct {
	Name     string            `json:"name"`
	Zone     string            `json:"zone"`
	Addr     string            `json:"addr"` // agent HTTP address (logs)
	CPU      int64             `json:"cpu"`  // millicores
	MemoryMB int64             `json:"memory"`
	Labels   map[string]string `json:"labels,omitempty"`
	State    string            `json:"state"`
	// Socket is the agent's short-circuit socket (see NodeRegistration).
	Socket string `json:"socket,omitempty"`
	// PeerAddr is the agent's mutual-TLS address for nodes of its cluster
	// (see NodeRegistration).
	PeerAddr string `json:"peer_addr,omitempty"`
	// OverlayAddr is where the node receives its cluster network's
	// overlay traffic (see NodeRegistration).
	OverlayAddr string `json:"overlay_addr,omitempty"`
	// Cluster is the cluster the node is reserved for; empty when it is in the pool.
	Cluster string `json:"cluster"`
	// DrainDeadline is when tasks still running on a draining node are moved.
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
	// ExpectedBack is set on a down node that stopped in an orderly way
	// while a member of a cluster: it stays a member, and its data stays on
	// it, until then (the servers' --rejoin-grace after it stopped). A node
	// not back by then is replaced in its cluster from the pool.
	ExpectedBack time.Time `json:"expected_back,omitzero"`
	// Used is the cpu and memory reserved by tasks placed on the node.
	Used        Resources `json:"used"`
	Tasks       int       `json:"tasks"`
	Registered  time.Time `json:"registered"`
	StateSince  time.Time `json:"state_since"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// Schedulable reports whether new tasks may be placed on the node.
func (n *Node) Schedulable() bool { return n.State == NodeReady }

// Resources is an amount of cpu (millicores) and memory (MiB).
type Resources struct {
	CPU      int64 `json:"cpu"`
	MemoryMB int64 `json:"memory"`
}

// Event is one entry of a job's or a cluster's history.
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Message string    `json:"message"`
}

// Cluster health states.
const (
	ClusterHealthy  = "healthy"
	ClusterDegraded = "degraded"
)

// Cluster is a named set of nodes reserved from the pool.
type Cluster struct {
	Name string `json:"name"`
	// State is healthy or degraded; Problems says why a cluster is
	// degraded: members down (and when they are expected back), fewer
	// nodes than its size, or fewer zones than it asked for. Servers derive
	// both from the members' nodes when they answer.
	State    string   `json:"state,omitempty"`
	Problems []string `json:"problems,omitempty"`
	// Size is the number of nodes the cluster keeps; MinZones the number of
	// distinct zones they must span.
	Size        int       `json:"size"`
	MinZones    int       `json:"zones"`
	Nodes       []string  `json:"nodes"`
	Events      []Event   `json:"events"`
	Created     time.Time `json:"created"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
	// Subnet is the cluster's private network (a CIDR), allocated when it
	// is created; Egress the outside networks its tasks may reach.
	// Servers fill both when they answer.
	Subnet string   `json:"subnet,omitempty"`
	Egress []string `json:"egress,omitempty"`
	// Token is the cluster's API token: a caller presenting it sees only
	// this cluster, its jobs and its part of the file system
	// (/clusters/NAME). Servers show it to operators only.
	Token string `json:"token,omitempty"`
}

// ClusterRequest asks for a new cluster.
type ClusterRequest struct {
	Name  string `json:"name"`
	Nodes int    `json:"nodes"`
	Zones int    `json:"zones,omitempty"`
	// Egress lists the networks (CIDRs) outside the cluster its tasks may
	// reach, NATed through their node: the customer's own networks. None
	// by default.
	Egress []string `json:"egress,omitempty"`
}

// ClusterResize changes a cluster's size.
type ClusterResize struct {
	Nodes int `json:"nodes"`
}

// PoolStatus summarises the warm pool.
type PoolStatus struct {
	Idle     int `json:"idle"`
	Reserved int `json:"reserved"`
	Down     int `json:"down"`
	Draining int `json:"draining"`
	// ByZone counts the ready idle nodes of every zone that has a node
	// (0 when none is idle).
	ByZone map[string]int `json:"idle_by_zone"`
	// StartingByZone counts the nodes outside clusters that registered and
	// are still initializing, by zone: on their way to being idle.
	StartingByZone map[string]int `json:"starting_by_zone"`
	// WantedByZone is the refill policy's answer (package internal/pool):
	// how many nodes a provisioner should add in each zone so that every
	// zone holds the servers' --pool-min-per-zone ready idle nodes, nodes
	// still initializing counted as on their way. Zones that lack nothing
	// are absent; it is empty when the servers have no such wish (0).
	WantedByZone map[string]int `json:"wanted_by_zone"`
	Nodes        []*Node        `json:"nodes"`
}

// Job types.
const (
	JobBatch = "batch"
)

// JobTypes lists the job types.
var JobTypes = []string{JobBatch, JobMPI}

// Job states.
const (
	JobPending   = "pending"
	JobRunning   = "running"
	JobComplete  = "complete"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// Task states.
const (
	TaskPending   = "pending"
	TaskRunning   = "running"
	TaskComplete  = "complete"
	TaskFailed    = "failed"
	TaskLost      = "lost"
	TaskCancelled = "cancelled"
)

// TaskTerminal reports whether a task in state s will never run again.
func TaskTerminal(s string) bool {
	return s == TaskComplete || s == TaskFailed || s == TaskCancelled
}

// JobSpec is what a user submits: the content of a job file.
type JobSpec struct {
	Name    string      `json:"name"`
	Cluster string      `json:"cluster"`
	Type    string      `json:"type"`
	Groups  []GroupSpec `json:"groups,omitempty"`
	// MPI describes an mpi job (type mpi), which has no groups; the
	// fields below it are for mpi jobs only.
	MPI *MPISpec `json:"mpi,omitempty"`
	// Resources are what each rank needs.
	Resources Resources `json:"resources,omitzero"`
	// Files are DFS paths (relative ones under the cluster's root) staged,
	// executable, into the working directory of every node of the gang.
	Files []string          `json:"files,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
}

// GroupSpec describes Count identical tasks.
type GroupSpec struct {
	Name        string            `json:"name"`
	Count       int               `json:"count"`
	Command     []string          `json:"command"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   Resources         `json:"resources"`
	MaxAttempts int               `json:"max_attempts,omitempty"`
	Timeout     Duration          `json:"timeout,omitempty"`
	// Inputs are DFS files the tasks read: paths, directories (their files)
	// or globs (* ? [...] within one name; names starting with a dot match
	// only a pattern that starts with one). Relative paths are under the
	// cluster's root /clusters/NAME; nothing outside it may be named. They
	// are resolved when the job is submitted. Tasks are placed next to
	// replicas of their inputs and find local copies through SHOAL_INPUTS.
	Inputs []string `json:"inputs,omitempty"`
	// SplitInputs runs one task per input file (Count is then the number
	// of files) instead of giving every task all of them.
	SplitInputs bool `json:"split_inputs,omitempty"`
	// Outputs is a DFS directory. What a task writes to SHOAL_OUTPUT_DIR is
	// published there when, and only when, its attempt succeeds.
	Outputs string `json:"outputs,omitempty"`
}

// Job is a submitted job. Servers answer it as a summary: counts by state
// and by group, its events and, in Failing, a few troubled tasks; its
// tasks are listed page by page (GET /v1/jobs/ID/tasks). Tasks is filled
// only by [Client.Job], which fetches every page.
type Job struct {
	ID      string      `json:"id"`
	Name    string      `json:"name"`
	Cluster string      `json:"cluster"`
	Type    string      `json:"type"`
	State   string      `json:"state"`
	Groups  []GroupSpec `json:"groups"`
	// MPI is the mpi section an mpi job was submitted with; MPIStatus its
	// gang's progress.
	MPI       *MPISpec   `json:"mpi,omitempty"`
	MPIStatus *MPIStatus `json:"mpi_status,omitempty"`
	Counts    TaskCounts `json:"counts"`
	// GroupStatus has one entry per group, in the order of Groups.
	GroupStatus []GroupStatus `json:"group_status"`
	// Failing lists, most recent first, a few tasks that failed, were
	// lost or are on a retry (attempt > 1). Only summaries fill it.
	Failing     []*Task   `json:"failing,omitempty"`
	Tasks       []*Task   `json:"tasks,omitempty"`
	Events      []Event   `json:"events"`
	Submitted   time.Time `json:"submitted"`
	Finished    time.Time `json:"finished,omitzero"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// GroupStatus counts one group's tasks by state.
type GroupStatus struct {
	Name   string     `json:"name"`
	Counts TaskCounts `json:"counts"`
	// Materialized is how many of the group's tasks exist as task records:
	// those of index Materialized and above have never been placed, and
	// are pending (cancelled once the job is) without a record of their
	// own, as in a Slurm job array. The scheduler creates records in
	// index order as it places them.
	Materialized int `json:"materialized"`
}

// TaskPage is one page of a job's tasks, ordered by group name then index.
type TaskPage struct {
	// Total is how many tasks match the filter.
	Total int     `json:"total"`
	Tasks []*Task `json:"tasks"`
	// NextOffset is the offset of the next page; 0 when this is the last.
	NextOffset int `json:"next_offset,omitempty"`
}

// TaskFilter selects tasks of a job: by state and group (empty: any),
// Limit tasks (0: [DefaultTaskLimit]) after skipping Offset.
type TaskFilter struct {
	State  string
	Group  string
	Limit  int
	Offset int
}

// Task page sizes.
const (
	DefaultTaskLimit = 100
	MaxTaskLimit     = 10000
)

// TaskStates lists every task state.
var TaskStates = []string{TaskPending, TaskRunning, TaskComplete, TaskFailed, TaskLost, TaskCancelled}

// Validate checks a filter; the error names the parameter at fault.
func (f *TaskFilter) Validate() error {
	if f.State != "" && !slices.Contains(TaskStates, f.State) {
		return invalid("state", "%q is not a task state (want one of %s)", truncate(f.State), strings.Join(TaskStates, ", "))
	}
	if f.Group != "" {
		if err := ValidateName("group", f.Group); err != nil {
			return err
		}
	}
	if f.Limit < 0 || f.Limit > MaxTaskLimit {
		return invalid("limit", "%d is out of range; use 1 to %d (0 for the default, %d)", f.Limit, MaxTaskLimit, DefaultTaskLimit)
	}
	if f.Offset < 0 {
		return invalid("offset", "%d is negative", f.Offset)
	}
	return nil
}

// Get returns the count for state s.
func (c TaskCounts) Get(s string) int {
	switch s {
	case TaskPending:
		return c.Pending
	case TaskRunning:
		return c.Running
	case TaskComplete:
		return c.Complete
	case TaskFailed:
		return c.Failed
	case TaskLost:
		return c.Lost
	case TaskCancelled:
		return c.Cancelled
	}
	return 0
}

// TaskCounts counts a job's tasks by state.
type TaskCounts struct {
	Pending   int `json:"pending"`
	Running   int `json:"running"`
	Complete  int `json:"complete"`
	Failed    int `json:"failed"`
	Lost      int `json:"lost"`
	Cancelled int `json:"cancelled"`
}

// Add counts one task in state s.
func (c *TaskCounts) Add(s string, d int) {
	switch s {
	case TaskPending:
		c.Pending += d
	case TaskRunning:
		c.Running += d
	case TaskComplete:
		c.Complete += d
	case TaskFailed:
		c.Failed += d
	case TaskLost:
		c.Lost += d
	case TaskCancelled:
		c.Cancelled += d
	}
}

// Total is the number of tasks counted.
func (c TaskCounts) Total() int {
	return c.Pending + c.Running + c.Complete + c.Failed + c.Lost + c.Cancelled
}

// Task is one process of a job, run in a sandbox on a node. A task keeps its
// identity across attempts; RunID names one placement of it.
type Task struct {
	ID      string `json:"id"` // "<job>/<index>"
	JobID   string `json:"job"`
	Cluster string `json:"cluster"`
	Group   string `json:"group"`
	Index   int    `json:"index"`
	State   string `json:"state"`
	Node    string `json:"node"`
	// Attempt counts runs that used up an attempt (1-based once placed). A
	// run lost to a dead node does not use one up.
	Attempt int `json:"attempt"`
	// RunID identifies the current placement; it is the Raft index of the
	// plan that placed it. The agent reports against it so that a late report
	// from an old run never overwrites a newer one.
	RunID    uint64    `json:"run_id"`
	ExitCode int       `json:"exit_code"`
	Message  string    `json:"message,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// NotBefore delays a retried task (backoff).
	NotBefore time.Time `json:"not_before,omitzero"`
	// Addr is the running run's address on its cluster's network; empty
	// when the run shares its node's network.
	Addr string `json:"addr,omitempty"`

	// Copied from the job's group so that an agent needs only the task.
	Command     []string          `json:"command"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   Resources         `json:"resources"`
	MaxAttempts int               `json:"max_attempts"`
	Timeout     Duration          `json:"timeout,omitempty"`
	Count       int               `json:"count"`
	Inputs      []string          `json:"inputs,omitempty"`  // DFS files, resolved
	Outputs     string            `json:"outputs,omitempty"` // DFS directory
	// MPI is set on the tasks of an mpi job, whose Inputs are the job's
	// files (staged into the working directory).
	MPI *TaskMPI `json:"mpi,omitempty"`

	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
}

// Placed reports whether the task holds resources on its node.
func (t *Task) Placed() bool {
	return t.Node != "" && (t.State == TaskPending || t.State == TaskRunning)
}

// NodeWork is what an agent watches: its node record and the runs it
// should have. Runs lists every run placed on the node; Tasks holds in full
// only the tasks changed after the index the agent passed as ?since=, so
// that a busy node's watch does not resend what the agent already has.
type NodeWork struct {
	Node  *Node    `json:"node"`
	Runs  []RunRef `json:"runs"`
	Tasks []*Task  `json:"tasks"`
	// ClusterToken is the API token of the node's cluster; the agent hands
	// it to the cluster's tasks (SHOAL_TOKEN) so that they act as the
	// cluster, not as an operator.
	ClusterToken string `json:"cluster_token,omitempty"`
	// CapabilityKeys are the public keys (ed25519, base64url) that sign
	// the servers' capabilities; the agent checks the capabilities sent to
	// its chunk and log endpoints with the latest it received.
	CapabilityKeys []string `json:"capability_keys,omitempty"`
	// Network is the node's part of its cluster's private network; nil
	// when the node is in no cluster (or its cluster has no network).
	Network *NodeNetwork `json:"network,omitempty"`
}

// NodeNetwork is what an agent needs to give its cluster's tasks their
// private network: the cluster's subnet and overlay id, the node's own
// block of the subnet (its gateway is the block's first address), the
// other members' overlay addresses, the outside networks tasks may reach
// and the control-plane addresses they must never reach.
type NodeNetwork struct {
	Cluster string   `json:"cluster"`
	VNI     uint32   `json:"vni"`
	Subnet  string   `json:"subnet"`
	Block   string   `json:"block"`
	Egress  []string `json:"egress,omitempty"`
	// Peers are the other members' overlay (VXLAN) addresses, ip:port.
	Peers []NetworkPeer `json:"peers,omitempty"`
	// Deny are the servers' and nodes' addresses (as /32 prefixes).
	Deny []string `json:"deny,omitempty"`
}

// NetworkPeer is another member node of the cluster network.
type NetworkPeer struct {
	Node    string `json:"node"`
	Overlay string `json:"overlay"`
}

// RunRef names one placement of a task.
type RunRef struct {
	Task  string `json:"task"`
	RunID uint64 `json:"run_id"`
}

// TaskUpdate is an agent's report about one run of a task.
type TaskUpdate struct {
	TaskID   string    `json:"task"`
	RunID    uint64    `json:"run_id"`
	State    string    `json:"state"` // running, complete, failed, lost
	ExitCode int       `json:"exit_code"`
	Message  string    `json:"message,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Addr is the run's address on its cluster's network (with running).
	Addr string `json:"addr,omitempty"`
}

// TaskUpdates is a batch of reports from one node.
type TaskUpdates struct {
	Node    string       `json:"node"`
	Updates []TaskUpdate `json:"updates"`
}

// NodeRegistration is what an agent sends when it starts.
type NodeRegistration struct {
	Name     string            `json:"name"`
	Zone     string            `json:"zone"`
	Addr     string            `json:"addr"`
	CPU      int64             `json:"cpu"`
	MemoryMB int64             `json:"memory"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Socket is the path of the unix socket on which the agent passes
	// open chunk files to DFS clients on its host (short-circuit reads);
	// empty when it serves none.
	Socket string `json:"socket,omitempty"`
	// PeerAddr is where the agent accepts mutual-TLS connections from the
	// nodes of its cluster (remote launch of MPI daemons); empty when it
	// accepts none.
	PeerAddr string `json:"peer_addr,omitempty"`
	// OverlayAddr is the ip:port (UDP) where the agent's node receives its
	// cluster network's overlay (VXLAN) traffic; empty when its tasks get
	// no private network.
	OverlayAddr string `json:"overlay_addr,omitempty"`
}

// Heartbeat is sent by an agent periodically. Leaving is sent once by an
// agent that shuts down: its node is marked down at once instead of after
// the heartbeat TTL.
type Heartbeat struct {
	Ready   bool `json:"ready"`
	Leaving bool `json:"leaving,omitempty"`
}

// HeartbeatResponse tells the agent how often to heartbeat.
type HeartbeatResponse struct {
	TTL      Duration `json:"ttl"`
	Interval Duration `json:"interval"`
}

// DrainRequest starts or stops draining a node.
type DrainRequest struct {
	Deadline Duration `json:"deadline,omitempty"`
	Disable  bool     `json:"disable,omitempty"`
}

// JobSubmitResponse is returned when a job is accepted.
type JobSubmitResponse struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
}

// WriteResponse is returned by writes that create nothing with an id.
type WriteResponse struct {
	Index uint64 `json:"index"`
}

// ServerInfo describes one control-plane server.
type ServerInfo struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	// QueueAddr is where the server's embedded queue (NATS) accepts
	// routes from the other servers; empty when it takes none.
	QueueAddr string `json:"queue_addr,omitempty"`
	Leader    bool   `json:"leader,omitempty"`
	Voter     bool   `json:"voter,omitempty"`
}

// JoinRequest asks the leader to add a server to the Raft group.
type JoinRequest struct {
	Name      string `json:"name"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr"`
	QueueAddr string `json:"queue_addr,omitempty"`
}

// ErrorBody is the JSON shape of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a stable code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}
