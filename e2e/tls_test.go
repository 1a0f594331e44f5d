package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestTaskCLIUsesTLS: a task's shoal CLI finds the installation's CA in
// SHOAL_CACERT and reaches the servers and the data nodes over TLS.
func TestTaskCLIUsesTLS(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, Zones: 2})
	if in.TLS == nil {
		t.Fatal("the installation runs without TLS; want TLS by default")
	}
	mustShoal(t, in, "cluster", "create", "c1", "--nodes", "2", "--zones", "2")
	job := writeFile(t, "tls.yaml", `
name: tls
cluster: c1
type: batch
groups:
  - name: put
    count: 1
    command: ["/bin/sh", "-c", "test -f \"$SHOAL_CACERT\" && echo from-task | shoal fs put - /clusters/c1/from-task.txt && shoal fs cat /clusters/c1/from-task.txt"]
    resources: {cpu: 100, memory: 64}
`)
	if out, errOut, code := in.Shoal("job", "run", job, "--wait"); code != 0 {
		t.Fatalf("job run --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	if got := mustShoal(t, in, "fs", "cat", "/clusters/c1/from-task.txt"); got != "from-task\n" {
		t.Errorf("the file the task wrote holds %q, want %q", got, "from-task\n")
	}
}

// TestInsecureInstallation: with --insecure everywhere the installation
// runs on plain HTTP, says so in its logs, and the CLI reaches it with
// http:// addresses.
func TestInsecureInstallation(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, Zones: 2, Insecure: true})
	data := randomBytes(3, 300<<10)
	putData(t, in, "/data/plain.bin", data)
	checkSame(t, "fs get over plain HTTP", download(t, in, "/data/plain.bin"), data)
	env := []string{"SHOAL_ADDR=http://" + in.Servers[0].HTTPAddr, "SHOAL_CACERT=", "SHOAL_TOKEN="}
	if out, errOut, code := testutil.RunCLI(t, in.Bin, env, "node", "list"); code != 0 || !strings.Contains(out, "node-2") {
		t.Errorf("node list at an http:// address: exit %d, %q %q", code, out, errOut)
	}
	for _, p := range append([]*testutil.Proc{in.Servers[0].Proc}, in.Agents...) {
		testutil.WaitFor(t, 5*time.Second, func() (bool, string) {
			return strings.Contains(p.Log(), "--insecure: no TLS"), p.Name + " has not warned that it runs without TLS"
		})
	}
}
