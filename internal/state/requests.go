package state

import (
	"time"

	"github.com/shoal-dev/shoal/api"
)

// The requests below are the payloads of Raft log entries. Each carries the
// proposer's clock (Now) so that applying an entry is deterministic on every
// server.

// NodeRegisterRequest registers or re-registers a node.
type NodeRegisterRequest struct {
	Reg api.NodeRegistration `json:"reg"`
	Now time.Time            `json:"now"`
}

// NodeStateRequest changes a node's liveness (ready or down).
type NodeStateRequest struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// KeepUntil, when a node goes down, keeps it a member of its cluster
	// until then: it stopped in an orderly way and is expected back.
	KeepUntil time.Time `json:"keep_until,omitzero"`
	// Expired, with state down, ends the membership of a down node that
	// was expected back by now and is not: it is replaced in its cluster.
	Expired bool      `json:"expired,omitempty"`
	Now     time.Time `json:"now"`
}

// NodeDrainRequest starts or stops draining a node.
type NodeDrainRequest struct {
	Name     string    `json:"name"`
	Deadline time.Time `json:"deadline"`
	Disable  bool      `json:"disable,omitempty"`
	Now      time.Time `json:"now"`
}

// DrainDeadlineRequest moves the tasks still on a draining node whose
// deadline passed.
type DrainDeadlineRequest struct {
	Name string    `json:"name"`
	Now  time.Time `json:"now"`
}

// ClusterCreateRequest creates a cluster.
type ClusterCreateRequest struct {
	Req api.ClusterRequest `json:"req"`
	Now time.Time          `json:"now"`
	// Token is the cluster's API token, drawn at random by the server
	// that received the request (the FSM must stay deterministic).
	Token string `json:"token"`
	// CA is the cluster's certificate authority, made by that server for
	// the same reason.
	CA *ClusterCA `json:"ca,omitempty"`
	// Networks and SubnetBits are the servers' cluster networks, divided
	// into /SubnetBits subnets, one a cluster (empty: the defaults).
	Networks   string `json:"networks,omitempty"`
	SubnetBits int    `json:"subnet_bits,omitempty"`
	// NodeBits is the prefix length of each member node's block of the
	// cluster's subnet (0: the default).
	NodeBits int `json:"node_bits,omitempty"`
}

// ClusterCARequest gives a cluster without one its CA.
type ClusterCARequest struct {
	CA ClusterCA `json:"ca"`
}

// CheckpointReportRequest records that one rank's files for an epoch are
// durable; Node is the reporting agent's node.
type CheckpointReportRequest struct {
	Node   string               `json:"node"`
	Report api.CheckpointReport `json:"report"`
	Now    time.Time            `json:"now"`
}

// ClusterTokenRequest replaces a cluster's API token.
type ClusterTokenRequest struct {
	Name  string    `json:"name"`
	Token string    `json:"token"`
	Now   time.Time `json:"now"`
}

// ClusterResizeRequest changes a cluster's size.
type ClusterResizeRequest struct {
	Name  string    `json:"name"`
	Nodes int       `json:"nodes"`
	Now   time.Time `json:"now"`
}

// ClusterDeleteRequest deletes a cluster.
type ClusterDeleteRequest struct {
	Name string    `json:"name"`
	Now  time.Time `json:"now"`
}

// JobSubmitRequest submits a job.
type JobSubmitRequest struct {
	Spec api.JobSpec `json:"spec"`
	Now  time.Time   `json:"now"`
}

// JobCancelRequest cancels a job.
type JobCancelRequest struct {
	ID  string    `json:"id"`
	Now time.Time `json:"now"`
}

// TaskUpdateRequest applies an agent's reports.
type TaskUpdateRequest struct {
	Updates api.TaskUpdates `json:"updates"`
	Now     time.Time       `json:"now"`
}

// Placement puts one task on one node. TaskModifyIndex is the task's
// ModifyIndex the scheduler saw; the plan is refused for a task that has
// changed since (optimistic concurrency).
type Placement struct {
	TaskID          string `json:"task"`
	Node            string `json:"node"`
	TaskModifyIndex uint64 `json:"task_modify_index"`
}

// PlanRequest is a scheduler's plan.
type PlanRequest struct {
	Placements []Placement `json:"placements"`
	// Gangs are placed each as a whole or not at all.
	Gangs []GangPlacement `json:"gangs,omitempty"`
	Now   time.Time       `json:"now"`
}

// PlanResult says how much of a plan was applied.
type PlanResult struct {
	Placed   int `json:"placed"`
	Rejected int `json:"rejected"`
}

// ServerUpsertRequest records a control-plane server's addresses.
type ServerUpsertRequest struct {
	Server api.ServerInfo `json:"server"`
}
