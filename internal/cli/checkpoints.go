package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/api"
)

// commitTimeout bounds a commit: the agent copies the rank's files to its
// own disk before it answers, which takes the time of a local copy.
const commitTimeout = 10 * time.Minute

// checkpointCmd is `shoal checkpoint`, the commands MPI ranks run.
func checkpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoint", Short: "Commit a rank's checkpoint (run by the ranks of MPI jobs)"}
	var (
		rankFlag int
		verbose  bool
	)
	commit := &cobra.Command{
		Use:   "commit EPOCH",
		Short: "Tell this node's agent that the rank's files for EPOCH are written",
		Long: `Commit a rank's checkpoint files for EPOCH (a number, above the job's last
complete epoch and above what this rank committed before).

Run it from a rank of an MPI job after writing the rank's files into
$SHOAL_CHECKPOINT_DIR/<rank>/. When it returns (exit status 0) the node's agent
holds its own copy of the files, so the rank may overwrite them; the agent
stores them in the DFS in the background. An epoch is complete, and used for a
restart, only when every rank of the job has committed it.

It reads SHOAL_AGENT_ADDR and SHOAL_RUN_SECRET from the environment Shoal gives
the job, and the rank from --rank, OMPI_COMM_WORLD_RANK or PMI_RANK. It prints
nothing on success unless -v.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			epoch, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || epoch < 1 {
				return fmt.Errorf("epoch %q is not a positive whole number", args[0])
			}
			rank, err := commitRank(cmd.Flags().Changed("rank"), rankFlag)
			if err != nil {
				return err
			}
			addr, secret := os.Getenv("SHOAL_AGENT_ADDR"), os.Getenv("SHOAL_RUN_SECRET")
			var missing []string
			if addr == "" {
				missing = append(missing, "SHOAL_AGENT_ADDR")
			}
			if secret == "" {
				missing = append(missing, "SHOAL_RUN_SECRET")
			}
			if len(missing) > 0 {
				return fmt.Errorf("%s not set: 'shoal checkpoint commit' runs inside a rank of an MPI job started by Shoal, which sets them", strings.Join(missing, " and "))
			}
			resp, err := postCommit(cmd.Context(), g.tls.agentHTTP(), addr, secret, api.CheckpointCommit{Epoch: epoch, Rank: rank})
			if err != nil {
				return fmt.Errorf("committing epoch %d of rank %d: %w", epoch, rank, err)
			}
			if verbose {
				fmt.Fprintf(g.stdout, "Epoch %d of rank %d committed: the agent holds %d files, %s.\n",
					resp.Epoch, resp.Rank, resp.Files, humanBytes(resp.Bytes))
			}
			return nil
		},
	}
	commit.Flags().IntVar(&rankFlag, "rank", 0, "the rank (default: $OMPI_COMM_WORLD_RANK or $PMI_RANK)")
	commit.Flags().BoolVarP(&verbose, "verbose", "v", false, "print what the agent took")
	cmd.AddCommand(commit)
	return cmd
}

// commitRank returns the rank from --rank, else from Open MPI's or
// MPICH's environment.
func commitRank(flagSet bool, flag int) (int, error) {
	if flagSet {
		if flag < 0 {
			return 0, fmt.Errorf("--rank %d: a rank is not negative", flag)
		}
		return flag, nil
	}
	for _, v := range []string{"OMPI_COMM_WORLD_RANK", "PMI_RANK"} {
		s := os.Getenv(v)
		if s == "" {
			continue
		}
		r, err := strconv.Atoi(s)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("%s=%q is not a rank", v, s)
		}
		return r, nil
	}
	return 0, errors.New("no rank: set --rank, or run under mpirun (OMPI_COMM_WORLD_RANK or PMI_RANK)")
}

// postCommit sends a commit to the agent at addr and returns its answer.
func postCommit(ctx context.Context, client *http.Client, addr, secret string, cc api.CheckpointCommit) (*api.CheckpointCommitResponse, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	body, _ := json.Marshal(cc)
	ctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(addr, "/")+"/v1/local/checkpoint", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("SHOAL_AGENT_ADDR %q: %w", addr, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(api.RunSecretHeader, secret)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the node's agent at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
			return nil, fmt.Errorf("the agent refused (%s): %s", resp.Status, eb.Error.Message)
		}
		return nil, fmt.Errorf("the agent answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var out api.CheckpointCommitResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decoding the agent's answer: %w", err)
	}
	return &out, nil
}

// jobCheckpointsCmd is `shoal job checkpoints JOB`.
func jobCheckpointsCmd(g *globals) *cobra.Command {
	var waitEpoch int64
	cmd := &cobra.Command{
		Use:   "checkpoints JOB",
		Short: "List an MPI job's checkpoint epochs",
		Long: `List an MPI job's checkpoint epochs, oldest first: their state (partial while
some rank has not made its files durable, complete once every rank has, deleted
beyond checkpoint.keep), how many ranks' files are durable, their size and
when they were created and completed. A restart resumes from the last complete
epoch; a partial epoch is never used.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if waitEpoch > 0 {
				if err := waitForEpoch(cmd.Context(), g.client(), args[0], waitEpoch); err != nil {
					return err
				}
			}
			cps, err := g.client().JobCheckpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if cps == nil {
				cps = []*api.Checkpoint{}
			}
			return g.view(cps, func() error {
				if len(cps) == 0 {
					fmt.Fprintf(g.stdout, "Job %s has no checkpoints yet.\n", args[0])
					return nil
				}
				t := newTable(g.stdout, "EPOCH", "STATE", "DURABLE", "SIZE", "CREATED", "COMPLETED")
				for _, c := range cps {
					completed := "-"
					if !c.Completed.IsZero() {
						completed = c.Completed.Local().Format("2006-01-02 15:04:05")
					}
					t.row(c.Epoch, c.State, fmt.Sprintf("%d/%d", c.Durable, c.Ranks), humanBytes(c.Bytes),
						c.Created.Local().Format("2006-01-02 15:04:05"), completed)
				}
				t.flush()
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&waitEpoch, "wait-epoch", 0, "first wait until epoch N (or a later one) is complete; fails if the job ends before")
	addOutputFlag(cmd, g)
	return cmd
}

// waitForEpoch follows a job with blocking queries until its last complete
// checkpoint epoch is at least n; it fails if the job ends before.
func waitForEpoch(ctx context.Context, cl *api.Client, id string, n int64) error {
	var index uint64
	for {
		j, idx, err := cl.JobSummary(ctx, id, &api.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			return err
		}
		index = idx
		if j.MPIStatus == nil {
			return fmt.Errorf("job %s is a %s job; only mpi jobs have checkpoints", id, j.Type)
		}
		if j.MPIStatus.LastEpoch >= n {
			return nil
		}
		switch j.State {
		case api.JobComplete, api.JobFailed, api.JobCancelled:
			return fmt.Errorf("job %s is %s and its last complete epoch is %d, not %d", id, j.State, j.MPIStatus.LastEpoch, n)
		}
	}
}

// printMPIStatus prints an mpi job's gang: ranks, nodes, restarts and the
// last complete checkpoint.
func printMPIStatus(g *globals, j *api.Job) {
	m := j.MPIStatus
	if m == nil {
		return
	}
	nodes := "not placed"
	if len(m.GangNodes) > 0 {
		nodes = strings.Join(m.GangNodes, ", ")
	}
	word := "nodes"
	if m.Nodes == 1 {
		word = "node"
	}
	fmt.Fprintf(g.stdout, "MPI: %d ranks on %d %s (%s)\n", m.Ranks, m.Nodes, word, nodes)
	epoch := "none"
	if m.LastEpoch > 0 {
		epoch = strconv.FormatInt(m.LastEpoch, 10)
	}
	restarts := strconv.Itoa(m.Restarts)
	if j.MPI != nil {
		restarts += " of " + strconv.Itoa(j.MPI.MaxRestarts)
	}
	fmt.Fprintf(g.stdout, "Restarts: %s; last complete checkpoint epoch: %s\n", restarts, epoch)
	if !m.RestartingSince.IsZero() {
		from := "from scratch"
		if m.RestartFrom > 0 {
			from = fmt.Sprintf("from epoch %d", m.RestartFrom)
		}
		fmt.Fprintf(g.stdout, "Restarting %s since %s\n", from, m.RestartingSince.Local().Format("15:04:05.000"))
	}
}
