// Package fsm is Shoal's Raft finite state machine. A log entry is one
// message-type byte followed by the JSON encoding of a request from package
// state; Apply dispatches on the type to one apply function per type, which
// writes to the state store in one transaction stamped with the entry's
// Raft index. Applying is deterministic: all inputs, the clock included,
// come from the entry.
package fsm

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/raft"
	"github.com/shoal-dev/shoal/internal/state"
)

// MessageType is the first byte of every log entry.
type MessageType byte

// Message types. Values are written to disk: never renumber; add at the end.
const (
	NodeRegister MessageType = iota + 1
	NodeState
	NodeDrain
	DrainDeadline
	ClusterCreate
	ClusterResize
	ClusterDelete
	JobSubmit
	JobCancel
	TaskUpdate
	Plan
	ServerUpsert
	FSMkdir
	FSCreate
	FSAllocate
	FSCommit
	FSClose
	FSAbort
	FSRemove
	FSRename
	FSSnapshot
	FSReplicas
	FSGarbageDone
	ClusterToken
	FSRenew
	ClusterCA
	CheckpointReport
	CapabilityKey
	FunctionDeploy
	FunctionDelete
)

var typeNames = map[MessageType]string{
	NodeRegister: "node-register", NodeState: "node-state", NodeDrain: "node-drain",
	DrainDeadline: "drain-deadline", ClusterCreate: "cluster-create", ClusterResize: "cluster-resize",
	ClusterDelete: "cluster-delete", JobSubmit: "job-submit", JobCancel: "job-cancel",
	TaskUpdate: "task-update", Plan: "plan", ServerUpsert: "server-upsert",
	FSMkdir: "fs-mkdir", FSCreate: "fs-create", FSAllocate: "fs-allocate", FSCommit: "fs-commit",
	FSClose: "fs-close", FSAbort: "fs-abort", FSRemove: "fs-remove", FSRename: "fs-rename",
	FSSnapshot: "fs-snapshot", FSReplicas: "fs-replicas", FSGarbageDone: "fs-garbage-done",
	ClusterToken: "cluster-token", FSRenew: "fs-renew", ClusterCA: "cluster-ca", CheckpointReport: "checkpoint-report",
	CapabilityKey: "capability-key", FunctionDeploy: "function-deploy", FunctionDelete: "function-delete",
}

func (t MessageType) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type-%d", byte(t))
}

// Encode builds a log entry.
func Encode(t MessageType, req any) ([]byte, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("fsm: encoding %s: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// Result is what Apply returns for an entry: a value and/or an error from
// the state store. The error means nothing was changed.
type Result struct {
	Value any
	Err   error
}

// FSM applies committed entries to a state store.
type FSM struct {
	store *state.Store
	log   *slog.Logger
}

// New returns an FSM writing to store.
func New(store *state.Store, log *slog.Logger) *FSM {
	return &FSM{store: store, log: log}
}

type applyFunc func(s *state.Store, index uint64, body []byte) Result

// decode is a helper building an applyFunc from a typed function.
func decode[R any](fn func(s *state.Store, index uint64, req *R) Result) applyFunc {
	return func(s *state.Store, index uint64, body []byte) Result {
		var req R
		if err := json.Unmarshal(body, &req); err != nil {
			return Result{Err: fmt.Errorf("%w: undecodable entry: %v", state.ErrInvalid, err)}
		}
		return fn(s, index, &req)
	}
}

func errOnly(err error) Result { return Result{Err: err} }

var appliers = map[MessageType]applyFunc{
	NodeRegister: decode(func(s *state.Store, i uint64, r *state.NodeRegisterRequest) Result {
		return errOnly(s.RegisterNode(i, r))
	}),
	NodeState: decode(func(s *state.Store, i uint64, r *state.NodeStateRequest) Result {
		return errOnly(s.SetNodeState(i, r))
	}),
	NodeDrain: decode(func(s *state.Store, i uint64, r *state.NodeDrainRequest) Result {
		return errOnly(s.DrainNode(i, r))
	}),
	DrainDeadline: decode(func(s *state.Store, i uint64, r *state.DrainDeadlineRequest) Result {
		return errOnly(s.DrainDeadline(i, r))
	}),
	ClusterCreate: decode(func(s *state.Store, i uint64, r *state.ClusterCreateRequest) Result {
		c, err := s.CreateCluster(i, r)
		return Result{Value: c, Err: err}
	}),
	ClusterResize: decode(func(s *state.Store, i uint64, r *state.ClusterResizeRequest) Result {
		c, err := s.ResizeCluster(i, r)
		return Result{Value: c, Err: err}
	}),
	ClusterDelete: decode(func(s *state.Store, i uint64, r *state.ClusterDeleteRequest) Result {
		return errOnly(s.DeleteCluster(i, r))
	}),
	JobSubmit: decode(func(s *state.Store, i uint64, r *state.JobSubmitRequest) Result {
		j, err := s.SubmitJob(i, r)
		return Result{Value: j, Err: err}
	}),
	JobCancel: decode(func(s *state.Store, i uint64, r *state.JobCancelRequest) Result {
		return errOnly(s.CancelJob(i, r))
	}),
	TaskUpdate: decode(func(s *state.Store, i uint64, r *state.TaskUpdateRequest) Result {
		return errOnly(s.UpdateTasks(i, r))
	}),
	Plan: decode(func(s *state.Store, i uint64, r *state.PlanRequest) Result {
		res, err := s.ApplyPlan(i, r)
		return Result{Value: res, Err: err}
	}),
	ServerUpsert: decode(func(s *state.Store, i uint64, r *state.ServerUpsertRequest) Result {
		return errOnly(s.UpsertServer(i, r))
	}),
	FSMkdir: decode(func(s *state.Store, i uint64, r *state.FSMkdirRequest) Result {
		return errOnly(s.FSMkdir(i, r))
	}),
	FSCreate: decode(func(s *state.Store, i uint64, r *state.FSCreateRequest) Result {
		v, err := s.FSCreate(i, r)
		return Result{Value: v, Err: err}
	}),
	FSAllocate: decode(func(s *state.Store, i uint64, r *state.FSAllocateRequest) Result {
		v, err := s.FSAllocate(i, r)
		return Result{Value: v, Err: err}
	}),
	FSCommit: decode(func(s *state.Store, i uint64, r *state.FSCommitRequest) Result {
		return errOnly(s.FSCommit(i, r))
	}),
	FSClose: decode(func(s *state.Store, i uint64, r *state.FSCloseRequest) Result {
		v, err := s.FSClose(i, r)
		return Result{Value: v, Err: err}
	}),
	FSAbort: decode(func(s *state.Store, i uint64, r *state.FSAbortRequest) Result {
		return errOnly(s.FSAbort(i, r))
	}),
	FSRemove: decode(func(s *state.Store, i uint64, r *state.FSRemoveRequest) Result {
		return errOnly(s.FSRemove(i, r))
	}),
	FSRename: decode(func(s *state.Store, i uint64, r *state.FSRenameRequest) Result {
		return errOnly(s.FSRename(i, r))
	}),
	FSSnapshot: decode(func(s *state.Store, i uint64, r *state.FSSnapshotRequest) Result {
		v, err := s.FSSnapshot(i, r)
		return Result{Value: v, Err: err}
	}),
	FSReplicas: decode(func(s *state.Store, i uint64, r *state.FSReplicaRequest) Result {
		return errOnly(s.FSReplicas(i, r))
	}),
	FSGarbageDone: decode(func(s *state.Store, i uint64, r *state.FSGarbageDoneRequest) Result {
		return errOnly(s.FSGarbageDone(i, r))
	}),
	FSRenew: decode(func(s *state.Store, i uint64, r *state.FSRenewRequest) Result {
		return errOnly(s.FSRenew(i, r))
	}),
	ClusterCA: decode(func(s *state.Store, i uint64, r *state.ClusterCARequest) Result {
		return errOnly(s.SetClusterCA(i, r))
	}),
	CheckpointReport: decode(func(s *state.Store, i uint64, r *state.CheckpointReportRequest) Result {
		return errOnly(s.ReportCheckpoint(i, r))
	}),
	CapabilityKey: decode(func(s *state.Store, i uint64, r *state.CapabilityKeyRequest) Result {
		return errOnly(s.SetCapabilityKey(i, r))
	}),
	FunctionDeploy: decode(func(s *state.Store, i uint64, r *state.FunctionDeployRequest) Result {
		f, err := s.DeployFunction(i, r)
		return Result{Value: f, Err: err}
	}),
	FunctionDelete: decode(func(s *state.Store, i uint64, r *state.FunctionDeleteRequest) Result {
		f, err := s.DeleteFunction(i, r)
		return Result{Value: f, Err: err}
	}),
	ClusterToken: decode(func(s *state.Store, i uint64, r *state.ClusterTokenRequest) Result {
		c, err := s.SetClusterToken(i, r)
		return Result{Value: c, Err: err}
	}),
}

// Apply applies one committed entry. It never panics on bad data: an entry
// it cannot decode is logged and skipped on every server alike.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return Result{}
	}
	t := MessageType(l.Data[0])
	fn, ok := appliers[t]
	if !ok {
		f.log.Error("skipping log entry of unknown type", "type", t, "index", l.Index)
		return Result{Err: fmt.Errorf("%w: unknown entry type %s", state.ErrInvalid, t)}
	}
	return fn(f.store, l.Index, l.Data[1:])
}

// Snapshot captures the store for Raft.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{snap: f.store.Snapshot()}, nil
}

// Restore replaces the store's content with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	restored, err := state.Restore(rc)
	if err != nil {
		return err
	}
	f.store.Abandon(restored)
	return nil
}

type fsmSnapshot struct{ snap *state.Snapshot }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.snap.Persist(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
