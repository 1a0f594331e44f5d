package state

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Checkpoints of mpi jobs. A rank's agent reports, once the rank's files
// for an epoch are durable in the DFS, through CheckpointReport; the epoch
// is complete, in the same write, when every rank of the job has reported
// it from the gang's current run. Only complete epochs are ever restored
// (TaskMPI.RestartEpoch is the last complete one when a gang is placed);
// complete epochs beyond the job's keep, and partial ones older than the
// last complete, are deleted with their DFS directories.

// checkpoint is an epoch as stored: api.Checkpoint plus the set of ranks
// whose files are durable and the gang run they came from. Reads answer
// api.Checkpoint.
type checkpoint struct {
	Key     string // job + "/" + zero-padded epoch: a job's epochs sort by number
	Job     string
	Cluster string
	Epoch   int64
	State   string
	RunID   uint64
	Durable []int // ranks, sorted
	Ranks   int
	Bytes   int64
	Created time.Time
	Done    time.Time
}

func checkpointKey(job string, epoch int64) string { return fmt.Sprintf("%s/%020d", job, epoch) }

func (c *checkpoint) view() *api.Checkpoint {
	return &api.Checkpoint{Job: c.Job, Epoch: c.Epoch, State: c.State, Ranks: c.Ranks, Durable: len(c.Durable),
		Bytes: c.Bytes, Dir: api.CheckpointDir(c.Cluster, c.Job, c.Epoch), Created: c.Created, Completed: c.Done}
}

// Checkpoints returns a job's checkpoint epochs, oldest first.
func (s *Snapshot) Checkpoints(ws memdb.WatchSet, job string) []*api.Checkpoint {
	var out []*api.Checkpoint
	for _, c := range collect[*checkpoint](s.txn, ws, tableCheckpoints, "id_prefix", job+"/") {
		out = append(out, c.view())
	}
	return out
}

// ReportCheckpoint records that a rank's files for an epoch are durable
// and completes the epoch when it was the last rank missing. A report from
// a run that is not the task's current one (the gang restarted since) is
// a conflict: an epoch is made of one run's files only, so that a restart
// never mixes states the ranks did not reach together.
func (s *Store) ReportCheckpoint(index uint64, req *CheckpointReportRequest) error {
	r := req.Report
	return s.write(index, func(tx *writeTxn) error {
		j := tx.job(r.Job)
		if j == nil {
			return fmt.Errorf("%w: no job named %q", ErrNotFound, r.Job)
		}
		if j.MPIStatus == nil {
			return fmt.Errorf("%w: job %s is a %s job; only mpi jobs have checkpoints", ErrInvalid, j.ID, j.Type)
		}
		ms := j.MPIStatus
		if r.Rank < 0 || r.Rank >= ms.Ranks {
			return fmt.Errorf("%w: rank: %d is not a rank of job %s (0 to %d)", ErrInvalid, r.Rank, j.ID, ms.Ranks-1)
		}
		if r.Epoch < 1 {
			return fmt.Errorf("%w: epoch: must be at least 1, got %d", ErrInvalid, r.Epoch)
		}
		key := checkpointKey(j.ID, r.Epoch)
		old := first[*checkpoint](tx.Txn, nil, tableCheckpoints, key)
		if old != nil && old.RunID == r.RunID && old.State != api.CheckpointPartial {
			if _, found := slices.BinarySearch(old.Durable, r.Rank); found {
				return nil // a retried report (its answer was lost): already counted
			}
		}
		if r.Epoch <= ms.LastEpoch {
			return fmt.Errorf("%w: epoch: %d is not after the last complete epoch of job %s (%d)", ErrInvalid, r.Epoch, j.ID, ms.LastEpoch)
		}
		if r.Bytes < 0 {
			return fmt.Errorf("%w: bytes: must not be negative", ErrInvalid)
		}
		t := tx.currentTask(r.Task)
		if t == nil || t.JobID != j.ID {
			return fmt.Errorf("%w: task %q is not a task of job %s", ErrInvalid, r.Task, j.ID)
		}
		if t.RunID != r.RunID || t.Node != req.Node {
			return fmt.Errorf("%w: run %d of task %s on %s is not its current run; the gang has restarted since",
				ErrConflict, r.RunID, r.Task, req.Node)
		}
		if first, end := t.MPI.RanksOn(t.Index); r.Rank < first || r.Rank >= end {
			return fmt.Errorf("%w: rank: %d is not a rank of task %s (ranks %d to %d: Shoal places ranks by slot, in hostfile order)",
				ErrInvalid, r.Rank, t.ID, first, end-1)
		}
		var c checkpoint
		if old != nil {
			c = *old
			c.Durable = slices.Clone(old.Durable)
		} else {
			c = checkpoint{Key: key, Job: j.ID, Cluster: j.Cluster, Epoch: r.Epoch, State: api.CheckpointPartial,
				Ranks: ms.Ranks, Created: req.Now, RunID: r.RunID}
		}
		switch {
		case c.State != api.CheckpointPartial:
			return fmt.Errorf("%w: epoch %d of job %s is %s", ErrInvalid, r.Epoch, j.ID, c.State)
		case r.RunID < c.RunID:
			return fmt.Errorf("%w: epoch %d of job %s is being written by a newer run", ErrConflict, r.Epoch, j.ID)
		case r.RunID > c.RunID:
			// A newer run writes the epoch again: the old run's ranks do
			// not count.
			c.RunID, c.Durable, c.Bytes, c.Created = r.RunID, nil, 0, req.Now
		}
		if i, found := slices.BinarySearch(c.Durable, r.Rank); !found {
			c.Durable = slices.Insert(c.Durable, i, r.Rank)
			c.Bytes += r.Bytes
		}
		if len(c.Durable) < c.Ranks {
			return tx.put(tableCheckpoints, &c)
		}
		c.State, c.Done = api.CheckpointComplete, req.Now
		if err := tx.put(tableCheckpoints, &c); err != nil {
			return err
		}
		jw := tx.jobForWrite(j.ID)
		// No job event: epochs are listed by `job checkpoints`, and one
		// event each would push the restarts out of the job's history.
		jw.MPIStatus.LastEpoch = r.Epoch
		return tx.pruneCheckpoints(jw, req.Now)
	})
}

// pruneCheckpoints deletes the epochs of j that will never be restored:
// complete ones beyond its keep, and partial ones older than its last
// complete epoch; their DFS directories are removed.
func (tx *writeTxn) pruneCheckpoints(j *api.Job, now time.Time) error {
	all := collect[*checkpoint](tx.Txn, nil, tableCheckpoints, "id_prefix", j.ID+"/")
	kept := 0
	for i := len(all) - 1; i >= 0; i-- { // newest first
		c := all[i]
		drop := false
		switch c.State {
		case api.CheckpointComplete:
			kept++
			drop = kept > j.MPI.Checkpoint.Keep
		case api.CheckpointPartial:
			drop = c.Epoch < j.MPIStatus.LastEpoch
		}
		if !drop {
			continue
		}
		nc := *c
		nc.State = api.CheckpointDeleted
		if err := tx.put(tableCheckpoints, &nc); err != nil {
			return err
		}
		// A snapshot taken inside the directory keeps it (and the epoch's
		// bytes) until the snapshot is deleted; the epoch is gone anyway.
		if err := tx.removeTree(api.CheckpointDir(c.Cluster, c.Job, c.Epoch)); err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return nil
}

// ClusterCA is a cluster's certificate authority (package clusterpki) as
// the servers keep it. It is an internal record: no API type carries the
// key, and reads of clusters never include it.
type ClusterCA struct {
	Cluster     string
	CertPEM     []byte
	KeyPEM      []byte
	CreateIndex uint64
}

// ClusterCA returns a cluster's CA, or nil.
func (s *Snapshot) ClusterCA(ws memdb.WatchSet, cluster string) *ClusterCA {
	return first[*ClusterCA](s.txn, ws, tableClusterCAs, cluster)
}

// SetClusterCA gives a cluster that has none (one created before clusters
// had CAs) its CA; a cluster that has one keeps it.
func (s *Store) SetClusterCA(index uint64, req *ClusterCARequest) error {
	return s.write(index, func(tx *writeTxn) error {
		if tx.cluster(req.CA.Cluster) == nil {
			return fmt.Errorf("%w: no cluster named %q", ErrNotFound, req.CA.Cluster)
		}
		if first[*ClusterCA](tx.Txn, nil, tableClusterCAs, req.CA.Cluster) != nil {
			return nil
		}
		return tx.putCA(&req.CA)
	})
}

func (tx *writeTxn) putCA(ca *ClusterCA) error {
	c := *ca
	c.CreateIndex = tx.index
	return tx.put(tableClusterCAs, &c)
}

// deleteClusterRecords drops what a deleted cluster leaves in the tables
// of this file: its CA (a new cluster of the same name gets a new one, so
// the old nodes' certificates are worthless) and its jobs' checkpoints.
func (tx *writeTxn) deleteClusterRecords(cluster string) error {
	if ca := first[*ClusterCA](tx.Txn, nil, tableClusterCAs, cluster); ca != nil {
		if err := tx.del(tableClusterCAs, ca); err != nil {
			return err
		}
	}
	for _, j := range collect[*api.Job](tx.Txn, nil, tableJobs, "cluster", cluster) {
		for _, c := range collect[*checkpoint](tx.Txn, nil, tableCheckpoints, "id_prefix", j.ID+"/") {
			if err := tx.del(tableCheckpoints, c); err != nil {
				return err
			}
		}
	}
	return nil
}
