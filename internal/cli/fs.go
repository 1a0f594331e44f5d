package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/api"
)

// fsOptions are the flags shared by every `shoal fs` command.
type fsOptions struct {
	// cluster roots relative DFS paths at api.ClusterRoot(cluster).
	cluster string
}

// resolve turns a DFS path argument into a clean absolute path. A path
// starting with "/" is used as it is; a relative one lies under the root of
// the cluster given by --cluster or SHOAL_CLUSTER. Nothing is rewritten:
// "." and ".." are refused by api.CleanPath, so what a user names is what
// is touched.
func (o *fsOptions) resolve(arg string) (string, error) {
	if arg == "" {
		return "", errors.New(`DFS path "": must not be empty`)
	}
	p := arg
	if !strings.HasPrefix(arg, "/") {
		if o.cluster == "" {
			return "", fmt.Errorf("%s: a relative DFS path needs a cluster: pass --cluster or set SHOAL_CLUSTER, or give an absolute path", arg)
		}
		if err := api.ValidateName("--cluster", o.cluster); err != nil {
			return "", err
		}
		p = api.ClusterRoot(o.cluster) + "/" + arg
	}
	return api.CleanPath(arg, p)
}

// resolveAll resolves every argument before anything is sent, so that one
// bad path among several changes nothing.
func (o *fsOptions) resolveAll(args []string) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		p, err := o.resolve(a)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// defaultDir is what ls and snapshot list look at without an argument: the
// cluster's root when a cluster is set, else all of the namespace.
func (o *fsOptions) defaultDir() (string, error) {
	if o.cluster == "" {
		return "/", nil
	}
	if err := api.ValidateName("--cluster", o.cluster); err != nil {
		return "", err
	}
	return api.ClusterRoot(o.cluster), nil
}

// pathErr names the DFS path an error is about, unless its message already
// does (the server's usually do), so that the root prints it once.
func pathErr(path string, err error) error {
	if strings.Contains(err.Error(), path) {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}

func fsCmd(g *globals) *cobra.Command {
	o := &fsOptions{}
	cmd := &cobra.Command{
		Use:   "fs",
		Short: "Copy files to and from the distributed file system and manage it",
		Long: `Copy files to and from Shoal's distributed file system (DFS) and manage it.

DFS paths that start with / are absolute. Other paths are relative to the root
of the cluster named by --cluster or SHOAL_CLUSTER (set in every task), that is
/clusters/NAME/. Paths may not contain . or .. names.`,
	}
	cmd.PersistentFlags().StringVarP(&o.cluster, "cluster", "c", os.Getenv("SHOAL_CLUSTER"),
		"resolve relative DFS paths under this cluster's root (env SHOAL_CLUSTER)")
	cmd.AddCommand(fsPutCmd(g, o), fsGetCmd(g, o), fsCatCmd(g, o), fsLsCmd(g, o), fsStatCmd(g, o),
		fsRmCmd(g, o), fsMkdirCmd(g, o), fsMvCmd(g, o), fsSnapshotCmd(g, o), fsStatusCmd(g))
	return cmd
}

func fsLsCmd(g *globals, o *fsOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List a directory (default: the cluster's root, or / without a cluster)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := o.defaultDir()
			if len(args) == 1 {
				p, err = o.resolve(args[0])
			}
			if err != nil {
				return err
			}
			list, err := g.client().FSList(cmd.Context(), p)
			if err != nil {
				return pathErr(p, err)
			}
			if list == nil {
				list = []*api.FileInfo{}
			}
			return g.view(list, func() error {
				sorted := append([]*api.FileInfo(nil), list...)
				sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
				t := newTable(g.stdout, "TYPE", "SIZE", "REPL", "STATE", "MODIFIED", "NAME")
				for _, f := range sorted {
					if f.Dir {
						t.row("dir", "-", "-", "-", formatTime(f.Modified), f.Name)
						continue
					}
					t.row("file", humanBytes(f.Size), f.Replication, dash(f.State), formatTime(f.Modified), f.Name)
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func fsStatCmd(g *globals, o *fsOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stat PATH",
		Short: "Describe a file (with its chunks and where their replicas are) or a directory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := o.resolve(args[0])
			if err != nil {
				return err
			}
			fi, err := g.client().FSStat(cmd.Context(), p)
			if err != nil {
				return pathErr(p, err)
			}
			return g.view(fi, func() error {
				printFileInfo(g, fi)
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// printFileInfo prints stat's human output: the file's fields, then one
// row per chunk.
func printFileInfo(g *globals, fi *api.FileInfo) {
	t := newTable(g.stdout, "FIELD", "VALUE")
	t.row("path", fi.Path)
	if fi.Dir {
		t.row("type", "dir")
	} else {
		t.row("type", "file")
		t.row("size", fmt.Sprintf("%s (%d bytes)", humanBytes(fi.Size), fi.Size))
		t.row("state", dash(fi.State))
		t.row("replication", fi.Replication)
		t.row("chunk size", humanBytes(fi.ChunkSize))
	}
	t.row("created", formatTime(fi.Created))
	t.row("modified", formatTime(fi.Modified))
	t.row("file id", fi.FileID)
	t.flush()
	if fi.Dir {
		return
	}
	fmt.Fprintf(g.stdout, "\nChunks (%d):\n", len(fi.Chunks))
	c := newTable(g.stdout, "CHUNK", "OFFSET", "LENGTH", "CRC32C", "REPLICAS")
	for _, ch := range fi.Chunks {
		c.row(ch.ID, ch.Offset, ch.Length, fmt.Sprintf("%08x", ch.CRC), dash(formatReplicas(ch.Replicas)))
	}
	c.flush()
}

// formatReplicas lists replicas as node@zone, with their state when the
// server gave one.
func formatReplicas(rs []api.Replica) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Node + "@" + r.Zone
		if r.State != "" {
			parts[i] += " (" + r.State + ")"
		}
	}
	return strings.Join(parts, ", ")
}

// eachPath returns a RunE that resolves every argument first (sending
// nothing if one is bad) and then applies fn to each path in turn.
func eachPath(g *globals, o *fsOptions, fn func(ctx context.Context, cl *api.Client, p string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		paths, err := o.resolveAll(args)
		if err != nil {
			return err
		}
		cl := g.client()
		for _, p := range paths {
			if err := fn(cmd.Context(), cl, p); err != nil {
				return pathErr(p, err)
			}
		}
		return nil
	}
}

func fsRmCmd(g *globals, o *fsOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "rm PATH...",
		Short: "Delete files, or directory trees with -r",
		Args:  cobra.MinimumNArgs(1),
		RunE: eachPath(g, o, func(ctx context.Context, cl *api.Client, p string) error {
			return cl.FSRemove(ctx, &api.Remove{Path: p, Recursive: recursive})
		}),
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "delete directories and everything under them")
	return cmd
}

func fsMkdirCmd(g *globals, o *fsOptions) *cobra.Command {
	var parents bool
	cmd := &cobra.Command{
		Use:   "mkdir PATH...",
		Short: "Create directories",
		Args:  cobra.MinimumNArgs(1),
		RunE: eachPath(g, o, func(ctx context.Context, cl *api.Client, p string) error {
			return cl.FSMkdir(ctx, &api.Mkdir{Path: p, Parents: parents})
		}),
	}
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "create missing parents too; an existing directory is not an error")
	return cmd
}

func fsMvCmd(g *globals, o *fsOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "mv FROM TO",
		Short: "Rename a file or a directory tree atomically",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			paths, err := o.resolveAll(args)
			if err != nil {
				return err
			}
			if err := g.client().FSRename(cmd.Context(), &api.Rename{From: paths[0], To: paths[1]}); err != nil {
				return pathErr(paths[0], err)
			}
			return nil
		},
	}
}

func fsSnapshotCmd(g *globals, o *fsOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list and delete point-in-time snapshots of directories",
		Long: `Snapshots freeze a directory tree; snapshot NAME of DIR is readable (not
writable) under DIR/` + api.SnapshotDirName + `/NAME.`,
	}
	create := &cobra.Command{
		Use:   "create DIR NAME",
		Short: "Take a snapshot of a directory tree",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := o.resolve(args[0])
			if err != nil {
				return err
			}
			if err := checkSnapshotName(args[1]); err != nil {
				return err
			}
			s, err := g.client().FSSnapshotCreate(cmd.Context(), dir, args[1])
			if err != nil {
				return pathErr(dir, err)
			}
			fmt.Fprintf(g.stdout, "Snapshot %s of %s taken at index %d; read it under %s.\n",
				s.Name, s.Dir, s.Index, api.JoinPath(s.Dir, api.SnapshotDirName+"/"+s.Name))
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list [DIR]",
		Short: "List the snapshots of DIR (default: all those under the cluster's root, or all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The server lists one directory's snapshots, or all of them
			// for "": without DIR, keep those under the cluster's root.
			dir, within, err := "", "/", error(nil)
			if len(args) == 1 {
				dir, err = o.resolve(args[0])
			} else {
				within, err = o.defaultDir()
			}
			if err != nil {
				return err
			}
			all, err := g.client().FSSnapshots(cmd.Context(), dir)
			if err != nil {
				return pathErr(dir, err)
			}
			snaps := []*api.SnapshotInfo{}
			for _, s := range all {
				if api.WithinDir(s.Dir, within) {
					snaps = append(snaps, s)
				}
			}
			return g.view(snaps, func() error {
				t := newTable(g.stdout, "DIR", "NAME", "INDEX", "CREATED")
				for _, s := range snaps {
					t.row(s.Dir, s.Name, s.Index, formatTime(s.Created))
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(list, g)
	del := &cobra.Command{
		Use:   "delete DIR NAME",
		Short: "Delete a snapshot; the data only it kept is freed",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := o.resolve(args[0])
			if err != nil {
				return err
			}
			if err := checkSnapshotName(args[1]); err != nil {
				return err
			}
			if err := g.client().FSSnapshotDelete(cmd.Context(), dir, args[1]); err != nil {
				return pathErr(dir, err)
			}
			fmt.Fprintf(g.stdout, "Snapshot %s of %s deleted.\n", args[1], dir)
			return nil
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

// checkSnapshotName refuses a name that is not a single valid path name,
// since snapshots are read under DIR/.snapshot/NAME. The server has the
// last word on which names it takes.
func checkSnapshotName(name string) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("snapshot name %q: must be a single name, without /", name)
	}
	if _, err := api.CleanPath("snapshot name", "/"+name); err != nil {
		return fmt.Errorf("snapshot name %q: must not be . or .., nor contain control characters, nor be longer than %d bytes", name, api.MaxPathSegLen)
	}
	return nil
}

func fsStatusCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Summarise the file system: files, bytes, replication and zone-spread health",
		Long: `Summarise the file system: files, bytes, replication and zone-spread health.

Under-replicated chunks have fewer live replicas than their replication
factor; unavailable ones have none. Mis-placed chunks have their live
replicas in fewer zones than they could: fewer than the replication factor
or the number of zones with a ready data node, whichever is smaller (after
a zone was lost, its chunks are repaired into the zones left). The leader
moves mis-placed chunks back to full spread when a zone returns; "moves
running" and "moved" count those copies.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.client().FSStatus(cmd.Context())
			if err != nil {
				return err
			}
			return g.view(s, func() error {
				t := newTable(g.stdout, "FIELD", "VALUE")
				t.row("files", s.Files)
				t.row("directories", s.Dirs)
				t.row("chunks", s.Chunks)
				t.row("logical size", humanBytes(s.LogicalBytes))
				t.row("stored size", humanBytes(s.StoredBytes))
				t.row("under-replicated chunks", s.UnderReplicated)
				t.row("unavailable chunks", s.Unavailable)
				t.row("mis-placed chunks", s.Misplaced)
				t.row("repairs running", s.RepairsRunning)
				t.row("repaired", humanBytes(s.RepairedBytes))
				t.row("moves running", s.MovesRunning)
				t.row("moved", humanBytes(s.MovedBytes))
				t.row("snapshots", s.SnapshotCount)
				t.row("pending deletions", s.PendingDeletions)
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// humanBytes formats a byte count in binary units ("1.5 MiB").
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}
