package api

import (
	"fmt"
	"time"
)

// File system defaults and limits.
const (
	DefaultReplication = 3
	MaxReplication     = 10
	DefaultChunkSize   = 64 << 20
	MinChunkSize       = 64 << 10
	MaxChunkSize       = 1 << 30
	// BlockSize is the unit of the per-block checksums a data node keeps
	// beside each chunk; reads are verified block by block.
	BlockSize     = 64 << 10
	MaxPathLen    = 4096
	MaxPathSegLen = 255
	// SnapshotDirName is the read-only directory under which a directory's
	// snapshots appear: DIR/.snapshot/NAME/...
	SnapshotDirName = ".snapshot"
	// StagingDirName is where an agent stages a task's outputs inside the
	// output directory before they are published; it is hidden from globs.
	StagingDirName = ".shoal-staging"
)

// File states.
const (
	FileOpen   = "open"
	FileClosed = "closed"
)

// Replica states as shown by stat.
const (
	ReplicaOK   = "ok"
	ReplicaDown = "down"
)

// FileInfo describes one file or directory of the DFS.
type FileInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Dir  bool   `json:"dir"`
	Size int64  `json:"size"`
	// State is open (being written) or closed; empty for directories.
	State       string `json:"state,omitempty"`
	Replication int    `json:"replication,omitempty"`
	ChunkSize   int64  `json:"chunk_size,omitempty"`
	// Chunks is filled by stat (not by list), with each chunk's replicas.
	Chunks   []ChunkInfo `json:"chunks,omitempty"`
	Created  time.Time   `json:"created"`
	Modified time.Time   `json:"modified"`
	// FileID identifies this version of the file: the Raft index that
	// created it. Writers pass it back so that a file deleted and created
	// again under the same path is never written by the old writer.
	FileID      uint64 `json:"file_id"`
	ModifyIndex uint64 `json:"modify_index"`
	// LeaseSeconds is, while the file is open, how long its writer may go
	// without renewing it ([Client.FSRenew]) or committing a chunk before
	// the servers delete it as abandoned.
	LeaseSeconds int `json:"lease_seconds,omitempty"`
}

// ChunkInfo is one chunk of a file, with where its replicas live.
type ChunkInfo struct {
	ID       string    `json:"id"`
	Offset   int64     `json:"offset"`
	Length   int64     `json:"length"`
	CRC      uint32    `json:"crc32c"`
	Replicas []Replica `json:"replicas"`
	// Capability lets the caller read the chunk from its replicas (sent
	// as [CapabilityHeader]); stat fills it, for a short while only.
	Capability string `json:"capability,omitempty"`
}

// CapabilityHeader carries a capability, a server's signed, short-lived
// grant of one operation on one chunk (or one task's logs), to a data
// node; data nodes refuse chunk and log requests without a valid one.
const CapabilityHeader = "X-Shoal-Capability"

// Replica is one copy of a chunk on a data node.
type Replica struct {
	Node  string `json:"node"`
	Zone  string `json:"zone"`
	Addr  string `json:"addr"`
	State string `json:"state,omitempty"`
	// Socket is the data node's short-circuit socket (see
	// [NodeRegistration]), empty when it has none.
	Socket string `json:"socket,omitempty"`
}

// FileCreate opens a new file for writing.
type FileCreate struct {
	Path        string `json:"path"`
	Replication int    `json:"replication,omitempty"`
	ChunkSize   int64  `json:"chunk_size,omitempty"`
	// Overwrite replaces a closed file of the same path when the new one
	// closes; until then, and for good if the write fails, the old one
	// stays readable (a snapshot that saw it keeps it after).
	Overwrite bool `json:"overwrite,omitempty"`
	// Close creates the file closed and empty in the same write.
	Close bool `json:"close,omitempty"`
}

// ChunkAllocate asks for a new chunk of an open file and where to put it.
// Writer is the writing data node, if any: the first replica goes there.
// Exclude lists nodes that just failed for this writer.
type ChunkAllocate struct {
	Path    string   `json:"path"`
	FileID  uint64   `json:"file_id"`
	Writer  string   `json:"writer,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
	// Count asks for that many replica nodes (default: the file's
	// replication); a writer replacing one failed replica asks for one.
	Count int `json:"count,omitempty"`
	// Chunk, when set, asks for more replicas of an already allocated
	// chunk instead of a new chunk.
	Chunk string `json:"chunk,omitempty"`
}

// ChunkAllocation is where a writer must send a new chunk.
type ChunkAllocation struct {
	ID       string    `json:"id"`
	Replicas []Replica `json:"replicas"`
	// Capability lets the writer send the chunk to its replicas, or have
	// a replacement replica copy it ([CapabilityHeader]); ReadCapability
	// lets a replacement pull it from a replica that has it
	// ([ReplicateRequest].SourceCapability).
	Capability     string `json:"capability,omitempty"`
	ReadCapability string `json:"read_capability,omitempty"`
}

// ChunkCommit appends a written chunk to an open file. Replicas lists the
// nodes that have synced it to disk.
type ChunkCommit struct {
	Path     string   `json:"path"`
	FileID   uint64   `json:"file_id"`
	ID       string   `json:"id"`
	Length   int64    `json:"length"`
	CRC      uint32   `json:"crc32c"`
	Replicas []string `json:"replicas"`
}

// FileClose closes an open file; Size must match the committed chunks.
type FileClose struct {
	Path   string `json:"path"`
	FileID uint64 `json:"file_id"`
	Size   int64  `json:"size"`
}

// FileAbort deletes a file that is still open.
type FileAbort struct {
	Path   string `json:"path"`
	FileID uint64 `json:"file_id"`
}

// FileRenew keeps a file open: a writer renews while it writes, and the
// servers delete a file whose writer stopped renewing (see
// [DefaultOpenFileLease]).
type FileRenew struct {
	Path   string `json:"path"`
	FileID uint64 `json:"file_id"`
}

// DefaultOpenFileLease is how long a file stays open after its writer last
// renewed it or committed a chunk; then the servers delete it as abandoned.
// Writers renew every third of it.
const DefaultOpenFileLease = time.Minute

// Mkdir creates a directory (and its parents with Parents).
type Mkdir struct {
	Path    string `json:"path"`
	Parents bool   `json:"parents,omitempty"`
}

// Rename moves a file or a directory tree atomically.
type Rename struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Remove deletes a file, or a directory (its tree with Recursive).
type Remove struct {
	Path      string `json:"path"`
	Recursive bool   `json:"recursive,omitempty"`
}

// SnapshotRequest names a snapshot of a directory.
type SnapshotRequest struct {
	Dir  string `json:"dir"`
	Name string `json:"name"`
}

// SnapshotInfo describes a point-in-time snapshot of a directory tree,
// readable under DIR/.snapshot/NAME.
type SnapshotInfo struct {
	Dir     string    `json:"dir"`
	Name    string    `json:"name"`
	Index   uint64    `json:"index"`
	Created time.Time `json:"created"`
}

// StoredChunk is a chunk as a data node holds it.
type StoredChunk struct {
	ID     string `json:"id"`
	Length int64  `json:"length"`
	CRC    uint32 `json:"crc32c"`
}

// ChunkReport is a data node's inventory, sent when it starts and then
// periodically.
type ChunkReport struct {
	Chunks []StoredChunk `json:"chunks"`
}

// ChunkReportResponse lists the chunks the node must delete: ones the
// namespace no longer references, or whose replica it does not count.
type ChunkReportResponse struct {
	Delete []string `json:"delete"`
}

// CorruptChunk reports a replica that failed its checksum.
type CorruptChunk struct {
	Node  string `json:"node"`
	Chunk string `json:"chunk"`
}

// ReplicateRequest asks a data node to copy a chunk from another one.
type ReplicateRequest struct {
	Source string `json:"source"` // data address of the node to copy from
	Length int64  `json:"length"`
	CRC    uint32 `json:"crc32c"`
	// SourceCapability is a read capability for the chunk, which the
	// node presents to the source.
	SourceCapability string `json:"source_capability,omitempty"`
}

// FSStatus summarises the file system for metrics and `shoal fs status`.
type FSStatus struct {
	Files           int   `json:"files"`
	Dirs            int   `json:"dirs"`
	Chunks          int   `json:"chunks"`
	LogicalBytes    int64 `json:"logical_bytes"`
	StoredBytes     int64 `json:"stored_bytes"`
	UnderReplicated int   `json:"under_replicated"`
	Unavailable     int   `json:"unavailable"`
	// Misplaced counts chunks whose live replicas span fewer zones than
	// min(replication factor, zones with a ready data node); the leader
	// moves them back to full spread when a zone returns.
	Misplaced      int   `json:"misplaced"`
	RepairedBytes  int64 `json:"repaired_bytes"`
	RepairsRunning int   `json:"repairs_running"`
	// MovedBytes and MovesRunning count the copies that restore zone
	// spread (mis-placed chunks), apart from repairs.
	MovedBytes       int64 `json:"moved_bytes"`
	MovesRunning     int   `json:"moves_running"`
	SnapshotCount    int   `json:"snapshots"`
	PendingDeletions int   `json:"pending_deletions"`
}

// StagingDir is where an agent stages the outputs of the current run of a
// task before they are published into t.Outputs.
func StagingDir(t *Task) string {
	return fmt.Sprintf("%s/%s/%s.%s.%d.%d", t.Outputs, StagingDirName, t.JobID, t.Group, t.Index, t.RunID)
}
