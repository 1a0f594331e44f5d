package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestClusterTokens runs an installation that requires the operator token
// and checks, through the CLI, that a cluster's token and the cluster's
// tasks reach only that cluster's jobs and /clusters/NAME.
func TestClusterTokens(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, Token: "e2e-operator-token"})

	if _, errOut, code := in.ShoalAs("", "node", "list"); code == 0 || !strings.Contains(errOut, "requires a token") {
		t.Errorf("node list without a token: exit %d, stderr %q; want a refusal asking for a token", code, errOut)
	}
	if _, errOut, code := in.ShoalAs("guess", "node", "list"); code == 0 || !strings.Contains(errOut, "not valid") {
		t.Errorf("node list with a wrong token: exit %d, stderr %q; want a refusal", code, errOut)
	}

	created := mustShoal(t, in, "cluster", "create", "c1", "--nodes", "1")
	mustShoal(t, in, "cluster", "create", "c2", "--nodes", "1")
	c1 := strings.TrimSpace(mustShoal(t, in, "cluster", "token", "c1"))
	if c1 == "" || !strings.Contains(created, c1) {
		t.Fatalf("cluster token %q not shown by create: %q", c1, created)
	}
	putData(t, in, "/clusters/c2/secret.txt", []byte("c2 only\n"))
	putData(t, in, "/clusters/c1/in.txt", []byte("hello c1\n"))

	// As a user holding c1's token.
	refused := []struct {
		args []string
		want string
	}{
		{[]string{"fs", "ls", "/"}, "outside /clusters/c1"},
		{[]string{"fs", "cat", "/clusters/c2/secret.txt"}, "outside /clusters/c1"},
		{[]string{"fs", "rm", "/clusters/c2/secret.txt"}, "outside /clusters/c1"},
		{[]string{"node", "list"}, "may not use"},
		{[]string{"cluster", "delete", "c2"}, "may not use"},
		{[]string{"cluster", "status", "c2"}, "no cluster named"},
	}
	for _, r := range refused {
		if _, errOut, code := in.ShoalAs(c1, r.args...); code == 0 || !strings.Contains(errOut, r.want) {
			t.Errorf("shoal %s with c1's token: exit %d, stderr %q; want a refusal containing %q", strings.Join(r.args, " "), code, errOut, r.want)
		}
	}
	if out, errOut, code := in.ShoalAs(c1, "fs", "cat", "/clusters/c1/in.txt"); code != 0 || out != "hello c1\n" {
		t.Errorf("fs cat of its own file with c1's token: exit %d, %q, %s", code, out, errOut)
	}
	if got := string(download(t, in, "/clusters/c2/secret.txt")); got != "c2 only\n" {
		t.Errorf("c2's file after refused requests: %q", got)
	}

	// A task of c1 acts as c1: the agent gives it c1's token, never the
	// operator's.
	id := submit(t, in, `
name: as-c1
cluster: c1
groups:
  - name: g
    count: 1
    command:
      - sh
      - -c
      - |
        test "$SHOAL_TOKEN" != e2e-operator-token && echo "token=cluster"
        `+in.Bin+` fs cat /clusters/c2/secret.txt 2>&1; echo "cross-cluster=$?"
        `+in.Bin+` node list >/dev/null; echo "nodes=$?"
        `+in.Bin+` fs cat /clusters/c1/in.txt
        echo made | `+in.Bin+` fs put - /clusters/c1/from-task.txt && echo "put=ok"
`)
	job := waitJobState(t, in, id, api.JobComplete, 60*time.Second)
	logs := mustShoal(t, in, "job", "logs", job.ID, "--task", "0")
	for _, want := range []string{"token=cluster", "cross-cluster=1", "nodes=1", "hello c1", "put=ok", "outside /clusters/c1"} {
		if !strings.Contains(logs, want) {
			t.Errorf("task output lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "c2 only") {
		t.Errorf("a task of c1 read c2's file:\n%s", logs)
	}
	if got := string(download(t, in, "/clusters/c1/from-task.txt")); got != "made\n" {
		t.Errorf("file the task wrote: %q", got)
	}

	// Rotation: the old token stops working at once.
	mustShoal(t, in, "cluster", "token", "c1", "--rotate")
	if _, errOut, code := in.ShoalAs(c1, "fs", "ls", "/clusters/c1"); code == 0 || !strings.Contains(errOut, "not valid") {
		t.Errorf("old token after rotation: exit %d, stderr %q; want a refusal", code, errOut)
	}
}
