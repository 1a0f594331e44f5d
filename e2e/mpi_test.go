package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusterpki"
	"github.com/shoal-dev/shoal/internal/mpi"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// These tests run real Open MPI jobs through spawned shoal processes:
// mpirun on the gang's first node starts orted on the others through
// `shoal mpi rsh`, the agents and their mutual-TLS peer channel.

var (
	rankRE  = regexp.MustCompile(`(?m)^rank (\d+) of (\d+) host (\S+) node (\S+)$`)
	tokenRE = regexp.MustCompile(`(?m)^rank (\d+) got token from rank (\d+) on host (\S+)$`)
)

// ringJob is an mpi job running examples/heat's ring on ranks ranks, two a
// node, in cluster c1.
func ringJob(ranks int) string {
	return fmt.Sprintf(`
name: ring
cluster: c1
type: mpi
mpi:
  ranks: %d
  slots_per_node: 2
  command: ["mpirun", "--mca", "btl", "tcp,self", "--mca", "mpi_yield_when_idle", "1", "./ring"]
resources: {cpu: 1000, memory: 64}   # a core a rank, ranks yielding: every node is this one machine
files: [ring]
`, ranks)
}

// gangNodes waits until every task of the mpi job runs and returns the
// gang's nodes in task index order (the hostfile's order).
func gangNodes(t *testing.T, in *testutil.Installation, id string) []string {
	t.Helper()
	var nodes []string
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		j, _, err := in.Client.Job(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		if j.State == api.JobComplete || j.State == api.JobFailed {
			t.Fatalf("job %s ended (%s) before its gang ran: %v", id, j.State, j.Events)
		}
		nodes = make([]string, len(j.Tasks))
		for _, tk := range j.Tasks {
			if tk.State != api.TaskRunning {
				return false, fmt.Sprintf("task %d is %s", tk.Index, tk.State)
			}
			nodes[tk.Index] = tk.Node
		}
		return len(nodes) > 0, "no tasks yet"
	})
	return nodes
}

// TestMPIRingAcrossNodes: 6 ranks on 3 nodes. Every rank runs on the node
// the hostfile puts it on (ranks 2i and 2i+1 on the gang's node i, which
// is also its host name inside the task), and the token really crosses
// nodes.
func TestMPIRingAcrossNodes(t *testing.T) {
	dir := testutil.MPIExamples(t)
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	mustShoal(t, in, "fs", "put", filepath.Join(dir, "ring"), "/clusters/c1/ring")

	id := submit(t, in, ringJob(6))
	nodes := gangNodes(t, in, id)
	job := waitJobEnd(t, in, id, 120*time.Second)
	log := launcherLog(t, in, id)
	if job.State != api.JobComplete {
		stderr, _, _ := in.Shoal("job", "logs", id, "--stderr")
		t.Fatalf("job %s is %s, want complete; events %v\nstdout:\n%s\nstderr:\n%s", id, job.State, job.Events, log, stderr)
	}
	if len(nodes) != 3 {
		t.Fatalf("gang nodes %v, want 3", nodes)
	}

	hostOf := map[int]string{}
	for _, m := range rankRE.FindAllStringSubmatch(log, -1) {
		rank, _ := strconv.Atoi(m[1])
		want := nodes[rank/2]
		if m[2] != "6" || m[3] != want || m[4] != want {
			t.Errorf("%q: want rank %d of 6 on host and node %s (the hostfile's)", m[0], rank, want)
		}
		hostOf[rank] = m[3]
	}
	if len(hostOf) != 6 {
		t.Fatalf("%d ranks reported where they run, want 6:\n%s", len(hostOf), log)
	}
	crossed := 0
	for _, m := range tokenRE.FindAllStringSubmatch(log, -1) {
		rank, _ := strconv.Atoi(m[1])
		from, _ := strconv.Atoi(m[2])
		if m[3] != nodes[from/2] {
			t.Errorf("%q: rank %d runs on %s", m[0], from, nodes[from/2])
		}
		if m[3] != hostOf[rank] {
			crossed++
		}
	}
	if crossed < 3 {
		t.Errorf("the token crossed nodes %d times, want at least 3 (once into each node):\n%s", crossed, log)
	}
	if !regexp.MustCompile(`(?m)^ring ok$`).MatchString(log) {
		t.Errorf("no 'ring ok' in the launcher's log:\n%s", log)
	}
}

// waitJobEnd waits until the job is complete or failed.
func waitJobEnd(t *testing.T, in *testutil.Installation, id string, timeout time.Duration) *api.Job {
	t.Helper()
	var job *api.Job
	testutil.WaitFor(t, timeout, func() (bool, string) {
		j, _, err := in.Client.JobSummary(context.Background(), id, nil)
		if err != nil {
			return false, err.Error()
		}
		job = j
		return j.State == api.JobComplete || j.State == api.JobFailed, fmt.Sprintf("job %s is %s", id, j.State)
	})
	return job
}

// jobProcesses lists the processes (pid: command line) whose environment
// names the job: everything started inside its runs, orted and ranks too.
func jobProcesses(id string) map[int]string {
	out := map[int]string{}
	marker := "\x00SHOAL_JOB_ID=" + id + "\x00"
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !strings.Contains("\x00"+string(env), marker) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out[pid] = strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return out
}

// TestMPICancelLeavesNoProcesses: cancelling an mpi job ends mpirun, the
// orted daemons it started on the other nodes and every rank.
func TestMPICancelLeavesNoProcesses(t *testing.T) {
	testutil.MPIExamples(t) // skips without Open MPI
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	id := submit(t, in, `
name: sleepers
cluster: c1
type: mpi
mpi:
  ranks: 6
  slots_per_node: 2
  command: ["mpirun", "sleep", "600"]
resources: {cpu: 100, memory: 64}
`)
	gangNodes(t, in, id)
	testutil.WaitFor(t, 60*time.Second, func() (bool, string) {
		procs := jobProcesses(id)
		sleeps, orteds := 0, 0
		for _, cmd := range procs {
			switch {
			case cmd == "sleep 600":
				sleeps++
			case strings.Contains(cmd, "orted"):
				orteds++
			}
		}
		return sleeps == 6 && orteds >= 2, fmt.Sprintf("%d ranks and %d orted running, want 6 and 2: %v", sleeps, orteds, procs)
	})
	mustShoal(t, in, "job", "cancel", id)
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		procs := jobProcesses(id)
		return len(procs) == 0, fmt.Sprintf("processes of cancelled job %s left: %v", id, procs)
	})
}

// peerCert gets a certificate for node in its current cluster from the
// servers, as its agent does, and returns it with its credentials.
func peerCert(t *testing.T, in *testutil.Installation, node string) (*clusterpki.Credentials, tls.Certificate) {
	t.Helper()
	key, csr, err := clusterpki.NewNodeKey(node, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := in.AgentClient().NodeCertificate(context.Background(), node, &api.NodeCertificateRequest{CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := clusterpki.NewCredentials(key, []byte(nc.Cert), []byte(nc.CA))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(nc.Cert))
	return creds, tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// TestMPIRemoteLaunchRefusals: nothing can start a process on the nodes of
// a cluster's mpi job but mpirun of that job: not a task of another
// cluster (with its own valid run secret, through its own agent or the
// cluster's), not a caller without a secret, not a TLS client without a
// certificate or with another cluster's, not a node of the same cluster
// outside the job's gang. A gang node's certificate does start a command,
// so the refusals are not a broken set-up.
func TestMPIRemoteLaunchRefusals(t *testing.T) {
	testutil.MPIExamples(t) // skips without Open MPI
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4, Zones: 1})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3")
	mustShoal(t, in, "cluster", "create", "c2", "--nodes", "1")
	id := submit(t, in, `
name: target
cluster: c1
type: mpi
mpi: {ranks: 2, slots_per_node: 1, command: ["sleep", "600"]}
resources: {cpu: 100, memory: 64}
`)
	gang := gangNodes(t, in, id)
	job, _, err := in.Client.Job(context.Background(), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	runID := job.Tasks[0].RunID
	nodes, _, err := in.Client.Nodes(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*api.Node{}
	var outsider, c2node string
	for _, n := range nodes {
		byName[n.Name] = n
		switch {
		case n.Cluster == "c1" && n.Name != gang[0] && n.Name != gang[1]:
			outsider = n.Name
		case n.Cluster == "c2":
			c2node = n.Name
		}
	}
	if outsider == "" || c2node == "" || byName[gang[1]].PeerAddr == "" {
		t.Fatalf("want a c1 node outside the gang %v, a c2 node and peer addresses; nodes %+v", gang, nodes)
	}
	marker := filepath.Join(t.TempDir(), "launched")

	// A task of c2, with its own run's secret: through its agent, and
	// straight to the agent of a c1 gang node.
	other := submit(t, in, fmt.Sprintf(`
name: intruder
cluster: c2
type: mpi
mpi:
  ranks: 1
  slots_per_node: 1
  command: ["sh", "-c", "shoal mpi rsh %[1]s touch %[2]s 2>&1; echo own-agent-exit=$?; SHOAL_AGENT_ADDR=http://%[3]s shoal mpi rsh %[1]s touch %[2]s 2>&1; echo c1-agent-exit=$?"]
resources: {cpu: 100, memory: 64}
`, gang[1], marker, byName[gang[0]].Addr))
	if j := waitJobEnd(t, in, other, 60*time.Second); j.State != api.JobComplete {
		t.Fatalf("intruder job %s: %v", j.State, j.Events)
	}
	log := launcherLog(t, in, other)
	for _, want := range []string{
		fmt.Sprintf("host %q is not a node of job %s's gang", gang[1], other), "own-agent-exit=255", "c1-agent-exit=255",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("intruder's log lacks %q:\n%s", want, log)
		}
	}
	// On its cluster network the intruder cannot even reach the c1 agent;
	// sharing the host's network, it reaches it and is refused.
	if !strings.Contains(log, "no run on node "+gang[0]+" has the secret") && !strings.Contains(log, "connection refused") {
		t.Errorf("intruder's log shows neither a refusal nor an unreachable agent:\n%s", log)
	}

	// A caller with no secret at the agent's local API.
	_, err = mpi.PostLaunch(context.Background(), in.HTTPClient(tlsfiles.RoleAgent), "http://"+byName[gang[0]].Addr+"/v1/local/launch", nil,
		mpi.LaunchRequest{Host: gang[1], Command: []string{"touch", marker}})
	if ae, ok := err.(*api.Error); !ok || ae.Status != http.StatusForbidden {
		t.Errorf("local launch without a secret: got %v, want 403", err)
	}

	// Peer callers.
	peerLaunch := func(cfg *tls.Config, command ...string) (string, error) {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
		body, err := mpi.PostLaunch(context.Background(), client, "https://"+byName[gang[1]].PeerAddr+"/v1/peer/launch", nil,
			mpi.PeerLaunchRequest{Job: id, RunID: runID, Command: command})
		if err != nil {
			return "", err
		}
		defer body.Close()
		var out strings.Builder
		status, err := mpi.Follow(body, &out, &out)
		if err == nil && status != 0 {
			err = fmt.Errorf("exit status %d", status)
		}
		return out.String(), err
	}
	_, c2cert := peerCert(t, in, c2node)
	outsiderCreds, _ := peerCert(t, in, outsider)
	memberCreds, _ := peerCert(t, in, gang[0])
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {InsecureSkipVerify: true},
		"a certificate of cluster c2": {InsecureSkipVerify: true,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c2cert, nil }},
	} {
		if out, err := peerLaunch(cfg, "touch", marker); err == nil {
			t.Errorf("peer launch with %s: got %q, want the handshake refused", name, out)
		}
	}
	out, err := peerLaunch(clusterpki.ClientConfig(outsiderCreds, gang[1]), "touch", marker)
	if ae, ok := err.(*api.Error); !ok || ae.Status != http.StatusForbidden || !strings.Contains(ae.Message, "is not in the gang of job "+id) {
		t.Errorf("peer launch from %s, in c1 but not in the gang: got %q, %v; want 403 naming the gang", outsider, out, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a refused caller started a process: the marker file exists")
	}
	// The same command from a gang node does run (so the marker would
	// have shown a refused launch that ran).
	if out, err := peerLaunch(clusterpki.ClientConfig(memberCreds, gang[1]), "echo", "from", "the", "gang;", "touch", marker); err != nil || out != "from the gang\n" {
		t.Errorf("peer launch from gang node %s: got %q, %v; want the command's output", gang[0], out, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the gang node's launch ran nothing: %v", err)
	}
}
