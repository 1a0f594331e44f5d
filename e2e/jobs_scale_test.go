package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// TestLargeJobViews submits a 100,000-task job to a cluster with room for
// one task at a time and inspects it while 99,999 tasks wait: the summary
// and filtered task pages through the shoal binary and over HTTP, and bad
// filters refused with a message naming the parameter.
func TestLargeJobViews(t *testing.T) {
	const tasks = 100000
	in := testutil.StartInstallation(t, testutil.Options{Agents: 1, AgentCPU: 1000, AgentMemory: 1024})
	mustShoal(t, in, "cluster", "create", "big", "--nodes", "1")
	id := submit(t, in, `name: wide
cluster: big
groups:
  - name: work
    count: 100000
    command: ["/bin/sleep", "600"]
    resources: {cpu: 1000, memory: 64}
`)
	var sum api.Job
	testutil.WaitFor(t, time.Minute, func() (bool, string) {
		out, stderr, code := in.Shoal("job", "status", id, "-o", "json")
		if code != 0 {
			return false, stderr
		}
		sum = api.Job{}
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			t.Fatalf("job status -o json is not one JSON object: %v", err)
		}
		return sum.Counts.Running == 1, fmt.Sprintf("counts %+v", sum.Counts)
	})
	if want := (api.TaskCounts{Pending: tasks - 1, Running: 1}); sum.Counts != want {
		t.Errorf("counts: got %+v, want %+v", sum.Counts, want)
	}
	if len(sum.GroupStatus) != 1 || sum.GroupStatus[0].Counts != sum.Counts {
		t.Errorf("group status: got %+v, want one group counting %+v", sum.GroupStatus, sum.Counts)
	}
	if len(sum.Tasks) != 0 {
		t.Errorf("summary lists %d tasks, want none", len(sum.Tasks))
	}

	// The human summary fits on a screen.
	human := mustShoal(t, in, "job", "status", id)
	if lines := strings.Count(human, "\n"); lines > 40 || !strings.Contains(human, "of 100000") {
		t.Errorf("job status: got %d lines, want at most 40 that count 100000 tasks:\n%s", lines, human)
	}

	// A filtered page through the CLI.
	var page api.TaskPage
	out := mustShoal(t, in, "job", "status", id, "--tasks", "--state", "pending", "--limit", "5", "--offset", "50000", "-o", "json")
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		t.Fatalf("job status --tasks -o json: %v\n%s", err, out)
	}
	if page.Total != tasks-1 || page.NextOffset != 50005 || len(page.Tasks) != 5 {
		t.Errorf("pending page: got total %d next %d and %d tasks, want %d, 50005 and 5", page.Total, page.NextOffset, len(page.Tasks), tasks-1)
	}
	for k, tk := range page.Tasks {
		if tk.State != api.TaskPending || tk.Group != "work" || k > 0 && tk.Index != page.Tasks[k-1].Index+1 {
			t.Errorf("pending page task %d: got %s %s, want consecutive pending tasks of group work", k, tk.ID, tk.State)
		}
	}
	human = mustShoal(t, in, "job", "status", id, "--tasks", "--state", "running")
	if !strings.Contains(human, "node-1") || !strings.Contains(human, "(tasks 1-1 of 1)") {
		t.Errorf("running tasks: got\n%s\nwant one task on node-1", human)
	}

	// The same over HTTP.
	base := "http://" + in.Servers[0].HTTPAddr + "/v1/jobs/" + id
	code, body := httpGet(t, in.HTTPClient(tlsfiles.RoleServer), base+"/tasks?state=running")
	if err := json.Unmarshal([]byte(body), &page); code != http.StatusOK || err != nil {
		t.Fatalf("GET tasks?state=running: %d %v\n%s", code, err, body)
	}
	if page.Total != 1 || len(page.Tasks) != 1 || page.Tasks[0].Node != "node-1" {
		t.Errorf("running page over HTTP: got %+v, want one task on node-1", page)
	}
	code, body = httpGet(t, in.HTTPClient(tlsfiles.RoleServer), base+"/tasks")
	if err := json.Unmarshal([]byte(body), &page); code != http.StatusOK || err != nil {
		t.Fatalf("GET tasks: %d %v", code, err)
	}
	if page.Total != tasks || len(page.Tasks) != api.DefaultTaskLimit || page.NextOffset != api.DefaultTaskLimit {
		t.Errorf("default page: got total %d, %d tasks, next %d; want %d, %d, %d",
			page.Total, len(page.Tasks), page.NextOffset, tasks, api.DefaultTaskLimit, api.DefaultTaskLimit)
	}

	// Bad filters: a 400 naming the parameter, through HTTP and the CLI.
	for _, tt := range []struct{ query, want string }{
		{"state=done", `state: \"done\" is not a task state`},
		{"limit=-1", "limit: -1 is out of range"},
		{"limit=ten", `limit: \"ten\" is not an integer`},
		{"offset=-3", "offset: -3 is negative"},
		{"group=nope", `group: job ` + id + ` has no group \"nope\"`},
	} {
		code, body := httpGet(t, in.HTTPClient(tlsfiles.RoleServer), base+"/tasks?"+tt.query)
		if code != http.StatusBadRequest || !strings.Contains(body, api.CodeInvalid) || !strings.Contains(body, tt.want) {
			t.Errorf("GET tasks?%s: got %d %s, want 400 containing %s", tt.query, code, body, tt.want)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--state", "done"}, `state: "done" is not a task state`},
		{[]string{"--limit", "-1"}, "limit: -1 is out of range"},
		{[]string{"--group", "nope"}, `has no group "nope"`},
	} {
		args := append([]string{"job", "status", id}, tt.args...)
		_, stderr, code := in.Shoal(args...)
		if code != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("shoal %s: got exit %d, stderr %q; want 1 and %q", strings.Join(args, " "), code, stderr, tt.want)
		}
	}
}

func httpGet(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
