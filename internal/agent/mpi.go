package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusterpki"
	"github.com/shoal-dev/shoal/internal/mpi"
	"github.com/shoal-dev/shoal/internal/sandbox"
)

// MPI tasks. Every task of an mpi job's gang runs `shoal mpi host` (see
// package mpi) in its sandbox; task 0 also runs the user's command. The
// agent writes the hostfile, sets the environment that makes Open MPI use
// `shoal mpi rsh` as its remote shell, and carries launches between
// nodes: from a run's rsh (local API, authenticated by the run's secret)
// to the peer node's agent (mutual TLS with the cluster's credentials),
// which hands them to its run's wrapper.

// peerRunWait bounds how long a peer launch waits for this node's run of
// the gang to appear and its wrapper to listen: placement, input staging
// and checkpoint restore may lag behind the launcher's node.
const peerRunWait = 2 * time.Minute

// newRunSecret returns a fresh random run secret.
func newRunSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making a run secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// checkpointDir is the local checkpoint directory of an mpi job on this
// node.
func checkpointDir(dataDir string, t *api.Task) string {
	return filepath.Join(allocRoot(dataDir), t.Cluster, t.JobID, "checkpoints")
}

// startMPI prepares and launches an mpi run: stage the job's files into
// the working directory, restore the last complete checkpoint, write the
// hostfile, and start the wrapper.
func (a *Agent) startMPI(r *run, spec *sandbox.Spec, fail func(string, error) error) {
	t := r.task
	ctx, cancel := r.context(a.ctx)
	defer cancel()
	stopped := func() bool {
		if r.isStopped() {
			close(r.done)
			return true
		}
		return false
	}
	if len(t.MPI.Nodes) == 0 || t.Index >= len(t.MPI.Nodes) || t.MPI.Nodes[t.Index] != a.cfg.Name {
		fail("starting mpi task", fmt.Errorf("task %d's gang %v does not place it on this node %s", t.Index, t.MPI.Nodes, a.cfg.Name))
		return
	}
	if err := a.stageFiles(ctx, t, r.dir, spec.Dir); err != nil {
		if !stopped() {
			fail("staging the job's files", err)
		}
		return
	}
	if err := os.MkdirAll(r.ckptDir, 0o755); err != nil {
		fail("creating the checkpoint directory", err)
		return
	}
	// A run of the job's previous placement on this node may still be
	// dying; its ranks must not write into the directories restored now.
	if err := a.waitOlderRuns(ctx, t); err != nil {
		if !stopped() {
			fail("waiting for the job's previous run on this node to end", err)
		}
		return
	}
	if err := a.restoreCheckpoint(ctx, t, r.ckptDir); err != nil {
		if !stopped() {
			fail(fmt.Sprintf("restoring checkpoint epoch %d", t.MPI.RestartEpoch), err)
		}
		return
	}
	hostfile := filepath.Join(r.dir, "hostfile")
	if err := os.WriteFile(hostfile, hostfileContent(t.MPI), 0o644); err != nil {
		fail("writing the hostfile", err)
		return
	}
	spec.Env = envList(a.mpiEnv(t, r, spec.Dir, hostfile))
	spec.Command = a.wrapperCommand(t)
	if stopped() {
		return
	}
	if err := a.launch(r, spec, fail); err != nil {
		a.log.Error("starting task", "task", t.ID, "err", err)
		return
	}
	// The checkpoint requests last as long as the run.
	runCtx, runCancel := context.WithCancel(a.ctx)
	go func() {
		select {
		case <-r.done:
		case <-r.stopped:
		}
		runCancel()
	}()
	go a.requestCheckpoints(runCtx, t, r.ckptDir)
}

// stageFiles fetches the job's files (t.Inputs) and puts each into the
// working directory under its base name, executable, as the issue's
// `files` promise: a program and its data next to where mpirun runs.
func (a *Agent) stageFiles(ctx context.Context, t *api.Task, runDir, work string) error {
	if len(t.Inputs) == 0 {
		return nil
	}
	paths, err := a.fetchInputs(ctx, t, filepath.Join(runDir, "inputs"))
	if err != nil {
		return err
	}
	seen := map[string]string{}
	for k, p := range paths {
		base := filepath.Base(p)
		if prev, ok := seen[base]; ok {
			return fmt.Errorf("files %s and %s have the same name %s in the working directory", prev, t.Inputs[k], base)
		}
		seen[base] = t.Inputs[k]
		dst := filepath.Join(work, base)
		os.Remove(dst)
		if err := os.Link(p, dst); err != nil {
			if _, err := cloneOrCopyFile(p, dst, ficlone); err != nil {
				return fmt.Errorf("staging %s: %w", t.Inputs[k], err)
			}
		}
		if err := os.Chmod(dst, 0o755); err != nil {
			return fmt.Errorf("staging %s: %w", t.Inputs[k], err)
		}
	}
	return nil
}

// hostfileContent is Open MPI's hostfile for the gang: one `NODE slots=S`
// line per node, in task index order, so that by-slot mapping puts ranks
// [i*S, (i+1)*S) on the gang's node i.
func hostfileContent(m *api.TaskMPI) []byte {
	var b strings.Builder
	for _, n := range m.Nodes {
		fmt.Fprintf(&b, "%s slots=%d\n", n, m.SlotsPerNode)
	}
	return []byte(b.String())
}

// wrapperCommand is the run's command: `shoal mpi host`, with the user's
// command on task 0. The host name is set only in a run with its own UTS
// namespace: never the host's.
func (a *Agent) wrapperCommand(t *api.Task) []string {
	cmd := []string{a.shoalBin, "mpi", "host"}
	if a.driver.Isolated() {
		cmd = append(cmd, "--hostname", a.cfg.Name)
	}
	if t.Index == 0 {
		cmd = append(cmd, "--launch", "--")
		cmd = append(cmd, t.Command...)
	}
	return cmd
}

// mpiEnv is an mpi run's environment: the task's, plus what makes mpirun
// use the hostfile and Shoal's remote shell, and what the ranks need to
// checkpoint.
func (a *Agent) mpiEnv(t *api.Task, r *run, work, hostfile string) map[string]string {
	env := a.taskEnvMap(t, work)
	rsh := a.shoalBin + " mpi rsh"
	restart := ""
	if t.MPI.RestartEpoch > 0 {
		restart = strconv.FormatInt(t.MPI.RestartEpoch, 10)
	}
	for k, v := range map[string]string{
		"SHOAL_HOSTFILE":                 hostfile,
		"OMPI_MCA_orte_default_hostfile": hostfile,
		// Open MPI splits the agent on spaces and runs AGENT HOST orted ...
		"OMPI_MCA_plm_rsh_agent": rsh,
		// Only mpirun launches daemons: no orted calls rsh in turn.
		"OMPI_MCA_plm_rsh_no_tree_spawn": "1",
		// Tasks run as the agent's user, root on a real node; the sandbox
		// is what confines them.
		"OMPI_ALLOW_RUN_AS_ROOT":         "1",
		"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
		// MPICH's mpiexec (hydra) takes the same agent.
		"HYDRA_LAUNCHER":       "rsh",
		"HYDRA_LAUNCHER_EXEC":  rsh,
		"SHOAL_CHECKPOINT_DIR": r.ckptDir,
		"SHOAL_RESTART_EPOCH":  restart,
		"SHOAL_RUN_SECRET":     r.secret,
		"SHOAL_AGENT_ADDR":     a.taskAgentAddr(t),
		"SHOAL_MPI_RANKS":      strconv.Itoa(t.MPI.Ranks),
		"SHOAL_MPI_NODES":      strings.Join(t.MPI.Nodes, ","),
	} {
		env[k] = v
	}
	// On a cluster network, the ranks talk over it (the run sees no other
	// interface but loopback). Nodes reachable only over loopback (tests,
	// shoal dev): Open MPI must not pick another interface for its own
	// traffic.
	if r.addr.IsValid() {
		for _, k := range []string{"OMPI_MCA_oob_tcp_if_include", "OMPI_MCA_btl_tcp_if_include"} {
			if _, set := t.Env[k]; !set {
				env[k] = "eth0"
			}
		}
	} else if host, _, err := net.SplitHostPort(a.cfg.AdvertiseAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			for _, k := range []string{"OMPI_MCA_oob_tcp_if_include", "OMPI_MCA_btl_tcp_if_include"} {
				if _, set := t.Env[k]; !set {
					env[k] = "127.0.0.0/8"
				}
			}
		}
	}
	return env
}

// taskAgentAddr is the agent's URL as t's runs reach it: the node's
// endpoint on the cluster network, or the agent's own HTTP address.
func (a *Agent) taskAgentAddr(t *api.Task) string {
	if e := a.endpointAddr(t.Cluster); e != "" {
		return e
	}
	return a.scheme() + "://" + a.localAddr()
}

// localAddr is the agent's HTTP address as its tasks reach it.
func (a *Agent) localAddr() string {
	addr := a.ln.Addr().(*net.TCPAddr)
	if addr.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
	}
	return addr.String()
}

// gangHost checks that host is a node of the gang of t, an mpi task.
func gangHost(t *api.Task, host string) error {
	if t.MPI == nil || !slices.Contains(t.MPI.Nodes, host) {
		var nodes []string
		if t.MPI != nil {
			nodes = t.MPI.Nodes
		}
		return fmt.Errorf("host %q is not a node of job %s's gang (its nodes: %s); mpirun may launch only on the hostfile's nodes",
			host, t.JobID, strings.Join(nodes, ", "))
	}
	return nil
}

// handleLocalLaunch is POST /v1/local/launch: a run's `shoal mpi rsh`
// asks to start a command on a node of its gang.
func (a *Agent) handleLocalLaunch(w http.ResponseWriter, req *http.Request) {
	r := a.runBySecret(req.Header.Get(api.RunSecretHeader))
	if r == nil {
		logError(w, http.StatusForbidden, api.CodeForbidden, "no run on node "+a.cfg.Name+" has the secret given in "+api.RunSecretHeader+" (only tasks of an mpi job may launch)")
		return
	}
	var lr mpi.LaunchRequest
	if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&lr); err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "malformed launch request: "+err.Error())
		return
	}
	if len(lr.Command) == 0 {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "the launch request has no command")
		return
	}
	t := r.task
	if err := gangHost(t, lr.Host); err != nil {
		logError(w, http.StatusForbidden, api.CodeForbidden, err.Error())
		return
	}
	if lr.Host == a.cfg.Name {
		a.relayToWrapper(w, req, r, lr.Command)
		return
	}
	body, err := a.launchOnPeer(req.Context(), lr.Host, mpi.PeerLaunchRequest{Job: t.JobID, RunID: t.RunID, Command: lr.Command})
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			logError(w, ae.Status, ae.Code, "node "+lr.Host+" refused the launch: "+ae.Message)
		} else {
			logError(w, http.StatusBadGateway, api.CodeUnavailable, "reaching node "+lr.Host+": "+err.Error())
		}
		return
	}
	defer body.Close()
	relay(w, body)
}

// launchOnPeer sends a launch to host's peer listener and returns the
// frames it streams back. A node that joined the cluster a moment ago
// (this one or host, say a replacement from the pool in a restarted gang)
// may not hold its credentials yet, so failures to connect or to agree on
// a handshake are retried for up to peerRunWait; an answer from host (an
// *api.Error) is final.
func (a *Agent) launchOnPeer(ctx context.Context, host string, pl mpi.PeerLaunchRequest) (io.ReadCloser, error) {
	// Only the retries are bounded: the launch itself (its stream) lasts
	// as long as ctx.
	giveUp := time.NewTimer(peerRunWait)
	defer giveUp.Stop()
	for delay := 10 * time.Millisecond; ; delay = min(delay*2, 250*time.Millisecond) {
		body, err := a.tryPeerLaunch(ctx, host, pl)
		var ae *api.Error
		if err == nil || errors.As(err, &ae) {
			return body, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-giveUp.C:
			return nil, err
		case <-time.After(delay):
		}
	}
}

func (a *Agent) tryPeerLaunch(ctx context.Context, host string, pl mpi.PeerLaunchRequest) (io.ReadCloser, error) {
	node, err := a.client.Node(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("looking up node %s: %w", host, err)
	}
	if node.PeerAddr == "" {
		return nil, fmt.Errorf("node %s accepts no peer connections (its agent advertises no peer address)", host)
	}
	client, err := a.peerClient(host)
	if err != nil {
		return nil, err
	}
	body, err := mpi.PostLaunch(ctx, client, "https://"+node.PeerAddr+"/v1/peer/launch", nil, pl)
	if err != nil {
		client.CloseIdleConnections()
		return nil, err
	}
	return body, nil
}

// handlePeerLaunch is POST /v1/peer/launch on the peer listener: a node
// of this node's cluster asks to start a command in this node's run of a
// gang it belongs to.
func (a *Agent) handlePeerLaunch(w http.ResponseWriter, req *http.Request) {
	id, err := clusterpki.PeerIdentity(req.TLS)
	if err != nil {
		logError(w, http.StatusUnauthorized, api.CodeUnauthorized, "no verified node certificate: "+err.Error())
		return
	}
	var pl mpi.PeerLaunchRequest
	if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&pl); err != nil {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "malformed launch request: "+err.Error())
		return
	}
	if len(pl.Command) == 0 {
		logError(w, http.StatusBadRequest, api.CodeInvalid, "the launch request has no command")
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), peerRunWait)
	defer cancel()
	r, status, err := a.waitPeerRun(ctx, id, pl.Job, pl.RunID)
	if err != nil {
		code := api.CodeForbidden
		if status == http.StatusNotFound {
			code = api.CodeNotFound
		}
		logError(w, status, code, err.Error())
		return
	}
	a.relayToWrapper(w, req, r, pl.Command)
}

// peerRunAllowed says whether peer may launch in this node's run r: r
// must be of an mpi gang of the peer's cluster that lists the peer.
func (a *Agent) peerRunAllowed(id clusterpki.Identity, t *api.Task) error {
	a.mu.Lock()
	cluster := a.cluster
	a.mu.Unlock()
	if t.MPI == nil {
		return fmt.Errorf("task %s is not an mpi task", t.ID)
	}
	if t.Cluster != id.Cluster || cluster != id.Cluster {
		return fmt.Errorf("node %s is not in the cluster of job %s", id, t.JobID)
	}
	if !slices.Contains(t.MPI.Nodes, id.Node) {
		return fmt.Errorf("node %s is not in the gang of job %s run %d (its nodes: %s)", id.Node, t.JobID, t.RunID, strings.Join(t.MPI.Nodes, ", "))
	}
	return nil
}

// waitPeerRun waits until this node has a run of job's gang placement
// runID that peer may launch in; a run that exists but refuses the peer
// is an answer at once.
func (a *Agent) waitPeerRun(ctx context.Context, id clusterpki.Identity, job string, runID uint64) (*run, int, error) {
	tick := time.NewTicker(10 * time.Millisecond) // a launch waits on it: mpirun's start
	defer tick.Stop()
	for {
		var found *run
		a.mu.Lock()
		for _, r := range a.runs {
			if r.task.JobID == job && r.task.RunID == runID && r.secret != "" {
				found = r
				break
			}
		}
		a.mu.Unlock()
		if found != nil {
			if err := a.peerRunAllowed(id, found.task); err != nil {
				return nil, http.StatusForbidden, err
			}
			return found, 0, nil
		}
		select {
		case <-ctx.Done():
			return nil, http.StatusNotFound, fmt.Errorf("node %s has no run %d of job %s (waited %s)", a.cfg.Name, runID, job, peerRunWait)
		case <-tick.C:
		}
	}
}

// relayToWrapper hands a launch to run r's wrapper, once it listens, and
// streams its answer. The wrapper kills the command when the caller goes.
func (a *Agent) relayToWrapper(w http.ResponseWriter, req *http.Request, r *run, command []string) {
	ctx, cancel := context.WithTimeout(req.Context(), peerRunWait)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond) // a launch waits on it: mpirun's start
	defer tick.Stop()
	var conn net.Conn
	for {
		var err error
		if conn, err = mpi.DialHost(ctx, r.netns, r.secret, command); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			logError(w, http.StatusServiceUnavailable, api.CodeUnavailable,
				fmt.Sprintf("the wrapper of task %s on node %s does not answer: %v", r.task.ID, a.cfg.Name, err))
			return
		case <-r.done:
			logError(w, http.StatusGone, api.CodeNotFound, fmt.Sprintf("task %s on node %s has ended", r.task.ID, a.cfg.Name))
			return
		case <-tick.C:
		}
	}
	defer conn.Close()
	// The wrapper sees the caller go when this connection closes.
	go func() {
		<-req.Context().Done()
		conn.Close()
	}()
	relay(w, conn)
}

// relay streams a launch's frames from src to the response.
func relay(w http.ResponseWriter, src io.Reader) {
	w.Header().Set("Content-Type", mpi.FramesContentType)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	flush := func() { rc.Flush() }
	flush()
	if err := mpi.Relay(w, flush, src); err != nil {
		mpi.WriteFrame(w, mpi.FrameError, []byte(err.Error()))
		flush()
	}
}

// waitOlderRuns waits until the runs of t's job that this node is stopping
// (an older placement of its gang) have ended.
func (a *Agent) waitOlderRuns(ctx context.Context, t *api.Task) error {
	a.mu.Lock()
	var older []*run
	for _, o := range a.stopping {
		if o.task.JobID == t.JobID && o.task.RunID < t.RunID {
			older = append(older, o)
		}
	}
	a.mu.Unlock()
	for _, o := range older {
		select {
		case <-o.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
