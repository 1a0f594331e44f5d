// Package deps holds no code; its test enforces the import rules between
// Shoal's packages: the agent never imports server code, and api never
// imports internal packages.
package deps

import (
	"os/exec"
	"strings"
	"testing"
)

func TestImportRules(t *testing.T) {
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{"github.com/shoal-dev/shoal/api", []string{"github.com/shoal-dev/shoal/internal/"}},
		{"github.com/shoal-dev/shoal/internal/agent", []string{
			"github.com/shoal-dev/shoal/internal/server", "github.com/shoal-dev/shoal/internal/state",
			"github.com/shoal-dev/shoal/internal/fsm", "github.com/shoal-dev/shoal/internal/scheduler",
			"github.com/shoal-dev/shoal/internal/replication",
			"github.com/hashicorp/raft", "github.com/hashicorp/go-memdb"}},
		// The DFS client and the chunk store run on agents too.
		{"github.com/shoal-dev/shoal/internal/dfs", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/state", "github.com/hashicorp/raft", "github.com/hashicorp/go-memdb"}},
		{"github.com/shoal-dev/shoal/internal/chunkstore", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/state", "github.com/shoal-dev/shoal/internal/agent",
			"github.com/shoal-dev/shoal/internal/dfs", "github.com/hashicorp/raft"}},
		{"github.com/shoal-dev/shoal/internal/sandbox", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/state"}},
		// Function sandboxes run on agents.
		{"github.com/shoal-dev/shoal/internal/lambdart", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/state", "github.com/shoal-dev/shoal/internal/fsm",
			"github.com/shoal-dev/shoal/internal/agent", "github.com/hashicorp/raft", "github.com/hashicorp/go-memdb"}},
		// Servers construct the function queue and pass it callbacks.
		{"github.com/shoal-dev/shoal/internal/fnqueue", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/state", "github.com/shoal-dev/shoal/internal/fsm"}},
		{"github.com/shoal-dev/shoal/internal/scheduler", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/hashicorp/raft"}},
		// Subsystems plug into the server; the server imports them.
		{"github.com/shoal-dev/shoal/internal/functions", []string{"github.com/shoal-dev/shoal/internal/server"}},
		// Invocations do not go through Raft.
		{"github.com/shoal-dev/shoal/internal/invoke", []string{"github.com/shoal-dev/shoal/internal/server",
			"github.com/shoal-dev/shoal/internal/fsm", "github.com/shoal-dev/shoal/internal/functions",
			"github.com/hashicorp/raft"}},
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", r.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", r.pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 2 {
				t.Fatalf("go list -deps %s listed %d packages; the check would be vacuous", r.pkg, len(deps))
			}
			for _, d := range deps {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s imports %s (directly or not); that is forbidden", r.pkg, d)
					}
				}
			}
		})
	}
}
