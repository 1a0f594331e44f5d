package lambdart

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

func TestUnpack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []testzip.File
		ok    bool
	}{
		{"good", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "#!/bin/sh\n"}, {Name: "lib/", Mode: 0o755 | os.ModeDir, Data: ""},
			{Name: "lib/data.txt", Mode: 0o640, Data: "data"}, {Name: "lib/link", Mode: 0o777 | os.ModeSymlink, Data: "data.txt"}}, true},
		{"parent escape", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "../evil", Mode: 0o644, Data: "x"}}, false},
		{"nested escape", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "a/../../evil", Mode: 0o644, Data: "x"}}, false},
		{"absolute", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "/tmp/evil", Mode: 0o644, Data: "x"}}, false},
		{"backslash escape", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: `..\evil`, Mode: 0o644, Data: "x"}}, false},
		{"symlink out", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "out", Mode: 0o777 | os.ModeSymlink, Data: "../../etc"}}, false},
		{"absolute symlink", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "out", Mode: 0o777 | os.ModeSymlink, Data: "/etc"}}, false},
		{"through symlink", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "d", Mode: 0o777 | os.ModeSymlink, Data: "."},
			{Name: "d/evil", Mode: 0o644, Data: "x"}}, false},
		{"no bootstrap", []testzip.File{{Name: "main", Mode: 0o755, Data: "x"}}, false},
		{"bootstrap not executable", []testzip.File{{Name: "bootstrap", Mode: 0o644, Data: "x"}}, false},
		{"device", []testzip.File{{Name: "bootstrap", Mode: 0o755, Data: "x"}, {Name: "dev", Mode: 0o644 | os.ModeDevice, Data: ""}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "b")
			os.Mkdir(dir, 0o755)
			z := testzip.Bytes(t, tc.files...)
			err := Unpack(bytes.NewReader(z), int64(len(z)), dir)
			if tc.ok != (err == nil) {
				t.Fatalf("Unpack: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadBundle) {
				t.Errorf("error %v is not ErrBadBundle", err)
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); err == nil {
				t.Errorf("a file landed outside the bundle's directory")
			}
			if !tc.ok {
				return
			}
			for name, mode := range map[string]os.FileMode{"bootstrap": 0o755, "lib/data.txt": 0o640} {
				fi, err := os.Stat(filepath.Join(dir, name))
				if err != nil || fi.Mode().Perm() != mode {
					t.Errorf("%s: %v, mode %v, want %v", name, err, fi.Mode().Perm(), mode)
				}
			}
			if b, err := os.ReadFile(filepath.Join(dir, "lib/link")); err != nil || string(b) != "data" {
				t.Errorf("link: %q, %v", b, err)
			}
		})
	}
}

// TestBundleChecked: a bundle whose digest is not the version's, or that
// escapes its directory, fails the invocation with ErrBadBundle and
// starts nothing.
func TestBundleChecked(t *testing.T) {
	tp := newTestPool(t, nil)
	good := tp.b.version("fn", 1, testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o755, Data: "#!/bin/sh\n"}), api.FunctionConfig{})
	tampered := *good
	tampered.SHA256 = tp.b.version("fn", 2, testzip.Bytes(t, testzip.File{Name: "other", Mode: 0o755, Data: "x"}), api.FunctionConfig{}).SHA256
	tp.b.byHash[tampered.SHA256] = tp.b.byHash[good.SHA256]
	slip := tp.b.version("fn", 3, testzip.Bytes(t, testzip.File{Name: "bootstrap", Mode: 0o755, Data: "x"}, testzip.File{Name: "../../../escape", Mode: 0o644, Data: "x"}), api.FunctionConfig{})
	for name, v := range map[string]*api.FunctionVersion{"wrong digest": &tampered, "zip slip": slip} {
		t.Run(name, func(t *testing.T) {
			_, err := tp.Invoke(context.Background(), &api.SandboxInvocation{RequestID: "r1", Function: "fn", Cluster: testCluster, Version: v, Start: true})
			if !errors.Is(err, ErrBadBundle) {
				t.Errorf("Invoke: %v, want ErrBadBundle", err)
			}
			if n := len(tp.Report().Sandboxes); n != 0 {
				t.Errorf("%d sandboxes started", n)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(tp.cfg.Dir, "escape")); err == nil {
		t.Error("the zip slip wrote outside the bundle directory")
	}
}
