package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/agent"
	"github.com/shoal-dev/shoal/internal/lambdart"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
	"github.com/spf13/cobra"
)

func serverCmd(g *globals) *cobra.Command {
	var (
		cfg      server.Config
		join     string
		logLevel string
		tlsOpts  daemonTLS
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane server (one of 1, 3 or 5)",
		Example: `  shoal server --name s1 --data-dir /var/lib/shoal/s1 --http-addr 10.0.0.1:7460 \
      --raft-addr 10.0.0.1:7461 --bootstrap-expect 3 --join 10.0.0.2:7460,10.0.0.3:7460 \
      --ca-cert shoal-ca.pem --cert shoal-server-s1.pem --key shoal-server-s1-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.stderr, logLevel)
			if err != nil {
				return err
			}
			if cfg.DataDir == "" {
				return fmt.Errorf("--data-dir is required")
			}
			if cfg.PoolMinPerZone < 0 {
				return fmt.Errorf("--pool-min-per-zone must not be negative, got %d", cfg.PoolMinPerZone)
			}
			if join != "" {
				cfg.Join = strings.Split(join, ",")
			}
			cfg.Logger = log
			cfg.Token = g.token
			if cfg.TLS, err = tlsOpts.load(log, tlsfiles.RoleServer); err != nil {
				return err
			}
			if cfg.Token == "" {
				log.Warn("no operator token (--token or SHOAL_TOKEN): any caller without a token may do anything; cluster tokens are still confined to their cluster")
			}
			s, err := server.New(cfg)
			if err != nil {
				return err
			}
			log.Info("server started", "name", cfg.Name, "http", s.HTTPAddr(), "raft", s.RaftAddr())
			<-cmd.Context().Done()
			log.Info("shutting down")
			return s.Shutdown()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", hostname(), "server name, unique in the Raft group")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots")
	f.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:7460", "address for the HTTP API")
	f.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7461", "address for Raft traffic")
	f.StringVar(&cfg.AdvertiseHTTP, "advertise-http", "", "HTTP address others use to reach this server (default: --http-addr)")
	f.StringVar(&cfg.AdvertiseRaft, "advertise-raft", "", "Raft address others use to reach this server (default: --raft-addr)")
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 0, "number of servers that form the group at first start (1 bootstraps alone)")
	f.StringVar(&join, "join", "", "comma-separated HTTP addresses of other servers")
	f.DurationVar(&cfg.HeartbeatTTL, "heartbeat-ttl", 2*time.Second, "declare a node down this long after its last heartbeat")
	f.DurationVar(&cfg.RejoinGrace, "rejoin-grace", server.DefaultRejoinGrace, "keep a node whose agent stopped in an orderly way in its cluster, with its data, this long (negative: replace it at once)")
	f.DurationVar(&cfg.OpenFileLease, "open-file-lease", api.DefaultOpenFileLease, "delete a DFS file left open this long after its writer last renewed it")
	f.DurationVar(&cfg.CapabilityTTL, "capability-ttl", server.DefaultCapabilityTTL, "how long the capabilities this server hands out (to read, write or delete a DFS chunk on a data node, or read a task's logs) stay valid")
	f.StringVar(&cfg.ClusterNetworks, "cluster-networks", state.DefaultClusterNetworks, "IPv4 network (CIDR) the clusters' private subnets are taken from")
	f.IntVar(&cfg.ClusterSubnetBits, "cluster-subnet-bits", state.DefaultClusterSubnetBits, "prefix length of each cluster's subnet")
	f.IntVar(&cfg.NodeSubnetBits, "node-subnet-bits", state.DefaultNodeSubnetBits, "prefix length of each member node's block of its cluster's subnet (its tasks' addresses)")
	f.IntVar(&cfg.PoolMinPerZone, "pool-min-per-zone", 0, "ready idle nodes every zone should hold; 'shoal pool status' shows how many to add where (0: no wish)")
	f.StringVar(&cfg.QueueAddr, "queue-addr", "", "address where the embedded queue of asynchronous invocations (NATS JetStream) accepts the other servers' routes (default: --raft-addr's host, its port + 1; a server alone opens none)")
	f.StringVar(&cfg.QueueURL, "queue-url", "", "use this external NATS cluster (nats://host:port,...) for the queue of asynchronous invocations instead of the embedded one")
	f.BoolVar(&cfg.EnableDebug, "enable-debug", false, "serve Go profiles under /debug/pprof/")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	tlsOpts.addFlags(cmd, tlsfiles.RoleServer)
	return cmd
}

func agentCmd(g *globals) *cobra.Command {
	var (
		cfg      agent.Config
		servers  string
		labels   []string
		logLevel string
		repairMB int64
		tlsOpts  daemonTLS
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent that joins the pool",
		Example: `  shoal agent --name n1 --zone a --data-dir /var/lib/shoal/n1 --servers 10.0.0.1:7460,10.0.0.2:7460 \
      --ca-cert shoal-ca.pem --cert shoal-agent-n1.pem --key shoal-agent-n1-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.stderr, logLevel)
			if err != nil {
				return err
			}
			cfg.Servers = strings.Split(servers, ",")
			if servers == "" {
				return fmt.Errorf("--servers is required")
			}
			cfg.Labels = map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--label: %q is not key=value", l)
				}
				cfg.Labels[k] = v
			}
			cfg.Logger = log
			cfg.Token = g.token
			if cfg.TLS, err = tlsOpts.load(log, tlsfiles.RoleAgent); err != nil {
				return err
			}
			if repairMB < 0 {
				return fmt.Errorf("--repair-rate: %d is negative", repairMB)
			}
			cfg.RepairRate = repairMB << 20
			if repairMB == 0 {
				cfg.RepairRate = -1
			}
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			log.Info("agent started", "name", cfg.Name, "zone", cfg.Zone, "addr", a.Addr())
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", hostname(), "node name")
	f.StringVar(&cfg.Zone, "zone", "default", "failure zone of this node")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for task data and DFS chunks")
	f.StringVar(&servers, "servers", "127.0.0.1:7460", "comma-separated server HTTP addresses")
	f.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:0", "address to serve task logs and DFS chunks on")
	f.StringVar(&cfg.AdvertiseAddr, "advertise-addr", "", "address servers use to reach --http-addr (default: its listen address)")
	f.StringVar(&cfg.PeerAddr, "peer-addr", "127.0.0.1:0", "address for mutual-TLS connections from the nodes of this node's cluster (MPI remote launch); advertised to the servers")
	f.StringVar(&cfg.TaskNetwork, "task-network", agent.TaskNetworkAuto, "give each task its own network namespace on its cluster's private network: auto (when running as root), on (required) or off")
	f.StringVar(&cfg.OverlayAddr, "overlay-addr", "", "ip:port (UDP) of this node's end of its cluster's overlay network (VXLAN); default the advertised host and a free port")
	f.IntVar(&cfg.EndpointPort, "endpoint-port", agent.DefaultEndpointPort, "port of the tasks' endpoint on the node's gateway address of its cluster network")
	f.StringVar(&cfg.ShoalBinary, "shoal-binary", "", "shoal binary that tasks find first on their PATH (default: this executable)")
	f.Int64Var(&cfg.CPU, "cpu", 0, "cpu millicores to offer (default: detected)")
	f.Int64Var(&cfg.MemoryMB, "memory", 0, "memory MiB to offer (default: detected)")
	f.StringArrayVar(&labels, "label", nil, "node label key=value (repeatable)")
	f.Int64Var(&repairMB, "repair-rate", 256, "MiB/s this node may copy from peers to repair DFS replicas (0: unlimited)")
	f.DurationVar(&cfg.ChunkReportInterval, "chunk-report-interval", 30*time.Second, "how often to report the DFS chunk inventory")
	f.DurationVar(&cfg.FunctionIdleTimeout, "fn-idle-timeout", lambdart.DefaultIdleTimeout, "stop a function sandbox idle this long (provisioned ones are kept)")
	f.BoolVar(&cfg.EnableDebug, "enable-debug", false, "serve Go profiles under /debug/pprof/")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	tlsOpts.addFlags(cmd, tlsfiles.RoleAgent)
	return cmd
}

func hostname() string {
	h, _ := os.Hostname()
	if h == "" {
		return "shoal"
	}
	return strings.Split(h, ".")[0]
}
