package lambdart

import (
	"archive/zip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// bundleCache unpacks bundles once per digest into DIR/<cluster>/<sha256>,
// which sandboxes share read-only (LAMBDA_TASK_ROOT). A directory is
// complete once it exists: it is unpacked beside it and renamed into
// place. Clusters do not share bundles, so that a cluster's code goes
// with its directory when the node leaves it.
type bundleCache struct {
	dir   string
	fetch FetchFunc

	mu       sync.Mutex
	inflight map[string]*bundleFetch // by cluster/digest
}

// bundleFetch is one unpacking in flight, which concurrent cold starts of
// the same version wait for.
type bundleFetch struct {
	done chan struct{}
	err  error
}

func newBundleCache(dir string, fetch FetchFunc) *bundleCache {
	return &bundleCache{dir: dir, fetch: fetch, inflight: map[string]*bundleFetch{}}
}

// get returns the directory of v's unpacked bundle, fetching and
// unpacking it when it is not there yet.
func (c *bundleCache) get(ctx context.Context, cluster string, v *api.FunctionVersion) (string, error) {
	if !validDigest(v.SHA256) {
		return "", fmt.Errorf("%w: version %d has no valid sha256 (%q)", ErrInvalid, v.Version, v.SHA256)
	}
	if api.ValidateName("cluster", cluster) != nil {
		return "", fmt.Errorf("%w: cluster name %q", ErrInvalid, cluster)
	}
	dir := filepath.Join(c.dir, cluster)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("lambdart: %w", err)
	}
	root := filepath.Join(dir, v.SHA256)
	key := cluster + "/" + v.SHA256
	for {
		if _, err := os.Stat(root); err == nil {
			return root, nil
		}
		c.mu.Lock()
		f, ok := c.inflight[key]
		if !ok {
			f = &bundleFetch{done: make(chan struct{})}
			c.inflight[key] = f
			c.mu.Unlock()
			// Shared by every cold start of the version that waits for
			// it: not cut short when the first one's caller goes away.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bundleFetchTimeout)
			f.err = c.install(fctx, cluster, v, root)
			cancel()
			c.mu.Lock()
			delete(c.inflight, key)
			c.mu.Unlock()
			close(f.done)
			if f.err != nil {
				return "", f.err
			}
			return root, nil
		}
		c.mu.Unlock()
		select {
		case <-f.done:
			if f.err != nil {
				return "", f.err
			}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// install fetches v's bundle, checks its size and digest, and unpacks it
// into root.
func (c *bundleCache) install(ctx context.Context, cluster string, v *api.FunctionVersion, root string) error {
	zf, err := os.CreateTemp(filepath.Dir(root), "fetch-*.zip")
	if err != nil {
		return fmt.Errorf("lambdart: %w", err)
	}
	defer os.Remove(zf.Name())
	defer zf.Close()
	h := sha256.New()
	lw := &limitedWriter{w: io.MultiWriter(zf, h), n: api.MaxBundleBytes}
	if err := c.fetch(ctx, cluster, v, lw); err != nil {
		return fmt.Errorf("lambdart: fetching bundle %s of version %d: %w", v.Bundle, v.Version, err)
	}
	if lw.over {
		return fmt.Errorf("%w: larger than %d bytes", ErrBadBundle, api.MaxBundleBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != v.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s, want %s", ErrBadBundle, v.Bundle, got, v.SHA256)
	}
	if v.Size > 0 && lw.written != v.Size {
		return fmt.Errorf("%w: %s has %d bytes, want %d", ErrBadBundle, v.Bundle, lw.written, v.Size)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(root), "unpack-")
	if err != nil {
		return fmt.Errorf("lambdart: %w", err)
	}
	if err := Unpack(zf, lw.written, tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	// Shared read-only: sandboxes write to their own directories.
	if err := os.Chmod(tmp, 0o555); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("lambdart: %w", err)
	}
	if err := os.Rename(tmp, root); err != nil {
		os.Chmod(tmp, 0o755)
		os.RemoveAll(tmp)
		if _, serr := os.Stat(root); serr == nil {
			return nil // another pool on the same directory won
		}
		return fmt.Errorf("lambdart: %w", err)
	}
	return nil
}

// bundleFetchTimeout bounds the fetch and unpacking of one bundle.
const bundleFetchTimeout = 5 * time.Minute

// Unpack extracts the zip in r (size bytes) into dir, keeping file modes
// (without setuid, setgid and sticky bits). It refuses entries whose path
// would land outside dir (absolute, "..", or through a symbolic link the
// bundle made), entries other than files, directories and symbolic links
// pointing inside dir, and bundles without an executable bootstrap at the
// root.
func Unpack(r io.ReaderAt, size int64, dir string) error {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return fmt.Errorf("%w: not a zip archive: %v", ErrBadBundle, err)
	}
	if err := api.CheckBundleSize(zr.File); err != nil {
		return fmt.Errorf("%w: %v", ErrBadBundle, err)
	}
	for _, f := range zr.File {
		if err := unpackOne(f, dir); err != nil {
			return err
		}
	}
	fi, err := os.Lstat(filepath.Join(dir, api.BundleBootstrap))
	if err != nil {
		return fmt.Errorf("%w: no %s at the root of the bundle", ErrBadBundle, api.BundleBootstrap)
	}
	if fi.Mode().Type() == fs.ModeSymlink {
		fi, err = os.Stat(filepath.Join(dir, api.BundleBootstrap))
	}
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%w: %s at the root of the bundle is not an executable file", ErrBadBundle, api.BundleBootstrap)
	}
	return nil
}

// unpackOne extracts one entry of a bundle into dir.
func unpackOne(f *zip.File, dir string) error {
	name := filepath.FromSlash(strings.ReplaceAll(f.Name, `\`, "/"))
	target, ok := inside(dir, name)
	if !ok {
		return fmt.Errorf("%w: entry %q points outside the bundle's directory", ErrBadBundle, f.Name)
	}
	if target == dir {
		return nil
	}
	// Every parent must be a real directory of the bundle: a symbolic
	// link unpacked earlier must not carry a later entry elsewhere.
	if err := checkParents(dir, target); err != nil {
		return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
	}
	mode := f.Mode()
	switch {
	case mode.IsDir():
		return mkdir(target)
	case mode.Type() == fs.ModeSymlink:
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		link, err := io.ReadAll(io.LimitReader(rc, 4096))
		rc.Close()
		if err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		dest := string(link)
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(target), dest)
		}
		if _, ok := inside(dir, mustRel(dir, dest)); !ok || filepath.IsAbs(string(link)) {
			return fmt.Errorf("%w: symbolic link %q points outside the bundle's directory", ErrBadBundle, f.Name)
		}
		if err := mkdir(filepath.Dir(target)); err != nil {
			return err
		}
		if err := os.Symlink(string(link), target); err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		return nil
	case mode.IsRegular():
		if err := mkdir(filepath.Dir(target)); err != nil {
			return err
		}
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		defer rc.Close()
		perm := mode.Perm()
		if perm == 0 {
			perm = 0o644 // zips made on other systems may carry no mode
		}
		out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		_, err = io.Copy(out, rc) // the zip reader checks sizes and CRCs
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(target, perm) // past the umask
		}
		if err != nil {
			return fmt.Errorf("%w: entry %q: %v", ErrBadBundle, f.Name, err)
		}
		return nil
	default:
		return fmt.Errorf("%w: entry %q is neither a file, a directory nor a symbolic link", ErrBadBundle, f.Name)
	}
}

// inside joins name to dir and reports whether the result stays in dir.
func inside(dir, name string) (string, bool) {
	if filepath.IsAbs(name) || filepath.VolumeName(name) != "" {
		return "", false
	}
	target := filepath.Join(dir, name)
	if target != dir && !strings.HasPrefix(target, dir+string(filepath.Separator)) {
		return "", false
	}
	return target, true
}

func mustRel(dir, p string) string {
	r, err := filepath.Rel(dir, p)
	if err != nil {
		return "/"
	}
	return r
}

// checkParents fails when a directory between dir and target exists and
// is not a directory (a symbolic link, say).
func checkParents(dir, target string) error {
	for d := filepath.Dir(target); d != dir && len(d) > len(dir); d = filepath.Dir(d) {
		fi, err := os.Lstat(d)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", d)
		}
	}
	return nil
}

func mkdir(d string) error {
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("%w: %v", ErrBadBundle, err)
	}
	return nil
}

// removeOthers removes the bundles of every cluster but keep.
func (c *bundleCache) removeOthers(keep string) error {
	return removeOtherDirs(c.dir, keep)
}

// removeOtherDirs removes the entries of dir but keep, making read-only
// directories writable first.
func removeOtherDirs(dir, keep string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.Name() == keep {
			continue
		}
		p := filepath.Join(dir, e.Name())
		filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(path, 0o755)
			}
			return nil
		})
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}

func validDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// limitedWriter passes at most n bytes to w and notes when more came.
type limitedWriter struct {
	w       io.Writer
	n       int64
	written int64
	over    bool
}

func (l *limitedWriter) Write(b []byte) (int, error) {
	if l.written+int64(len(b)) > l.n {
		l.over = true
		return 0, fmt.Errorf("%w: larger than %d bytes", ErrBadBundle, l.n)
	}
	n, err := l.w.Write(b)
	l.written += int64(n)
	return n, err
}
