package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// testChunkSize is the chunk size the DFS tests write with, so that files
// of a few hundred KiB already span several chunks.
const testChunkSize = 256 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// randomBytes returns n bytes that are the same for the same seed.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// putData uploads data to the DFS path remote with `shoal fs put`.
func putData(t *testing.T, in *testutil.Installation, remote string, data []byte, flags ...string) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"fs", "put"}, flags...)
	mustShoal(t, in, append(args, local, remote)...)
}

// statJSON describes path through `shoal fs stat -o json`.
func statJSON(t *testing.T, in *testutil.Installation, path string) *api.FileInfo {
	t.Helper()
	var fi api.FileInfo
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "stat", path, "-o", "json")), &fi); err != nil {
		t.Fatalf("fs stat %s -o json: %v", path, err)
	}
	return &fi
}

// download reads a DFS file through the API and checks that it arrived
// whole.
func download(t *testing.T, in *testutil.Installation, path string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	body, size, err := in.Client.FSDownload(ctx, path)
	if err != nil {
		t.Fatalf("downloading %s: %v", path, err)
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("downloading %s: read %d bytes, then %v", path, len(b), err)
	}
	if int64(len(b)) != size {
		t.Fatalf("downloading %s: got %d bytes, Content-Length said %d", path, len(b), size)
	}
	return b
}

// checkSame reports where got first differs from want, without printing
// megabytes.
func checkSame(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Errorf("%s: got %d bytes, want %d; first difference at offset %d", what, len(got), len(want), i)
}

// chunkPath returns where a node's chunk store keeps chunk id, or "" when
// the node has no such file. The store puts chunks in DATA/chunks/XX/ID.
func chunkPath(in *testutil.Installation, node, id string) string {
	m, _ := filepath.Glob(filepath.Join(in.Dir, node, "chunks", "[0-9a-f][0-9a-f]", id))
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

// storedChunks counts the chunk metadata files on every agent's disk.
func storedChunks(in *testutil.Installation) int {
	n := 0
	for _, a := range in.Agents {
		m, _ := filepath.Glob(filepath.Join(in.Dir, a.Name, "chunks", "[0-9a-f][0-9a-f]", "*.meta"))
		n += len(m)
	}
	return n
}

// checkChunks checks that fi describes data: chunks of the file's chunk
// size laid end to end, each with the CRC32C of its bytes.
func checkChunks(t *testing.T, fi *api.FileInfo, data []byte) {
	t.Helper()
	if fi.Size != int64(len(data)) {
		t.Fatalf("%s: size %d, want %d", fi.Path, fi.Size, len(data))
	}
	want := (len(data) + int(fi.ChunkSize) - 1) / int(fi.ChunkSize)
	if len(fi.Chunks) != want {
		t.Fatalf("%s: %d chunks, want %d of %d bytes", fi.Path, len(fi.Chunks), want, fi.ChunkSize)
	}
	var off int64
	for i, c := range fi.Chunks {
		end := min(off+fi.ChunkSize, int64(len(data)))
		if c.Offset != off || c.Length != end-off {
			t.Errorf("%s chunk %d: offset %d length %d, want %d and %d", fi.Path, i, c.Offset, c.Length, off, end-off)
		}
		if crc := crc32.Checksum(data[off:end], castagnoli); c.CRC != crc {
			t.Errorf("%s chunk %d: CRC32C %08x, want %08x", fi.Path, i, c.CRC, crc)
		}
		off = end
	}
}

// replicaProblem returns why chunk c is not held by exactly n replicas in
// state ok on distinct nodes outside avoid, or "".
func replicaProblem(c api.ChunkInfo, n int, avoid []string) string {
	seen := map[string]bool{}
	for _, r := range c.Replicas {
		switch {
		case r.State != api.ReplicaOK:
			return fmt.Sprintf("chunk %s: replica on %s is %q", c.ID, r.Node, r.State)
		case slices.Contains(avoid, r.Node):
			return fmt.Sprintf("chunk %s: still has a replica on %s", c.ID, r.Node)
		case seen[r.Node]:
			return fmt.Sprintf("chunk %s: two replicas on %s", c.ID, r.Node)
		}
		seen[r.Node] = true
	}
	if len(c.Replicas) != n {
		return fmt.Sprintf("chunk %s: %d replicas %v, want %d", c.ID, len(c.Replicas), c.Replicas, n)
	}
	return ""
}

// waitReplicated waits until every chunk of path has exactly n replicas
// in state ok on distinct nodes, none of them in avoid, and returns the
// file as then described.
func waitReplicated(t *testing.T, in *testutil.Installation, path string, n int, avoid []string, timeout time.Duration) *api.FileInfo {
	t.Helper()
	var fi *api.FileInfo
	testutil.WaitFor(t, timeout, func() (bool, string) {
		f, err := in.Client.FSStat(context.Background(), path)
		if err != nil {
			return false, err.Error()
		}
		fi = f
		for _, c := range f.Chunks {
			if p := replicaProblem(c, n, avoid); p != "" {
				return false, path + ": " + p
			}
		}
		return true, ""
	})
	return fi
}

// checkReplicaFiles checks that each replica of each chunk of fi is a file
// on its node's disk holding exactly the chunk's bytes of data.
func checkReplicaFiles(t *testing.T, in *testutil.Installation, fi *api.FileInfo, data []byte) {
	t.Helper()
	for _, c := range fi.Chunks {
		want := data[c.Offset : c.Offset+c.Length]
		for _, r := range c.Replicas {
			p := chunkPath(in, r.Node, c.ID)
			if p == "" {
				t.Errorf("chunk %s: no file on %s, which is listed as a replica", c.ID, r.Node)
				continue
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("chunk %s on %s: %v", c.ID, r.Node, err)
				continue
			}
			checkSame(t, fmt.Sprintf("chunk %s on %s", c.ID, r.Node), got, want)
		}
	}
}

// fsTree lists every entry of the namespace, path -> description.
func fsTree(t *testing.T, in *testutil.Installation) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(dir string)
	walk = func(dir string) {
		list, err := in.Client.FSList(context.Background(), dir)
		if err != nil {
			t.Fatalf("listing %s: %v", dir, err)
		}
		for _, e := range list {
			if e.Dir {
				out[e.Path] = "dir"
				walk(e.Path)
				continue
			}
			out[e.Path] = fmt.Sprintf("file %d bytes %s id %d", e.Size, e.State, e.FileID)
		}
	}
	walk("/")
	return out
}

// fsCounts is the part of FSStatus that says what the namespace holds.
func fsCounts(t *testing.T, in *testutil.Installation) string {
	t.Helper()
	s, err := in.Client.FSStatus(context.Background())
	if err != nil {
		t.Fatalf("fs status: %v", err)
	}
	return fmt.Sprintf("%d files, %d dirs, %d chunks, %d logical bytes, %d under-replicated",
		s.Files, s.Dirs, s.Chunks, s.LogicalBytes, s.UnderReplicated)
}

func names(list []*api.FileInfo) []string {
	var out []string
	for _, f := range list {
		out = append(out, f.Name)
	}
	sort.Strings(out)
	return out
}

// startStalledPut starts `shoal fs put [flags] - PATH` with 64 KiB chunks
// (the last argument is PATH), writes data to its stdin and leaves stdin
// open, so that the upload stalls mid-file until the test ends it. The
// process is killed when the test ends.
func startStalledPut(t *testing.T, in *testutil.Installation, data []byte, args ...string) *exec.Cmd {
	t.Helper()
	path := args[len(args)-1]
	argv := append([]string{"fs", "put", "--chunk-size", "64KiB"}, args[:len(args)-1]...)
	cmd := exec.Command(in.Bin, append(argv, "-", path)...)
	cmd.Env = append(append(os.Environ(), in.CLIEnv()...), "SHOAL_ADDR="+in.Addrs(), "SHOAL_TOKEN="+in.Opts.Token)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	if _, err := stdin.Write(data); err != nil {
		t.Fatal(err)
	}
	return cmd
}
