package testutil

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/shoal-dev/shoal/internal/testutil/testzip"
)

var (
	helloOnce sync.Once
	helloGo   []byte
	helloErr  error
)

// examplesDir is the repository's examples/functions directory.
func examplesDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "functions")
}

// HelloGoBundle returns a zip of examples/functions/hello-go built as an
// unmodified aws-lambda-go binary named bootstrap, built once per test
// process.
func HelloGoBundle(t testing.TB) []byte {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-hello-go-")
		if err != nil {
			helloErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "bootstrap")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = filepath.Join(examplesDir(), "hello-go")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = &buildError{err: err, out: out}
			return
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			helloErr = err
			return
		}
		helloGo = ZipBundle(t, map[string]BundleFile{"bootstrap": {Data: b, Mode: 0o755}})
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloGo
}

// HelloShBundle returns a zip of examples/functions/hello-sh, the shell
// bootstrap that speaks the Runtime API with curl.
func HelloShBundle(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir(), "hello-sh", "bootstrap"))
	if err != nil {
		t.Fatal(err)
	}
	return ZipBundle(t, map[string]BundleFile{"bootstrap": {Data: b, Mode: 0o755}})
}

// BundleFile is one file of a bundle made by ZipBundle.
type BundleFile struct {
	Data []byte
	Mode os.FileMode
}

// ZipBundle zips files (name -> content and mode) into a bundle, in the
// order of their names.
func ZipBundle(t testing.TB, files map[string]BundleFile) []byte {
	t.Helper()
	var entries []testzip.File
	for _, name := range slices.Sorted(maps.Keys(files)) {
		entries = append(entries, testzip.File{Name: name, Mode: files[name].Mode, Data: string(files[name].Data)})
	}
	return testzip.Bytes(t, entries...)
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + string(e.out) }
