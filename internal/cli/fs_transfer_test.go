package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/chunkstore"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// writeSteps lists the namespace requests of a one-chunk upload to p.
func writeSteps(p string) []string {
	return []string{"POST /v1/fs/create " + p, "POST /v1/fs/allocate " + p, "POST /v1/fs/commit " + p, "POST /v1/fs/close " + p}
}

func TestFSPut(t *testing.T) {
	t.Setenv("SHOAL_CLUSTER", "")
	content := "id,value\n1,2\n"
	local := writeFile(t, "data.csv", content)
	local2 := writeFile(t, "more.csv", "x")
	empty := writeFile(t, "empty", "")
	big := strings.Repeat("0123456789abcdef", 20000) // 320,000 bytes: five 64 KiB chunks
	localBig := writeFile(t, "big.bin", big)
	const in = "/clusters/c1/in"

	tests := []struct {
		name        string
		setup       func(f *dfsFake)
		args        []string
		wantReq     []string
		wantCreates []api.FileCreate
		wantFiles   map[string]string
		wantStdout  string
		wantErr     string
	}{
		{name: "into an existing directory", setup: func(f *dfsFake) { mkdirFake(f, in) }, args: []string{local, "in"},
			wantReq:     append([]string{"GET /v1/fs/stat " + in}, writeSteps(in+"/data.csv")...),
			wantCreates: []api.FileCreate{{Path: in + "/data.csv"}},
			wantFiles:   map[string]string{in + "/data.csv": content}},
		{name: "as a new file, with options", setup: func(f *dfsFake) { mkdirFake(f, in) },
			args:        []string{"-f", "--replication", "2", "--chunk-size", "64MiB", local, "in/renamed.csv"},
			wantReq:     append([]string{"GET /v1/fs/stat " + in + "/renamed.csv"}, writeSteps(in+"/renamed.csv")...),
			wantCreates: []api.FileCreate{{Path: in + "/renamed.csv", Replication: 2, ChunkSize: 64 << 20, Overwrite: true}},
			wantFiles:   map[string]string{in + "/renamed.csv": content}},
		{name: "replacing a file", setup: func(f *dfsFake) { mkdirFake(f, in); f.addFile(in+"/old.csv", []byte("old"), 1<<20) },
			args:        []string{"-f", local, "in/old.csv"},
			wantReq:     append([]string{"GET /v1/fs/stat " + in + "/old.csv"}, writeSteps(in+"/old.csv")...),
			wantCreates: []api.FileCreate{{Path: in + "/old.csv", Overwrite: true}},
			wantFiles:   map[string]string{in + "/old.csv": content}},
		{name: "an empty file", setup: func(f *dfsFake) { mkdirFake(f, in) }, args: []string{empty, "in"},
			wantReq:     []string{"GET /v1/fs/stat " + in, "POST /v1/fs/create " + in + "/empty", "POST /v1/fs/close " + in + "/empty"},
			wantCreates: []api.FileCreate{{Path: in + "/empty"}},
			wantFiles:   map[string]string{in + "/empty": ""}},
		{name: "several chunks", setup: func(f *dfsFake) { mkdirFake(f, in) }, args: []string{"--chunk-size", "64KiB", localBig, "in"},
			wantReq: []string{"GET /v1/fs/stat " + in, "POST /v1/fs/create " + in + "/big.bin",
				"5 allocates and 5 commits of " + in + "/big.bin",
				"POST /v1/fs/close " + in + "/big.bin"},
			wantCreates: []api.FileCreate{{Path: in + "/big.bin", ChunkSize: 64 << 10}},
			wantFiles:   map[string]string{in + "/big.bin": big}},
		{name: "several files, verbose", setup: func(f *dfsFake) { mkdirFake(f, in) }, args: []string{"-v", local, local2, "in"},
			wantReq:     append(append([]string{"GET /v1/fs/stat " + in}, writeSteps(in+"/data.csv")...), writeSteps(in+"/more.csv")...),
			wantCreates: []api.FileCreate{{Path: in + "/data.csv"}, {Path: in + "/more.csv"}},
			wantFiles:   map[string]string{in + "/data.csv": content, in + "/more.csv": "x"},
			wantStdout:  local + " -> " + in + "/data.csv\n" + local2 + " -> " + in + "/more.csv\n"},
		{name: "several files into a missing directory", args: []string{local, local2, "in"},
			wantReq: []string{"GET /v1/fs/stat " + in},
			wantErr: "Error: " + in + ": no such directory (create it with 'shoal fs mkdir -p')\n"},
		{name: "trailing slash on a file", setup: func(f *dfsFake) { mkdirFake(f, "/clusters/c1"); f.addFile(in, []byte("f"), 1<<20) },
			args:    []string{local, "in/"},
			wantReq: []string{"GET /v1/fs/stat " + in},
			wantErr: "Error: " + in + ": not a directory\n"},
		{name: "server refuses the upload", setup: func(f *dfsFake) { mkdirFake(f, in); f.addFile(in+"/x", []byte("keep"), 1<<20) },
			args:        []string{local, "in/x"},
			wantReq:     []string{"GET /v1/fs/stat " + in + "/x", "POST /v1/fs/create " + in + "/x"},
			wantCreates: []api.FileCreate{{Path: in + "/x"}},
			wantFiles:   map[string]string{in + "/x": "keep"},
			wantErr:     "Error: " + in + "/x: file exists\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newDFSFake(t)
			if tt.setup != nil {
				tt.setup(f)
			}
			code, stdout, stderr := runCLI(t, f.args(append([]string{"put", "-c", "c1"}, tt.args...)...)...)
			if tt.wantErr == "" && (code != 0 || stderr != "") {
				t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
			}
			if tt.wantErr != "" && (code != 1 || stderr != tt.wantErr) {
				t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, tt.wantErr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("got stdout %q, want %q", stdout, tt.wantStdout)
			}
			if diff := cmp.Diff(tt.wantReq, abbreviate(f.requests())); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCreates, f.creates); diff != "" {
				t.Errorf("creates (-want +got):\n%s", diff)
			}
			for p, want := range tt.wantFiles {
				if got, ok := f.content(p); !ok || got != want {
					t.Errorf("%s holds %d bytes (exists %v), want %d", p, len(got), ok, len(want))
				}
			}
			if len(f.open) != 0 {
				t.Errorf("%d files left open", len(f.open))
			}
		})
	}
}

// abbreviate replaces the allocate and commit requests of an upload of
// more than one chunk by one line that counts them: how they interleave
// depends on timing (package dfs tests the pipeline).
func abbreviate(reqs []string) []string {
	allocs, commits := map[string]int{}, map[string]int{}
	for _, r := range reqs {
		if p, ok := strings.CutPrefix(r, "POST /v1/fs/allocate "); ok {
			allocs[p]++
		}
		if p, ok := strings.CutPrefix(r, "POST /v1/fs/commit "); ok {
			commits[p]++
		}
	}
	var out []string
	counted := map[string]bool{}
	for _, r := range reqs {
		p, alloc := strings.CutPrefix(r, "POST /v1/fs/allocate ")
		p, commit := strings.CutPrefix(p, "POST /v1/fs/commit ")
		switch {
		case !alloc && !commit || allocs[p] <= 1:
			out = append(out, r)
		case !counted[p]:
			out = append(out, fmt.Sprintf("%d allocates and %d commits of %s", allocs[p], commits[p], p))
			counted[p] = true
		}
	}
	return out
}

// mkdirFake creates dir and its parents in the fake.
func mkdirFake(f *dfsFake, dir string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := dir; p != "/"; p = filepath.Dir(p) {
		f.entries[p] = &api.FileInfo{Path: p, Name: filepath.Base(p), Dir: true}
	}
}

func TestFSPutRecursive(t *testing.T) {
	root := filepath.Join(t.TempDir(), "run")
	for name, content := range map[string]string{"a.txt": "aaa", "sub/b.txt": "bb"} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(root, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := newDFSFake(t)
	mkdirFake(f, "/out")
	code, stdout, stderr := runCLI(t, f.args("put", "-r", root, "/out")...)
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("got exit status %d, stdout %q, stderr %q; want 0 and no output", code, stdout, stderr)
	}
	want := []string{"GET /v1/fs/stat /out", "POST /v1/fs/mkdir /out/run"}
	want = append(want, writeSteps("/out/run/a.txt")...)
	want = append(want, "POST /v1/fs/mkdir /out/run/empty", "POST /v1/fs/mkdir /out/run/sub")
	want = append(want, writeSteps("/out/run/sub/b.txt")...)
	if diff := cmp.Diff(want, f.requests()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	for p, want := range map[string]string{"/out/run/a.txt": "aaa", "/out/run/sub/b.txt": "bb"} {
		if got, ok := f.content(p); !ok || got != want {
			t.Errorf("%s = %q (exists %v), want %q", p, got, ok, want)
		}
	}

	t.Run("directory without -r", func(t *testing.T) {
		before := len(f.requests())
		code, _, stderr := runCLI(t, f.args("put", root, "/out")...)
		if want := "Error: " + root + " is a directory (use -r to upload it and what it holds)\n"; code != 1 || stderr != want {
			t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, want)
		}
		if got := f.requests()[before:]; len(got) != 0 {
			t.Errorf("got requests %v, want none", got)
		}
	})
}

func TestFSPutStdin(t *testing.T) {
	f := newDFSFake(t)
	mkdirFake(f, "/x")
	var stdout, stderr bytes.Buffer
	root := newRoot(&stdout, &stderr)
	// A reader of unknown length, as a pipe is.
	root.SetIn(io.MultiReader(strings.NewReader("from stdin")))
	root.SetArgs(f.args("put", "-", "/x/log.txt"))
	if err := root.Execute(); err != nil {
		t.Fatalf("put -: %v", err)
	}
	if got, ok := f.content("/x/log.txt"); got != "from stdin" {
		t.Errorf("/x/log.txt = %q (exists %v), want %q", got, ok, "from stdin")
	}
}

// TestFSPutInterrupted cancels a put -f of standard input (as Ctrl-C
// does) after its first chunk was committed: the new file is deleted and
// the one it was to replace keeps its contents.
func TestFSPutInterrupted(t *testing.T) {
	f := newDFSFake(t)
	mkdirFake(f, "/x")
	f.addFile("/x/f", []byte("original"), 1<<20)
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	root := newRoot(&stdout, &stderr)
	root.SetIn(pr)
	root.SetArgs(f.args("put", "-f", "--chunk-size", "64KiB", "-", "/x/f"))
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	go pw.Write(bytes.Repeat([]byte("y"), 100<<10)) // one chunk and a half
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		reqs := f.requests()
		return strings.Contains(strings.Join(reqs, "\n"), "POST /v1/fs/commit /x/f"), strings.Join(reqs, "; ")
	})
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an interrupted put succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("put did not return within 10s of being interrupted")
	}
	if f.aborts != 1 || len(f.open) != 0 {
		t.Errorf("%d aborts, %d files left open; want the new file aborted", f.aborts, len(f.open))
	}
	if got, _ := f.content("/x/f"); got != "original" {
		t.Errorf("/x/f = %q, want the original kept", got)
	}
}

// TestFSGetAtomic downloads a two-chunk file over a copy that must survive
// any failure untouched, with no temporary file left behind.
func TestFSGetAtomic(t *testing.T) {
	content := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz", 3000) // 108,000 bytes
	const chunk = 64 << 10
	second := content[chunk:]
	tests := []struct {
		name    string
		setup   func(f *dfsFake)
		wantErr string // substring of stderr; empty for success
	}{
		{name: "complete"},
		{name: "data node cuts the stream", setup: func(f *dfsFake) {
			f.nodeFault = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/c2") {
					return false
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(second)))
				io.WriteString(w, second[:100])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}
		}, wantErr: "no replica of chunk c2 could be read"},
		{name: "data node lacks a chunk", setup: func(f *dfsFake) {
			if err := f.store.Delete("c2"); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "no replica of chunk c2 could be read"},
		{name: "bytes changed on the wire", setup: func(f *dfsFake) {
			f.nodeFault = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/c2") {
					return false
				}
				sc, _ := f.store.Stat("c2")
				w.Header().Set(chunkstore.LengthHeader, strconv.FormatInt(sc.Length, 10))
				w.Header().Set(chunkstore.CRCHeader, strconv.FormatUint(uint64(sc.CRC), 10))
				io.WriteString(w, "X"+second[1:])
				return true
			}
		}, wantErr: "chunk c2 failed its end-to-end checksum"},
		{name: "not found", setup: func(f *dfsFake) {
			f.mu.Lock()
			delete(f.entries, "/clusters/c1/data.bin")
			f.mu.Unlock()
		}, wantErr: "/clusters/c1/data.bin: no such file or directory"},
		{name: "still being written", setup: func(f *dfsFake) {
			f.mu.Lock()
			f.entries["/clusters/c1/data.bin"].State = api.FileOpen
			f.mu.Unlock()
		}, wantErr: "file is still being written: /clusters/c1/data.bin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newDFSFake(t)
			mkdirFake(f, "/clusters/c1")
			f.addFile("/clusters/c1/data.bin", []byte(content), chunk)
			if tt.setup != nil {
				tt.setup(f)
			}
			dir := t.TempDir()
			// An older copy must survive a failed download untouched.
			target := filepath.Join(dir, "data.bin")
			if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runCLI(t, f.args("get", "-c", "c1", "data.bin", dir)...)
			if stdout != "" {
				t.Errorf("got stdout %q, want nothing", stdout)
			}
			want := content
			if tt.wantErr == "" && (code != 0 || stderr != "") {
				t.Errorf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
			}
			if tt.wantErr != "" {
				want = "old"
				if code != 1 || !strings.HasPrefix(stderr, "Error: ") || !strings.Contains(stderr, tt.wantErr) {
					t.Errorf("got exit status %d and stderr %q, want 1 and an error containing %q", code, stderr, tt.wantErr)
				}
			}
			if got := readDir(t, dir); !cmp.Equal(got, []string{"data.bin"}) {
				t.Errorf("got files %q in the target directory, want only data.bin (no temporary file left)", got)
			}
			b, err := os.ReadFile(target)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != want {
				t.Errorf("got %d bytes in %s, want %d", len(b), target, len(want))
			}
		})
	}
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestFSGetRecursive(t *testing.T) {
	f := newDFSFake(t)
	mkdirFake(f, "/d/sub")
	mkdirFake(f, "/d/.snapshot/s1")
	mkdirFake(f, "/d/.shoal-staging")
	f.addFile("/d/a", []byte("aaa"), 1<<20)
	f.addFile("/d/sub/b", []byte("bb"), 1<<20)
	f.addFile("/d/.snapshot/s1/a", []byte("a"), 1<<20)
	out := filepath.Join(t.TempDir(), "copy")
	code, stdout, stderr := runCLI(t, f.args("get", "-r", "-v", "/d", out)...)
	if code != 0 || stderr != "" {
		t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
	}
	wantStdout := "/d/a -> " + filepath.Join(out, "a") + "\n/d/sub/b -> " + filepath.Join(out, "sub", "b") + "\n"
	if stdout != wantStdout {
		t.Errorf("got stdout %q, want %q", stdout, wantStdout)
	}
	for rel, want := range map[string]string{"a": "aaa", "sub/b": "bb"} {
		b, err := os.ReadFile(filepath.Join(out, rel))
		if err != nil || string(b) != want {
			t.Errorf("%s: got %q (%v), want %q", rel, b, err, want)
		}
	}
	for _, r := range f.requests() {
		if strings.Contains(r, api.SnapshotDirName) || strings.Contains(r, api.StagingDirName) {
			t.Errorf("got request %q, want snapshots and staging directories skipped", r)
		}
	}
	if got := readDir(t, out); !cmp.Equal(got, []string{"a", "sub"}) {
		t.Errorf("got %q in %s, want a and sub", got, out)
	}
}

func TestFSCat(t *testing.T) {
	f := newDFSFake(t)
	f.addFile("/a", []byte("one\n"), 1<<20)
	f.addFile("/b", []byte("two\n"), 1<<20)
	code, stdout, stderr := runCLI(t, f.args("cat", "/a", "/b")...)
	if code != 0 || stderr != "" || stdout != "one\ntwo\n" {
		t.Errorf("got exit status %d, stdout %q, stderr %q; want 0, %q and nothing", code, stdout, stderr, "one\ntwo\n")
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "65536", want: 65536},
		{in: "100B", want: 100},
		{in: "512KiB", want: 512 << 10},
		{in: "64MiB", want: 64 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "1gib", want: 1 << 30},
		{in: "64M", want: 64 << 20},
		{in: "64m", want: 64 << 20},
		{in: "64Mi", want: 64 << 20},
		{in: "64 MiB", want: 64 << 20},
		{in: "2TiB", want: 2 << 40},
		{in: "", wantErr: "is not a size"},
		{in: "MiB", wantErr: "is not a size"},
		{in: "-1", wantErr: "is not a size"},
		{in: "64MB", wantErr: "MB is ambiguous; write MiB"},
		{in: "64kb", wantErr: "kb is ambiguous; write KiB"},
		{in: "1.5GiB", wantErr: `unknown unit ".5GiB"`},
		{in: "64XiB", wantErr: "unknown unit"},
		{in: "8388608TiB", wantErr: "too large"},
		{in: "99999999999999999999", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("parseSize(%q) = %d, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestChunkSizeFlagLimits(t *testing.T) {
	for in, ok := range map[string]bool{"64KiB": true, "1GiB": true, "65535": false, "2GiB": false, "0": false} {
		var f chunkSizeFlag
		if err := f.Set(in); (err == nil) != ok {
			t.Errorf("Set(%q) = %v, want ok %v", in, err, ok)
		}
	}
}

func TestFSGetIntoMissingDirectory(t *testing.T) {
	f := newDFSFake(t)
	f.addFile("/f", []byte("x"), 1<<20)
	target := filepath.Join(t.TempDir(), "missing", "f")
	code, _, stderr := runCLI(t, f.args("get", "/f", target)...)
	if want := "Error: " + target + ": no such file or directory\n"; code != 1 || stderr != want {
		t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, want)
	}
}
