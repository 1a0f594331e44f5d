package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// clusterJSON reads a cluster through `shoal cluster status -o json`.
func clusterJSON(t *testing.T, in *testutil.Installation, name string) *api.Cluster {
	t.Helper()
	var c api.Cluster
	if err := json.Unmarshal([]byte(mustShoal(t, in, "cluster", "status", name, "-o", "json")), &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// memberAlone returns a member of the cluster, the only member in its zone
// if one is, and the pool nodes.
func memberAlone(t *testing.T, in *testutil.Installation, cluster string) (string, []string) {
	t.Helper()
	nodes, _, err := in.Client.Nodes(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]int{}
	for _, n := range nodes {
		if n.Cluster == cluster {
			zones[n.Zone]++
		}
	}
	var member string
	var pool []string
	for _, n := range nodes {
		switch {
		case n.Cluster == "":
			pool = append(pool, n.Name)
		case n.Cluster == cluster && (member == "" || zones[n.Zone] == 1):
			member = n.Name
		}
	}
	if member == "" {
		t.Fatalf("cluster %s has no member", cluster)
	}
	return member, pool
}

// TestOrderlyStopKeepsMember stops a member's agent with SIGTERM: the node
// stays in its cluster with its data (no pool node is drawn), the cluster
// says it is degraded and why, and the restarted agent is a member again
// with its cluster's data in place.
func TestOrderlyStopKeepsMember(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 4, Zones: 3})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "3", "--zones", "3")
	waitJobState(t, in, submit(t, in, fmt.Sprintf(sleepJob, 3, "0")), api.JobComplete, 30*time.Second)
	victim, pool := memberAlone(t, in, "c1")
	members := clusterJSON(t, in, "c1").Nodes
	file := randomBytes(3, 1<<20)
	putData(t, in, "/clusters/c1/f", file)
	replicasOf := func() map[string]bool {
		got := map[string]bool{}
		for _, r := range statJSON(t, in, "/clusters/c1/f").Chunks[0].Replicas {
			got[r.Node] = true
		}
		return got
	}
	replicas := replicasOf()
	if !replicas[victim] {
		t.Fatalf("replicas %v: want one on %s, a member (members' nodes come first)", replicas, victim)
	}
	data := filepath.Join(in.Dir, victim, "alloc", "c1")
	if _, err := os.Stat(data); err != nil {
		t.Fatalf("cluster data on %s before the stop: %v", victim, err)
	}

	in.Agent(victim).Stop()
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		n, err := in.Client.Node(context.Background(), victim)
		if err != nil {
			return false, err.Error()
		}
		return n.State == api.NodeDown, "node " + victim + " is " + n.State
	})
	c := clusterJSON(t, in, "c1")
	if !slices.Equal(c.Nodes, members) {
		t.Errorf("members after an orderly stop: got %v, want %v (no refill)", c.Nodes, members)
	}
	if c.State != api.ClusterDegraded || len(c.Problems) != 1 || !strings.Contains(c.Problems[0], victim+" is down; it stays a member until") {
		t.Errorf("cluster while %s is away: got %s %q, want degraded saying it stays a member", victim, c.State, c.Problems)
	}
	if out := mustShoal(t, in, "cluster", "status", "c1"); !strings.Contains(out, "degraded") || !strings.Contains(out, victim+" is down") {
		t.Errorf("cluster status does not say it is degraded and why:\n%s", out)
	}
	for _, p := range pool {
		if n, _ := in.Client.Node(context.Background(), p); n == nil || n.Cluster != "" {
			t.Errorf("pool node %s was drawn while %s is expected back", p, victim)
		}
	}
	if got := download(t, in, "/clusters/c1/f"); !bytes.Equal(got, file) {
		t.Error("the file reads differently while a replica's node is away")
	}

	in.Agent(victim).Restart(t)
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		c := clusterJSON(t, in, "c1")
		n, err := in.Client.Node(context.Background(), victim)
		if err != nil {
			return false, err.Error()
		}
		return n.State == api.NodeReady && c.State == api.ClusterHealthy,
			fmt.Sprintf("node %s is %s in %q; cluster %s %q", victim, n.State, n.Cluster, c.State, c.Problems)
	})
	if got := clusterJSON(t, in, "c1").Nodes; !slices.Equal(got, members) {
		t.Errorf("members after the restart: got %v, want %v", got, members)
	}
	// A job spread over the three zones runs on the restarted node too,
	// so its agent has seen its work (and would have wiped data by now).
	waitJobState(t, in, submit(t, in, fmt.Sprintf(sleepJob, 3, "0")), api.JobComplete, 30*time.Second)
	if _, err := os.Stat(data); err != nil {
		t.Errorf("cluster data on %s after the restart: %v", victim, err)
	}
	if log := in.Agent(victim).Log(); strings.Contains(log, "wiped data") {
		t.Errorf("the restarted agent wiped its cluster's data:\n%s", log)
	}
	// Its replica was neither copied elsewhere nor dropped.
	if got := replicasOf(); !maps.Equal(got, replicas) {
		t.Errorf("replicas after the restart: got %v, want %v", got, replicas)
	}
	id := statJSON(t, in, "/clusters/c1/f").Chunks[0].ID
	if chunkPath(in, victim, id) == "" {
		t.Errorf("the chunk file on %s is gone after the restart", victim)
	}
}

// TestStoppedMemberNotBackIsReplaced: with a short --rejoin-grace, a member
// whose agent stopped and stays away is replaced from the pool, and joins
// the pool when it comes back.
func TestStoppedMemberNotBackIsReplaced(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, ServerArgs: []string{"--rejoin-grace", "1s"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2")
	victim, pool := memberAlone(t, in, "c1")
	if len(pool) != 1 {
		t.Fatalf("pool %v, want one node", pool)
	}
	in.Agent(victim).Stop()
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		c := clusterJSON(t, in, "c1")
		return slices.Contains(c.Nodes, pool[0]) && !slices.Contains(c.Nodes, victim),
			fmt.Sprintf("members %v, want %s in place of %s", c.Nodes, pool[0], victim)
	})
	if c := clusterJSON(t, in, "c1"); !hasEvent(c.Events, "member-lost", "not back in time") {
		t.Errorf("cluster events %v do not say why %s was replaced", c.Events, victim)
	}
	in.Agent(victim).Restart(t)
	testutil.WaitFor(t, 20*time.Second, func() (bool, string) {
		n, err := in.Client.Node(context.Background(), victim)
		if err != nil {
			return false, err.Error()
		}
		return n.State == api.NodeReady && n.Cluster == "", fmt.Sprintf("node %s is %s in %q, want ready in the pool", victim, n.State, n.Cluster)
	})
}

// TestWholeRestartLongerThanGrace stops every agent in an orderly way, then
// the server, for longer than --rejoin-grace, and starts them again: the
// cluster keeps its members, because the grace counts only while a leader
// runs.
func TestWholeRestartLongerThanGrace(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 3, Zones: 3, ServerArgs: []string{"--rejoin-grace", "2s"}})
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2", "--zones", "2")
	members := clusterJSON(t, in, "c1").Nodes
	for _, a := range in.Agents {
		a.Stop()
	}
	in.Servers[0].Stop()
	stopped := time.Now()
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		return time.Since(stopped) > 3*time.Second, "waiting out the grace while the installation is down"
	})
	in.Servers[0].Restart(t)
	in.WaitForLeader()
	for _, a := range in.Agents {
		a.Restart(t)
	}
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		c := clusterJSON(t, in, "c1")
		return c.State == api.ClusterHealthy, fmt.Sprintf("cluster %s %q members %v", c.State, c.Problems, c.Nodes)
	})
	c := clusterJSON(t, in, "c1")
	if !slices.Equal(c.Nodes, members) {
		t.Errorf("members after a restart longer than the grace: got %v, want %v", c.Nodes, members)
	}
	if hasEvent(c.Events, "member-lost", "") {
		t.Errorf("cluster events %v: a member was replaced", c.Events)
	}
}
