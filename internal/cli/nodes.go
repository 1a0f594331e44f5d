package cli

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/spf13/cobra"
)

func nodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "List, inspect, drain and undrain nodes"}
	list := &cobra.Command{
		Use: "list", Short: "List nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, _, err := g.client().Nodes(cmd.Context(), nil)
			if err != nil {
				return err
			}
			return g.view(nodes, func() error {
				printNodes(g, nodes)
				return nil
			})
		},
	}
	addOutputFlag(list, g)
	status := &cobra.Command{
		Use: "status NODE", Short: "Show one node", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := g.client().Node(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.view(n, func() error {
				t := newTable(g.stdout, "FIELD", "VALUE")
				t.row("name", n.Name)
				t.row("zone", n.Zone)
				t.row("state", n.State)
				t.row("since", n.StateSince.Format(time.RFC3339))
				t.row("cluster", dash(n.Cluster))
				if !n.ExpectedBack.IsZero() {
					t.row("expected back", n.ExpectedBack.Local().Format(time.RFC3339)+" (stays a member of its cluster until then)")
				}
				t.row("address", n.Addr)
				t.row("cpu", fmt.Sprintf("%d/%d millicores", n.Used.CPU, n.CPU))
				t.row("memory", fmt.Sprintf("%d/%d MiB", n.Used.MemoryMB, n.MemoryMB))
				t.row("tasks", n.Tasks)
				t.row("labels", dash(formatLabels(n.Labels)))
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(status, g)
	var deadline time.Duration
	var disable bool
	drain := &cobra.Command{
		Use:   "drain NODE",
		Short: "Stop placing tasks on a node and move its tasks elsewhere",
		Long: `Drain a node: no new tasks are placed on it; tasks that have not started move at
once; running tasks get until --deadline to finish, then are rescheduled on other
nodes of their cluster. A cluster member being drained is replaced from the pool.
--disable ends a drain and returns the node to the pool.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := g.client().DrainNode(cmd.Context(), args[0], &api.DrainRequest{Deadline: api.Duration(deadline), Disable: disable})
			if err != nil {
				return err
			}
			if disable {
				fmt.Fprintf(g.stdout, "Node %s is no longer draining.\n", args[0])
			} else {
				fmt.Fprintf(g.stdout, "Node %s is draining; running tasks move in %s at the latest.\n", args[0], deadline)
			}
			return nil
		},
	}
	drain.Flags().DurationVar(&deadline, "deadline", time.Minute, "time running tasks get before they are moved")
	drain.Flags().BoolVar(&disable, "disable", false, "end the drain (the same as 'shoal node undrain')")
	undrain := &cobra.Command{
		Use:   "undrain NODE",
		Short: "End a node's drain and return it to the pool",
		Long: `End a drain: the node takes tasks again and returns to the pool. The same as
'shoal node drain NODE --disable'; refused while the node still runs tasks of its
cluster.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DrainNode(cmd.Context(), args[0], &api.DrainRequest{Disable: true}); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Node %s is no longer draining.\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, status, drain, undrain)
	return cmd
}

func printNodes(g *globals, nodes []*api.Node) {
	t := newTable(g.stdout, "NAME", "ZONE", "STATE", "CLUSTER", "CPU", "MEMORY", "TASKS", "ADDRESS")
	for _, n := range nodes {
		t.row(n.Name, n.Zone, n.State, dash(n.Cluster), fmt.Sprintf("%d/%d", n.Used.CPU, n.CPU),
			fmt.Sprintf("%d/%d", n.Used.MemoryMB, n.MemoryMB), n.Tasks, n.Addr)
	}
	t.flush()
}

func formatLabels(l map[string]string) string {
	var parts []string
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func poolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Inspect the warm pool"}
	status := &cobra.Command{
		Use: "status", Short: "Show idle nodes by zone and how many each zone wants added",
		Long: `Show the pool: idle, reserved, draining and down nodes, and by zone the ready
idle nodes, the nodes starting (registered, still initializing) and the nodes
wanted there: how many a provisioner should add so that every zone holds the
servers' --pool-min-per-zone ready idle nodes, starting nodes counted as on
their way. 'shoal dev' starts agents to match.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, _, err := g.client().Pool(cmd.Context(), nil)
			if err != nil {
				return err
			}
			return g.view(p, func() error {
				fmt.Fprintf(g.stdout, "Idle: %d   Reserved: %d   Draining: %d   Down: %d\n\n", p.Idle, p.Reserved, p.Draining, p.Down)
				var zones []string
				for z := range p.ByZone {
					zones = append(zones, z)
				}
				for z := range p.WantedByZone {
					if _, ok := p.ByZone[z]; !ok {
						zones = append(zones, z)
					}
				}
				sort.Strings(zones)
				t := newTable(g.stdout, "ZONE", "IDLE", "STARTING", "WANTED")
				for _, z := range zones {
					t.row(z, p.ByZone[z], p.StartingByZone[z], p.WantedByZone[z])
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(status, g)
	cmd.AddCommand(status)
	return cmd
}
