package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestDFSPutGetStat round-trips a multi-chunk file through the CLI and
// checks where its replicas are, then exercises ls, mkdir -p, mv and rm -r,
// down to the chunk files on the agents' disks.
func TestDFSPutGetStat(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	data := randomBytes(1, 1<<20+12345)
	putData(t, in, "/data/f.bin", data, "--chunk-size", "256KiB")

	local := filepath.Join(t.TempDir(), "got.bin")
	mustShoal(t, in, "fs", "get", "/data/f.bin", local)
	got, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, "fs get", got, data)
	checkSame(t, "fs cat", []byte(mustShoal(t, in, "fs", "cat", "/data/f.bin")), data)

	fi := statJSON(t, in, "/data/f.bin")
	if fi.Dir || fi.State != api.FileClosed || fi.Replication != 3 || fi.ChunkSize != testChunkSize || fi.Name != "f.bin" {
		t.Errorf("stat: dir %v state %q replication %d chunk size %d name %q; want a closed file, 3 replicas of %d-byte chunks, named f.bin",
			fi.Dir, fi.State, fi.Replication, fi.ChunkSize, fi.Name, testChunkSize)
	}
	checkChunks(t, fi, data)
	for _, c := range fi.Chunks {
		if p := replicaProblem(c, 3, nil); p != "" {
			t.Error(p)
		}
		zones := map[string]bool{}
		for _, r := range c.Replicas {
			zones[r.Zone] = true
			if r.Addr == "" {
				t.Errorf("chunk %s: replica on %s has no address", c.ID, r.Node)
			}
		}
		if len(zones) != 3 {
			t.Errorf("chunk %s: replicas %+v span %d zones, want 3", c.ID, c.Replicas, len(zones))
		}
	}
	checkReplicaFiles(t, in, fi, data)

	// ls, mkdir -p, mv.
	var list []*api.FileInfo
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/data", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "f.bin" || list[0].Dir || list[0].Size != int64(len(data)) {
		t.Errorf("ls /data = %+v, want f.bin of %d bytes", list, len(data))
	}
	mustShoal(t, in, "fs", "mkdir", "-p", "/data/x/y/z")
	mustShoal(t, in, "fs", "mkdir", "-p", "/data/x/y") // exists: not an error with -p
	if _, _, code := in.Shoal("fs", "mkdir", "/data/x/y"); code == 0 {
		t.Errorf("mkdir of an existing directory without -p succeeded")
	}
	mustShoal(t, in, "fs", "mv", "/data/f.bin", "/data/x/y/g.bin")
	if _, errOut, code := in.Shoal("fs", "stat", "/data/f.bin"); code == 0 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("stat of the moved-away path: exit %d stderr %q, want not found", code, errOut)
	}
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/data/x/y", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"g.bin", "z"}) {
		t.Errorf("ls /data/x/y = %v, want [g.bin z]", got)
	}
	checkSame(t, "fs cat after mv", []byte(mustShoal(t, in, "fs", "cat", "/data/x/y/g.bin")), data)
	if moved := statJSON(t, in, "/data/x/y/g.bin"); moved.FileID != fi.FileID || len(moved.Chunks) != len(fi.Chunks) || moved.Chunks[0].ID != fi.Chunks[0].ID {
		t.Errorf("mv rewrote the file: file id %d -> %d, chunks %d -> %d", fi.FileID, moved.FileID, len(fi.Chunks), len(moved.Chunks))
	}

	// rm refuses a non-empty directory without -r; rm -r removes the tree,
	// and the chunks are then deleted from the data nodes.
	if _, _, code := in.Shoal("fs", "rm", "/data/x"); code == 0 {
		t.Errorf("rm of a non-empty directory without -r succeeded")
	}
	mustShoal(t, in, "fs", "rm", "-r", "/data/x")
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/data", "-o", "json")), &list); err != nil || len(list) != 0 {
		t.Errorf("ls /data after rm -r = %+v (%v), want empty", list, err)
	}
	if _, _, code := in.Shoal("fs", "cat", "/data/x/y/g.bin"); code == 0 {
		t.Errorf("cat of a removed file succeeded")
	}
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		var left []string
		for _, c := range fi.Chunks {
			for _, a := range in.Agents {
				if chunkPath(in, a.Name, c.ID) != "" {
					left = append(left, c.ID+"@"+a.Name)
				}
			}
		}
		return len(left) == 0, fmt.Sprintf("chunks of the removed file still on disk: %v", left)
	})
	if s, _ := in.Client.FSStatus(context.Background()); s == nil || s.Files != 0 || s.Chunks != 0 {
		t.Errorf("fs status after rm -r: %+v, want no files or chunks", s)
	}
}

// TestDFSBadInput sends invalid paths and broken writes through the API
// (and some through the CLI): each is refused with a 4xx error and the
// namespace, down to the chunks on disk, is left as it was.
func TestDFSBadInput(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	ctx := context.Background()
	keep := randomBytes(2, 100000)
	putData(t, in, "/keep/base.bin", keep, "--chunk-size", "64KiB")
	// The longest name allowed works, so the one-byte-longer one below is
	// refused for its length and nothing else.
	if err := in.Client.FSMkdir(ctx, &api.Mkdir{Path: "/keep/" + strings.Repeat("n", api.MaxPathSegLen)}); err != nil {
		t.Fatalf("mkdir with a %d-byte name: %v", api.MaxPathSegLen, err)
	}
	if err := in.Client.FSRemove(ctx, &api.Remove{Path: "/keep/" + strings.Repeat("n", api.MaxPathSegLen)}); err != nil {
		t.Fatal(err)
	}
	baseTree, baseCounts := fsTree(t, in), fsCounts(t, in)
	baseFile, err := in.Client.FSStat(ctx, "/keep/base.bin")
	if err != nil {
		t.Fatal(err)
	}
	wantStored := 3 * len(baseFile.Chunks)
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		n := storedChunks(in)
		return n == wantStored, fmt.Sprintf("%d chunk replicas on disk, want %d", n, wantStored)
	})

	wantErr := func(t *testing.T, what string, err error, status int, code string) {
		t.Helper()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != status || ae.Code != code {
			t.Errorf("%s: got %#v, want HTTP %d %s", what, err, status, code)
		}
	}
	badPaths := map[string]string{
		"dot-dot":          "/keep/../x",
		"dot":              "/keep/./x",
		"NUL":              "/keep/a\x00b",
		"tab":              "/keep/a\tb",
		"escape":           "/keep/a\x1bb",
		"DEL":              "/keep/a\x7fb",
		"C1 control":       "/keep/a\u0085b",
		"empty name":       "/keep//x",
		"long name":        "/keep/" + strings.Repeat("n", api.MaxPathSegLen+1),
		"relative":         "keep/x",
		"empty":            "",
		"snapshot dir":     "/keep/.snapshot/s1/x",
		"snapshot itself":  "/keep/.snapshot",
		"snapshot nothing": "/keep/.snapshot/s1",
	}
	for name, p := range badPaths {
		t.Run(name, func(t *testing.T) {
			_, err := in.Client.FSUpload(ctx, p, bytes.NewReader([]byte("hello")), 5, api.UploadOptions{})
			wantErr(t, "upload", err, http.StatusBadRequest, api.CodeInvalid)
			wantErr(t, "mkdir", in.Client.FSMkdir(ctx, &api.Mkdir{Path: p, Parents: true}), http.StatusBadRequest, api.CodeInvalid)
			wantErr(t, "rename to", in.Client.FSRename(ctx, &api.Rename{From: "/keep/base.bin", To: p}), http.StatusBadRequest, api.CodeInvalid)
			_, err = in.Client.FSCreate(ctx, &api.FileCreate{Path: p, Close: true})
			wantErr(t, "create", err, http.StatusBadRequest, api.CodeInvalid)
			if !strings.Contains(p, api.SnapshotDirName) {
				_, err = in.Client.FSStat(ctx, p)
				wantErr(t, "stat", err, http.StatusBadRequest, api.CodeInvalid)
			}
		})
	}
	// The CLI refuses them before sending anything (argv cannot carry NUL).
	local := writeFile(t, "small", "hello")
	for _, p := range []string{"/keep/../x", "/keep/a\tb", "/keep/a\x1bb", "/keep//x", "/keep/" + strings.Repeat("n", 256), "/keep/.snapshot/s1/x"} {
		for _, args := range [][]string{{"fs", "put", local, p}, {"fs", "mkdir", "-p", p}} {
			if out, errOut, code := in.Shoal(args...); code == 0 || !strings.HasPrefix(errOut, "Error: ") {
				t.Errorf("shoal %q: exit %d stderr %q stdout %q, want a clear error", args, code, errOut, out)
			}
		}
	}

	// A second create of an existing file without overwrite.
	_, err = in.Client.FSUpload(ctx, "/keep/base.bin", bytes.NewReader([]byte("other")), 5, api.UploadOptions{})
	wantErr(t, "second upload without overwrite", err, http.StatusConflict, api.CodeConflict)
	if _, errOut, code := in.Shoal("fs", "put", local, "/keep/base.bin"); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("fs put over an existing file: exit %d stderr %q, want a refusal", code, errOut)
	}
	// Bad upload parameters.
	for _, o := range []api.UploadOptions{{ChunkSize: api.MinChunkSize - 1}, {Replication: api.MaxReplication + 1}} {
		_, err = in.Client.FSUpload(ctx, "/keep/params.bin", bytes.NewReader([]byte("x")), 1, o)
		wantErr(t, fmt.Sprintf("upload with %+v", o), err, http.StatusBadRequest, api.CodeInvalid)
	}

	// An upload whose body ends before its Content-Length, the client
	// half-closing so that it can read the answer.
	const declared = 1000000
	rawPut := func(t *testing.T, path string) net.Conn {
		t.Helper()
		conf := testutil.Identity(t, *in.TLS, tlsfiles.RoleClient).ClientConfig(tlsfiles.RoleServer)
		conn, err := tls.Dial("tcp", in.Servers[0].HTTPAddr, conf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		q := url.Values{"path": {path}, "chunk_size": {"65536"}}
		fmt.Fprintf(conn, "PUT /v1/fs/data?%s HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", q.Encode(), declared)
		if _, err := conn.Write(randomBytes(3, 300000)); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	shortUpload := func(t *testing.T, path string) {
		t.Helper()
		conn := rawPut(t, path)
		if err := conn.(*tls.Conn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer to a short upload: %v", err)
		}
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || eb.Error.Code != api.CodeInvalid {
			t.Errorf("short upload: HTTP %d %+v, want 400 %s", resp.StatusCode, eb.Error, api.CodeInvalid)
		}
		if _, err := in.Client.FSStat(ctx, path); !api.IsNotFound(err) {
			t.Errorf("stat of the cut upload after its answer: %v, want not found", err)
		}
	}
	shortUpload(t, "/keep/half.bin")

	// The same, the client vanishing mid-body once the file is open and
	// chunks of it are committed.
	conn := rawPut(t, "/keep/gone.bin")
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		fi, err := in.Client.FSStat(ctx, "/keep/gone.bin")
		if err != nil {
			return false, err.Error()
		}
		return fi.State == api.FileOpen && len(fi.Chunks) > 0, fmt.Sprintf("upload is %s with %d chunks committed", fi.State, len(fi.Chunks))
	})
	conn.Close()
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		_, err := in.Client.FSStat(ctx, "/keep/gone.bin")
		return api.IsNotFound(err), fmt.Sprintf("stat of the abandoned upload: %v", err)
	})

	// Nothing changed: same entries, same counts, and only the original
	// file's chunks on disk once garbage is collected.
	if tree := fsTree(t, in); !mapsEqual(tree, baseTree) {
		t.Errorf("namespace after bad input:\n%v\nwant\n%v", tree, baseTree)
	}
	if c := fsCounts(t, in); c != baseCounts {
		t.Errorf("fs status after bad input: %s, want %s", c, baseCounts)
	}
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		n := storedChunks(in)
		return n == wantStored, fmt.Sprintf("%d chunk replicas on disk, want %d (the original file's)", n, wantStored)
	})
	checkSame(t, "the original file", download(t, in, "/keep/base.bin"), keep)

	// `shoal fs put -f` promises that each file "stays readable until its
	// new version is complete": while an overwrite streams, and after one
	// is interrupted, the original is there.
	t.Run("interrupted put -f keeps the original", func(t *testing.T) {
		cmd := startStalledPut(t, in, randomBytes(5, 300000), "-f", "/keep/base.bin")
		testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
			s, err := in.Client.FSStatus(ctx)
			if err != nil {
				return false, err.Error()
			}
			return s.Chunks > len(baseFile.Chunks), fmt.Sprintf("%d chunks committed, waiting for the new version's", s.Chunks)
		})
		if out, errOut, code := in.Shoal("fs", "cat", "/keep/base.bin"); code != 0 || out != string(keep) {
			t.Errorf("fs cat during put -f: exit %d, %d bytes, stderr %q; want the original's %d bytes", code, len(out), errOut, len(keep))
		}
		// The user interrupts the upload (Ctrl-C). The CLI writes to the
		// data nodes itself, so it is the CLI that deletes the new version;
		// a CLI killed with -9 could not, and its open file goes when its
		// lease runs out (TestDFSWriterKilled).
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
			s, err := in.Client.FSStatus(ctx)
			if err != nil {
				return false, err.Error()
			}
			return s.Chunks <= len(baseFile.Chunks), fmt.Sprintf("%d chunks committed, waiting for the cut upload's to go", s.Chunks)
		})
		if tree := fsTree(t, in); !mapsEqual(tree, baseTree) {
			t.Errorf("namespace after an interrupted put -f:\n%v\nwant\n%v", tree, baseTree)
		}
		if out, errOut, code := in.Shoal("fs", "cat", "/keep/base.bin"); code != 0 || out != string(keep) {
			t.Errorf("fs cat after an interrupted put -f: exit %d, %d bytes, stderr %q; want the original's %d bytes", code, len(out), errOut, len(keep))
		}
	})

	// An upload cut short leaves nothing behind, not even the directories
	// it would have created for the file.
	t.Run("short upload into a new directory", func(t *testing.T) {
		shortUpload(t, "/short/new/half.bin")
		if _, err := in.Client.FSStat(ctx, "/short"); !api.IsNotFound(err) {
			t.Errorf("stat /short after a failed upload to /short/new/half.bin: %v, want not found; "+
				"namespace now %v", err, fsTree(t, in))
		}
	})
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestDFSKillDataNodeDuringWrite kills -9 a data node while it is receiving
// a chunk of a streamed upload: the writer replaces the failed replica, the
// upload succeeds and reads back intact, and once the node is declared
// down repair puts every chunk back on three live nodes.
//
// The heartbeat TTL is long on purpose: until the node is declared down
// the replication manager cannot act for it, so whatever keeps the dead
// node out of the chunks written after the kill is the writer's doing.
func TestDFSKillDataNodeDuringWrite(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4, Zones: 3, HeartbeatTTL: 10 * time.Second})
	const chunkSize = 2 << 20 // bigger than the writer's 1 MiB buffer, so a chunk streams
	const path = "/big/stream.bin"
	data := randomBytes(4, 24<<20)

	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("test ended"))
	type result struct {
		fi  *api.FileInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		fi, err := in.Client.FSUpload(context.Background(), path, pr, int64(len(data)), api.UploadOptions{ChunkSize: chunkSize})
		pr.CloseWithError(fmt.Errorf("upload returned: %v", err))
		done <- result{fi, err}
	}()
	// Two whole chunks and half of the third: the third is being sent to
	// its replicas and cannot finish until the rest comes.
	if _, err := pw.Write(data[:2*chunkSize+chunkSize/2]); err != nil {
		t.Fatal(err)
	}
	var inflight string
	var holders []string
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		fi, err := in.Client.FSStat(context.Background(), path)
		if err != nil {
			return false, err.Error()
		}
		if fi.State != api.FileOpen || len(fi.Chunks) != 2 {
			return false, fmt.Sprintf("file %s with %d chunks committed, want open with 2", fi.State, len(fi.Chunks))
		}
		committed := map[string]bool{}
		for _, c := range fi.Chunks {
			committed[c.ID] = true
		}
		receiving := map[string][]string{} // chunk -> nodes with a temporary file of it
		for _, a := range in.Agents {
			tmp, _ := filepath.Glob(filepath.Join(in.Dir, a.Name, "chunks", "tmp", "*"))
			for _, f := range tmp {
				id, _, _ := strings.Cut(filepath.Base(f), ".")
				if !strings.HasSuffix(f, ".meta") && !committed[id] {
					receiving[id] = append(receiving[id], a.Name)
				}
			}
		}
		for id, nodes := range receiving {
			if len(nodes) == 3 {
				inflight, holders = id, nodes
				return true, ""
			}
		}
		return false, fmt.Sprintf("replicas receiving chunks: %v", receiving)
	})
	sort.Strings(holders)
	victim := holders[0]
	t.Logf("killing %s while it receives chunk %s (replicas on %v)", victim, inflight, holders)
	in.Agent(victim).Kill9()

	if _, err := pw.Write(data[2*chunkSize+chunkSize/2:]); err != nil {
		t.Fatalf("streaming the rest of the upload: %v", err)
	}
	pw.Close()
	var res result
	select {
	case res = <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("the upload did not finish within 90s of losing a replica")
	}
	if res.err != nil {
		if _, err := in.Client.FSStat(context.Background(), path); !api.IsNotFound(err) {
			t.Errorf("the failed upload left its file behind: stat says %v", err)
		}
		t.Fatalf("upload with a replica killed mid-chunk failed: %v; the writer must replace the replica", res.err)
	}
	if res.fi.Size != int64(len(data)) || res.fi.State != api.FileClosed {
		t.Errorf("upload answered %+v, want a closed file of %d bytes", res.fi, len(data))
	}

	// The writer, not repair, replaced the dead replica: the node is not
	// down yet (checked last), so repair has not run for it.
	fi, err := in.Client.FSStat(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := in.Client.FSStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	node, err := in.Client.Node(context.Background(), victim)
	if err != nil {
		t.Fatal(err)
	}
	if node.State == api.NodeDown {
		t.Fatalf("%s was declared down before the upload's result could be checked; raise the heartbeat TTL", victim)
	}
	checkChunks(t, fi, data)
	after := false
	for _, c := range fi.Chunks {
		after = after || c.ID == inflight
		if !after {
			continue
		}
		// Every chunk from the one in flight on was written after the kill.
		if p := replicaProblem(c, 3, []string{victim}); p != "" {
			t.Errorf("written after the kill: %s", p)
		}
	}
	if !after {
		t.Errorf("chunk %s that was in flight is not part of the file", inflight)
	}
	if st.RepairedBytes != 0 {
		t.Errorf("repair copied %d bytes before the dead node was declared down; the writer should have replaced its replicas", st.RepairedBytes)
	}
	checkSame(t, "read back after the kill", download(t, in, path), data)

	// Once the node is down, repair replaces its replicas of the chunks
	// written before the kill.
	fi = waitReplicated(t, in, path, 3, []string{victim}, 45*time.Second)
	checkReplicaFiles(t, in, fi, data)
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		s, err := in.Client.FSStatus(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return s.UnderReplicated == 0 && s.Unavailable == 0, fmt.Sprintf("fs status %+v", s)
	})
	checkSame(t, "read back after repair", download(t, in, path), data)
}

// TestDFSZoneLoss kills -9 both agents of one of three zones: every file
// stays readable at once, and repair brings every chunk back to three live
// replicas on the four nodes left, spread over the two zones left.
func TestDFSZoneLoss(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 6, Zones: 3, HeartbeatTTL: time.Second})
	files := map[string][]byte{
		"/z/a.bin":     randomBytes(10, 700<<10),
		"/z/b.bin":     randomBytes(11, 1<<20),
		"/z/sub/c.bin": randomBytes(12, 300<<10+1),
		"/z/empty":     {},
	}
	for p, data := range files {
		putData(t, in, p, data, "--chunk-size", "256KiB")
	}
	lost := nodesInZone(t, in, "zone-1")
	if len(lost) != 2 {
		t.Fatalf("zone-1 holds %v, want 2 nodes", lost)
	}
	for _, n := range lost {
		in.Agent(n).Kill9()
	}
	for p, data := range files {
		checkSame(t, p+" right after the zone loss", download(t, in, p), data)
	}

	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		s, err := in.Client.FSStatus(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return s.UnderReplicated == 0 && s.Unavailable == 0 && s.RepairedBytes > 0, fmt.Sprintf("fs status %+v", s)
	})
	for p, data := range files {
		fi := waitReplicated(t, in, p, 3, lost, 30*time.Second)
		checkChunks(t, fi, data)
		for _, c := range fi.Chunks {
			zones := map[string]bool{}
			for _, r := range c.Replicas {
				zones[r.Zone] = true
			}
			if !zones["zone-2"] || !zones["zone-3"] {
				t.Errorf("%s chunk %s: replicas %+v do not span both surviving zones", p, c.ID, c.Replicas)
			}
		}
		checkReplicaFiles(t, in, fi, data)
		checkSame(t, p+" after repair", download(t, in, p), data)
	}
	// /metrics tells the same story as fs status.
	resp, err := in.HTTPClient(tlsfiles.RoleServer).Get("http://" + in.Servers[0].HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"shoal_dfs_chunks_under_replicated 0", "shoal_dfs_chunks_unavailable 0",
		"shoal_dfs_stored_bytes ", "shoal_dfs_repaired_bytes_total "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), "shoal_dfs_repaired_bytes_total 0\n") {
		t.Error("/metrics says no bytes were repaired after a zone loss")
	}
}

// TestDFSCorruptChunk flips a byte of one replica on disk: a read still
// returns the right bytes, and the bad replica is dropped and replaced by
// a good copy.
func TestDFSCorruptChunk(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	data := randomBytes(20, 1<<20)
	putData(t, in, "/c/f.bin", data, "--chunk-size", "256KiB")
	fi := statJSON(t, in, "/c/f.bin")
	checkChunks(t, fi, data)
	c := fi.Chunks[1]
	// The server reads each chunk from its replicas in the order stat lists
	// them (it is on no node and in no zone), so the first one is read.
	bad := c.Replicas[0].Node
	p := chunkPath(in, bad, c.ID)
	if p == "" {
		t.Fatalf("no file for chunk %s on %s", c.ID, bad)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	raw[100000] ^= 0x40 // in the second 64 KiB block
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, raw, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o444); err != nil {
		t.Fatal(err)
	}

	checkSame(t, "read of a file with a corrupt replica", download(t, in, "/c/f.bin"), data)
	checkSame(t, "fs cat of a file with a corrupt replica", []byte(mustShoal(t, in, "fs", "cat", "/c/f.bin")), data)

	// The corrupt replica is dropped, reported and repaired. With three
	// nodes in three zones the only place for the new copy is the node
	// that had the bad one; its file must then hold the right bytes.
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		s, err := in.Client.FSStatus(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return s.RepairedBytes >= c.Length && s.UnderReplicated == 0, fmt.Sprintf("fs status %+v, want the chunk repaired", s)
	})
	fi = waitReplicated(t, in, "/c/f.bin", 3, nil, 30*time.Second)
	checkReplicaFiles(t, in, fi, data)
	if p := chunkPath(in, bad, c.ID); p != "" {
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, "chunk file on the node that had the corrupt replica", got, data[c.Offset:c.Offset+c.Length])
	}
	checkSame(t, "read after repair", download(t, in, "/c/f.bin"), data)
}

// TestDFSServerRestart kills -9 the only server; while it is down a data
// node dies too. Restarted, the server still has every file, serves them
// from the surviving replicas and repairs the dead node's.
func TestDFSServerRestart(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4, Zones: 3, HeartbeatTTL: 2 * time.Second})
	files := map[string][]byte{
		"/r/one.bin":   randomBytes(30, 600<<10),
		"/r/two.bin":   randomBytes(31, 100),
		"/r/d/three":   randomBytes(32, 256<<10),
		"/r/d/e/empty": {},
	}
	for p, data := range files {
		putData(t, in, p, data, "--chunk-size", "256KiB")
	}
	victim := statJSON(t, in, "/r/one.bin").Chunks[0].Replicas[0].Node

	in.Servers[0].Kill9()
	in.Agent(victim).Kill9()
	in.Servers[0].Restart(t)
	in.WaitForLeader()

	var list []*api.FileInfo
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/r", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"d", "one.bin", "two.bin"}) {
		t.Errorf("ls /r after the restart = %v, want [d one.bin two.bin]", got)
	}
	for p, data := range files {
		checkSame(t, p+" after the restart", download(t, in, p), data)
	}
	for p, data := range files {
		fi := waitReplicated(t, in, p, 3, []string{victim}, 30*time.Second)
		checkChunks(t, fi, data)
		checkReplicaFiles(t, in, fi, data)
	}
	n, err := in.Client.Node(context.Background(), victim)
	if err != nil || n.State != api.NodeDown {
		t.Errorf("dead node after the restart: %+v %v, want down", n, err)
	}
	if s, err := in.Client.FSStatus(context.Background()); err != nil || s.RepairedBytes == 0 || s.UnderReplicated != 0 || s.Files != len(files) {
		t.Errorf("fs status after repair: %+v %v; want %d files, repairs done, nothing under-replicated", s, err, len(files))
	}
	// New writes work against the restarted server.
	fresh := randomBytes(33, 300<<10)
	putData(t, in, "/r/after.bin", fresh, "--chunk-size", "256KiB")
	checkSame(t, "a file written after the restart", download(t, in, "/r/after.bin"), fresh)

	// The dead node comes back with replicas that were replaced meanwhile,
	// and its zone with it: its inventory report gets the stale copies
	// deleted, and the leader moves one replica of each chunk back into
	// the zone and trims the surplus. In the end every chunk has 3
	// replicas in 3 zones, and the node holds on disk exactly the chunks
	// the namespace records there.
	in.Agent(victim).Restart(t)
	in.WaitForReady(4)
	paths := append(slices.Sorted(maps.Keys(files)), "/r/after.bin")
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		want := map[string]bool{}
		for _, p := range paths {
			f, err := in.Client.FSStat(context.Background(), p)
			if err != nil {
				return false, err.Error()
			}
			for _, c := range f.Chunks {
				if problem := replicaProblem(c, 3, nil); problem != "" {
					return false, p + ": " + problem
				}
				zones := map[string]bool{}
				for _, r := range c.Replicas {
					zones[r.Zone] = true
					if r.Node == victim {
						want[c.ID] = true
					}
				}
				if len(zones) != 3 {
					return false, fmt.Sprintf("%s: chunk %s spans %d zones", p, c.ID, len(zones))
				}
			}
		}
		got := map[string]bool{}
		m, _ := filepath.Glob(filepath.Join(in.Dir, victim, "chunks", "[0-9a-f][0-9a-f]", "*.meta"))
		for _, f := range m {
			got[strings.TrimSuffix(filepath.Base(f), ".meta")] = true
		}
		return maps.Equal(got, want), fmt.Sprintf("%s holds %d chunks on disk, the namespace records %d there", victim, len(got), len(want))
	})
	for p, data := range files {
		fi := statJSON(t, in, p)
		checkSame(t, p+" after the dead node returned", download(t, in, p), data)
		checkReplicaFiles(t, in, fi, data)
	}
}

// TestDFSSnapshots changes a directory after a snapshot of it: the
// snapshot keeps showing the old tree, is listed, refuses writes, and once
// deleted is gone along with the data only it kept.
func TestDFSSnapshots(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	old := map[string]string{"keep": "kept as is\n", "over": "old version\n", "gone": "deleted later\n", "moved": "renamed later\n"}
	for name, content := range old {
		putData(t, in, "/s/d/"+name, []byte(content))
	}
	out := mustShoal(t, in, "fs", "snapshot", "create", "/s/d", "s1")
	if !strings.Contains(out, "/s/d/.snapshot/s1") {
		t.Errorf("snapshot create printed %q, want where to read it", out)
	}
	if _, errOut, code := in.Shoal("fs", "snapshot", "create", "/s/d", "s1"); code == 0 || !strings.Contains(errOut, "already has a snapshot") {
		t.Errorf("second snapshot of the same name: exit %d stderr %q, want a refusal", code, errOut)
	}

	putData(t, in, "/s/d/over", []byte("new version\n"), "--overwrite")
	putData(t, in, "/s/d/added", []byte("added later\n"))
	mustShoal(t, in, "fs", "rm", "/s/d/gone")
	mustShoal(t, in, "fs", "mv", "/s/d/moved", "/s/d/moved2")

	for name, content := range old {
		if got := mustShoal(t, in, "fs", "cat", "/s/d/.snapshot/s1/"+name); got != content {
			t.Errorf("cat .snapshot/s1/%s = %q, want %q", name, got, content)
		}
	}
	for _, name := range []string{"added", "moved2"} {
		if _, _, code := in.Shoal("fs", "cat", "/s/d/.snapshot/s1/"+name); code == 0 {
			t.Errorf("the snapshot shows %s, created after it", name)
		}
	}
	live := map[string]string{"keep": old["keep"], "over": "new version\n", "moved2": old["moved"], "added": "added later\n"}
	for name, content := range live {
		if got := mustShoal(t, in, "fs", "cat", "/s/d/"+name); got != content {
			t.Errorf("cat /s/d/%s = %q, want %q", name, got, content)
		}
	}
	var list []*api.FileInfo
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/s/d/.snapshot/s1", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"gone", "keep", "moved", "over"}) {
		t.Errorf("ls of the snapshot = %v, want [gone keep moved over]", got)
	}
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "ls", "/s/d", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"added", "keep", "moved2", "over"}) {
		t.Errorf("ls /s/d = %v, want [added keep moved2 over]", got)
	}
	var snaps []api.SnapshotInfo
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "snapshot", "list", "-o", "json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].Dir != "/s/d" || snaps[0].Name != "s1" || snaps[0].Index == 0 {
		t.Errorf("snapshot list = %+v, want s1 of /s/d", snaps)
	}
	// A snapshot is read-only, and its directory cannot be removed under it.
	src := writeFile(t, "x", "x")
	for _, args := range [][]string{
		{"fs", "put", "--overwrite", src, "/s/d/.snapshot/s1/keep"},
		{"fs", "rm", "/s/d/.snapshot/s1/keep"},
		{"fs", "mv", "/s/d/keep", "/s/d/.snapshot/s1/x"},
		{"fs", "rm", "-r", "/s/d"},
	} {
		if _, _, code := in.Shoal(args...); code == 0 {
			t.Errorf("shoal %v succeeded on a snapshot", args)
		}
	}
	if got := mustShoal(t, in, "fs", "cat", "/s/d/.snapshot/s1/keep"); got != old["keep"] {
		t.Errorf("snapshot file changed to %q", got)
	}
	st, err := in.Client.FSStatus(context.Background())
	// Chunks: keep, old over, gone, moved (renamed, not copied), new over, added.
	if err != nil || st.SnapshotCount != 1 || st.Chunks != 6 || st.Files != 4 {
		t.Errorf("fs status with the snapshot: %+v %v, want 1 snapshot, 4 live files and 6 chunks", st, err)
	}

	mustShoal(t, in, "fs", "snapshot", "delete", "/s/d", "s1")
	if _, errOut, code := in.Shoal("fs", "cat", "/s/d/.snapshot/s1/keep"); code == 0 || !strings.Contains(errOut, "no snapshot") {
		t.Errorf("cat in a deleted snapshot: exit %d stderr %q, want not found", code, errOut)
	}
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "snapshot", "list", "-o", "json")), &snaps); err != nil || len(snaps) != 0 {
		t.Errorf("snapshot list after delete = %+v %v, want none", snaps, err)
	}
	// What only the snapshot kept (the old "over" and "gone") is freed.
	st, err = in.Client.FSStatus(context.Background())
	if err != nil || st.SnapshotCount != 0 || st.Chunks != 4 || st.Files != 4 {
		t.Errorf("fs status after deleting the snapshot: %+v %v, want 4 files of 4 chunks, no snapshot", st, err)
	}
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		n := storedChunks(in)
		return n == 4*3, fmt.Sprintf("%d chunk replicas on disk, want 12", n)
	})
	mustShoal(t, in, "fs", "rm", "-r", "/s/d")
}

// TestDFSJobInputsOutputs runs a job with one task per input file next to
// the input's only replica, and checks its published outputs; then a task
// that fails after writing output and succeeds on retry publishes only
// its successful attempt's files.
func TestDFSJobInputsOutputs(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c", "--nodes", "3", "--zones", "3")
	mustShoal(t, in, "fs", "mkdir", "-p", "in", "--cluster", "c")
	inputs := map[string]string{
		"a": "one\n",
		"b": "one two\n",
		"c": "one two three\n",
		"d": strings.Repeat("word ", 1000),
		"e": "",
	}
	for name, content := range inputs {
		// One replica each, so that where a task runs says whether it was
		// placed next to its input.
		putData(t, in, "in/"+name+".txt", []byte(content), "--cluster", "c", "--replication", "1")
	}
	putData(t, in, "in/skip.dat", []byte("not matched by the glob\n"), "--cluster", "c")

	id := submit(t, in, `
name: wc
cluster: c
groups:
  - name: map
    inputs: [in/*.txt]
    split_inputs: true
    outputs: out
    command: ["/bin/sh", "-c", "b=$(basename \"$SHOAL_INPUTS\" .txt); wc -w < \"$SHOAL_INPUTS\" | tr -d ' ' > \"$SHOAL_OUTPUT_DIR/$b.count\""]
    resources: {cpu: 100, memory: 64}
`)
	job := waitJobState(t, in, id, api.JobComplete, 40*time.Second)
	if len(job.Tasks) != len(inputs) {
		t.Fatalf("job has %d tasks, want one per .txt input (%d)", len(job.Tasks), len(inputs))
	}
	seen := map[string]bool{}
	for _, tk := range job.Tasks {
		if tk.State != api.TaskComplete || len(tk.Inputs) != 1 {
			t.Errorf("task %d: %s with inputs %v, want complete with one input", tk.Index, tk.State, tk.Inputs)
			continue
		}
		seen[tk.Inputs[0]] = true
		fi, err := in.Client.FSStat(context.Background(), tk.Inputs[0])
		if err != nil {
			t.Fatal(err)
		}
		var holders []string
		for _, c := range fi.Chunks {
			for _, r := range c.Replicas {
				holders = append(holders, r.Node)
			}
		}
		if len(fi.Chunks) > 0 && !slices.Contains(holders, tk.Node) {
			t.Errorf("task %d ran on %s, but its input %s is on %v", tk.Index, tk.Node, tk.Inputs[0], holders)
		}
	}
	if len(seen) != len(inputs) {
		t.Errorf("tasks read %v, want each .txt input once", seen)
	}
	list, err := in.Client.FSList(context.Background(), "/clusters/c/out")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name := range inputs {
		want = append(want, name+".count")
	}
	sort.Strings(want)
	checkOutputs(t, in, "/clusters/c/out", list, want)
	for name, content := range inputs {
		got := mustShoal(t, in, "fs", "cat", "out/"+name+".count", "--cluster", "c")
		if w := fmt.Sprintf("%d\n", len(strings.Fields(content))); got != w {
			t.Errorf("out/%s.count = %q, want %q", name, got, w)
		}
	}

	// A task that writes output and then fails; its retry succeeds.
	id = submit(t, in, `
name: retry
cluster: c
groups:
  - name: once
    count: 1
    max_attempts: 3
    outputs: out2
    command: ["/bin/sh", "-c", "echo attempt $SHOAL_ATTEMPT > \"$SHOAL_OUTPUT_DIR/result.txt\"; echo partial > \"$SHOAL_OUTPUT_DIR/attempt-$SHOAL_ATTEMPT.txt\"; test $SHOAL_ATTEMPT -ge 2"]
    resources: {cpu: 100, memory: 64}
`)
	job = waitJobState(t, in, id, api.JobComplete, 40*time.Second)
	if tk := job.Tasks[0]; tk.Attempt != 2 {
		t.Errorf("task completed on attempt %d, want 2", tk.Attempt)
	}
	list, err = in.Client.FSList(context.Background(), "/clusters/c/out2")
	if err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, in, "/clusters/c/out2", list, []string{"attempt-2.txt", "result.txt"})
	if got := mustShoal(t, in, "fs", "cat", "/clusters/c/out2/result.txt"); got != "attempt 2\n" {
		t.Errorf("result.txt = %q, want the second attempt's", got)
	}
}

// checkOutputs checks that an output directory lists exactly want, apart
// from an empty staging directory.
func checkOutputs(t *testing.T, in *testutil.Installation, dir string, list []*api.FileInfo, want []string) {
	t.Helper()
	var got []string
	for _, f := range list {
		if f.Name == api.StagingDirName {
			staged, err := in.Client.FSList(context.Background(), f.Path)
			if err != nil || len(staged) != 0 || !f.Dir {
				t.Errorf("%s holds %v (%v); want an empty directory", f.Path, names(staged), err)
			}
			continue
		}
		if f.Dir || f.State != api.FileClosed {
			t.Errorf("output %s: dir %v state %q, want a closed file", f.Path, f.Dir, f.State)
		}
		got = append(got, f.Name)
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}
