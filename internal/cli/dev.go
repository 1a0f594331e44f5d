package cli

import (
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
its own data directory under --dir, plus a pool provider that starts another
agent whenever fewer than --pool-min idle nodes are left. Ctrl-C stops everything.`,
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
	f.IntVar(&cfg.Agents, "agents", 3, "number of agents to start")
	f.IntVar(&cfg.Zones, "zones", 3, "number of zones to spread them over")
	f.IntVar(&cfg.PoolMin, "pool-min", 1, "start another agent when fewer idle nodes are left (0 disables)")
	f.IntVar(&cfg.MaxAgents, "max-agents", 32, "never run more agents than this")
	f.StringVar(&cfg.Dir, "dir", ".shoal-dev", "directory for all data")
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:7460", "HTTP API address of the server")
	f.Int64Var(&cfg.AgentCPU, "agent-cpu", 0, "cpu millicores each agent offers (default: detected)")
	f.Int64Var(&cfg.AgentMemory, "agent-memory", 0, "memory MiB each agent offers (default: detected)")
	f.DurationVar(&cfg.HeartbeatTTL, "heartbeat-ttl", 0, "server heartbeat TTL (default: the server's)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
