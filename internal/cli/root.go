// Package cli implements the shoal command line: the server, agent and dev
// processes and the noun-verb client commands (node, pool, cluster, job, fs,
// fn).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
	"github.com/spf13/cobra"
)

// DefaultAddr is where the CLI looks for a server when neither --addr nor
// SHOAL_ADDR is set.
const DefaultAddr = "https://127.0.0.1:7460"

// globals are the flags every client command shares.
type globals struct {
	addr   string
	token  string
	tls    clientTLS
	output string
	stdout io.Writer
	stderr io.Writer
}

func (g *globals) client() *api.Client {
	if g.tls.id != nil {
		return api.NewTLSClient(strings.Split(g.addr, ","), g.token, g.tls.id.ClientConfig(tlsfiles.RoleServer))
	}
	return api.NewClient(strings.Split(g.addr, ","), g.token)
}

// exitError carries an exit status without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs the CLI with args and returns the process exit status.
func Main(args []string) int {
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		fmt.Fprintln(stderr, "Error:", err)
		return 1
	}
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "shoal",
		Short: "Shoal: isolated clusters, fault-tolerant jobs, one binary",
		Long: `Shoal carves isolated clusters out of a warm pool of nodes and runs batch jobs
on them that survive dead nodes and a dead Raft leader, next to their data in
a zone-replicated distributed file system ('shoal fs').

Start a whole installation on this machine with 'shoal dev', then try
'shoal cluster create c1 --nodes 3 --zones 3' and 'shoal job run FILE --wait'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	addr := os.Getenv("SHOAL_ADDR")
	if addr == "" {
		addr = DefaultAddr
	}
	root.PersistentFlags().StringVar(&g.addr, "addr", addr, "server API address (env SHOAL_ADDR)")
	root.PersistentFlags().StringVar(&g.token, "token", os.Getenv("SHOAL_TOKEN"), "API token: the operator token or a cluster's token (env SHOAL_TOKEN); 'shoal server' requires callers to present it, and agents present it")
	g.tls.addFlags(root)
	root.AddCommand(serverCmd(g), agentCmd(g), devCmd(g), nodeCmd(g), poolCmd(g), clusterCmd(g), jobCmd(g), fsCmd(g), versionCmd(g), mpiCmd(g))
	root.AddCommand(checkpointCmd(g), tlsCmd(g), fnCmd(g))
	return root
}

// addOutputFlag adds -o/--output to a list or status command, which then
// prints its result with [globals.view].
func addOutputFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if g.output != "table" && g.output != "json" {
			return fmt.Errorf("--output: %q is not table or json", g.output)
		}
		return nil
	}
}

// view prints v as JSON with -o json, and through table otherwise.
func (g *globals) view(v any, table func() error) error {
	if g.output == "json" {
		return printJSON(g.stdout, v)
	}
	return table()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(toAny(headers)...)
	return t
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func (t *table) row(cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		fmt.Fprint(t.tw, c)
	}
	fmt.Fprintln(t.tw)
}

func (t *table) flush() { t.tw.Flush() }

// newLogger returns the logger of a long-running process.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
