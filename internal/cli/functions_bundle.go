package cli

import (
	"archive/zip"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/shoal-dev/shoal/api"
)

// readBundle returns the zip bundle a deploy sends: the file at p, or,
// when p is a directory, the directory zipped in memory. Either way the
// bundle is checked with [checkBundle] first, so that a bundle the
// servers would refuse (or that could never start) is refused here with
// a message that says what is wrong.
func readBundle(p string) ([]byte, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("--zip: %w", err)
	}
	var b []byte
	if fi.IsDir() {
		if b, err = zipDir(p); err != nil {
			return nil, fmt.Errorf("--zip: zipping directory %s: %w", p, err)
		}
	} else {
		if fi.Size() > api.MaxBundleBytes {
			return nil, fmt.Errorf("--zip: %s is %d bytes; a bundle may have at most %d", p, fi.Size(), api.MaxBundleBytes)
		}
		if b, err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("--zip: %w", err)
		}
	}
	if err := checkBundle(b); err != nil {
		return nil, fmt.Errorf("--zip: %s: %w", p, err)
	}
	return b, nil
}

// checkBundle checks that b is a zip archive of at most
// api.MaxBundleBytes, within api.CheckBundleSize's bounds, that holds an
// executable regular file named api.BundleBootstrap at its root: what
// the servers check (functions.checkBundle), and the executable bit,
// which they leave to the start.
func checkBundle(b []byte) error {
	if len(b) > api.MaxBundleBytes {
		return fmt.Errorf("the bundle is %d bytes; at most %d are allowed", len(b), api.MaxBundleBytes)
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return fmt.Errorf("not a zip archive (%v)", err)
	}
	if err := api.CheckBundleSize(zr.File); err != nil {
		return err
	}
	var nested []string
	for _, f := range zr.File {
		name := strings.TrimPrefix(f.Name, "./")
		if name == api.BundleBootstrap+"/" {
			return fmt.Errorf("%s is a directory; it must be an executable file", api.BundleBootstrap)
		}
		if name != api.BundleBootstrap {
			if path.Base(strings.TrimSuffix(name, "/")) == api.BundleBootstrap {
				nested = append(nested, f.Name)
			}
			continue
		}
		mode := f.Mode()
		switch {
		case mode&fs.ModeSymlink != 0:
			return fmt.Errorf("%s is a symbolic link; it must be a regular file", api.BundleBootstrap)
		case !mode.IsRegular():
			return fmt.Errorf("%s is not a regular file (mode %s)", api.BundleBootstrap, mode)
		case mode.Perm()&0o111 == 0:
			return fmt.Errorf("%s is not executable (mode %s): run chmod +x %s before zipping it (zip keeps the mode)",
				api.BundleBootstrap, mode.Perm(), api.BundleBootstrap)
		}
		return nil
	}
	if len(nested) > 0 {
		return fmt.Errorf("no %s at the root of the archive, only %s: zip it with 'zip -j' or from inside its directory",
			api.BundleBootstrap, strings.Join(nested, ", "))
	}
	return fmt.Errorf("no %s at the root of the archive: a bundle must hold an executable named %s, which Shoal runs",
		api.BundleBootstrap, api.BundleBootstrap)
}

// zipDir zips the tree under dir, paths relative to dir, keeping file
// modes (so that bootstrap stays executable). Symbolic links to files are
// followed, as zip does by default; links to directories are refused.
func zipDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := os.Stat(p) // follows a symbolic link
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 && fi.IsDir() {
			return fmt.Errorf("%s is a symbolic link to a directory, which a bundle cannot hold", rel)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (mode %s)", rel, fi.Mode())
		}
		h, err := zip.FileInfoHeader(fi)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
			_, err = zw.CreateHeader(h)
			return err
		}
		h.Method = zip.Deflate
		w, err := zw.CreateHeader(h)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if buf.Len() > api.MaxBundleBytes {
			return fmt.Errorf("the zipped bundle is larger than %d bytes, the most a bundle may have", api.MaxBundleBytes)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
