package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is Shoal's version; a release build sets it with
// -ldflags "-X github.com/shoal-dev/shoal/internal/cli.Version=v1.2.3".
// Otherwise the module version from the build information is used, if any.
var Version = ""

// versionInfo is what `shoal version` prints.
type versionInfo struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit,omitempty"`
	// CommitTime is the commit's time as the VCS recorded it (RFC 3339).
	CommitTime string `json:"commit_time,omitempty"`
	// Modified is true when the binary was built from a work tree with
	// uncommitted changes.
	Modified bool   `json:"modified,omitempty"`
	Platform string `json:"platform"`
}

// readVersion gathers the version from Version and the build information
// (bi may be nil: a binary built without module support has none).
func readVersion(bi *debug.BuildInfo) versionInfo {
	v := versionInfo{Version: Version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		v.GoVersion = bi.GoVersion
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.time":
				v.CommitTime = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if v.Version == "" {
		v.Version = "dev"
	}
	return v
}

func versionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print Shoal's version, the Go version and the commit it was built from",
		Long: `Print Shoal's version, the Go version it was built with and, when the build
recorded it (go build in a git work tree without -buildvcs=false), the commit.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			bi, _ := debug.ReadBuildInfo()
			v := readVersion(bi)
			return g.view(v, func() error {
				fmt.Fprintf(g.stdout, "shoal %s\n", v.Version)
				fmt.Fprintf(g.stdout, "go:       %s %s\n", v.GoVersion, v.Platform)
				if v.Commit != "" {
					commit := v.Commit
					if v.Modified {
						commit += " (modified)"
					}
					fmt.Fprintf(g.stdout, "commit:   %s\n", commit)
				}
				if v.CommitTime != "" {
					fmt.Fprintf(g.stdout, "date:     %s\n", v.CommitTime)
				}
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}
