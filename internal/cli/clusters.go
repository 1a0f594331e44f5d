package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/spf13/cobra"
)

func clusterCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Create, inspect, resize and delete clusters"}
	var req api.ClusterRequest
	create := &cobra.Command{
		Use:   "create NAME --nodes N [--zones Z] [--egress CIDR,...]",
		Short: "Reserve N pool nodes over at least Z zones as a new cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if err := req.Validate(); err != nil {
				return err
			}
			start := time.Now()
			c, err := g.client().CreateCluster(cmd.Context(), &req)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Cluster %s created in %s with %d nodes: %s\n", c.Name,
				time.Since(start).Round(time.Millisecond), len(c.Nodes), strings.Join(c.Nodes, ", "))
			fmt.Fprintf(g.stdout, "Its network: %s; egress: %s\n", dash(c.Subnet), egressText(c.Egress))
			fmt.Fprintf(g.stdout, "Its API token (shoal cluster token %s): %s\n", c.Name, c.Token)
			return nil
		},
	}
	create.Flags().IntVar(&req.Nodes, "nodes", 0, "number of nodes (required)")
	create.Flags().IntVar(&req.Zones, "zones", 1, "minimum number of distinct zones")
	create.Flags().StringSliceVar(&req.Egress, "egress", nil, "networks (CIDRs) outside the cluster its tasks may reach (default: none)")
	create.MarkFlagRequired("nodes")

	list := &cobra.Command{
		Use: "list", Short: "List clusters", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, _, err := g.client().Clusters(cmd.Context(), nil)
			if err != nil {
				return err
			}
			return g.view(cs, func() error {
				t := newTable(g.stdout, "NAME", "STATE", "NODES", "SIZE", "ZONES", "CREATED")
				for _, c := range cs {
					t.row(c.Name, dash(c.State), len(c.Nodes), c.Size, c.MinZones, c.Created.Format(time.RFC3339))
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(list, g)

	status := &cobra.Command{
		Use: "status NAME", Short: "Show a cluster's health (healthy or degraded, and why), nodes and events", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := g.client()
			c, _, err := cl.Cluster(cmd.Context(), args[0], nil)
			if err != nil {
				return err
			}
			return g.view(c, func() error {
				nodes, _, err := cl.Nodes(cmd.Context(), nil)
				if err != nil {
					return err
				}
				var members []*api.Node
				zones := map[string]bool{}
				for _, n := range nodes {
					if n.Cluster == c.Name {
						members = append(members, n)
						zones[n.Zone] = true
					}
				}
				fmt.Fprintf(g.stdout, "Cluster %s: %s; %d of %d nodes in %d zones (asked for at least %d)\n", c.Name,
					dash(c.State), len(c.Nodes), c.Size, len(zones), c.MinZones)
				for _, p := range c.Problems {
					fmt.Fprintf(g.stdout, "  - %s\n", p)
				}
				fmt.Fprintf(g.stdout, "Network: %s; egress: %s\n", dash(c.Subnet), egressText(c.Egress))
				fmt.Fprintln(g.stdout)
				printNodes(g, members)
				fmt.Fprintln(g.stdout, "\nEvents:")
				printEvents(g, c.Events)
				return nil
			})
		},
	}
	addOutputFlag(status, g)

	var size int
	resize := &cobra.Command{
		Use: "resize NAME --nodes N", Short: "Grow or shrink a cluster", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client().ResizeCluster(cmd.Context(), args[0], size)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Cluster %s now has %d nodes: %s\n", c.Name, len(c.Nodes), strings.Join(c.Nodes, ", "))
			return nil
		},
	}
	resize.Flags().IntVar(&size, "nodes", 0, "new number of nodes (required)")
	resize.MarkFlagRequired("nodes")

	del := &cobra.Command{
		Use: "delete NAME", Short: "Stop a cluster's jobs, wipe its data and return its nodes to the pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteCluster(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Cluster %s deleted; its nodes are back in the pool.\n", args[0])
			return nil
		},
	}
	var rotate bool
	token := &cobra.Command{
		Use:   "token NAME [--rotate]",
		Short: "Print a cluster's API token, which sees only that cluster's jobs and /clusters/NAME",
		Long: `Print a cluster's API token. A caller presenting it (--token or SHOAL_TOKEN) sees only
the cluster's jobs and its part of the file system, /clusters/NAME; the cluster's
tasks get it as SHOAL_TOKEN. --rotate replaces it first: the old token stops working
at once.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := g.client()
			var c *api.Cluster
			var err error
			if rotate {
				c, err = cl.RotateClusterToken(cmd.Context(), args[0])
			} else {
				c, _, err = cl.Cluster(cmd.Context(), args[0], nil)
			}
			if err != nil {
				return err
			}
			if c.Token == "" {
				return fmt.Errorf("cluster %s has no token; create one with --rotate", c.Name)
			}
			fmt.Fprintln(g.stdout, c.Token)
			return nil
		},
	}
	token.Flags().BoolVar(&rotate, "rotate", false, "replace the token first; the old one stops working")
	cmd.AddCommand(create, list, status, resize, del, token)
	return cmd
}

func printEvents(g *globals, events []api.Event) {
	t := newTable(g.stdout, "TIME", "TYPE", "MESSAGE")
	for _, e := range events {
		t.row(e.Time.Local().Format("15:04:05.000"), e.Type, e.Message)
	}
	t.flush()
}

// egressText shows a cluster's egress networks.
func egressText(egress []string) string {
	if len(egress) == 0 {
		return "none"
	}
	return strings.Join(egress, ", ")
}
