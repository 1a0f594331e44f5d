package cli

import (
	"encoding/json"
	"io"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/api"
)

// TestFlagUsageNamesNoType checks every flag of every command: cobra takes
// backquoted text in a usage string as the flag's type name (`--token
// shoal server`), so usage strings must not contain any.
func TestFlagUsageNamesNoType(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		check := func(f *pflag.Flag) {
			n++
			if strings.Contains(f.Usage, "`") {
				name, _ := pflag.UnquoteUsage(f)
				t.Errorf("%s --%s: usage %q has backquotes; -h shows it as --%s %s", c.CommandPath(), f.Name, f.Usage, f.Name, name)
			}
		}
		c.LocalFlags().VisitAll(check)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot(io.Discard, io.Discard))
	if n < 20 {
		t.Fatalf("checked %d flags; the walk missed commands", n)
	}
}

func TestReadVersion(t *testing.T) {
	tests := []struct {
		name    string
		version string
		bi      *debug.BuildInfo
		want    versionInfo
	}{
		{"no build info", "", nil, versionInfo{Version: "dev"}},
		{"devel module, vcs recorded", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-11-30T17:00:00Z"},
				{Key: "vcs.modified", Value: "true"}, {Key: "GOOS", Value: "linux"}}},
			versionInfo{Version: "dev", GoVersion: "go1.26.8", Commit: "abc123", CommitTime: "2026-11-30T17:00:00Z", Modified: true}},
		{"module version", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.3.0"}},
			versionInfo{Version: "v0.3.0", GoVersion: "go1.26.8"}},
		{"set at link time wins", "v1.0.0", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.3.0"},
			Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "false"}}},
			versionInfo{Version: "v1.0.0", GoVersion: "go1.26.8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := Version
			Version = tt.version
			defer func() { Version = old }()
			got := readVersion(tt.bi)
			got.Platform = "" // the machine's; checked in TestRunVersion
			if tt.bi == nil {
				got.GoVersion = ""
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("readVersion() = %+v, want %+v (-want +got):\n%s", got, tt.want, diff)
			}
		})
	}
}

func TestRunVersion(t *testing.T) {
	code, stdout, stderr := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "shoal ") || !strings.Contains(stdout, "go:") {
		t.Errorf("shoal version: got exit %d, stdout %q, stderr %q; want 0 and \"shoal VERSION\\ngo: ...\"", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "version", "-o", "json")
	var v versionInfo
	if err := json.Unmarshal([]byte(stdout), &v); code != 0 || err != nil || v.Version == "" || !strings.HasPrefix(v.GoVersion, "go") {
		t.Errorf("shoal version -o json: got exit %d, stdout %q (%v), stderr %q; want 0 and a version object", code, stdout, err, stderr)
	}
}

func TestRunNodeUndrain(t *testing.T) {
	srv := newFakeServer(t, 200, `{"index":7}`)
	code, stdout, stderr := runCLI(t, "node", "undrain", "node-2", "--addr", srv.URL)
	if code != 0 {
		t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
	}
	if want := "Node node-2 is no longer draining.\n"; stdout != want {
		t.Errorf("got stdout %q, want %q", stdout, want)
	}
	// The same request as `drain --disable`.
	code, _, stderr = runCLI(t, "node", "drain", "node-2", "--disable", "--addr", srv.URL)
	if code != 0 {
		t.Fatalf("drain --disable: got exit status %d, want 0 (stderr %q)", code, stderr)
	}
	reqs := srv.requests()
	if len(reqs) != 2 || reqs[0] != reqs[1] {
		t.Fatalf("got requests %v, want the same request twice", reqs)
	}
	srv.mu.Lock()
	undrain, drain := string(srv.body[0]), string(srv.body[1])
	srv.mu.Unlock()
	for _, body := range []string{undrain, drain} {
		var req api.DrainRequest
		if err := json.Unmarshal([]byte(body), &req); err != nil || !req.Disable {
			t.Errorf("got request body %s (%v), want a drain request with \"disable\":true", body, err)
		}
	}
}

func TestRunPoolStatusWanted(t *testing.T) {
	srv := newFakeServer(t, 200, `{"idle":1,"reserved":3,"down":1,"draining":0,"idle_by_zone":{"zone-1":1,"zone-2":0,"zone-3":0},
		"starting_by_zone":{"zone-3":1},"wanted_by_zone":{"zone-2":1},"nodes":[]}`)
	code, stdout, stderr := runCLI(t, "pool", "status", "--addr", srv.URL)
	if code != 0 {
		t.Fatalf("got exit status %d, want 0 (stderr %q)", code, stderr)
	}
	for _, want := range []string{"ZONE    IDLE  STARTING  WANTED\n", "zone-1  1     0         0\n", "zone-2  0     0         1\n",
		"zone-3  0     1         0\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("got stdout %q, want it to contain %q", stdout, want)
		}
	}
}

func TestRunDevKillErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no node", []string{"dev", "kill", "--dir", dir}, "accepts 1 arg(s), received 0"},
		{"bad signal", []string{"dev", "kill", "node-1", "--dir", dir, "--signal", "NOPE"}, `--signal: "NOPE" is not one of`},
		{"no installation", []string{"dev", "kill", "node-1", "--dir", dir}, "no shoal dev installation in " + dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Errorf("got exit %d, stdout %q, stderr %q; want exit 1, no stdout, stderr containing %q", code, stdout, stderr, tt.want)
			}
		})
	}
}
