package e2e

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestDFSWriterKilled kills -9 a `shoal fs put` in the middle of a file: the
// writer stops renewing its lease, the servers delete the half-written
// file and its chunks once the lease runs out, and the path can be written
// again.
func TestDFSWriterKilled(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3,
		ServerArgs: []string{"--open-file-lease", "3s"}})
	ctx := t.Context()

	cmd := startStalledPut(t, in, randomBytes(7, 300000), "/w/half.bin")
	// The writer holds the file open, renewing its lease, while its input
	// stalls for longer than the lease.
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		fi, err := in.Client.FSStat(ctx, "/w/half.bin")
		if err != nil {
			return false, err.Error()
		}
		return fi.State == api.FileOpen && fi.Size > 0, fmt.Sprintf("state %s, %d bytes committed", fi.State, fi.Size)
	})
	time.Sleep(4 * time.Second) // more than the lease, with nothing to write
	if fi, err := in.Client.FSStat(ctx, "/w/half.bin"); err != nil || fi.State != api.FileOpen {
		t.Fatalf("a live writer's file after a stall longer than the lease: %+v, %v; want it still open", fi, err)
	}

	cmd.Process.Signal(os.Kill)
	cmd.Wait()
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		_, err := in.Client.FSStat(ctx, "/w/half.bin")
		var ae *api.Error
		return errors.As(err, &ae) && ae.Status == 404, fmt.Sprintf("stat of the killed writer's file: %v", err)
	})
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		n := storedChunks(in)
		return n == 0, fmt.Sprintf("%d chunk replicas still on disk", n)
	})

	data := randomBytes(8, 200000)
	putData(t, in, "/w/half.bin", data)
	checkSame(t, "the file written again", download(t, in, "/w/half.bin"), data)
}
