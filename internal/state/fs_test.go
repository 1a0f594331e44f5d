package state_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// writeFile creates, fills (one chunk per length) and closes a file, and
// returns its chunk ids.
func (f *fixture) writeFile(path string, lengths ...int64) []string {
	f.t.Helper()
	fi, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: path}, Now: f.now})
	if err != nil {
		f.t.Fatalf("FSCreate(%s): %v", path, err)
	}
	var ids []string
	var size int64
	for _, l := range lengths {
		a, err := f.s.FSAllocate(f.next(), &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: path, FileID: fi.FileID}})
		if err != nil {
			f.t.Fatalf("FSAllocate(%s): %v", path, err)
		}
		var reps []string
		for _, r := range a.Replicas {
			reps = append(reps, r.Node)
		}
		if err := f.s.FSCommit(f.next(), &state.FSCommitRequest{Req: api.ChunkCommit{Path: path, FileID: fi.FileID,
			ID: a.ID, Length: l, CRC: uint32(l), Replicas: reps}, Now: f.now}); err != nil {
			f.t.Fatalf("FSCommit(%s): %v", path, err)
		}
		ids = append(ids, a.ID)
		size += l
	}
	if _, err := f.s.FSClose(f.next(), &state.FSCloseRequest{Req: api.FileClose{Path: path, FileID: fi.FileID, Size: size}, Now: f.now}); err != nil {
		f.t.Fatalf("FSClose(%s): %v", path, err)
	}
	return ids
}

func (f *fixture) fsNodes() {
	f.t.Helper()
	for _, n := range []string{"a1", "a2", "b1", "b2", "c1", "c2"} {
		f.addNode(n, "zone-"+n[:1])
	}
}

func (f *fixture) names(path string) []string {
	f.t.Helper()
	l, err := f.snap().FSList(nil, path)
	if err != nil {
		f.t.Fatalf("FSList(%s): %v", path, err)
	}
	var out []string
	for _, fi := range l {
		out = append(out, fi.Name)
	}
	slices.Sort(out)
	return out
}

func TestFSWriteAndStat(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	ids := f.writeFile("/data/a.txt", 100, 50)
	fi, err := f.snap().FSStat(nil, "/data/a.txt")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size != 150 || fi.State != api.FileClosed || len(fi.Chunks) != 2 || fi.Chunks[1].Offset != 100 {
		t.Fatalf("stat = %+v", fi)
	}
	for _, c := range fi.Chunks {
		zones := map[string]bool{}
		for _, r := range c.Replicas {
			zones[r.Zone] = true
			if r.State != api.ReplicaOK || r.Addr == "" {
				t.Errorf("replica %+v not ok", r)
			}
		}
		if len(c.Replicas) != 3 || len(zones) != 3 {
			t.Errorf("chunk %s replicas %+v: want 3 in distinct zones", c.ID, c.Replicas)
		}
	}
	if got := f.names("/data"); !cmp.Equal(got, []string{"a.txt"}) {
		t.Errorf("list /data = %v", got)
	}
	if got := f.names("/"); !cmp.Equal(got, []string{"data"}) {
		t.Errorf("list / = %v", got)
	}
	// Written once: no chunk can be added after close.
	_, err = f.s.FSAllocate(f.next(), &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: "/data/a.txt", FileID: fi.FileID}})
	if !errors.Is(err, state.ErrConflict) {
		t.Errorf("allocate on a closed file: %v, want conflict", err)
	}
	st := f.snap().FSStatus(nil)
	if st.Files != 1 || st.Chunks != 2 || st.LogicalBytes != 150 || st.StoredBytes != 450 || st.UnderReplicated != 0 {
		t.Errorf("status = %+v", st)
	}
	_ = ids
}

func TestFSWriterFirstAndZones(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	fi, _ := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/x"}, Now: f.now})
	a, err := f.s.FSAllocate(f.next(), &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: "/x", FileID: fi.FileID, Writer: "b2"}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Replicas[0].Node != "b2" {
		t.Errorf("first replica on %s, want the writer b2", a.Replicas[0].Node)
	}
	// Fewer zones than replicas: distinct nodes.
	f2 := newFixture(t)
	f2.addNode("n1", "z")
	f2.addNode("n2", "z")
	fi, _ = f2.s.FSCreate(f2.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/y", Replication: 2}, Now: f2.now})
	a, err = f2.s.FSAllocate(f2.next(), &state.FSAllocateRequest{Req: api.ChunkAllocate{Path: "/y", FileID: fi.FileID}})
	if err != nil || len(a.Replicas) != 2 || a.Replicas[0].Node == a.Replicas[1].Node {
		t.Errorf("allocation %+v, %v: want two distinct nodes", a, err)
	}
}

func TestFSBadPaths(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	f.writeFile("/d/file", 10)
	before := f.snap().Index(state.TableFS)
	for _, p := range []string{"", "relative", "/a/../b", "/a/./b", "/a//b", "/a\x00b", "/a\nb", "/a\x7fb",
		"/" + strings.Repeat("x", 256), "/d/.snapshot/s/x", "/"} {
		_, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: p}, Now: f.now})
		if !errors.Is(err, state.ErrInvalid) {
			t.Errorf("create %q: %v, want invalid", p, err)
		}
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{"/d/file", state.ErrConflict},       // exists
		{"/d/file/under", state.ErrConflict}, // parent is a file
		{"/d", state.ErrConflict},            // a directory
	} {
		_, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: tc.path}, Now: f.now})
		if !errors.Is(err, tc.want) {
			t.Errorf("create %q: %v, want %v", tc.path, err, tc.want)
		}
	}
	if err := f.s.FSRemove(f.next(), &state.FSRemoveRequest{Req: api.Remove{Path: "/d"}, Now: f.now}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("remove of a non-empty dir without recursive: %v", err)
	}
	if err := f.s.FSRename(f.next(), &state.FSRenameRequest{Req: api.Rename{From: "/d", To: "/d/sub"}, Now: f.now}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("rename into itself: %v", err)
	}
	if got := f.snap().Index(state.TableFS); got != before {
		t.Errorf("refused writes changed the namespace: index %d -> %d", before, got)
	}
}

func TestFSRenameRemoveAndGarbage(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	ids := f.writeFile("/d/sub/a", 10)
	if err := f.s.FSRename(f.next(), &state.FSRenameRequest{Req: api.Rename{From: "/d", To: "/e"}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.snap().FSStat(nil, "/e/sub/a"); err != nil {
		t.Errorf("renamed file: %v", err)
	}
	if _, err := f.snap().FSStat(nil, "/d/sub/a"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("old path: %v", err)
	}
	if err := f.s.FSRemove(f.next(), &state.FSRemoveRequest{Req: api.Remove{Path: "/e", Recursive: true}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	g := f.snap().FSGarbage(nil)
	if len(g[ids[0]]) != 3 {
		t.Errorf("garbage = %v, want chunk %s on 3 nodes", g, ids[0])
	}
	if _, ok := f.snap().FSChunk(ids[0]); ok {
		t.Error("chunk still listed after its only file was removed")
	}
}

func TestFSSnapshots(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	old := f.writeFile("/d/a", 10)
	f.writeFile("/d/b", 20)
	if _, err := f.s.FSSnapshot(f.next(), &state.FSSnapshotRequest{Req: api.SnapshotRequest{Dir: "/d", Name: "s1"}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	// Change the live tree: delete a, overwrite b, add c, rename b.
	if err := f.s.FSRemove(f.next(), &state.FSRemoveRequest{Req: api.Remove{Path: "/d/a"}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.FSRename(f.next(), &state.FSRenameRequest{Req: api.Rename{From: "/d/b", To: "/d/b2"}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	f.writeFile("/d/a", 99)
	f.writeFile("/d/c", 5)

	if got := f.names("/d"); !cmp.Equal(got, []string{"a", "b2", "c"}) {
		t.Errorf("live /d = %v", got)
	}
	if got := f.names("/d/.snapshot/s1"); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("snapshot /d = %v", got)
	}
	if got := f.names("/d/.snapshot"); !cmp.Equal(got, []string{"s1"}) {
		t.Errorf("snapshots = %v", got)
	}
	fi, err := f.snap().FSFile(nil, "/d/.snapshot/s1/a")
	if err != nil || fi.Size != 10 || fi.Chunks[0].ID != old[0] {
		t.Fatalf("snapshot a = %+v, %v; want the old 10-byte version", fi, err)
	}
	if _, ok := f.snap().FSChunk(old[0]); !ok {
		t.Fatal("a chunk a snapshot sees was freed")
	}
	// A snapshot is read-only and its directory cannot go away under it.
	if _, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/d/.snapshot/s1/x"}, Now: f.now}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("create in a snapshot: %v", err)
	}
	if err := f.s.FSRemove(f.next(), &state.FSRemoveRequest{Req: api.Remove{Path: "/d", Recursive: true}, Now: f.now}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("remove of a snapshotted dir: %v", err)
	}
	// Deleting the snapshot frees what only it kept.
	if _, err := f.s.FSSnapshot(f.next(), &state.FSSnapshotRequest{Req: api.SnapshotRequest{Dir: "/d", Name: "s1"}, Delete: true, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.snap().FSChunk(old[0]); ok {
		t.Error("the old chunk outlived the last snapshot that saw it")
	}
	if _, err := f.snap().FSStat(nil, "/d/b2"); err != nil {
		t.Errorf("live renamed file lost with the snapshot: %v", err)
	}
	// The state survives persist and restore.
	var buf bytes.Buffer
	if err := f.snap().Persist(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := state.Restore(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := r.Snapshot().FSStat(nil, "/d/a"); err != nil || fi.Size != 99 {
		t.Errorf("restored /d/a = %+v, %v", fi, err)
	}
}

func TestFSReplicas(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	ids := f.writeFile("/f", 10)
	c, _ := f.snap().FSChunk(ids[0])
	f.setState(c.Replicas[0], api.NodeDown)
	st := f.snap().FSStatus(nil)
	if st.UnderReplicated != 1 {
		t.Errorf("under-replicated = %d after a replica's node went down", st.UnderReplicated)
	}
	err := f.s.FSReplicas(f.next(), &state.FSReplicaRequest{Chunk: ids[0], Add: []string{"a2"}, Remove: c.Replicas[:1], Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	if st := f.snap().FSStatus(nil); st.UnderReplicated != 0 {
		t.Errorf("under-replicated = %d after repair", st.UnderReplicated)
	}
	err = f.s.FSReplicas(f.next(), &state.FSReplicaRequest{Chunk: ids[0], Remove: []string{"a1", "a2", "b1", "b2", "c1", "c2"}, Now: f.now})
	if !errors.Is(err, state.ErrConflict) {
		t.Errorf("removing every replica: %v, want conflict", err)
	}
}

func TestJobInputsAndOutputs(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	f.createCluster("c", 3, 3)
	f.writeFile("/clusters/c/in/1.txt", 10)
	f.writeFile("/clusters/c/in/2.txt", 10)
	f.writeFile("/clusters/c/in/.hidden", 10)
	spec := api.JobSpec{Name: "wc", Cluster: "c", Groups: []api.GroupSpec{{Name: "map", Command: []string{"true"},
		Inputs: []string{"in/*.txt"}, SplitInputs: true, Outputs: "out"}}}
	j, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: spec, Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	tasks := f.snap().JobTasks(nil, j.ID)
	if len(tasks) != 2 || tasks[0].Inputs[0] != "/clusters/c/in/1.txt" || tasks[1].Inputs[0] != "/clusters/c/in/2.txt" {
		t.Fatalf("tasks = %d, inputs %v", len(tasks), tasks[0].Inputs)
	}
	if fi, err := f.snap().FSStat(nil, "/clusters/c/out"); err != nil || !fi.Dir {
		t.Errorf("output dir: %+v, %v", fi, err)
	}
	for _, bad := range []api.GroupSpec{
		{Name: "g", Command: []string{"true"}, Inputs: []string{"/clusters/other/x"}},
		{Name: "g", Command: []string{"true"}, Inputs: []string{"in/none*"}},
		{Name: "g", Command: []string{"true"}, Outputs: "../x"},
	} {
		spec := api.JobSpec{Name: "bad", Cluster: "c", Groups: []api.GroupSpec{bad}}
		if _, err := f.s.SubmitJob(f.next(), &state.JobSubmitRequest{Spec: spec, Now: f.now}); err == nil {
			t.Errorf("job with %+v accepted", bad)
		}
	}
}

func TestFSOverwriteKeepsOldUntilClose(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	old := f.writeFile("/d/f", 10)
	fi, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/d/f", Overwrite: true}, Now: f.now})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.snap().FSFile(nil, "/d/f"); err != nil || got.Size != 10 {
		t.Fatalf("old file while the new one is written: %+v, %v", got, err)
	}
	if got := f.names("/d"); !cmp.Equal(got, []string{"f"}) {
		t.Errorf("list during overwrite = %v", got)
	}
	// A failed overwrite leaves the old file whole.
	if err := f.s.FSAbort(f.next(), &state.FSAbortRequest{Req: api.FileAbort{Path: "/d/f", FileID: fi.FileID}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got, err := f.snap().FSFile(nil, "/d/f"); err != nil || got.Chunks[0].ID != old[0] {
		t.Fatalf("old file after an aborted overwrite: %+v, %v", got, err)
	}
	// A completed one replaces it, and the old chunk is freed.
	fi, _ = f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/d/f", Overwrite: true}, Now: f.now})
	if _, err := f.s.FSClose(f.next(), &state.FSCloseRequest{Req: api.FileClose{Path: "/d/f", FileID: fi.FileID}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got, err := f.snap().FSFile(nil, "/d/f"); err != nil || got.Size != 0 || got.FileID != fi.FileID {
		t.Fatalf("file after the overwrite closed: %+v, %v", got, err)
	}
	if _, ok := f.snap().FSChunk(old[0]); ok {
		t.Error("the replaced file's chunk was not freed")
	}
}

func TestFSAbortRemovesDirsItMade(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	f.writeFile("/keep/x", 1)
	fi, _ := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/keep/new/deeper/f"}, Now: f.now})
	if err := f.s.FSAbort(f.next(), &state.FSAbortRequest{Req: api.FileAbort{Path: "/keep/new/deeper/f", FileID: fi.FileID}, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got := f.names("/keep"); !cmp.Equal(got, []string{"x"}) {
		t.Errorf("/keep after an aborted write = %v, want only x", got)
	}
}

func TestFSRenewLease(t *testing.T) {
	f := newFixture(t)
	f.fsNodes()
	fi, err := f.s.FSCreate(f.next(), &state.FSCreateRequest{Req: api.FileCreate{Path: "/w"}, Now: f.now, LeaseSeconds: 7})
	if err != nil {
		t.Fatal(err)
	}
	if fi.LeaseSeconds != 7 {
		t.Errorf("lease of the new file = %d s, want 7", fi.LeaseSeconds)
	}
	later := f.now.Add(time.Minute)
	if err := f.s.FSRenew(f.next(), &state.FSRenewRequest{Req: api.FileRenew{Path: "/w", FileID: fi.FileID}, Now: later}); err != nil {
		t.Fatalf("FSRenew: %v", err)
	}
	open := f.snap().FSOpenFiles()
	want := []state.OpenFile{{Path: "/w", FileID: fi.FileID, Modified: later, Lease: 7 * time.Second}}
	if diff := cmp.Diff(want, open); diff != "" {
		t.Errorf("open files after a renewal (-want +got):\n%s", diff)
	}

	f.writeFile("/closed", 1)
	closed, _ := f.snap().FSStat(nil, "/closed")
	before := dump(t, f.s)
	for _, r := range []api.FileRenew{{Path: "/w", FileID: fi.FileID + 100}, {Path: "/closed", FileID: closed.FileID}, {Path: "/nope", FileID: 1}} {
		if err := f.s.FSRenew(f.next(), &state.FSRenewRequest{Req: r, Now: later}); err == nil {
			t.Errorf("FSRenew(%+v) succeeded", r)
		}
	}
	checkUnchanged(t, f.s, before)
}
