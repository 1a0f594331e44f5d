package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	"github.com/shoal-dev/shoal/api"
)

func jobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Run and inspect jobs"}
	var wait bool
	runCmd := &cobra.Command{
		Use:   "run FILE",
		Short: "Submit a job file (YAML or JSON; - reads standard input)",
		Long: `Submit a job file. With --wait, follow the job until it ends: a live progress
bar on a terminal, one line per change when piped. The exit status is 0 only if
the job completed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := readJobFile(args[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			cl := g.client()
			res, err := cl.SubmitJob(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if !wait {
				fmt.Fprintf(g.stdout, "Job %s submitted.\n", res.ID)
				return nil
			}
			fmt.Fprintf(g.stderr, "Job %s submitted; waiting for it to finish (Ctrl-C stops waiting, not the job).\n", res.ID)
			job, err := waitJob(cmd.Context(), g, cl, res.ID, res.Index)
			if err != nil {
				return err
			}
			c := job.Counts
			fmt.Fprintf(g.stdout, "Job %s %s: %d complete, %d failed, %d cancelled of %d tasks.\n",
				job.ID, job.State, c.Complete, c.Failed, c.Cancelled, c.Total())
			if job.State != api.JobComplete {
				return exitError{code: 1}
			}
			return nil
		},
	}
	runCmd.Flags().BoolVar(&wait, "wait", false, "wait for the job to end and show progress")

	var cluster string
	list := &cobra.Command{
		Use: "list", Short: "List jobs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			jobs, _, err := g.client().Jobs(cmd.Context(), cluster, nil)
			if err != nil {
				return err
			}
			return g.view(jobs, func() error {
				t := newTable(g.stdout, "ID", "CLUSTER", "STATE", "TASKS", "COMPLETE", "RUNNING", "PENDING", "FAILED", "SUBMITTED")
				for _, j := range jobs {
					c := j.Counts
					t.row(j.ID, j.Cluster, j.State, c.Total(), c.Complete, c.Running, c.Pending+c.Lost, c.Failed,
						j.Submitted.Local().Format("2006-01-02 15:04:05"))
				}
				t.flush()
				return nil
			})
		},
	}
	list.Flags().StringVar(&cluster, "cluster", "", "only jobs of this cluster")
	addOutputFlag(list, g)

	var (
		listTasks, waitEnd bool
		filter             api.TaskFilter
	)
	status := &cobra.Command{
		Use:   "status JOB",
		Short: "Show a job's summary, or a page of its tasks with --tasks",
		Long: `Show a job's summary: task counts by state and by group, the tasks that failed,
were lost or are retrying (most recent first) and the last events. It is as
quick for a million tasks as for ten.

--tasks lists tasks instead, ordered by group then index, one page at a time
(100 by default, at most 10000): filter them with --state and --group, and page
with --offset (the footer, and next_offset in -o json, give the next page's
offset). --state, --group, --limit and --offset imply --tasks.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			if listTasks || fl.Changed("state") || fl.Changed("group") || fl.Changed("limit") || fl.Changed("offset") {
				return showTasks(cmd.Context(), g, args[0], &filter)
			}
			cl := g.client()
			j, _, err := cl.JobSummary(cmd.Context(), args[0], nil)
			if err != nil {
				return err
			}
			if waitEnd {
				if j, err = waitJob(cmd.Context(), g, cl, args[0], 0); err != nil {
					return err
				}
			}
			err = g.view(j, func() error {
				printJobSummary(g, j)
				return nil
			})
			if err == nil && waitEnd && j.State != api.JobComplete {
				return exitError{code: 1}
			}
			return err
		},
	}
	status.Flags().BoolVar(&waitEnd, "wait", false, "wait for the job to end first (exit status 0 only if it completed)")
	status.Flags().BoolVar(&listTasks, "tasks", false, "list tasks (one page) instead of the summary")
	status.Flags().StringVar(&filter.State, "state", "", "only tasks in this state ("+strings.Join(api.TaskStates, ", ")+")")
	status.Flags().StringVar(&filter.Group, "group", "", "only tasks of this group")
	status.Flags().IntVar(&filter.Limit, "limit", api.DefaultTaskLimit, "tasks per page")
	status.Flags().IntVar(&filter.Offset, "offset", 0, "skip this many matching tasks")
	addOutputFlag(status, g)

	var (
		task   int
		group  string
		stderr bool
		follow bool
	)
	logs := &cobra.Command{
		Use: "logs JOB", Short: "Print a task's output", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			stream := "stdout"
			if stderr {
				stream = "stderr"
			}
			rc, err := g.client().Logs(cmd.Context(), args[0], group, task, stream, follow)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(g.stdout, rc)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	logs.Flags().IntVar(&task, "task", 0, "task index")
	logs.Flags().StringVar(&group, "group", "", "task group (default: the job's first group)")
	logs.Flags().BoolVar(&stderr, "stderr", false, "print standard error instead of standard output")
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the task ends")

	cancel := &cobra.Command{
		Use: "cancel JOB", Short: "Stop a job's tasks", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().CancelJob(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "Job %s cancelled.\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(runCmd, list, status, logs, cancel)
	cmd.AddCommand(jobCheckpointsCmd(g))
	return cmd
}

// readJobFile parses a YAML or JSON job file strictly: unknown fields are
// errors.
func readJobFile(path string, stdin io.Reader) (*api.JobSpec, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, api.MaxBodyBytes+1))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading job file: %w", err)
	}
	if len(b) > api.MaxBodyBytes {
		return nil, fmt.Errorf("job file %s is larger than %d bytes", path, api.MaxBodyBytes)
	}
	var spec api.JobSpec
	if err := yaml.UnmarshalStrict(b, &spec); err != nil {
		msg := err.Error()
		for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
			msg = strings.ReplaceAll(msg, p, "")
		}
		return nil, fmt.Errorf("job file %s: %s", path, msg)
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("job file %s: %w", path, err)
	}
	return &spec, nil
}

// waitJob follows a job with blocking queries until it ends.
func waitJob(ctx context.Context, g *globals, cl *api.Client, id string, index uint64) (*api.Job, error) {
	f, isFile := g.stderr.(*os.File)
	tty := isFile && term.IsTerminal(int(f.Fd()))
	var bar *progressbar.ProgressBar
	last := ""
	for {
		job, idx, err := cl.JobSummary(ctx, id, &api.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("stopped waiting; job %s goes on (see 'shoal job status %s')", id, id)
			}
			var apiErr *api.Error
			if errors.As(err, &apiErr) {
				return nil, err
			}
			fmt.Fprintf(g.stderr, "lost contact with the server (%v); retrying\n", err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		index = idx
		c := job.Counts
		line := fmt.Sprintf("%s: %d/%d complete, %d running, %d pending, %d lost, %d failed",
			job.State, c.Complete, c.Total(), c.Running, c.Pending, c.Lost, c.Failed)
		if tty {
			if bar == nil {
				bar = progressbar.NewOptions(c.Total(), progressbar.OptionSetWriter(g.stderr),
					progressbar.OptionShowCount(), progressbar.OptionSetWidth(30),
					progressbar.OptionSetPredictTime(false), progressbar.OptionClearOnFinish())
			}
			bar.Describe(fmt.Sprintf("%-9s run %d pend %d lost %d fail %d", job.State, c.Running, c.Pending, c.Lost, c.Failed))
			bar.Set(c.Complete + c.Failed + c.Cancelled)
		} else if line != last {
			fmt.Fprintln(g.stderr, time.Now().Format("15:04:05.000"), line)
		}
		last = line
		switch job.State {
		case api.JobComplete, api.JobFailed, api.JobCancelled:
			if bar != nil {
				bar.Finish()
			}
			return job, nil
		}
	}
}

// maxSummaryGroups bounds the groups a human summary lists (a job may have
// up to api.MaxGroupsPerJob); -o json has them all.
const maxSummaryGroups = 10

// printJobSummary prints a job's summary in at most a screenful.
func printJobSummary(g *globals, j *api.Job) {
	c := j.Counts
	fmt.Fprintf(g.stdout, "Job %s (%s) on cluster %s: %s\n", j.ID, j.Type, j.Cluster, j.State)
	fmt.Fprintf(g.stdout, "Tasks: %d complete, %d running, %d pending, %d lost, %d failed, %d cancelled of %d\n",
		c.Complete, c.Running, c.Pending, c.Lost, c.Failed, c.Cancelled, c.Total())
	printMPIStatus(g, j)
	fmt.Fprintln(g.stdout)
	t := newTable(g.stdout, "GROUP", "TASKS", "COMPLETE", "RUNNING", "PENDING", "LOST", "FAILED", "CANCELLED")
	for i, gs := range j.GroupStatus {
		if i == maxSummaryGroups {
			t.row(fmt.Sprintf("(%d more)", len(j.GroupStatus)-i), "", "", "", "", "", "", "")
			break
		}
		gc := gs.Counts
		t.row(gs.Name, gc.Total(), gc.Complete, gc.Running, gc.Pending, gc.Lost, gc.Failed, gc.Cancelled)
	}
	t.flush()
	if len(j.Failing) > 0 {
		fmt.Fprintln(g.stdout, "\nFailing or retried tasks (most recent first):")
		printTasks(g, j.Failing)
	}
	fmt.Fprintln(g.stdout, "\nLast events:")
	printEvents(g, j.Events)
	fmt.Fprintf(g.stdout, "\nList tasks with: shoal job status %s --tasks [--state S] [--group G]\n", j.ID)
}

// showTasks prints one page of a job's tasks.
func showTasks(ctx context.Context, g *globals, id string, f *api.TaskFilter) error {
	p, _, err := g.client().JobTasks(ctx, id, f, nil)
	if err != nil {
		return err
	}
	return g.view(p, func() error {
		printTasks(g, p.Tasks)
		switch {
		case len(p.Tasks) == 0:
			fmt.Fprintf(g.stdout, "(no tasks of %d match at offset %d)\n", p.Total, f.Offset)
		case p.NextOffset > 0:
			fmt.Fprintf(g.stdout, "(tasks %d-%d of %d; next page: --offset %d)\n", f.Offset+1, f.Offset+len(p.Tasks), p.Total, p.NextOffset)
		default:
			fmt.Fprintf(g.stdout, "(tasks %d-%d of %d)\n", f.Offset+1, f.Offset+len(p.Tasks), p.Total)
		}
		return nil
	})
}

func printTasks(g *globals, tasks []*api.Task) {
	t := newTable(g.stdout, "GROUP", "INDEX", "STATE", "NODE", "ATTEMPT", "EXIT", "MESSAGE")
	for _, tk := range tasks {
		exit := "-"
		if !tk.Finished.IsZero() {
			exit = fmt.Sprint(tk.ExitCode)
		}
		t.row(tk.Group, tk.Index, tk.State, dash(tk.Node), tk.Attempt, exit, dash(tk.Message))
	}
	t.flush()
}
