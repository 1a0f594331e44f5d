package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/api"
)

func fnDLQCmd(g *globals, f *fnFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List, show and redrive a function's dead letters (Event invocations that failed every attempt)",
	}
	list := &cobra.Command{
		Use: "list NAME", Short: "List a function's dead letters", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			dls, err := cl.DeadLetters(cmd.Context(), cluster, name)
			if err != nil {
				return err
			}
			return g.view(dls, func() error {
				t := newTable(g.stdout, "ID", "VERSION", "ATTEMPTS", "FAILED", "ERROR")
				for _, d := range dls {
					t.row(d.ID, versionText(d.Version), d.Attempts, formatTime(d.Failed), oneLine(errorText(d), 80))
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(list, g)

	var id string
	show := &cobra.Command{
		Use: "show NAME --id ID", Short: "Show one dead letter with its payload", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			d, err := cl.DeadLetter(cmd.Context(), cluster, name, id)
			if err != nil {
				return err
			}
			return g.view(d, func() error {
				t := newTable(g.stdout, "FIELD", "VALUE")
				t.row("id", d.ID)
				t.row("function", d.Function)
				t.row("cluster", d.Cluster)
				t.row("version", versionText(d.Version))
				t.row("attempts", d.Attempts)
				t.row("enqueued", formatTime(d.Enqueued))
				t.row("failed", formatTime(d.Failed))
				t.row("error", oneLine(errorText(d), 200))
				t.flush()
				fmt.Fprintln(g.stdout, "\nPayload:")
				g.stdout.Write(d.Payload)
				if len(d.Payload) == 0 || d.Payload[len(d.Payload)-1] != '\n' {
					fmt.Fprintln(g.stdout)
				}
				return nil
			})
		},
	}
	show.Flags().StringVar(&id, "id", "", "the dead letter's id: its invocation's request id (required)")
	show.MarkFlagRequired("id")
	addOutputFlag(show, g)

	var ids []string
	redrive := &cobra.Command{
		Use:   "redrive NAME [--id ID ...]",
		Short: "Queue dead letters again as Event invocations (all of them without --id)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			r, err := cl.RedriveDeadLetters(cmd.Context(), cluster, name, ids)
			if err != nil {
				return err
			}
			return g.view(r, func() error {
				if len(r.Redriven) == 0 {
					fmt.Fprintf(g.stdout, "No dead letters of function %s to redrive.\n", name)
					return nil
				}
				fmt.Fprintf(g.stdout, "Queued %d dead letters of function %s again: %s\n", len(r.Redriven), name, strings.Join(r.Redriven, ", "))
				return nil
			})
		},
	}
	redrive.Flags().StringArrayVar(&ids, "id", nil, "a dead letter to redrive (repeatable; default: all)")
	addOutputFlag(redrive, g)
	cmd.AddCommand(list, show, redrive)
	return cmd
}

// versionText shows a function version, 0 meaning the latest.
func versionText(v int) string {
	if v == 0 {
		return "latest"
	}
	return fmt.Sprint(v)
}

// errorText shows a dead letter's last error.
func errorText(d *api.DeadLetter) string {
	return strings.TrimPrefix(d.ErrorType+": "+d.ErrorMessage, ": ")
}

// oneLine flattens s to one line of at most n characters.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return dash(s)
}
