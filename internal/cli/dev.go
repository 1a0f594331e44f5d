package cli

import (
	"fmt"

	"github.com/shoal-dev/shoal/internal/devmode"
	"github.com/spf13/cobra"
)

func devCmd(g *globals) *cobra.Command {
	var cfg devmode.Config
	var logLevel string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole installation on this machine: one server and several agents",
		Long: `Run one server and --agents agent processes spread over --zones zones, each with
its own data directory under --dir, and print each agent's pid. Ctrl-C stops
everything.

Pool provider: it keeps --pool-min ready idle nodes in every zone. When a zone
has fewer (a cluster took them, a node died), it starts exactly the agents
missing there, counting the agents it started that are not ready yet as on
their way, and never more than --max-agents agents in all.

Restart: the agents are recorded in DIR/agents.json. 'shoal dev' started again
with the same --dir starts the agents that ran when it stopped (same names,
zones and data directories), not fresh ones; agents that died before it
stopped stay dead. New agents continue the numbering (node-N).

TLS: every link uses TLS. The first start makes a CA and server, agent and
client certificates in DIR/tls (reused later); the CLI run in the directory
that holds --dir's default (.shoal-dev) finds them itself, and the export line
printed at start tells another shell where they are. --insecure runs without.

'shoal dev kill NODE' kills one agent of this installation, and nothing else.`,
		Example: `  shoal dev                          # 3 agents in 3 zones, data in .shoal-dev/
  shoal dev kill node-1              # kill -9 one of its agents`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.stderr, logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Token = g.token
			cfg.Stdout = g.stdout
			return devmode.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Agents, "agents", 3, "number of agents to start (when --dir records none to restart)")
	f.IntVar(&cfg.Zones, "zones", 3, "number of zones to spread them over")
	f.IntVar(&cfg.PoolMin, "pool-min", 1, "ready idle nodes to keep in every zone (0 disables the pool provider)")
	f.IntVar(&cfg.MaxAgents, "max-agents", 32, "never run more agents than this")
	f.StringVar(&cfg.Dir, "dir", ".shoal-dev", "directory for all data")
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:7460", "HTTP API address of the server")
	f.Int64Var(&cfg.AgentCPU, "agent-cpu", 0, "cpu millicores each agent offers (default: detected)")
	f.Int64Var(&cfg.AgentMemory, "agent-memory", 0, "memory MiB each agent offers (default: detected)")
	f.DurationVar(&cfg.HeartbeatTTL, "heartbeat-ttl", 0, "server heartbeat TTL (default: the server's)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&cfg.Insecure, "insecure", false, "run every process without TLS (plain HTTP and Raft)")
	cmd.AddCommand(devKillCmd(g))
	return cmd
}

func devKillCmd(g *globals) *cobra.Command {
	var dir, signal string
	cmd := &cobra.Command{
		Use:   "kill NODE",
		Short: "Kill one agent of the shoal dev installation in --dir",
		Long: `Send a signal (SIGKILL by default) to the agent NODE of the 'shoal dev' running
in --dir. Only that installation's agent is signalled: its pid is read from
DIR/agents.json, and the process must be a shoal agent with that name and its
data directory under DIR; otherwise nothing is signalled and the command fails.`,
		Example: `  shoal dev kill node-1                     # kill -9
  shoal dev kill node-2 --signal TERM       # a graceful stop`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			sig, err := devmode.ParseSignal(signal)
			if err != nil {
				return err
			}
			pid, err := devmode.Kill(dir, args[0], sig)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Sent %s to agent %s (pid %d).\n", devmode.SignalName(sig), args[0], pid)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".shoal-dev", "directory of the shoal dev installation")
	cmd.Flags().StringVar(&signal, "signal", "KILL", "signal to send: KILL, TERM, INT, HUP, QUIT, STOP, CONT, USR1, USR2 or a number")
	return cmd
}
