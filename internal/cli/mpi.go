package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/shoal-dev/shoal/internal/mpi"
	"github.com/spf13/cobra"
)

// mpiCmd holds the commands the agent and mpirun run inside an mpi job's
// tasks; users do not type them, so they are hidden.
func mpiCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:    "mpi",
		Short:  "Remote launch for MPI jobs (run by Shoal and mpirun inside a job's tasks)",
		Hidden: true,
	}
	cmd.AddCommand(mpiHostCmd(g), mpiRSHCmd(g))
	return cmd
}

func mpiHostCmd(g *globals) *cobra.Command {
	var (
		hostname string
		launch   bool
	)
	cmd := &cobra.Command{
		Use:   "host [--hostname NODE] [--launch] -- COMMAND...",
		Short: "Serve remote launches for this task of an mpi job; with --launch, also run COMMAND",
		Long: `The wrapper every task of an mpi job runs as. It serves launch requests
that carry the run's secret (SHOAL_RUN_SECRET) on an abstract unix socket, running
each with /bin/sh -c inside the task. With --launch it also runs COMMAND (the
user's mpirun) and exits with its status; otherwise it serves until stopped.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if launch && len(args) == 0 {
				return fmt.Errorf("--launch needs a command after --")
			}
			if !launch && len(args) > 0 {
				return fmt.Errorf("a command (%q) is only run with --launch", args[0])
			}
			h := &mpi.Host{Secret: os.Getenv("SHOAL_RUN_SECRET"), Hostname: hostname, Stdout: os.Stdout, Stderr: os.Stderr}
			if launch {
				h.Command = args
			}
			// The wrapper handles SIGTERM and SIGINT itself (it forwards
			// them to COMMAND), so it does not use the CLI's context.
			status, err := h.Run(context.Background())
			if err != nil {
				fmt.Fprintln(g.stderr, "Error:", err)
			}
			if status != 0 {
				return exitError{code: status}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&hostname, "hostname", "", "set the host name of the task's own UTS namespace")
	cmd.Flags().BoolVar(&launch, "launch", false, "run COMMAND (the launcher task) and exit with its status")
	return cmd
}

func mpiRSHCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rsh HOST COMMAND...",
		Short: "Open MPI's remote-launch agent: run COMMAND on HOST, a node of this mpi job",
		Long: `Called by mpirun (plm_rsh_agent) as AGENT HOST COMMAND..., like ssh: asks this
node's agent (SHOAL_AGENT_ADDR, with SHOAL_RUN_SECRET) to run COMMAND in this
job's task on HOST, streams its output, and exits with its status (255 when it
could not be run).`,
		// The remote command's words are mpirun's, flags included.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
				return cmd.Help()
			}
			if len(args) < 2 {
				fmt.Fprintln(g.stderr, "usage: shoal mpi rsh HOST COMMAND...")
				return exitError{code: 255}
			}
			status, err := mpi.RSH(cmd.Context(), g.tls.agentHTTP(), os.Getenv("SHOAL_AGENT_ADDR"), os.Getenv("SHOAL_RUN_SECRET"),
				args[0], args[1:], g.stdout, g.stderr)
			if err != nil {
				fmt.Fprintln(g.stderr, err)
				return exitError{code: 255}
			}
			if status != 0 {
				return exitError{code: status}
			}
			return nil
		},
	}
}
