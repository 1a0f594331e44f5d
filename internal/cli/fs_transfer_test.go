package cli

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestFSPut(t *testing.T) {
	t.Setenv("SHOAL_CLUSTER", "")
	dirInfo := fsJSON(&api.FileInfo{Path: "/clusters/c1/in", Name: "in", Dir: true})
	uploaded := fsJSON(&api.FileInfo{State: api.FileClosed})
	content := "id,value\n1,2\n"
	local := writeFile(t, "data.csv", content)
	local2 := writeFile(t, "more.csv", "x")

	tests := []struct {
		name        string
		stat        http.HandlerFunc
		args        []string
		wantReq     []string
		wantUploads []fsUpload
		wantStdout  string
		wantErr     string
	}{
		{name: "into an existing directory", stat: dirInfo, args: []string{local, "in"},
			wantReq:     []string{"GET /v1/fs/stat?path=/clusters/c1/in", "PUT /v1/fs/data?path=/clusters/c1/in/data.csv"},
			wantUploads: []fsUpload{{"/clusters/c1/in/data.csv", int64(len(content)), content}}},
		{name: "as a new file, with options", args: []string{"-f", "--replication", "2", "--chunk-size", "64MiB", local, "in/renamed.csv"},
			wantReq: []string{"GET /v1/fs/stat?path=/clusters/c1/in/renamed.csv",
				"PUT /v1/fs/data?chunk_size=67108864&overwrite=true&path=/clusters/c1/in/renamed.csv&replication=2"},
			wantUploads: []fsUpload{{"/clusters/c1/in/renamed.csv", int64(len(content)), content}}},
		{name: "several files, verbose", stat: dirInfo, args: []string{"-v", local, local2, "in"},
			wantReq: []string{"GET /v1/fs/stat?path=/clusters/c1/in",
				"PUT /v1/fs/data?path=/clusters/c1/in/data.csv", "PUT /v1/fs/data?path=/clusters/c1/in/more.csv"},
			wantUploads: []fsUpload{{"/clusters/c1/in/data.csv", int64(len(content)), content}, {"/clusters/c1/in/more.csv", 1, "x"}},
			wantStdout:  local + " -> /clusters/c1/in/data.csv\n" + local2 + " -> /clusters/c1/in/more.csv\n"},
		{name: "several files into a missing directory", args: []string{local, local2, "in"},
			wantReq: []string{"GET /v1/fs/stat?path=/clusters/c1/in"},
			wantErr: "Error: /clusters/c1/in: no such directory (create it with 'shoal fs mkdir -p')\n"},
		{name: "trailing slash on a file", stat: fsJSON(&api.FileInfo{Path: "/clusters/c1/in"}), args: []string{local, "in/"},
			wantReq: []string{"GET /v1/fs/stat?path=/clusters/c1/in"},
			wantErr: "Error: /clusters/c1/in: not a directory\n"},
		{name: "server refuses the upload",
			args:        []string{local, "in/x"},
			wantReq:     []string{"GET /v1/fs/stat?path=/clusters/c1/in/x", "PUT /v1/fs/data?path=/clusters/c1/in/x"},
			wantUploads: []fsUpload{{"/clusters/c1/in/x", int64(len(content)), content}},
			wantErr:     "Error: /clusters/c1/in/x: file exists\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stat := tt.stat
			if stat == nil {
				stat = fsError(404, api.CodeNotFound, "no such file")
			}
			put := uploaded
			if tt.wantErr != "" {
				put = fsError(409, api.CodeConflict, "file exists")
			}
			srv := newFSFake(t, map[string]http.HandlerFunc{"GET /v1/fs/stat": stat, "PUT /v1/fs/data": put})
			code, stdout, stderr := runCLI(t, fsArgs(srv, append([]string{"put", "-c", "c1"}, tt.args...)...)...)
			if tt.wantErr == "" && (code != 0 || stderr != "") {
				t.Fatalf("got exit status %d and stderr %q, want 0 and nothing", code, stderr)
			}
			if tt.wantErr != "" && (code != 1 || stderr != tt.wantErr) {
				t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, tt.wantErr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("got stdout %q, want %q", stdout, tt.wantStdout)
			}
			if diff := cmp.Diff(tt.wantReq, srv.requests()); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantUploads, srv.uploads, cmp.AllowUnexported(fsUpload{})); diff != "" {
				t.Errorf("uploads (-want +got):\n%s", diff)
			}
		})
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
	srv := newFSFake(t, map[string]http.HandlerFunc{
		"GET /v1/fs/stat":   fsJSON(&api.FileInfo{Path: "/out", Dir: true}),
		"POST /v1/fs/mkdir": fsJSON(struct{}{}),
		"PUT /v1/fs/data":   fsJSON(&api.FileInfo{}),
	})
	code, stdout, stderr := runCLI(t, fsArgs(srv, "put", "-r", root, "/out")...)
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("got exit status %d, stdout %q, stderr %q; want 0 and no output", code, stdout, stderr)
	}
	want := []string{
		"GET /v1/fs/stat?path=/out",
		"POST /v1/fs/mkdir",
		"PUT /v1/fs/data?path=/out/run/a.txt",
		"POST /v1/fs/mkdir",
		"POST /v1/fs/mkdir",
		"PUT /v1/fs/data?path=/out/run/sub/b.txt",
	}
	if diff := cmp.Diff(want, srv.requests()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	wantUploads := []fsUpload{{"/out/run/a.txt", 3, "aaa"}, {"/out/run/sub/b.txt", 2, "bb"}}
	if diff := cmp.Diff(wantUploads, srv.uploads, cmp.AllowUnexported(fsUpload{})); diff != "" {
		t.Errorf("uploads (-want +got):\n%s", diff)
	}

	t.Run("directory without -r", func(t *testing.T) {
		before := len(srv.requests())
		code, _, stderr := runCLI(t, fsArgs(srv, "put", root, "/out")...)
		if want := "Error: " + root + " is a directory (use -r to upload it and what it holds)\n"; code != 1 || stderr != want {
			t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, want)
		}
		if got := srv.requests()[before:]; len(got) != 0 {
			t.Errorf("got requests %v, want none", got)
		}
	})
}

func TestFSPutStdin(t *testing.T) {
	srv := newFSFake(t, map[string]http.HandlerFunc{"PUT /v1/fs/data": fsJSON(&api.FileInfo{})})
	var stdout, stderr bytes.Buffer
	root := newRoot(&stdout, &stderr)
	// A reader of unknown length, as a pipe is.
	root.SetIn(io.MultiReader(strings.NewReader("from stdin")))
	root.SetArgs(fsArgs(srv, "put", "-", "/x/log.txt"))
	if err := root.Execute(); err != nil {
		t.Fatalf("put -: %v", err)
	}
	// Standard input has no size: it is sent as it comes.
	want := []fsUpload{{"/x/log.txt", -1, "from stdin"}}
	if diff := cmp.Diff(want, srv.uploads, cmp.AllowUnexported(fsUpload{})); diff != "" {
		t.Errorf("uploads (-want +got):\n%s", diff)
	}
}

func TestFSGetAtomic(t *testing.T) {
	const content = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMN" // 60 bytes
	tests := []struct {
		name     string
		statSize int64
		data     http.HandlerFunc
		wantErr  string // substring of stderr; empty for success
	}{
		{name: "complete", statSize: 60, data: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "60")
			io.WriteString(w, content)
		}},
		{name: "complete, without a Content-Length", statSize: 60, data: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, content[:30])
			w.(http.Flusher).Flush()
			io.WriteString(w, content[30:])
		}},
		{name: "fewer bytes than its Content-Length", statSize: 60, data: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "60")
			io.WriteString(w, content[:25])
		}, wantErr: "unexpected EOF"},
		{name: "error in the middle of the body", statSize: 60, data: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, content[:25])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}, wantErr: "unexpected EOF"},
		{name: "clean end before the size from stat", statSize: 60, data: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, content[:25])
			w.(http.Flusher).Flush()
		}, wantErr: "/clusters/c1/data.bin: got 25 of 60 bytes"},
		{name: "not found", statSize: 60, data: fsError(404, api.CodeNotFound, "no such file"),
			wantErr: "/clusters/c1/data.bin: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFSFake(t, map[string]http.HandlerFunc{
				"GET /v1/fs/stat": fsJSON(&api.FileInfo{Path: "/clusters/c1/data.bin", Name: "data.bin", Size: tt.statSize, State: api.FileClosed}),
				"GET /v1/fs/data": tt.data,
			})
			dir := t.TempDir()
			// An older copy must survive a failed download untouched.
			target := filepath.Join(dir, "data.bin")
			if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runCLI(t, fsArgs(srv, "get", "-c", "c1", "data.bin", dir)...)
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
				t.Errorf("got %q in %s, want %q", b, target, want)
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
	files := map[string]string{"/d/a": "aaa", "/d/sub/b": "bb"}
	srv := newFSFake(t, map[string]http.HandlerFunc{
		"GET /v1/fs/stat": fsJSON(&api.FileInfo{Path: "/d", Name: "d", Dir: true}),
		"GET /v1/fs/list": byPath(map[string]http.HandlerFunc{
			"/d": fsJSON([]*api.FileInfo{
				{Path: "/d/a", Name: "a", Size: 3},
				{Path: "/d/.snapshot", Name: ".snapshot", Dir: true},
				{Path: "/d/.shoal-staging", Name: ".shoal-staging", Dir: true},
				{Path: "/d/sub", Name: "sub", Dir: true},
			}),
			"/d/sub": fsJSON([]*api.FileInfo{{Path: "/d/sub/b", Name: "b", Size: 2}}),
		}),
		"GET /v1/fs/data": func(w http.ResponseWriter, r *http.Request) {
			c, ok := files[r.URL.Query().Get("path")]
			if !ok {
				fsError(404, api.CodeNotFound, "no such file")(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(c)))
			io.WriteString(w, c)
		},
	})
	out := filepath.Join(t.TempDir(), "copy")
	code, stdout, stderr := runCLI(t, fsArgs(srv, "get", "-r", "-v", "/d", out)...)
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
	for _, r := range srv.requests() {
		if strings.Contains(r, api.SnapshotDirName) || strings.Contains(r, api.StagingDirName) {
			t.Errorf("got request %q, want snapshots and staging directories skipped", r)
		}
	}
	if got := readDir(t, out); !cmp.Equal(got, []string{"a", "sub"}) {
		t.Errorf("got %q in %s, want a and sub", got, out)
	}
}

func TestFSCat(t *testing.T) {
	srv := newFSFake(t, map[string]http.HandlerFunc{
		"GET /v1/fs/data": byPath(map[string]http.HandlerFunc{
			"/a": func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "one\n") },
			"/b": func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "two\n") },
		}),
		"GET /v1/fs/stat": byPath(map[string]http.HandlerFunc{
			"/a": fsJSON(&api.FileInfo{Size: 4}),
			"/b": fsJSON(&api.FileInfo{Size: 4}),
		}),
	})
	code, stdout, stderr := runCLI(t, fsArgs(srv, "cat", "/a", "/b")...)
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
	srv := newFSFake(t, map[string]http.HandlerFunc{
		"GET /v1/fs/stat": fsJSON(&api.FileInfo{Path: "/f", Name: "f", Size: 1}),
		"GET /v1/fs/data": func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x") },
	})
	target := filepath.Join(t.TempDir(), "missing", "f")
	code, _, stderr := runCLI(t, fsArgs(srv, "get", "/f", target)...)
	if want := "Error: " + target + ": no such file or directory\n"; code != 1 || stderr != want {
		t.Errorf("got exit status %d and stderr %q, want 1 and %q", code, stderr, want)
	}
}
