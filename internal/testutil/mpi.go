package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// MPIExamples builds examples/heat (heat and ring) with mpicc into a temp
// dir and returns it. It skips the test when Open MPI is not installed
// (.ci/run installs openmpi-bin and libopenmpi-dev).
func MPIExamples(t testing.TB) string {
	t.Helper()
	for _, tool := range []string{"mpicc", "mpirun"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH (install openmpi-bin and libopenmpi-dev)", tool)
		}
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "examples", "heat", "build.sh")
	dir := t.TempDir()
	if out, err := exec.Command("sh", script, dir).CombinedOutput(); err != nil {
		t.Fatalf("building examples/heat: %v\n%s", err, out)
	}
	return dir
}

// LocalMPIEnv is the environment for running Open MPI's mpirun by hand on
// this host in tests: as root, on loopback only.
func LocalMPIEnv() []string {
	return append(os.Environ(), "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
		"OMPI_MCA_btl_tcp_if_include=lo", "OMPI_MCA_oob_tcp_if_include=lo")
}
