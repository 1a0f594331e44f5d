package lambdart

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-dev/shoal/api"
)

func TestUnpack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []bundleFile
		ok    bool
	}{
		{"good", []bundleFile{{"bootstrap", 0o755, "#!/bin/sh\n"}, {"lib/", 0o755 | os.ModeDir, ""},
			{"lib/data.txt", 0o640, "data"}, {"lib/link", 0o777 | os.ModeSymlink, "data.txt"}}, true},
		{"parent escape", []bundleFile{{"bootstrap", 0o755, "x"}, {"../evil", 0o644, "x"}}, false},
		{"nested escape", []bundleFile{{"bootstrap", 0o755, "x"}, {"a/../../evil", 0o644, "x"}}, false},
		{"absolute", []bundleFile{{"bootstrap", 0o755, "x"}, {"/tmp/evil", 0o644, "x"}}, false},
		{"backslash escape", []bundleFile{{"bootstrap", 0o755, "x"}, {`..\evil`, 0o644, "x"}}, false},
		{"symlink out", []bundleFile{{"bootstrap", 0o755, "x"}, {"out", 0o777 | os.ModeSymlink, "../../etc"}}, false},
		{"absolute symlink", []bundleFile{{"bootstrap", 0o755, "x"}, {"out", 0o777 | os.ModeSymlink, "/etc"}}, false},
		{"through symlink", []bundleFile{{"bootstrap", 0o755, "x"}, {"d", 0o777 | os.ModeSymlink, "."},
			{"d/evil", 0o644, "x"}}, false},
		{"no bootstrap", []bundleFile{{"main", 0o755, "x"}}, false},
		{"bootstrap not executable", []bundleFile{{"bootstrap", 0o644, "x"}}, false},
		{"device", []bundleFile{{"bootstrap", 0o755, "x"}, {"dev", 0o644 | os.ModeDevice, ""}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "b")
			os.Mkdir(dir, 0o755)
			z := makeZip(t, tc.files...)
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
	good := tp.b.version("fn", 1, makeZip(t, bundleFile{"bootstrap", 0o755, "#!/bin/sh\n"}), api.FunctionConfig{})
	tampered := *good
	tampered.SHA256 = tp.b.version("fn", 2, makeZip(t, bundleFile{"other", 0o755, "x"}), api.FunctionConfig{}).SHA256
	tp.b.byHash[tampered.SHA256] = tp.b.byHash[good.SHA256]
	slip := tp.b.version("fn", 3, makeZip(t, bundleFile{"bootstrap", 0o755, "x"}, bundleFile{"../../../escape", 0o644, "x"}), api.FunctionConfig{})
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
