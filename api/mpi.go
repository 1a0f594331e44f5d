package api

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// MPI jobs. An mpi job is a gang: Nodes() tasks of one group, one per node
// of its cluster, placed together or not at all. Task 0 is the launcher:
// it runs the user's command (their own mpirun) with a hostfile of the
// gang's nodes; the other tasks host the orted daemons that mpirun starts
// through Shoal's remote-launch agent. When any task of the gang fails or
// is lost, the whole gang is stopped and placed again, resuming from the
// last checkpoint epoch that every rank completed.

// JobMPI is the job type of MPI gang jobs.
const JobMPI = "mpi"

// MPIGroup is the name of the one group of an mpi job's tasks.
const MPIGroup = "mpi"

// Limits on mpi jobs.
const (
	MaxMPIRanks       = 65536
	MaxMPIRestarts    = 1000
	MaxCheckpointKeep = 100
	// MinCheckpointInterval bounds how often Shoal asks for checkpoints.
	MinCheckpointInterval = time.Second
	// MaxRankResource bounds a rank's cpu (millicores) and memory (MiB).
	MaxRankResource = 1 << 30
)

// MPISpec is the mpi section of a job file.
type MPISpec struct {
	// Ranks is the number of MPI processes in all.
	Ranks int `json:"ranks"`
	// SlotsPerNode is the number of ranks on each node: the gang has
	// ceil(Ranks/SlotsPerNode) nodes.
	SlotsPerNode int `json:"slots_per_node"`
	// Command is run on the gang's first node: the user's own mpirun.
	Command []string `json:"command"`
	// MaxRestarts bounds the gang restarts after a failure (0: none).
	MaxRestarts int            `json:"max_restarts,omitempty"`
	Checkpoint  CheckpointSpec `json:"checkpoint,omitzero"`
}

// CheckpointSpec configures an mpi job's checkpoints.
type CheckpointSpec struct {
	// Keep is how many complete epochs are kept (default 2); older ones
	// are deleted.
	Keep int `json:"keep,omitempty"`
	// Interval, when set, makes Shoal ask the ranks for a checkpoint this
	// often: it touches $SHOAL_CHECKPOINT_DIR/request (containing the
	// epoch number it suggests) on every node of the gang.
	Interval Duration `json:"interval,omitempty"`
}

// Nodes is the number of nodes the gang needs.
func (m *MPISpec) Nodes() int {
	if m.SlotsPerNode < 1 {
		return 0
	}
	return (m.Ranks + m.SlotsPerNode - 1) / m.SlotsPerNode
}

// TaskMPI is what an mpi job's task carries besides the batch fields.
type TaskMPI struct {
	Ranks        int `json:"ranks"`
	SlotsPerNode int `json:"slots_per_node"`
	// Nodes are the gang's nodes in task index order: the hostfile. Set
	// when the gang is placed; all its tasks share the same RunID.
	Nodes []string `json:"nodes,omitempty"`
	// RestartEpoch is the last complete epoch when the gang was placed (0:
	// none, start from scratch): its files are restored before the run
	// starts, and SHOAL_RESTART_EPOCH names it.
	RestartEpoch int64 `json:"restart_epoch,omitempty"`
	// CheckpointInterval is the job's checkpoint.interval.
	CheckpointInterval Duration `json:"checkpoint_interval,omitempty"`
}

// RanksOn returns the ranks hosted by the gang's task index i, in
// Open MPI's default by-slot mapping: [i*slots, min((i+1)*slots, ranks)).
func (m *TaskMPI) RanksOn(i int) (first, end int) {
	first = i * m.SlotsPerNode
	end = min(first+m.SlotsPerNode, m.Ranks)
	return min(first, end), end
}

// MPIStatus is an mpi job's progress, shown by job status.
type MPIStatus struct {
	Ranks int `json:"ranks"`
	Nodes int `json:"nodes"`
	// GangNodes are the nodes of the current placement (empty while the
	// gang waits to be placed).
	GangNodes []string `json:"gang_nodes"`
	Restarts  int      `json:"restarts"`
	// LastEpoch is the last complete checkpoint epoch (0: none).
	LastEpoch int64 `json:"last_complete_epoch"`
	// RestartingSince is when the current restart began (zero when the
	// gang is not restarting); RestartFrom the epoch it resumes from.
	RestartingSince time.Time `json:"restarting_since,omitzero"`
	RestartFrom     int64     `json:"restart_from,omitempty"`
}

// Checkpoint states.
const (
	CheckpointPartial  = "partial"
	CheckpointComplete = "complete"
	CheckpointDeleted  = "deleted"
)

// Checkpoint is one epoch of an mpi job's checkpoints.
type Checkpoint struct {
	Job   string `json:"job"`
	Epoch int64  `json:"epoch"`
	State string `json:"state"`
	// Ranks is the job's rank count; Durable how many ranks' files for
	// the epoch are durable in the DFS.
	Ranks   int   `json:"ranks"`
	Durable int   `json:"durable"`
	Bytes   int64 `json:"bytes"`
	// Dir is the epoch's DFS directory (one subdirectory per rank).
	Dir       string    `json:"dir"`
	Created   time.Time `json:"created"`
	Completed time.Time `json:"completed,omitzero"`
}

// CheckpointReport is an agent's report that one rank's files for an
// epoch are durable in the DFS (under the epoch's Dir, in RANK/).
type CheckpointReport struct {
	Job   string `json:"job"`
	Task  string `json:"task"`
	RunID uint64 `json:"run_id"`
	Epoch int64  `json:"epoch"`
	Rank  int    `json:"rank"`
	Bytes int64  `json:"bytes"`
}

// CheckpointCommit is what `shoal checkpoint commit N` (or a program's own
// HTTP call) sends to its node's agent: POST /v1/local/checkpoint with the
// run's secret (SHOAL_RUN_SECRET) in the X-Shoal-Run-Secret header.
type CheckpointCommit struct {
	Epoch int64 `json:"epoch"`
	Rank  int   `json:"rank"`
}

// CheckpointCommitResponse tells a rank that the agent holds its own copy
// of the rank's files for the epoch.
type CheckpointCommitResponse struct {
	Epoch int64 `json:"epoch"`
	Rank  int   `json:"rank"`
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
}

// RunSecretHeader carries a run's secret to its agent's local API.
const RunSecretHeader = "X-Shoal-Run-Secret"

// CheckpointDir is the DFS directory of an mpi job's checkpoint epoch.
func CheckpointDir(cluster, job string, epoch int64) string {
	return fmt.Sprintf("%s/.checkpoints/%s/%d", ClusterRoot(cluster), job, epoch)
}

// NodeCertificateRequest asks for the credentials of the node's cluster:
// CSR is a PEM certificate request for the node's own key, which never
// leaves the node.
type NodeCertificateRequest struct {
	CSR string `json:"csr"`
}

// NodeCertificate is a node's certificate in its cluster, signed by the
// cluster's CA, with the CA's certificate. Nodes use them for mutual TLS
// between nodes of the cluster (the remote-launch channel).
type NodeCertificate struct {
	Cluster  string    `json:"cluster"`
	Node     string    `json:"node"`
	Cert     string    `json:"cert"`
	CA       string    `json:"ca"`
	NotAfter time.Time `json:"not_after"`
}

// validateMPI checks an mpi job's section and its top-level fields.
func (j *JobSpec) validateMPI() error {
	if len(j.Groups) > 0 {
		return invalid("groups", "an mpi job has no groups; describe it in its mpi section")
	}
	m := j.MPI
	if m == nil {
		return invalid("mpi", "an mpi job needs an mpi section (ranks, slots_per_node, command)")
	}
	if m.Ranks < 1 || m.Ranks > MaxMPIRanks {
		return invalid("mpi.ranks", "must be between 1 and %d, got %d", MaxMPIRanks, m.Ranks)
	}
	if m.SlotsPerNode < 1 {
		return invalid("mpi.slots_per_node", "must be at least 1, got %d", m.SlotsPerNode)
	}
	if m.SlotsPerNode > m.Ranks {
		return invalid("mpi.slots_per_node", "%d slots per node for %d ranks; at most %d", m.SlotsPerNode, m.Ranks, m.Ranks)
	}
	if err := validateCommand("mpi.command", m.Command); err != nil {
		return err
	}
	if m.MaxRestarts < 0 || m.MaxRestarts > MaxMPIRestarts {
		return invalid("mpi.max_restarts", "must be between 0 and %d, got %d", MaxMPIRestarts, m.MaxRestarts)
	}
	if m.Checkpoint.Keep < 0 || m.Checkpoint.Keep > MaxCheckpointKeep {
		return invalid("mpi.checkpoint.keep", "must be between 1 and %d, got %d", MaxCheckpointKeep, m.Checkpoint.Keep)
	}
	if m.Checkpoint.Keep == 0 {
		m.Checkpoint.Keep = 2
	}
	if iv := m.Checkpoint.Interval; iv < 0 || (iv > 0 && iv.D() < MinCheckpointInterval) {
		return invalid("mpi.checkpoint.interval", "must be at least %s, got %s", MinCheckpointInterval, iv.D())
	}
	if err := validateEnv("env", j.Env); err != nil {
		return err
	}
	r := &j.Resources
	if r.CPU < 0 || r.MemoryMB < 0 {
		return invalid("resources", "must not be negative")
	}
	// Bounded so that a node's share (times slots_per_node) cannot overflow.
	if r.CPU > MaxRankResource || r.MemoryMB > MaxRankResource {
		return invalid("resources", "%d millicores and %d MiB a rank; at most %d of each", r.CPU, r.MemoryMB, MaxRankResource)
	}
	if r.CPU == 0 {
		r.CPU = 100
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = 64
	}
	if len(j.Files) > MaxInputs {
		return invalid("files", "%d entries; at most %d are allowed", len(j.Files), MaxInputs)
	}
	for k, f := range j.Files {
		p, err := resolveInCluster(j.Cluster, fmt.Sprintf("files[%d]", k), f)
		if err != nil {
			return err
		}
		j.Files[k] = p
	}
	return nil
}

// MPIGroupSpec is the one group an mpi job's tasks belong to: one task
// per node, each holding the resources of its node's ranks.
func (j *JobSpec) MPIGroupSpec() GroupSpec {
	m := j.MPI
	return GroupSpec{Name: MPIGroup, Count: m.Nodes(), Command: m.Command, Env: j.Env,
		Resources:   Resources{CPU: j.Resources.CPU * int64(m.SlotsPerNode), MemoryMB: j.Resources.MemoryMB * int64(m.SlotsPerNode)},
		MaxAttempts: 1, Inputs: j.Files}
}

func validateCommand(f string, cmd []string) error {
	if len(cmd) == 0 || cmd[0] == "" {
		return invalid(f, "must not be empty")
	}
	if len(cmd) > MaxCommandArgs {
		return invalid(f, "%d arguments; at most %d are allowed", len(cmd), MaxCommandArgs)
	}
	for k, a := range cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return invalid(fmt.Sprintf("%s[%d]", f, k), "contains a NUL byte")
		}
	}
	return nil
}

func validateEnv(f string, env map[string]string) error {
	if len(env) > MaxEnvVars {
		return invalid(f, "%d variables; at most %d are allowed", len(env), MaxEnvVars)
	}
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return invalid(f, "variable name %q must be non-empty and contain no '=' or NUL", truncate(k))
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid(f+"."+k, "contains a NUL byte")
		}
		if strings.HasPrefix(k, "SHOAL_") {
			return invalid(f+"."+k, "SHOAL_ variables are set by Shoal and cannot be overridden")
		}
	}
	return nil
}

// --- client ---

// JobCheckpoints lists an mpi job's checkpoint epochs, oldest first.
func (c *Client) JobCheckpoints(ctx context.Context, id string) ([]*Checkpoint, error) {
	var out []*Checkpoint
	_, err := c.Do(ctx, "GET", "/v1/jobs/"+esc(id)+"/checkpoints", nil, nil, &out)
	return out, err
}

// ReportCheckpoint tells the servers that a rank's files for an epoch are
// durable (agents only).
func (c *Client) ReportCheckpoint(ctx context.Context, node string, r *CheckpointReport) error {
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(node)+"/checkpoints", nil, r, nil)
	return err
}

// NodeCertificate asks the servers to sign the node's key for its
// cluster (agents only).
func (c *Client) NodeCertificate(ctx context.Context, node string, r *NodeCertificateRequest) (*NodeCertificate, error) {
	var out NodeCertificate
	_, err := c.Do(ctx, "POST", "/v1/nodes/"+esc(node)+"/certificate", nil, r, &out)
	return &out, err
}
