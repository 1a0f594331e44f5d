package state

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// The file system namespace. Every directory and file is one fsEntry keyed
// by its clean absolute path; "/" always exists and has no entry. A file
// lists its chunks by id; chunk lengths, checksums and replica locations
// live in fs_chunks so that repair changes one small row.
//
// Snapshots are O(1): a snapshot is one row naming a directory and a Raft
// index. When an entry that a snapshot can see is removed, renamed or
// replaced, it is moved to fs_history (with the index it was removed at)
// instead of being dropped, and its chunks keep a reference. Reading
// DIR/.snapshot/NAME/P finds the version of DIR/P that was visible at the
// snapshot's index. Deleting a snapshot frees the versions no other
// snapshot can see.

// fsEntry is a live file or directory.
type fsEntry struct {
	Path        string    `json:"path"`
	Parent      string    `json:"parent"`
	Dir         bool      `json:"dir,omitempty"`
	Size        int64     `json:"size,omitempty"`
	State       string    `json:"state,omitempty"`
	Replication int       `json:"replication,omitempty"`
	ChunkSize   int64     `json:"chunk_size,omitempty"`
	Chunks      []string  `json:"chunks,omitempty"`
	Pending     []string  `json:"pending,omitempty"` // allocated, not yet committed
	Created     time.Time `json:"created"`
	Modified    time.Time `json:"modified"`
	FileID      uint64    `json:"file_id"`
	ModifyIndex uint64    `json:"modify_index"`
	// Visible is the index from which snapshots see this version: its
	// creation for a directory, its close for a file (0 while open).
	Visible uint64 `json:"visible,omitempty"`
	// Target is, for a file that will replace another when it closes, the
	// path it will take; until then it is kept under a shadow key so that
	// the old file stays readable and survives a failed write.
	Target string `json:"target,omitempty"`
	// MadeDirs are the directories creating this open file created,
	// deepest first; an aborted write removes those still empty.
	MadeDirs []string `json:"made_dirs,omitempty"`
	// LeaseSeconds is, for an open file, how long after Modified its
	// writer must renew it (or commit a chunk) before it is deleted.
	LeaseSeconds int `json:"lease_seconds,omitempty"`
}

// shadowKey is where an open file that replaces path on close lives.
func shadowKey(path string, fileID uint64) string { return fmt.Sprintf("%s\x00%d", path, fileID) }

// missingDirs lists the ancestors of p that do not exist, deepest first.
func (tx *writeTxn) missingDirs(p string) []string {
	var out []string
	for d := api.PathDir(p); d != "/" && tx.entry(d) == nil; d = api.PathDir(d) {
		out = append(out, d)
	}
	return out
}

// fsVersion is an entry removed from the live namespace but still visible
// to a snapshot taken in [Entry.Visible, Removed).
type fsVersion struct {
	Key     string  `json:"key"` // path NUL visible index
	Path    string  `json:"path"`
	Parent  string  `json:"parent"`
	Removed uint64  `json:"removed"`
	Entry   fsEntry `json:"entry"`
}

// fsSnapshot is a point-in-time snapshot of the tree under Dir.
type fsSnapshot struct {
	Key     string    `json:"key"` // dir NUL name
	Dir     string    `json:"dir"`
	Name    string    `json:"name"`
	Index   uint64    `json:"index"`
	Created time.Time `json:"created"`
}

func snapshotKey(dir, name string) string { return dir + "\x00" + name }

func (e *fsEntry) info(path string, chunks []api.ChunkInfo) *api.FileInfo {
	return &api.FileInfo{Path: path, Name: api.PathBase(path), Dir: e.Dir, Size: e.Size, State: e.State,
		Replication: e.Replication, ChunkSize: e.ChunkSize, Chunks: chunks, Created: e.Created,
		Modified: e.Modified, FileID: e.FileID, ModifyIndex: e.ModifyIndex, LeaseSeconds: e.LeaseSeconds}
}

// FS requests (payloads of Raft entries).

// FSCreateRequest creates a file, open for writing unless Req.Close.
type FSCreateRequest struct {
	Req api.FileCreate `json:"req"`
	Now time.Time      `json:"now"`
	// LeaseSeconds is the server's writer lease for the new file; 0 means
	// api.DefaultOpenFileLease.
	LeaseSeconds int `json:"lease_seconds,omitempty"`
}

// FSMkdirRequest creates a directory.
type FSMkdirRequest struct {
	Req api.Mkdir `json:"req"`
	Now time.Time `json:"now"`
}

// FSRenameRequest moves a file or a tree.
type FSRenameRequest struct {
	Req api.Rename `json:"req"`
	Now time.Time  `json:"now"`
}

// FSRemoveRequest deletes a file or a tree.
type FSRemoveRequest struct {
	Req api.Remove `json:"req"`
	Now time.Time  `json:"now"`
}

// FSCloseRequest closes an open file.
type FSCloseRequest struct {
	Req api.FileClose `json:"req"`
	Now time.Time     `json:"now"`
}

// FSAbortRequest deletes an open file.
type FSAbortRequest struct {
	Req api.FileAbort `json:"req"`
	Now time.Time     `json:"now"`
}

// FSRenewRequest renews a writer's lease on an open file.
type FSRenewRequest struct {
	Req api.FileRenew `json:"req"`
	Now time.Time     `json:"now"`
}

// FSSnapshotRequest creates (or, with Delete, deletes) a snapshot.
type FSSnapshotRequest struct {
	Req    api.SnapshotRequest `json:"req"`
	Delete bool                `json:"delete,omitempty"`
	Now    time.Time           `json:"now"`
}

func fsInvalid(err error) error { return fmt.Errorf("%w: %w", ErrInvalid, err) }

// --- reads ---

func (s *Snapshot) fsEntry(ws memdb.WatchSet, path string) *fsEntry {
	return first[*fsEntry](s.txn, ws, tableFSEntries, path)
}

// splitSnapshotPath splits DIR/.snapshot/NAME/REST. ok is false for a path
// without a .snapshot name; name is empty for DIR/.snapshot itself.
func splitSnapshotPath(p string) (dir, name, rest string, ok bool) {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if s != api.SnapshotDirName || i == 0 {
			continue
		}
		dir = strings.Join(segs[:i], "/")
		if dir == "" {
			dir = "/"
		}
		if i+1 < len(segs) {
			name = segs[i+1]
		}
		if i+2 < len(segs) {
			rest = strings.Join(segs[i+2:], "/")
		}
		return dir, name, rest, true
	}
	return "", "", "", false
}

// FSStat describes path, with each chunk's replicas for a file. Paths under
// DIR/.snapshot/NAME are read from that snapshot.
func (s *Snapshot) FSStat(ws memdb.WatchSet, path string) (*api.FileInfo, error) {
	e, shown, err := s.resolve(ws, path)
	if err != nil {
		return nil, err
	}
	if e == nil { // "/" or a .snapshot directory
		return &api.FileInfo{Path: shown, Name: api.PathBase(shown), Dir: true}, nil
	}
	return e.info(shown, s.chunkInfos(ws, e.Chunks)), nil
}

// FSList lists a directory, or describes a file, without chunk detail.
func (s *Snapshot) FSList(ws memdb.WatchSet, path string) ([]*api.FileInfo, error) {
	e, shown, err := s.resolve(ws, path)
	if err != nil {
		return nil, err
	}
	if e != nil && !e.Dir {
		return []*api.FileInfo{e.info(shown, nil)}, nil
	}
	out := []*api.FileInfo{}
	dir, name, rest, inSnap := splitSnapshotPath(path)
	switch {
	case inSnap && name == "":
		for _, sn := range collect[*fsSnapshot](s.txn, ws, tableFSSnapshots, "dir", dir) {
			out = append(out, &api.FileInfo{Path: api.JoinPath(path, sn.Name), Name: sn.Name, Dir: true,
				Created: sn.Created, Modified: sn.Created})
		}
	case inSnap:
		sn := first[*fsSnapshot](s.txn, ws, tableFSSnapshots, snapshotKey(dir, name))
		for _, v := range s.snapshotChildren(ws, sn, api.JoinPath(dir, rest)) {
			out = append(out, v.info(api.JoinPath(path, api.PathBase(v.Path)), nil))
		}
	default:
		for _, c := range collect[*fsEntry](s.txn, ws, tableFSEntries, "parent", path) {
			out = append(out, c.info(c.Path, nil))
		}
	}
	return out, nil
}

// FSFile returns a closed file with its chunks, for a reader.
func (s *Snapshot) FSFile(ws memdb.WatchSet, path string) (*api.FileInfo, error) {
	fi, err := s.FSStat(ws, path)
	if err != nil {
		return nil, err
	}
	if fi.Dir {
		return nil, fmt.Errorf("%w: %s is a directory", ErrInvalid, path)
	}
	if fi.State != api.FileClosed {
		return nil, fmt.Errorf("%w: %s is still open for writing", ErrConflict, path)
	}
	return fi, nil
}

// resolve finds the entry a path names, in the live tree or in a snapshot.
// It returns a nil entry for "/" and for DIR/.snapshot, and the path as
// the caller named it.
func (s *Snapshot) resolve(ws memdb.WatchSet, path string) (*fsEntry, string, error) {
	if path == "/" {
		return nil, path, nil
	}
	dir, name, rest, inSnap := splitSnapshotPath(path)
	if !inSnap {
		e := s.fsEntry(ws, path)
		if e == nil {
			return nil, "", fmt.Errorf("%w: %s does not exist", ErrNotFound, path)
		}
		return e, path, nil
	}
	if d := s.fsEntry(ws, dir); dir != "/" && (d == nil || !d.Dir) {
		return nil, "", fmt.Errorf("%w: %s is not a directory", ErrNotFound, dir)
	}
	if name == "" {
		return nil, path, nil
	}
	sn := first[*fsSnapshot](s.txn, ws, tableFSSnapshots, snapshotKey(dir, name))
	if sn == nil {
		return nil, "", fmt.Errorf("%w: %s has no snapshot %q", ErrNotFound, dir, name)
	}
	if rest == "" {
		return &fsEntry{Path: dir, Dir: true, Created: sn.Created, Modified: sn.Created}, path, nil
	}
	e := s.versionAt(ws, api.JoinPath(dir, rest), sn.Index)
	if e == nil {
		return nil, "", fmt.Errorf("%w: %s did not exist when snapshot %q was taken", ErrNotFound, api.JoinPath(dir, rest), name)
	}
	return e, path, nil
}

// versionAt returns the version of path visible at index.
func (s *Snapshot) versionAt(ws memdb.WatchSet, path string, index uint64) *fsEntry {
	if e := s.fsEntry(ws, path); e != nil && e.Visible != 0 && e.Visible <= index {
		return e
	}
	for _, v := range collect[*fsVersion](s.txn, ws, tableFSHistory, "path", path) {
		if v.Entry.Visible <= index && index < v.Removed {
			return &v.Entry
		}
	}
	return nil
}

// snapshotChildren lists the children of dir as snapshot sn saw them.
func (s *Snapshot) snapshotChildren(ws memdb.WatchSet, sn *fsSnapshot, dir string) []*fsEntry {
	var out []*fsEntry
	for _, c := range collect[*fsEntry](s.txn, ws, tableFSEntries, "parent", dir) {
		if c.Visible != 0 && c.Visible <= sn.Index {
			out = append(out, c)
		}
	}
	for _, v := range collect[*fsVersion](s.txn, ws, tableFSHistory, "parent", dir) {
		if v.Entry.Visible <= sn.Index && sn.Index < v.Removed {
			out = append(out, &v.Entry)
		}
	}
	return out
}

// FSSnapshots lists the snapshots of dir, or every snapshot for "".
func (s *Snapshot) FSSnapshots(ws memdb.WatchSet, dir string) []*api.SnapshotInfo {
	all := collect[*fsSnapshot](s.txn, ws, tableFSSnapshots, "dir", dir)
	if dir == "" {
		all = collect[*fsSnapshot](s.txn, ws, tableFSSnapshots, "id")
	}
	out := []*api.SnapshotInfo{}
	for _, sn := range all {
		out = append(out, &api.SnapshotInfo{Dir: sn.Dir, Name: sn.Name, Index: sn.Index, Created: sn.Created})
	}
	return out
}

// --- writes ---

// entry returns the live entry at path, or nil.
func (tx *writeTxn) entry(path string) *fsEntry {
	raw, _ := tx.First(tableFSEntries, "id", path)
	if raw == nil {
		return nil
	}
	return raw.(*fsEntry)
}

func (tx *writeTxn) putEntry(e *fsEntry) error {
	e.ModifyIndex = tx.index
	return tx.put(tableFSEntries, e)
}

// checkWritable refuses paths that name a snapshot or the root.
func checkWritable(field, p string) (string, error) {
	p, err := api.CleanPath(field, p)
	if err != nil {
		return "", fsInvalid(err)
	}
	if _, _, _, in := splitSnapshotPath(p); in {
		return "", fmt.Errorf("%w: %s: %s is inside a read-only snapshot directory", ErrInvalid, field, p)
	}
	if p == "/" {
		return "", fmt.Errorf("%w: %s: the root directory cannot be changed", ErrInvalid, field)
	}
	return p, nil
}

// ensureParents checks that every ancestor of p is a directory, creating
// missing ones when create is set.
func (tx *writeTxn) ensureParents(p string, create bool, now time.Time) error {
	parent := api.PathDir(p)
	if parent == "/" {
		return nil
	}
	e := tx.entry(parent)
	switch {
	case e != nil && e.Dir:
		return nil
	case e != nil:
		return fmt.Errorf("%w: %s is a file, not a directory", ErrConflict, parent)
	case !create:
		return fmt.Errorf("%w: directory %s does not exist (mkdir -p creates parents)", ErrNotFound, parent)
	}
	if err := tx.ensureParents(parent, true, now); err != nil {
		return err
	}
	return tx.putEntry(tx.newDir(parent, now))
}

func (tx *writeTxn) newDir(p string, now time.Time) *fsEntry {
	return &fsEntry{Path: p, Parent: api.PathDir(p), Dir: true, Created: now, Modified: now,
		FileID: tx.index, Visible: tx.index}
}

// FSMkdir creates a directory; with Parents, missing parents too and an
// existing directory is not an error.
func (s *Store) FSMkdir(index uint64, req *FSMkdirRequest) error {
	p, err := checkWritable("path", req.Req.Path)
	if err != nil {
		return err
	}
	return s.write(index, func(tx *writeTxn) error {
		if e := tx.entry(p); e != nil {
			if e.Dir && req.Req.Parents {
				return nil
			}
			return fmt.Errorf("%w: %s already exists", ErrConflict, p)
		}
		if err := tx.ensureParents(p, req.Req.Parents, req.Now); err != nil {
			return err
		}
		return tx.putEntry(tx.newDir(p, req.Now))
	})
}

// FSCreate creates a file, open for writing (or closed and empty with
// Close). Missing parent directories are created. With Overwrite an
// existing closed file is removed first (a snapshot keeps seeing it).
func (s *Store) FSCreate(index uint64, req *FSCreateRequest) (*api.FileInfo, error) {
	r := req.Req
	p, err := checkWritable("path", r.Path)
	if err != nil {
		return nil, err
	}
	if r.Replication == 0 {
		r.Replication = api.DefaultReplication
	}
	if r.Replication < 1 || r.Replication > api.MaxReplication {
		return nil, fmt.Errorf("%w: replication: %d is not between 1 and %d", ErrInvalid, r.Replication, api.MaxReplication)
	}
	if r.ChunkSize == 0 {
		r.ChunkSize = api.DefaultChunkSize
	}
	if r.ChunkSize < api.MinChunkSize || r.ChunkSize > api.MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk_size: %d is not between %d and %d bytes", ErrInvalid, r.ChunkSize, api.MinChunkSize, api.MaxChunkSize)
	}
	var out *api.FileInfo
	err = s.write(index, func(tx *writeTxn) error {
		e := &fsEntry{Path: p, Parent: api.PathDir(p), State: api.FileOpen, Replication: r.Replication,
			ChunkSize: r.ChunkSize, Created: req.Now, Modified: req.Now, FileID: index, LeaseSeconds: req.LeaseSeconds}
		if old := tx.entry(p); old != nil {
			switch {
			case old.Dir:
				return fmt.Errorf("%w: %s is a directory", ErrConflict, p)
			case old.State == api.FileOpen:
				return fmt.Errorf("%w: %s is being written by another writer", ErrConflict, p)
			case !r.Overwrite:
				return fmt.Errorf("%w: %s already exists (overwrite replaces it)", ErrConflict, p)
			}
			// The old file stays until the new one closes.
			e.Path, e.Parent, e.Target = shadowKey(p, index), "\x00shadow", p // listed nowhere
		}
		e.MadeDirs = tx.missingDirs(p)
		if err := tx.ensureParents(p, true, req.Now); err != nil {
			return err
		}
		if r.Close {
			if err := tx.publishShadow(e); err != nil {
				return err
			}
			e.State, e.Visible = api.FileClosed, index
		}
		if err := tx.putEntry(e); err != nil {
			return err
		}
		out = e.info(p, nil)
		return nil
	})
	return out, err
}

// publishShadow moves a file written under a shadow key to its target
// path, retiring the file it replaces (a snapshot keeps seeing that one).
func (tx *writeTxn) publishShadow(e *fsEntry) error {
	if e.Target == "" {
		return nil
	}
	if cur := tx.entry(e.Path); cur != nil && e.Path != e.Target {
		if err := tx.del(tableFSEntries, cur); err != nil {
			return err
		}
	}
	if old := tx.entry(e.Target); old != nil {
		if old.Dir || old.State == api.FileOpen {
			return fmt.Errorf("%w: %s became a directory or is being written; not replaced", ErrConflict, e.Target)
		}
		if err := tx.retire(old); err != nil {
			return err
		}
	}
	if err := tx.ensureParents(e.Target, true, e.Modified); err != nil {
		return err
	}
	e.Path, e.Parent, e.Target = e.Target, api.PathDir(e.Target), ""
	return nil
}

// openFile returns a copy of the open file at path written as fileID.
func (tx *writeTxn) openFile(path string, fileID uint64) (*fsEntry, error) {
	e := tx.entry(path)
	if e == nil || e.FileID != fileID {
		e = tx.entry(shadowKey(path, fileID))
	}
	if e == nil || e.Dir || e.FileID != fileID {
		return nil, fmt.Errorf("%w: %s (file id %d) does not exist; it was deleted or replaced", ErrNotFound, path, fileID)
	}
	if e.State != api.FileOpen {
		return nil, fmt.Errorf("%w: %s is closed; files are written once", ErrConflict, path)
	}
	c := *e
	c.Chunks = append([]string(nil), e.Chunks...)
	c.Pending = append([]string(nil), e.Pending...)
	return &c, nil
}

// FSClose closes an open file whose committed chunks add up to Size.
// Chunks allocated but never committed are dropped.
func (s *Store) FSClose(index uint64, req *FSCloseRequest) (*api.FileInfo, error) {
	var out *api.FileInfo
	err := s.write(index, func(tx *writeTxn) error {
		e, err := tx.openFile(req.Req.Path, req.Req.FileID)
		if err != nil {
			return err
		}
		if e.Size != req.Req.Size {
			return fmt.Errorf("%w: %s: size %d does not match the %d bytes committed", ErrConflict, e.Path, req.Req.Size, e.Size)
		}
		for _, id := range e.Pending {
			if err := tx.dropChunk(id); err != nil {
				return err
			}
		}
		e.Pending, e.State, e.Visible, e.Modified, e.MadeDirs, e.LeaseSeconds = nil, api.FileClosed, index, req.Now, nil, 0
		if err := tx.publishShadow(e); err != nil {
			return err
		}
		if err := tx.putEntry(e); err != nil {
			return err
		}
		out = e.info(e.Path, nil)
		return nil
	})
	return out, err
}

// FSRenew records that an open file's writer is alive: the file's
// Modified time, from which its lease runs, becomes now.
func (s *Store) FSRenew(index uint64, req *FSRenewRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		e, err := tx.openFile(req.Req.Path, req.Req.FileID)
		if err != nil {
			return err
		}
		e.Modified = req.Now
		return tx.putEntry(e)
	})
}

// FSAbort deletes an open file and its chunks.
func (s *Store) FSAbort(index uint64, req *FSAbortRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		e, err := tx.openFile(req.Req.Path, req.Req.FileID)
		if err != nil {
			return err
		}
		if err := tx.retire(e); err != nil {
			return err
		}
		// Remove the directories the write created, if still empty.
		for _, d := range e.MadeDirs {
			de := tx.entry(d)
			if de == nil || !de.Dir || len(collectEntries(tx, d)) > 0 {
				break
			}
			if err := tx.retire(de); err != nil {
				return err
			}
		}
		return nil
	})
}

// FSRemove deletes a file or, with Recursive, a directory tree. A directory
// that has snapshots (or holds one that has) cannot be removed.
func (s *Store) FSRemove(index uint64, req *FSRemoveRequest) error {
	p, err := checkWritable("path", req.Req.Path)
	if err != nil {
		return err
	}
	return s.write(index, func(tx *writeTxn) error {
		e := tx.entry(p)
		if e == nil {
			return fmt.Errorf("%w: %s does not exist", ErrNotFound, p)
		}
		if e.Dir && len(tx.subtree(p)) > 1 && !req.Req.Recursive {
			return fmt.Errorf("%w: directory %s is not empty (remove it recursively)", ErrConflict, p)
		}
		return tx.removeTree(p)
	})
}

// removeTree removes p and everything under it, if it exists. A tree that
// has snapshots (or is in one) cannot be removed.
func (tx *writeTxn) removeTree(p string) error {
	if tx.entry(p) == nil {
		return nil
	}
	if err := tx.refuseSnapshotted(p); err != nil {
		return err
	}
	for _, d := range tx.subtree(p) {
		if err := tx.retire(d); err != nil {
			return err
		}
	}
	return nil
}

// FSRename moves a file or directory tree to a path that does not exist,
// in one write. Open files cannot move (their writer names them by path).
func (s *Store) FSRename(index uint64, req *FSRenameRequest) error {
	from, err := checkWritable("from", req.Req.From)
	if err != nil {
		return err
	}
	to, err := checkWritable("to", req.Req.To)
	if err != nil {
		return err
	}
	if api.WithinDir(to, from) {
		return fmt.Errorf("%w: cannot move %s into itself (%s)", ErrInvalid, from, to)
	}
	return s.write(index, func(tx *writeTxn) error {
		if tx.entry(from) == nil {
			return fmt.Errorf("%w: %s does not exist", ErrNotFound, from)
		}
		if tx.entry(to) != nil {
			return fmt.Errorf("%w: %s already exists", ErrConflict, to)
		}
		if err := tx.ensureParents(to, false, req.Now); err != nil {
			return err
		}
		if err := tx.refuseSnapshotted(from); err != nil {
			return err
		}
		return tx.moveTree(from, to, req.Now)
	})
}

// moveTree moves every entry of the tree at from to the same place under
// to. Each moved entry is a new version for snapshots.
func (tx *writeTxn) moveTree(from, to string, now time.Time) error {
	tree := tx.subtree(from)
	for _, e := range tree {
		if !e.Dir && e.State == api.FileOpen {
			return fmt.Errorf("%w: %s is open for writing", ErrConflict, e.Path)
		}
	}
	for _, e := range tree {
		if err := tx.retireKeep(e); err != nil {
			return err
		}
		n := *e
		n.Path = to + strings.TrimPrefix(e.Path, from)
		n.Parent = api.PathDir(n.Path)
		n.Visible = tx.index
		n.Modified = now
		if err := tx.putEntry(&n); err != nil {
			return err
		}
	}
	return nil
}

// subtree returns the entry at p and every entry below it, parents first.
func (tx *writeTxn) subtree(p string) []*fsEntry {
	var out []*fsEntry
	if e := tx.entry(p); e != nil {
		out = append(out, e)
	}
	it, err := tx.Get(tableFSEntries, "id_prefix", p+"/")
	if err != nil {
		return out
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*fsEntry))
	}
	return out
}

// refuseSnapshotted refuses to remove or move a tree with snapshots of it
// or of a directory inside it: their paths would no longer lead anywhere.
func (tx *writeTxn) refuseSnapshotted(p string) error {
	it, err := tx.Get(tableFSSnapshots, "id_prefix", p)
	if err != nil {
		return err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		sn := raw.(*fsSnapshot)
		if api.WithinDir(sn.Dir, p) {
			return fmt.Errorf("%w: %s has snapshot %q of %s; delete its snapshots first", ErrConflict, p, sn.Name, sn.Dir)
		}
	}
	return nil
}

// coveredBySnapshot reports whether a snapshot can see version e.
func (tx *writeTxn) coveredBySnapshot(e *fsEntry, removed uint64) bool {
	if e.Visible == 0 {
		return false
	}
	for d := e.Path; ; d = api.PathDir(d) {
		it, err := tx.Get(tableFSSnapshots, "dir", d)
		if err == nil {
			for raw := it.Next(); raw != nil; raw = it.Next() {
				if sn := raw.(*fsSnapshot); e.Visible <= sn.Index && sn.Index < removed {
					return true
				}
			}
		}
		if d == "/" {
			return false
		}
	}
}

// retire removes a live entry: into history when a snapshot can see it,
// otherwise for good, releasing its chunks.
func (tx *writeTxn) retire(e *fsEntry) error {
	if err := tx.del(tableFSEntries, e); err != nil {
		return err
	}
	if tx.coveredBySnapshot(e, tx.index) {
		return tx.keepVersion(e)
	}
	return tx.releaseChunks(e)
}

// retireKeep removes a live entry that lives on elsewhere (a rename): the
// old version goes to history if a snapshot can see it, and its chunks gain
// a reference for the copy.
func (tx *writeTxn) retireKeep(e *fsEntry) error {
	if err := tx.del(tableFSEntries, e); err != nil {
		return err
	}
	if !tx.coveredBySnapshot(e, tx.index) {
		return nil
	}
	for _, id := range e.Chunks {
		if err := tx.refChunk(id, 1); err != nil {
			return err
		}
	}
	return tx.keepVersion(e)
}

func (tx *writeTxn) keepVersion(e *fsEntry) error {
	return tx.put(tableFSHistory, &fsVersion{Key: fmt.Sprintf("%s\x00%020d", e.Path, e.Visible),
		Path: e.Path, Parent: e.Parent, Removed: tx.index, Entry: *e})
}

// releaseChunks drops a version's references to its chunks (and the
// chunks of an open file that were never committed).
func (tx *writeTxn) releaseChunks(e *fsEntry) error {
	for _, id := range e.Chunks {
		if err := tx.refChunk(id, -1); err != nil {
			return err
		}
	}
	for _, id := range e.Pending {
		if err := tx.dropChunk(id); err != nil {
			return err
		}
	}
	return nil
}

// FSSnapshot creates or deletes a snapshot. Creating is O(1); deleting
// frees the old versions under the directory that no other snapshot sees.
func (s *Store) FSSnapshot(index uint64, req *FSSnapshotRequest) (*api.SnapshotInfo, error) {
	dir, err := api.CleanPath("dir", req.Req.Dir)
	if err != nil {
		return nil, fsInvalid(err)
	}
	if _, _, _, in := splitSnapshotPath(dir); in {
		return nil, fmt.Errorf("%w: dir: %s is inside a snapshot", ErrInvalid, dir)
	}
	if err := api.ValidateName("name", req.Req.Name); err != nil {
		return nil, fsInvalid(err)
	}
	var out *api.SnapshotInfo
	err = s.write(index, func(tx *writeTxn) error {
		key := snapshotKey(dir, req.Req.Name)
		raw, _ := tx.First(tableFSSnapshots, "id", key)
		if req.Delete {
			if raw == nil {
				return fmt.Errorf("%w: %s has no snapshot %q", ErrNotFound, dir, req.Req.Name)
			}
			if err := tx.del(tableFSSnapshots, raw); err != nil {
				return err
			}
			return tx.collectVersions(dir)
		}
		if raw != nil {
			return fmt.Errorf("%w: %s already has a snapshot %q", ErrConflict, dir, req.Req.Name)
		}
		if e := tx.entry(dir); dir != "/" && (e == nil || !e.Dir) {
			return fmt.Errorf("%w: %s is not an existing directory", ErrNotFound, dir)
		}
		sn := &fsSnapshot{Key: key, Dir: dir, Name: req.Req.Name, Index: index, Created: req.Now}
		out = &api.SnapshotInfo{Dir: dir, Name: sn.Name, Index: index, Created: req.Now}
		return tx.put(tableFSSnapshots, sn)
	})
	return out, err
}

// collectVersions frees the old versions under dir that no snapshot sees.
func (tx *writeTxn) collectVersions(dir string) error {
	prefix := dir + "/"
	if dir == "/" {
		prefix = "/"
	}
	it, err := tx.Get(tableFSHistory, "id_prefix", prefix)
	if err != nil {
		return err
	}
	var drop []*fsVersion
	for raw := it.Next(); raw != nil; raw = it.Next() {
		v := raw.(*fsVersion)
		if !tx.coveredBySnapshot(&v.Entry, v.Removed) {
			drop = append(drop, v)
		}
	}
	for _, v := range drop {
		if err := tx.del(tableFSHistory, v); err != nil {
			return err
		}
		if err := tx.releaseChunks(&v.Entry); err != nil {
			return err
		}
	}
	return nil
}

// OpenFile names a file being written and when it last changed.
type OpenFile struct {
	Path     string
	FileID   uint64
	Modified time.Time
	Lease    time.Duration // 0: the default
}

// FSOpenFiles lists the files open for writing.
func (s *Snapshot) FSOpenFiles() []OpenFile {
	var out []OpenFile
	for _, e := range collect[*fsEntry](s.txn, nil, tableFSEntries, "id") {
		if !e.Dir && e.State == api.FileOpen {
			out = append(out, OpenFile{Path: e.Path, FileID: e.FileID, Modified: e.Modified,
				Lease: time.Duration(e.LeaseSeconds) * time.Second})
		}
	}
	return out
}
