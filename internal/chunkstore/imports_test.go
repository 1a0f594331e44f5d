package chunkstore

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the package usable by the agent: it may import only
// the standard library, package api and package capability (itself
// standard library only), never server-side packages.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages; the check would be vacuous", len(deps))
	}
	for _, d := range deps {
		std := !strings.Contains(strings.Split(d, "/")[0], ".")
		if !std && d != "github.com/shoal-dev/shoal/api" && d != "github.com/shoal-dev/shoal/internal/chunkstore" &&
			d != "github.com/shoal-dev/shoal/internal/capability" {
			t.Errorf("chunkstore imports %s (directly or not); only the standard library, api and capability are allowed", d)
		}
	}
}
