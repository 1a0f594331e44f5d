package cli

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/api"
)

// fnFlags are the flags the fn commands share.
type fnFlags struct {
	// cluster is --cluster, defaulting to $SHOAL_CLUSTER.
	cluster string
}

func fnCmd(g *globals) *cobra.Command {
	f := &fnFlags{}
	cmd := &cobra.Command{
		Use:   "fn",
		Short: "Deploy, invoke and inspect functions (Lambda-compatible)",
		Long: `Functions are zip bundles holding an executable named bootstrap that speaks the
AWS Lambda Runtime API (an aws-lambda-go binary, or any program), invoked on
demand in warm, reused sandboxes of a cluster. They also answer Lambda's Invoke
API, so 'aws lambda invoke --endpoint-url' works; see examples/functions.

--cluster (default $SHOAL_CLUSTER) names the function's cluster. Commands on an
existing function find it without --cluster when exactly one cluster has a
function of that name.`,
	}
	cmd.PersistentFlags().StringVar(&f.cluster, "cluster", os.Getenv("SHOAL_CLUSTER"), "the function's cluster (env SHOAL_CLUSTER)")
	cmd.AddCommand(fnDeployCmd(g, f, false), fnDeployCmd(g, f, true), fnListCmd(g, f), fnStatusCmd(g, f),
		fnDeleteCmd(g, f), fnInvokeCmd(g, f), fnLogsCmd(g, f), fnDLQCmd(g, f))
	return cmd
}

// resolveCluster returns the cluster of the existing function name: the
// one given (--cluster or $SHOAL_CLUSTER), else the only cluster the
// caller may see that has a function of that name.
func resolveCluster(ctx context.Context, cl *api.Client, cluster, name string) (string, error) {
	if cluster != "" {
		return cluster, nil
	}
	fs, err := cl.Functions(ctx, "", name)
	if err != nil {
		return "", err
	}
	var clusters []string
	for _, f := range fs {
		if f.Name == name {
			clusters = append(clusters, f.Cluster)
		}
	}
	sort.Strings(clusters)
	switch len(clusters) {
	case 0:
		return "", fmt.Errorf("no function %s", name)
	case 1:
		return clusters[0], nil
	}
	return "", fmt.Errorf("function %s exists in clusters %s: say which with --cluster (or SHOAL_CLUSTER)",
		name, strings.Join(clusters, ", "))
}

// fnTarget validates the function name in args and resolves its cluster.
func fnTarget(ctx context.Context, g *globals, f *fnFlags, args []string) (*api.Client, string, string, error) {
	name := args[0]
	if err := api.ValidateFunctionName("name", name); err != nil {
		return nil, "", "", err
	}
	cl := g.client()
	cluster, err := resolveCluster(ctx, cl, f.cluster, name)
	return cl, cluster, name, err
}

// deployFlags are the flags of shoal fn deploy and update.
type deployFlags struct {
	zip         string
	handler     string
	memory      int
	timeout     time.Duration
	concurrency int
	provisioned string
	retries     int
	env         []string
}

func (d *deployFlags) add(fl *pflag.FlagSet, update bool) {
	zipUsage := "the bundle: a zip holding an executable named bootstrap at its root, or a directory to zip (required)"
	if update {
		zipUsage = "a new bundle: a zip, or a directory to zip (default: the latest version's bundle)"
	}
	fl.StringVar(&d.zip, "zip", "", zipUsage)
	fl.StringVar(&d.handler, "handler", "", "passed to the bootstrap as _HANDLER")
	fl.IntVar(&d.memory, "memory", 0, fmt.Sprintf("memory limit in MiB, %d to %d (default %d)",
		api.MinFunctionMemoryMiB, api.MaxFunctionMemoryMiB, api.DefaultFunctionMemoryMiB))
	fl.DurationVar(&d.timeout, "timeout", 0, fmt.Sprintf("longest an invocation may run: whole seconds such as 30s or 5m, at most %s (default %s)",
		api.MaxFunctionTimeout, api.DefaultFunctionTimeout))
	fl.IntVar(&d.concurrency, "concurrency", 0, fmt.Sprintf("most simultaneous invocations in the whole cluster, up to %d (default %d)",
		api.MaxFunctionConcurrency, api.DefaultFunctionConcurrency))
	fl.StringVar(&d.provisioned, "provisioned", "", fmt.Sprintf("sandboxes kept initialised at all times: a count up to %d, or auto (sized from recent concurrency) (default 0)",
		api.MaxProvisioned))
	fl.IntVar(&d.retries, "retries", 0, fmt.Sprintf("retries of a failed asynchronous (Event) invocation before it goes to the dead-letter queue, 0 to %d (default %d)",
		api.MaxAsyncRetries, api.DefaultAsyncRetries))
	fl.StringArrayVar(&d.env, "env", nil, "an environment variable KEY=VALUE (repeatable); on update, the variables given replace all the old ones")
}

// deploy turns the flags into the body of a deploy of function name; on
// an update, only the flags given change the configuration. Everything
// is checked here, before any request.
func (d *deployFlags) deploy(fl *pflag.FlagSet, name string, update bool) (*api.FunctionDeploy, error) {
	if err := api.ValidateFunctionName("name", name); err != nil {
		return nil, err
	}
	var c api.FunctionConfig
	c.Handler = d.handler
	c.MemoryMiB = d.memory
	c.Timeout = api.Duration(d.timeout)
	c.Concurrency = d.concurrency
	c.Provisioned = d.provisioned
	if fl.Changed("retries") {
		r := d.retries
		c.Retries = &r
	}
	for _, kv := range d.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env: %q is not KEY=VALUE", kv)
		}
		if c.Env == nil {
			c.Env = map[string]string{}
		}
		c.Env[k] = v
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	dep := &api.FunctionDeploy{Config: c, Update: update, KeepConfig: update}
	if update {
		settingFlags := []string{"handler", "memory", "timeout", "concurrency", "provisioned", "retries", "env"}
		changed := fl.Changed("zip")
		for _, s := range settingFlags {
			changed = changed || fl.Changed(s)
		}
		if !changed {
			return nil, fmt.Errorf("nothing to update: give --zip or a setting (--%s)", strings.Join(settingFlags, ", --"))
		}
		// An update keeps what it is not given, so a zero would silently
		// change nothing: refuse it.
		for _, z := range []struct {
			flag string
			zero bool
		}{{"memory", d.memory == 0}, {"timeout", d.timeout == 0}, {"concurrency", d.concurrency == 0},
			{"handler", d.handler == ""}, {"provisioned", d.provisioned == ""}} {
			if fl.Changed(z.flag) && z.zero {
				return nil, fmt.Errorf("--%s: an update keeps the setting it is not given; give a value, not an empty or zero one", z.flag)
			}
		}
	} else if d.zip == "" {
		return nil, fmt.Errorf("--zip is required: a zip bundle holding an executable named bootstrap, or a directory to zip")
	}
	if d.zip != "" {
		b, err := readBundle(d.zip)
		if err != nil {
			return nil, err
		}
		dep.Zip = b
	}
	return dep, nil
}

func fnDeployCmd(g *globals, f *fnFlags, update bool) *cobra.Command {
	d := &deployFlags{}
	cmd := &cobra.Command{
		Use:   "deploy NAME --cluster C --zip BUNDLE [--handler H] [--memory MIB] [--timeout D] [--concurrency N] [--provisioned N|auto] [--retries N] [--env K=V ...]",
		Short: "Create a function, or add a version to it, from a zip bundle or a directory",
		Long: `Create a function, or add a version to it. --zip names the bundle: a zip archive
with an executable file named bootstrap at its root (build it with
'zip -j hello.zip bootstrap'), or a directory, which is zipped in memory with
its files' modes kept (bootstrap must be executable). The bundle is checked
before anything is sent. Settings not given take their defaults.`,
		Args: cobra.ExactArgs(1),
	}
	if update {
		cmd.Use = "update NAME [--zip BUNDLE] [--handler H] [--memory MIB] [--timeout D] [--concurrency N] [--provisioned N|auto] [--retries N] [--env K=V ...]"
		cmd.Short = "Add a version to an existing function, changing only what the flags give"
		cmd.Long = `Add a version to an existing function: the latest version's bundle and settings,
changed only by the flags given. --zip names a new bundle, a zip or a
directory, checked as 'shoal fn deploy' checks it. --env replaces all the
variables.`
	}
	d.add(cmd.Flags(), update)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		dep, err := d.deploy(cmd.Flags(), args[0], update)
		if err != nil {
			return err
		}
		name := args[0]
		cl := g.client()
		cluster := f.cluster
		if update {
			if cluster, err = resolveCluster(cmd.Context(), cl, f.cluster, name); err != nil {
				return err
			}
		} else if cluster == "" {
			return fmt.Errorf("--cluster is required (or set SHOAL_CLUSTER): the cluster to deploy function %s to", name)
		}
		fn, err := cl.DeployFunction(cmd.Context(), cluster, name, dep)
		if err != nil {
			return err
		}
		return g.view(fn, func() error {
			v := fn.Version(0)
			if v == nil {
				fmt.Fprintf(g.stdout, "Function %s deployed to cluster %s: version %d.\n", fn.Name, fn.Cluster, fn.Latest)
				return nil
			}
			fmt.Fprintf(g.stdout, "Function %s deployed to cluster %s: version %d (%s, sha256 %s), %s.\n", fn.Name, fn.Cluster,
				v.Version, humanBytes(v.Size), shortHash(v.SHA256), configText(v.Config))
			return nil
		})
	}
	addOutputFlag(cmd, g)
	return cmd
}

func fnListCmd(g *globals, f *fnFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use: "list [--cluster C]", Short: "List functions (of one cluster with --cluster)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs, err := g.client().Functions(cmd.Context(), f.cluster, "")
			if err != nil {
				return err
			}
			return g.view(fs, func() error {
				t := newTable(g.stdout, "NAME", "CLUSTER", "VERSION", "MEMORY", "TIMEOUT", "CONCURRENCY", "PROVISIONED", "UPDATED")
				for _, fn := range fs {
					c := api.FunctionConfig{}
					if v := fn.Version(0); v != nil {
						c = v.Config
					}
					c = c.Resolved()
					t.row(fn.Name, fn.Cluster, fn.Latest, fmt.Sprintf("%d MiB", c.MemoryMiB), c.Timeout.D(), c.Concurrency,
						c.Provisioned, formatTime(fn.Updated))
				}
				t.flush()
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

func fnStatusCmd(g *globals, f *fnFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a function's versions, sandboxes and invocation counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			s, err := cl.FunctionStatus(cmd.Context(), cluster, name)
			if err != nil {
				return err
			}
			return g.view(s, func() error {
				printFunctionStatus(g, s)
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// printFunctionStatus prints a function's status for people.
func printFunctionStatus(g *globals, s *api.FunctionStatus) {
	fn := s.Function
	if fn == nil {
		fn = &api.Function{}
	}
	fmt.Fprintf(g.stdout, "Function %s in cluster %s: latest version %d, updated %s\n", fn.Name, fn.Cluster, fn.Latest,
		fn.Updated.Local().Format(time.RFC3339))
	if v := fn.Version(0); v != nil {
		fmt.Fprintf(g.stdout, "Settings: %s\n", configText(v.Config))
	}
	fmt.Fprintf(g.stdout, "Invocations: %d (%d warm, %d cold starts; %.0f%% warm); %d queued; %d dead letters\n",
		s.Invocations, s.WarmHits, s.ColdStarts, 100*s.WarmHitRate, s.Queued, s.DeadLetters)
	fmt.Fprintf(g.stdout, "Provisioned sandboxes wanted: %d\n\n", s.ProvisionedTarget)
	t := newTable(g.stdout, "VERSION", "SIZE", "SHA256", "MEMORY", "TIMEOUT", "CREATED")
	for _, v := range fn.Versions {
		c := v.Config.Resolved()
		t.row(v.Version, humanBytes(v.Size), shortHash(v.SHA256), fmt.Sprintf("%d MiB", c.MemoryMiB), c.Timeout.D(),
			formatTime(v.Created))
	}
	t.flush()
	fmt.Fprintln(g.stdout)
	if len(s.Sandboxes) == 0 {
		fmt.Fprintln(g.stdout, "No sandboxes.")
		return
	}
	t = newTable(g.stdout, "SANDBOX", "NODE", "VERSION", "STATE", "PROVISIONED", "INVOCATIONS", "STARTED", "LAST USED")
	for _, sb := range s.Sandboxes {
		last := "-"
		if !sb.LastUsed.IsZero() {
			last = sb.LastUsed.Local().Format("15:04:05")
		}
		t.row(sb.ID, sb.Node, sb.Version, sb.State, sb.Provisioned, sb.Invocations, sb.Started.Local().Format("15:04:05"), last)
	}
	t.flush()
}

func fnDeleteCmd(g *globals, f *fnFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use: "delete NAME", Short: "Delete a function, all its versions and its sandboxes", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, cluster, name, err := fnTarget(cmd.Context(), g, f, args)
			if err != nil {
				return err
			}
			if err := cl.DeleteFunction(cmd.Context(), cluster, name); err != nil {
				return err
			}
			return g.view(map[string]string{"deleted": name, "cluster": cluster}, func() error {
				fmt.Fprintf(g.stdout, "Function %s deleted from cluster %s.\n", name, cluster)
				return nil
			})
		},
	}
	addOutputFlag(cmd, g)
	return cmd
}

// configText shows a version's settings in one line.
func configText(c api.FunctionConfig) string {
	c = c.Resolved()
	s := fmt.Sprintf("memory %d MiB, timeout %s, concurrency %d, provisioned %s, retries %d",
		c.MemoryMiB, c.Timeout.D(), c.Concurrency, c.Provisioned, *c.Retries)
	if c.Handler != "" {
		s += ", handler " + c.Handler
	}
	if len(c.Env) > 0 {
		keys := make([]string, 0, len(c.Env))
		for k := range c.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s += ", env " + strings.Join(keys, " ")
	}
	return s
}

// shortHash shows the start of a hex digest.
func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return dash(h)
}
