package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// fsStatusJSON reads `shoal fs status -o json`.
func fsStatusJSON(t *testing.T, in *testutil.Installation) *api.FSStatus {
	t.Helper()
	var s api.FSStatus
	if err := json.Unmarshal([]byte(mustShoal(t, in, "fs", "status", "-o", "json")), &s); err != nil {
		t.Fatalf("fs status -o json: %v", err)
	}
	return &s
}

// spreadProblem returns why some chunk of fi does not have exactly three
// live replicas in three distinct zones, or "".
func spreadProblem(fi *api.FileInfo) string {
	for _, c := range fi.Chunks {
		if p := replicaProblem(c, 3, nil); p != "" {
			return p
		}
		var zones []string
		for _, r := range c.Replicas {
			if !slices.Contains(zones, r.Zone) {
				zones = append(zones, r.Zone)
			}
		}
		if len(zones) != 3 {
			return fmt.Sprintf("chunk %s: replicas %+v span zones %v, want 3", c.ID, c.Replicas, zones)
		}
	}
	return ""
}

// TestDFSSpreadMoveBack kills -9 both agents of one of three zones, waits
// for repair into the two zones left (not mis-placed then: no third zone
// can take a replica), restarts the agents on their data directories and
// waits until the replication manager has moved every chunk back to one
// replica per zone: the mis-placed count goes up when the zone returns
// and back to 0, and the file reads back identical throughout.
func TestDFSSpreadMoveBack(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 6, Zones: 3, HeartbeatTTL: time.Second})
	const path = "/spread/f.bin"
	data := randomBytes(40, 4<<20) // 16 chunks of 256 KiB
	putData(t, in, path, data, "--chunk-size", "256KiB")
	if p := spreadProblem(statJSON(t, in, path)); p != "" {
		t.Fatalf("right after put: %s", p)
	}
	if s := fsStatusJSON(t, in); s.Misplaced != 0 {
		t.Fatalf("right after put: misplaced = %d, want 0", s.Misplaced)
	}

	lost := nodesInZone(t, in, "zone-1")
	if len(lost) != 2 {
		t.Fatalf("zone-1 holds %v, want 2 nodes", lost)
	}
	for _, n := range lost {
		in.Agent(n).Kill9()
	}

	// Repaired into zone-2 and zone-3: three replicas each, and not
	// mis-placed, since no node of zone-1 can take a replica.
	waitReplicated(t, in, path, 3, lost, 60*time.Second)
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		s := fsStatusJSON(t, in)
		return s.UnderReplicated == 0 && s.Unavailable == 0 && s.RepairsRunning == 0 && s.Misplaced == 0,
			fmt.Sprintf("fs status with zone-1 down: %+v", s)
	})
	checkSame(t, "read with zone-1 down", download(t, in, path), data)

	// Zone-1 returns, one node first, pulling at 1 MiB/s (its
	// --repair-rate): the chunks are now mis-placed, and stay so while they
	// move.
	start := time.Now()
	for _, n := range lost {
		a := in.Agent(n)
		a.Args = append(a.Args, "--repair-rate", "1")
	}
	in.Agent(lost[0]).Restart(t)
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		s := fsStatusJSON(t, in)
		return s.Misplaced > 0, fmt.Sprintf("fs status after %s returned: %+v", lost[0], s)
	})
	in.Agent(lost[1]).Restart(t)
	in.WaitForReady(6)

	testutil.WaitFor(t, 120*time.Second, func() (bool, string) {
		s := fsStatusJSON(t, in)
		return s.Misplaced == 0 && s.UnderReplicated == 0 && s.MovesRunning == 0 && s.MovedBytes > 0,
			fmt.Sprintf("fs status after zone-1 returned: %+v", s)
	})
	var fi *api.FileInfo
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		fi = statJSON(t, in, path)
		p := spreadProblem(fi)
		return p == "", p
	})
	t.Logf("move-back: zone-1 back to every chunk in 3 zones in %s", time.Since(start).Round(time.Millisecond))
	checkChunks(t, fi, data)
	checkReplicaFiles(t, in, fi, data)
	checkSame(t, "read after the move-back", download(t, in, path), data)
	if s := fsStatusJSON(t, in); s.MovedBytes < int64(len(data)) {
		t.Errorf("moved %d bytes, want at least %d: every chunk had a replica in zone-1", s.MovedBytes, len(data))
	}

	// The human output and /metrics say the same.
	if out := mustShoal(t, in, "fs", "status"); !strings.Contains(out, "mis-placed chunks") {
		t.Errorf("fs status lacks the mis-placed line:\n%s", out)
	}
	resp, err := in.HTTPClient(tlsfiles.RoleServer).Get("http://" + in.Servers[0].HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"shoal_dfs_chunks_misplaced 0\n", "shoal_dfs_moved_bytes_total "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), "shoal_dfs_moved_bytes_total 0\n") {
		t.Error("/metrics says no bytes were moved after the zone returned")
	}
}
