package cli

import (
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

// writeZip writes a zip of entries into a temporary file and returns its
// path.
func writeZip(t *testing.T, entries ...testzip.File) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bundle.zip")
	if err := os.WriteFile(p, testzip.Bytes(t, entries...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var bootstrapOK = testzip.File{Name: "bootstrap", Mode: 0o755, Data: "#!/bin/sh\n"}

func TestCheckBundle(t *testing.T) {
	tests := []struct {
		name    string
		zip     []byte
		wantErr string // "" for none
	}{
		{"executable bootstrap", testzip.Bytes(t, bootstrapOK, testzip.File{Name: "lib/x.so", Mode: 0o644, Data: "x"}), ""},
		{"bootstrap as ./bootstrap", testzip.Bytes(t, testzip.File{Name: "./bootstrap", Mode: 0o700, Data: "x"}), ""},
		{"not a zip", []byte("#!/bin/sh\necho hi\n"), "not a zip archive"},
		{"empty file", nil, "not a zip archive"},
		{"no bootstrap", testzip.Bytes(t, testzip.File{Name: "main", Mode: 0o755, Data: "x"}), "no bootstrap at the root"},
		{"bootstrap in a directory", testzip.Bytes(t, testzip.File{Name: "hello/bootstrap", Mode: 0o755, Data: "x"}), "only hello/bootstrap: zip it with 'zip -j'"},
		{"bootstrap not executable", testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o644, Data: "x"}), "bootstrap is not executable (mode -rw-r--r--)"},
		{"bootstrap a symbolic link", testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: fs.ModeSymlink | 0o777, Data: "main"}), "bootstrap is a symbolic link"},
		{"bootstrap a directory", testzip.Bytes(t, testzip.File{Name: "bootstrap/", Mode: fs.ModeDir | 0o755, Data: ""}), "bootstrap is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkBundle(tt.zip)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkBundle: got %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkBundle: got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestReadBundleDirectory(t *testing.T) {
	dir := t.TempDir()
	files := map[string]fs.FileMode{"bootstrap": 0o755, "lib/data.txt": 0o640, "lib/sub/tool": 0o700}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("content of "+name), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	if err := os.Symlink("lib/data.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	b, err := readBundle(dir)
	if err != nil {
		t.Fatalf("readBundle(%s): %v", dir, err)
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("the bundle is not a zip: %v", err)
	}
	got := map[string]string{}
	for _, f := range zr.File {
		if f.Mode().IsDir() {
			got[f.Name] = f.Mode().String()
			continue
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		content, _ := io.ReadAll(rc)
		rc.Close()
		got[f.Name] = f.Mode().String() + " " + string(content)
	}
	want := map[string]string{
		"bootstrap":    "-rwxr-xr-x content of bootstrap",
		"lib/":         "drwxr-xr-x",
		"lib/data.txt": "-rw-r----- content of lib/data.txt",
		"lib/sub/":     "drwxr-xr-x",
		"lib/sub/tool": "-rwx------ content of lib/sub/tool",
		"link":         "-rw-r----- content of lib/data.txt", // followed
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("zipped directory (-want +got):\n%s", diff)
	}

	if err := os.Chmod(filepath.Join(dir, "bootstrap"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readBundle(dir); err == nil || !strings.Contains(err.Error(), "bootstrap is not executable") {
		t.Errorf("readBundle of a directory whose bootstrap is not executable: got %v, want \"bootstrap is not executable\"", err)
	}
}
