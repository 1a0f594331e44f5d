package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
)

// progressMinBytes is the size above which a transfer shows a progress bar
// (on a terminal only): smaller files are done before a bar means anything.
const progressMinBytes = 1 << 20

// putStep is one thing put does, in order: create a directory or upload a
// file ("-" is standard input).
type putStep struct {
	local  string
	remote string
	mkdir  bool
}

func fsPutCmd(g *globals, o *fsOptions) *cobra.Command {
	var (
		recursive, verbose bool
		chunkSize          chunkSizeFlag
		opts               api.UploadOptions
	)
	cmd := &cobra.Command{
		Use:   "put LOCAL... REMOTE",
		Short: "Upload local files (- for standard input) to the DFS",
		Long: `Upload local files to the DFS, like cp: if REMOTE is an existing directory, ends
with /, or several LOCALs are given, each goes inside REMOTE under its base name;
otherwise LOCAL is written as REMOTE. With -r, directories are uploaded with
everything under them. LOCAL - reads standard input.

A file appears on the DFS only once all of it is stored; an interrupted upload
leaves nothing behind (and a file replaced with -f keeps its old contents).
The data goes straight from this machine to the data nodes, which it must be
able to reach; the servers only record where it went. A progress bar is shown
for large files on a terminal.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("replication") && (opts.Replication < 1 || opts.Replication > api.MaxReplication) {
				return fmt.Errorf("--replication: %d is not between 1 and %d", opts.Replication, api.MaxReplication)
			}
			opts.ChunkSize = int64(chunkSize)
			locals, remoteArg := args[:len(args)-1], args[len(args)-1]
			remote, err := o.resolve(remoteArg)
			if err != nil {
				return err
			}
			ctx, cl := cmd.Context(), g.client()
			steps, err := planPut(ctx, cl, locals, remoteArg, remote, recursive)
			if err != nil {
				return err
			}
			for _, s := range steps {
				if s.mkdir {
					if err := cl.FSMkdir(ctx, &api.Mkdir{Path: s.remote, Parents: true}); err != nil {
						return pathErr(s.remote, err)
					}
					continue
				}
				if err := putFile(ctx, g, cl, s, cmd.InOrStdin(), opts); err != nil {
					return err
				}
				if verbose {
					fmt.Fprintf(g.stdout, "%s -> %s\n", s.local, s.remote)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&recursive, "recursive", "r", false, "upload directories and everything under them")
	f.BoolVarP(&verbose, "verbose", "v", false, "print one line per file uploaded")
	f.BoolVarP(&opts.Overwrite, "overwrite", "f", false, "replace existing files (each stays readable until its new version is complete)")
	f.IntVar(&opts.Replication, "replication", 0, fmt.Sprintf("copies of each chunk, 1 to %d (default %d)", api.MaxReplication, api.DefaultReplication))
	f.Var(&chunkSize, "chunk-size", "chunk size in bytes or with a binary unit such as 512KiB, 64MiB, 1GiB (default 64MiB)")
	return cmd
}

// planPut checks the local side, works out where each LOCAL goes with cp's
// rules and validates every DFS path, all before anything is written.
func planPut(ctx context.Context, cl *api.Client, locals []string, remoteArg, remote string, recursive bool) ([]putStep, error) {
	type source struct {
		arg string
		dir bool
	}
	var srcs []source
	stdin := false
	for _, l := range locals {
		if l == "-" {
			if stdin {
				return nil, errors.New("-: standard input can be uploaded only once")
			}
			stdin = true
			srcs = append(srcs, source{arg: l})
			continue
		}
		st, err := os.Stat(l)
		switch {
		case err != nil:
			return nil, err
		case st.IsDir() && !recursive:
			return nil, fmt.Errorf("%s is a directory (use -r to upload it and what it holds)", l)
		case !st.IsDir() && !st.Mode().IsRegular():
			return nil, fmt.Errorf("%s is not a regular file or a directory", l)
		}
		srcs = append(srcs, source{arg: l, dir: st.IsDir()})
	}

	intoDir := len(locals) > 1 || strings.HasSuffix(remoteArg, "/")
	fi, err := cl.FSStat(ctx, remote)
	switch {
	case err == nil && fi.Dir:
		intoDir = true
	case err == nil && intoDir:
		return nil, fmt.Errorf("%s: not a directory", remote)
	case api.IsNotFound(err) && intoDir:
		return nil, fmt.Errorf("%s: no such directory (create it with 'shoal fs mkdir -p')", remote)
	case err != nil && !api.IsNotFound(err):
		return nil, pathErr(remote, err)
	}

	var steps []putStep
	for _, s := range srcs {
		dst := remote
		if intoDir {
			if s.arg == "-" {
				return nil, fmt.Errorf("%s is a directory; name the file to write standard input to", remote)
			}
			base, err := localBase(s.arg)
			if err != nil {
				return nil, err
			}
			dst = api.JoinPath(remote, base)
		}
		if !s.dir {
			steps = append(steps, putStep{local: s.arg, remote: dst})
			continue
		}
		tree, err := planPutTree(s.arg, dst)
		if err != nil {
			return nil, err
		}
		steps = append(steps, tree...)
	}
	for _, s := range steps {
		if _, err := api.CleanPath(s.local, s.remote); err != nil {
			return nil, err
		}
	}
	return steps, nil
}

// localBase is the name a local file or directory gets on the DFS; "." and
// "dir/.." are named after the directory they stand for.
func localBase(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	base := filepath.Base(abs)
	if base == string(filepath.Separator) {
		return "", fmt.Errorf("%s has no name to give it on the DFS; name the target directory instead", p)
	}
	return base, nil
}

// planPutTree lists the directories to create and the files to upload for
// the tree at src, parents before children. Symbolic links to regular files
// are uploaded as files; links to directories are refused rather than
// followed (they can form loops).
func planPutTree(src, dst string) ([]putStep, error) {
	walkRoot, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, err
	}
	var steps []putStep
	err = filepath.WalkDir(walkRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(walkRoot, p)
		if err != nil {
			return err
		}
		local, remote := filepath.Join(src, rel), dst
		if rel != "." {
			remote = api.JoinPath(dst, filepath.ToSlash(rel))
		}
		mode := d.Type()
		if mode&fs.ModeSymlink != 0 {
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("%s: symbolic links to directories or special files are not followed", local)
			}
			mode = st.Mode()
		}
		switch {
		case mode.IsDir():
			steps = append(steps, putStep{local: local, remote: remote, mkdir: true})
		case mode.IsRegular():
			steps = append(steps, putStep{local: local, remote: remote})
		default:
			return fmt.Errorf("%s is not a regular file or a directory", local)
		}
		return nil
	})
	return steps, err
}

// newDFSClient returns the client that moves file data between this
// machine and the data nodes, asking cl for metadata. Replica failures it
// works around are not worth a user's attention: it logs nowhere.
func newDFSClient(g *globals, cl *api.Client) *dfs.Client {
	dc := dfs.NewClient(cl, nil)
	dc.Chunks = g.tls.chunkClient(cl)
	return dc
}

// dataViaServers reports whether file data must go through the servers'
// streaming endpoints instead of straight to the data nodes: so inside a
// task on a cluster network, which reaches no data node (its agent sets
// SHOAL_FS_DATA=servers).
func dataViaServers() bool { return os.Getenv("SHOAL_FS_DATA") == "servers" }

// putFile uploads one file, streaming it with its size so that a complete
// upload can be told from a cut one.
func putFile(ctx context.Context, g *globals, cl *api.Client, s putStep, stdin io.Reader, opts api.UploadOptions) error {
	var r io.Reader = stdin
	size := int64(-1)
	if s.local != "-" {
		f, err := os.Open(s.local)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		r, size = f, st.Size()
	}
	bar := newTransferBar(g.stderr, size, "put "+api.PathBase(s.remote))
	if bar != nil {
		r = io.TeeReader(r, bar)
	}
	var err error
	if dataViaServers() {
		_, err = cl.FSUpload(ctx, s.remote, r, size, opts)
	} else {
		_, err = newDFSClient(g, cl).Upload(ctx, s.remote, r, size, opts)
	}
	endTransferBar(bar, err)
	if err != nil {
		return pathErr(s.remote, err)
	}
	return nil
}

func fsGetCmd(g *globals, o *fsOptions) *cobra.Command {
	var recursive, verbose bool
	cmd := &cobra.Command{
		Use:   "get REMOTE... LOCAL",
		Short: "Download DFS files (LOCAL - writes to standard output)",
		Long: `Download DFS files, like cp: if LOCAL is an existing directory, ends with /, or
several REMOTEs are given, each goes inside LOCAL under its base name; otherwise
REMOTE is written as LOCAL. With -r, directories are downloaded with everything
under them except snapshots (name a DIR/.snapshot/NAME to get one) and the
staging directories of running tasks.

Each file is written to a temporary file beside its target and renamed into
place only once all of it arrived, so a failed download leaves no partial file.
The data comes straight from the data nodes, which this machine must be able to
reach; on a data node's host, its replicas are read from its disk. A progress
bar is shown for large files on a terminal.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			remotes, err := o.resolveAll(args[:len(args)-1])
			if err != nil {
				return err
			}
			local := args[len(args)-1]
			d := newDownloader(g, verbose)
			ctx := cmd.Context()
			if local == "-" {
				for _, r := range remotes {
					if err := d.toWriter(ctx, r, g.stdout, true); err != nil {
						return err
					}
				}
				return nil
			}
			intoDir := len(remotes) > 1 || strings.HasSuffix(local, string(filepath.Separator))
			st, err := os.Stat(local)
			switch {
			case err == nil && st.IsDir():
				intoDir = true
			case err == nil && intoDir:
				return fmt.Errorf("%s: not a directory", local)
			case errors.Is(err, fs.ErrNotExist) && intoDir:
				return fmt.Errorf("%s: no such directory", local)
			case err != nil && !errors.Is(err, fs.ErrNotExist):
				return err
			}
			for _, r := range remotes {
				fi, err := d.cl.FSStat(ctx, r)
				if err != nil {
					return pathErr(r, err)
				}
				target := local
				if intoDir && r != "/" {
					target = filepath.Join(local, api.PathBase(r))
				}
				if fi.Dir && !recursive {
					return fmt.Errorf("%s is a directory (use -r to download it and what it holds)", r)
				}
				if fi.Dir {
					err = d.tree(ctx, r, target)
				} else {
					err = d.file(ctx, r, fi, target)
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "download directories and everything under them")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print one line per file downloaded")
	return cmd
}

func fsCatCmd(g *globals, o *fsOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "cat REMOTE...",
		Short: "Print DFS files to standard output",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			remotes, err := o.resolveAll(args)
			if err != nil {
				return err
			}
			d := newDownloader(g, false)
			for _, r := range remotes {
				if err := d.toWriter(cmd.Context(), r, g.stdout, false); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// downloader copies DFS files to local files or a writer, checking that
// every byte of each file arrived.
type downloader struct {
	g       *globals
	cl      *api.Client
	dc      *dfs.Client
	verbose bool
}

func newDownloader(g *globals, verbose bool) *downloader {
	cl := g.client()
	return &downloader{g: g, cl: cl, dc: newDFSClient(g, cl), verbose: verbose}
}

// tree downloads the directory dir into the local directory target,
// creating it. Snapshot directories inside it are skipped (they hold
// copies of the tree itself), and so are the staging directories where
// running tasks write outputs not yet published.
func (d *downloader) tree(ctx context.Context, dir, target string) error {
	if err := os.MkdirAll(target, 0o777); err != nil {
		return err
	}
	list, err := d.cl.FSList(ctx, dir)
	if err != nil {
		return pathErr(dir, err)
	}
	for _, e := range list {
		if e.Name == api.SnapshotDirName || e.Name == api.StagingDirName {
			continue
		}
		// The name becomes a local path: make sure it cannot climb out.
		if !filepath.IsLocal(e.Name) || strings.ContainsRune(e.Name, '/') || e.Name == "." {
			return fmt.Errorf("%s: the server listed an entry named %q, which is not a plain name", dir, e.Name)
		}
		remote, local := api.JoinPath(dir, e.Name), filepath.Join(target, e.Name)
		if e.Dir {
			err = d.tree(ctx, remote, local)
		} else {
			err = d.fileAt(ctx, remote, local)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// fileAt downloads the file at remote to target.
func (d *downloader) fileAt(ctx context.Context, remote, target string) error {
	fi, err := d.cl.FSStat(ctx, remote)
	if err != nil {
		return pathErr(remote, err)
	}
	return d.file(ctx, remote, fi, target)
}

// file downloads remote, which fi describes (as stat does), into a
// temporary file beside target and renames it into place once all of it
// arrived.
func (d *downloader) file(ctx context.Context, remote string, fi *api.FileInfo, target string) error {
	var body io.ReadCloser
	var err error
	if dataViaServers() {
		body, _, err = d.cl.FSDownload(ctx, remote)
	} else {
		body, err = d.dc.Reader(ctx, fi)
	}
	if err != nil {
		return pathErr(remote, err)
	}
	defer body.Close()
	tmp, err := createTempBeside(target)
	if err != nil {
		return err
	}
	err = d.copy(tmp, body, remote, fi.Size, true)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), target)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if d.verbose {
		fmt.Fprintf(d.g.stdout, "%s -> %s\n", remote, target)
	}
	return nil
}

// toWriter streams remote to w. What was written cannot be taken back, but
// a short download is still an error.
func (d *downloader) toWriter(ctx context.Context, remote string, w io.Writer, bars bool) error {
	var body io.ReadCloser
	var size int64
	var err error
	if dataViaServers() {
		body, size, err = d.cl.FSDownload(ctx, remote)
	} else {
		var fi *api.FileInfo
		body, fi, err = d.dc.Open(ctx, remote)
		if fi != nil {
			size = fi.Size
		}
	}
	if err != nil {
		return pathErr(remote, err)
	}
	defer body.Close()
	// A bar on the terminal the data is printed to would garble both.
	return d.copy(w, body, remote, size, bars && !isTerminal(w))
}

// copy moves a download to w and checks that exactly size bytes arrived
// (any size when it is negative).
func (d *downloader) copy(w io.Writer, body io.Reader, remote string, size int64, bars bool) error {
	var bar *progressbar.ProgressBar
	if bars {
		bar = newTransferBar(d.g.stderr, size, "get "+api.PathBase(remote))
	}
	if bar != nil {
		w = io.MultiWriter(w, bar)
	}
	n, err := io.Copy(w, body)
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("got %d of %d bytes", n, size)
	}
	endTransferBar(bar, err)
	if err != nil {
		return pathErr(remote, err)
	}
	return nil
}

// createTempBeside creates an empty file next to target, in the same
// directory so that renaming it over target is atomic. Its mode is 0666
// less the umask, as for any new file.
func createTempBeside(target string) (*os.File, error) {
	dir, base := filepath.Split(target)
	if len(base) > 128 {
		base = base[:128]
	}
	for {
		name := filepath.Join(dir, fmt.Sprintf(".%s.shoal-%08x", base, rand.Uint32()))
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		var pe *fs.PathError
		switch {
		case errors.Is(err, fs.ErrExist):
			continue
		case errors.As(err, &pe):
			// Name the file the user asked for, not the temporary one.
			return nil, fmt.Errorf("%s: %w", target, pe.Err)
		}
		return f, err
	}
}

// newTransferBar returns a byte progress bar on w for a transfer of size
// bytes, or nil when w is not a terminal or the transfer is small or of
// unknown size.
func newTransferBar(w io.Writer, size int64, desc string) *progressbar.ProgressBar {
	if size <= progressMinBytes || !isTerminal(w) {
		return nil
	}
	return progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// endTransferBar clears a bar (which may be nil) when its transfer ended.
func endTransferBar(bar *progressbar.ProgressBar, err error) {
	if bar == nil {
		return
	}
	if err == nil {
		bar.Finish()
		return
	}
	bar.Exit()
	bar.Clear()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// chunkSizeFlag is the --chunk-size flag: a byte count within the DFS's
// chunk size limits; 0 leaves the choice to the server.
type chunkSizeFlag int64

func (c *chunkSizeFlag) String() string {
	if *c == 0 {
		return ""
	}
	return strconv.FormatInt(int64(*c), 10)
}

func (c *chunkSizeFlag) Type() string { return "size" }

func (c *chunkSizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	if n < api.MinChunkSize || n > api.MaxChunkSize {
		return fmt.Errorf("%s is not between %s and %s", humanBytes(n), humanBytes(api.MinChunkSize), humanBytes(api.MaxChunkSize))
	}
	*c = chunkSizeFlag(n)
	return nil
}

// parseSize reads a byte count: plain bytes ("65536", "65536B") or a whole
// number of binary units ("64KiB", "64Ki", "64K", "1GiB"; case does not
// matter). KB, MB and so on are refused as ambiguous.
func parseSize(s string) (int64, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	digits, unit := s[:i], strings.TrimSpace(s[i:])
	if digits == "" {
		return 0, fmt.Errorf("%q is not a size; give bytes or a binary unit, such as 64MiB", s)
	}
	var shift uint
	switch u := strings.ToLower(unit); u {
	case "", "b":
	case "k", "ki", "kib":
		shift = 10
	case "m", "mi", "mib":
		shift = 20
	case "g", "gi", "gib":
		shift = 30
	case "t", "ti", "tib":
		shift = 40
	case "kb", "mb", "gb", "tb":
		return 0, fmt.Errorf("%q: %s is ambiguous; write %siB for units of 1024", s, unit, strings.ToUpper(unit[:1]))
	default:
		return 0, fmt.Errorf("%q: unknown unit %q; use B, KiB, MiB, GiB or TiB", s, unit)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}
