package state

import (
	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Table names.
const (
	tableIndex    = "index"
	tableNodes    = "nodes"
	tableClusters = "clusters"
	tableJobs     = "jobs"
	tableTasks    = "tasks"
	tableServers  = "servers"
	// File system tables: live entries, old versions kept for snapshots,
	// snapshots, chunks and chunks to delete from data nodes.
	tableFSEntries   = "fs_entries"
	tableFSHistory   = "fs_history"
	tableFSSnapshots = "fs_snapshots"
	tableFSChunks    = "fs_chunks"
	tableFSGarbage   = "fs_garbage"
	// Checkpoint epochs of mpi jobs, and clusters' CAs (checkpoints.go).
	tableCheckpoints = "checkpoints"
	tableClusterCAs  = "cluster_cas"
	// Clusters' networks (clusternets.go).
	tableClusterNets = "cluster_nets"
)

// indexEntry records the Raft index of the last write to a table.
type indexEntry struct {
	Table string
	Value uint64
}

// schema is Shoal's go-memdb schema: one table per domain object plus the
// "index" table that blocking queries read.
func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableIndex: {
			Name: tableIndex,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Table"}},
			},
		},
		tableNodes: {
			Name: tableNodes,
			Indexes: map[string]*memdb.IndexSchema{
				"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
				"cluster": {Name: "cluster", AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Cluster"}},
			},
		},
		tableClusters: {
			Name: tableClusters,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
			},
		},
		tableJobs: {
			Name: tableJobs,
			Indexes: map[string]*memdb.IndexSchema{
				"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				"cluster": {Name: "cluster", Indexer: &memdb.StringFieldIndex{Field: "Cluster"}},
				// "unplaced" holds the jobs with tasks never placed, which
				// have no task rows (see tasks.go).
				"unplaced": {Name: "unplaced", AllowMissing: true, Indexer: &memdb.ConditionalIndex{
					Conditional: func(obj any) (bool, error) { return hasUnplaced(obj.(*api.Job)), nil },
				}},
			},
		},
		tableTasks: {
			Name: tableTasks,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				// "group", "state" and "failing" are keyed by job first;
				// see taskKeyIndex. They are read through their _prefix form.
				"group":   {Name: "group", Indexer: taskGroupIndex},
				"state":   {Name: "state", Indexer: taskStateIndex},
				"failing": {Name: "failing", AllowMissing: true, Indexer: taskFailingIndex},
				// "node" holds only placed tasks, so that an agent's work
				// query does not grow with the node's history.
				"node": {Name: "node", AllowMissing: true, Indexer: placedNodeIndex{}},
				// "placeable" holds the tasks the scheduler must place.
				"placeable": {Name: "placeable", AllowMissing: true, Indexer: &memdb.ConditionalIndex{
					Conditional: func(obj any) (bool, error) { return needsPlacement(obj.(*api.Task)), nil },
				}},
			},
		},
		tableServers: {
			Name: tableServers,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
			},
		},
		tableFSEntries: {
			Name: tableFSEntries,
			Indexes: map[string]*memdb.IndexSchema{
				"id":     {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Path"}},
				"parent": {Name: "parent", Indexer: &memdb.StringFieldIndex{Field: "Parent"}},
			},
		},
		tableFSHistory: {
			Name: tableFSHistory,
			Indexes: map[string]*memdb.IndexSchema{
				"id":     {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
				"path":   {Name: "path", Indexer: &memdb.StringFieldIndex{Field: "Path"}},
				"parent": {Name: "parent", Indexer: &memdb.StringFieldIndex{Field: "Parent"}},
			},
		},
		tableFSSnapshots: {
			Name: tableFSSnapshots,
			Indexes: map[string]*memdb.IndexSchema{
				"id":  {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
				"dir": {Name: "dir", Indexer: &memdb.StringFieldIndex{Field: "Dir"}},
			},
		},
		tableFSChunks: {
			Name: tableFSChunks,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
			},
		},
		tableCheckpoints: {
			Name: tableCheckpoints,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			},
		},
		tableClusterNets: {
			Name: tableClusterNets,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Cluster"}},
			},
		},
		tableClusterCAs: {
			Name: tableClusterCAs,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Cluster"}},
			},
		},
		tableCapKeys: {
			Name: tableCapKeys,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
			},
		},
		tableFunctions: {
			Name: tableFunctions,
			Indexes: map[string]*memdb.IndexSchema{
				"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				"cluster": {Name: "cluster", Indexer: &memdb.StringFieldIndex{Field: "Cluster"}},
				"name":    {Name: "name", Indexer: &memdb.StringFieldIndex{Field: "Name"}},
			},
		},
		tableFSGarbage: {
			Name: tableFSGarbage,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Chunk"}},
			},
		},
	}}
}

// needsPlacement reports whether the scheduler must find a node for t.
func needsPlacement(t *api.Task) bool {
	return t.Node == "" && (t.State == api.TaskPending || t.State == api.TaskLost)
}

// placedNodeIndex indexes a task by its node while it is placed there.
type placedNodeIndex struct{}

func (placedNodeIndex) FromObject(obj any) (bool, []byte, error) {
	t := obj.(*api.Task)
	if !t.Placed() {
		return false, nil, nil
	}
	return (&memdb.StringFieldIndex{Field: "Node"}).FromObject(obj)
}

func (placedNodeIndex) FromArgs(args ...any) ([]byte, error) {
	return (&memdb.StringFieldIndex{Field: "Node"}).FromArgs(args...)
}
