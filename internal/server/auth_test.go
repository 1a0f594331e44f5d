package server_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/server"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/testutil"
)

const operatorToken = "operator-secret"

// withToken makes every server require the operator token, and hands it to
// the group's clients.
func withToken(_ int, c *server.Config) {
	c.Token = operatorToken
	c.HeartbeatTTL = time.Hour
}

// authFixture is a group of three servers that require a token, with two
// clusters, c1 and c2, one job in each and a directory in each.
type authFixture struct {
	g        *testutil.InProcGroup
	op       *api.Client // operator, talking to the leader
	c1, c2   *api.Cluster
	job1     string
	job2     string
	leader   int
	follower int
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	g := testutil.StartServers(t, 3, withToken)
	f := &authFixture{g: g, leader: g.Leader(t)}
	f.follower = (f.leader + 1) % 3
	f.op = g.NewClient([]string{g.HTTPAddr(f.leader)}, operatorToken)
	addReadyNode(t, f.op, "n1", "z1", 1000, 1024)
	addReadyNode(t, f.op, "n2", "z2", 1000, 1024)
	var err error
	if f.c1, err = f.op.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 1}); err != nil {
		t.Fatalf("CreateCluster(c1): %v", err)
	}
	if f.c2, err = f.op.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c2", Nodes: 1}); err != nil {
		t.Fatalf("CreateCluster(c2): %v", err)
	}
	if f.c1.Token == "" || f.c2.Token == "" || f.c1.Token == f.c2.Token {
		t.Fatalf("cluster tokens %q and %q: want two distinct non-empty tokens", f.c1.Token, f.c2.Token)
	}
	f.job1 = f.submit(t, f.op, "c1")
	f.job2 = f.submit(t, f.op, "c2")
	for _, d := range []string{"/clusters/c1/data", "/clusters/c2/data"} {
		if err := f.op.FSMkdir(reqCtx(t), &api.Mkdir{Path: d, Parents: true}); err != nil {
			t.Fatalf("FSMkdir(%s): %v", d, err)
		}
	}
	// Tests go through a follower: let it catch up with all of the above.
	tables := slices.Concat(allTables, []string{state.TableFS})
	want := g.Server(f.leader).Store().Snapshot().Index(tables...)
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		got := g.Server(f.follower).Store().Snapshot().Index(tables...)
		return got >= want, fmt.Sprintf("follower at index %d, leader at %d", got, want)
	})
	return f
}

func (f *authFixture) submit(t *testing.T, c *api.Client, cluster string) string {
	t.Helper()
	resp, err := c.SubmitJob(reqCtx(t), &api.JobSpec{Name: "j", Cluster: cluster,
		Groups: []api.GroupSpec{{Name: "g", Count: 1, Command: []string{"sleep", "60"}}}})
	if err != nil {
		t.Fatalf("SubmitJob(%s): %v", cluster, err)
	}
	return resp.ID
}

// call sends one raw request with the given Authorization header value
// through hc.
func call(t *testing.T, hc *http.Client, addr, method, path, auth, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(reqCtx(t), method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAuthentication(t *testing.T) {
	f := newAuthFixture(t)
	addr := f.g.HTTPAddr(f.follower)
	tests := []struct {
		name, auth string
		wantStatus int
		wantInBody string
	}{
		{"no token", "", 401, "requires a token"},
		{"unknown token", "Bearer nope", 401, "not valid"},
		{"not a bearer token", "Basic " + operatorToken, 401, "Bearer TOKEN"},
		{"empty bearer token", "Bearer ", 401, "Bearer TOKEN"},
		{"operator token", "Bearer " + operatorToken, 200, `"name":"n1"`},
		{"cluster token on an operator route", "Bearer " + f.c1.Token, 403, `cluster \"c1\" may not use GET /v1/nodes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := call(t, f.g.HTTPClient(), addr, "GET", "/v1/nodes", tt.auth, "")
			if status != tt.wantStatus || !strings.Contains(body, tt.wantInBody) {
				t.Errorf("GET /v1/nodes with %q: got %d %s, want %d containing %q", tt.auth, status, body, tt.wantStatus, tt.wantInBody)
			}
		})
	}
}

func TestClusterTokenConfinement(t *testing.T) {
	f := newAuthFixture(t)
	// Through a follower, so that forwarded writes are checked too.
	addr := f.g.HTTPAddr(f.follower)
	c1 := "Bearer " + f.c1.Token
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantInBody               string
	}{
		{"nodes", "GET", "/v1/nodes", "", 403, "may not use"},
		{"pool", "GET", "/v1/pool", "", 403, "may not use"},
		{"metrics", "GET", "/metrics", "", 403, "may not use"},
		{"create a cluster", "POST", "/v1/clusters", `{"name":"c3","nodes":1}`, 403, "may not use"},
		{"delete its own cluster", "DELETE", "/v1/clusters/c1", "", 403, "may not use"},
		{"rotate its own token", "POST", "/v1/clusters/c1/token", "", 403, "may not use"},
		{"heartbeat as a node", "PUT", "/v1/nodes/n1/heartbeat", `{"ready":true}`, 403, "may not use"},
		{"see its cluster", "GET", "/v1/clusters/c1", "", 200, `"name":"c1"`},
		{"see another cluster", "GET", "/v1/clusters/c2", "", 404, "no cluster named"},
		{"list clusters", "GET", "/v1/clusters", "", 200, `"name":"c1"`},
		{"submit to its cluster", "POST", "/v1/jobs", `{"name":"j","cluster":"c1","groups":[{"name":"g","count":1,"command":["true"]}]}`, 200, `"id"`},
		{"submit to another cluster", "POST", "/v1/jobs", `{"name":"j","cluster":"c2","groups":[{"name":"g","count":1,"command":["true"]}]}`, 403, `may not act on cluster \"c2\"`},
		{"list another cluster's jobs", "GET", "/v1/jobs?cluster=c2", "", 403, "may not act on"},
		{"see its job", "GET", "/v1/jobs/" + f.job1, "", 200, f.job1},
		{"see another cluster's job", "GET", "/v1/jobs/" + f.job2, "", 404, "no job named"},
		{"list its job's tasks", "GET", "/v1/jobs/" + f.job1 + "/tasks?state=pending", "", 200, `"total"`},
		{"list another cluster's tasks", "GET", "/v1/jobs/" + f.job2 + "/tasks", "", 404, "no job named"},
		{"logs of another cluster's job", "GET", "/v1/jobs/" + f.job2 + "/logs?group=g&index=0", "", 404, "no job named"},
		{"cancel another cluster's job", "DELETE", "/v1/jobs/" + f.job2, "", 404, "no job named"},
		{"list its directory", "GET", "/v1/fs/list?path=/clusters/c1", "", 200, `"name":"data"`},
		{"list the root", "GET", "/v1/fs/list?path=/", "", 403, "outside /clusters/c1"},
		{"stat another cluster's directory", "GET", "/v1/fs/stat?path=/clusters/c2/data", "", 403, "outside /clusters/c1"},
		{"a sibling sharing its prefix", "GET", "/v1/fs/stat?path=/clusters/c10", "", 403, "outside /clusters/c1"},
		{"mkdir in its directory", "POST", "/v1/fs/mkdir", `{"path":"/clusters/c1/new"}`, 200, ""},
		{"mkdir in another cluster", "POST", "/v1/fs/mkdir", `{"path":"/clusters/c2/new"}`, 403, "outside"},
		{"create at the root", "POST", "/v1/fs/create", `{"path":"/evil"}`, 403, "outside"},
		{"move out of its directory", "POST", "/v1/fs/rename", `{"from":"/clusters/c1/data","to":"/clusters/c2/data2"}`, 403, "/clusters/c2/data2 is outside"},
		{"move another cluster's data in", "POST", "/v1/fs/rename", `{"from":"/clusters/c2/data","to":"/clusters/c1/stolen"}`, 403, "/clusters/c2/data is outside"},
		{"remove another cluster's data", "POST", "/v1/fs/remove", `{"path":"/clusters/c2/data","recursive":true}`, 403, "outside"},
		{"snapshot another cluster", "POST", "/v1/fs/snapshots", `{"dir":"/clusters/c2","name":"s"}`, 403, "outside"},
		{"delete another cluster's snapshot", "DELETE", "/v1/fs/snapshots?dir=/clusters/c2&name=s", "", 403, "outside"},
		{"download another cluster's file", "GET", "/v1/fs/data?path=/clusters/c2/f", "", 403, "outside"},
		{"upload into another cluster", "PUT", "/v1/fs/data?path=/clusters/c2/f", "x", 403, "outside"},
		{"file system status", "GET", "/v1/fs/status", "", 403, "may not use"},
		{"report a corrupt chunk", "POST", "/v1/fs/corrupt", `{"chunk":"x","node":"n2"}`, 403, "may not use"},
		{"an invalid path is still a 400", "GET", "/v1/fs/stat?path=/clusters/c1/../c2", "", 400, ".."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := call(t, f.g.HTTPClient(), addr, tt.method, tt.path, c1, tt.body)
			if status != tt.wantStatus || !strings.Contains(body, tt.wantInBody) {
				t.Errorf("%s %s: got %d %s, want %d containing %q", tt.method, tt.path, status, body, tt.wantStatus, tt.wantInBody)
			}
		})
	}

	// Refused requests changed nothing.
	ctx := reqCtx(t)
	for _, p := range []string{"/clusters/c2/new", "/evil", "/clusters/c2/data2", "/clusters/c1/stolen"} {
		if _, err := f.op.FSStat(ctx, p); !isStatus(err, 404) {
			t.Errorf("FSStat(%s) after refused writes: %v, want not found", p, err)
		}
	}
	if _, err := f.op.FSStat(ctx, "/clusters/c2/data"); err != nil {
		t.Errorf("FSStat(/clusters/c2/data) after a refused remove: %v", err)
	}
	if j, _, err := f.op.Job(ctx, f.job2, nil); err != nil || j.State != api.JobRunning && j.State != api.JobPending {
		t.Errorf("job %s of c2 after a refused cancel: %+v, %v; want it still pending or running", f.job2, j, err)
	}
	if _, _, err := f.op.Cluster(ctx, "c3", nil); !isStatus(err, 404) {
		t.Errorf("cluster c3 after a refused create: %v, want not found", err)
	}

	// Lists are filtered to the cluster.
	tc := f.g.NewClient([]string{addr}, f.c1.Token)
	cs, _, err := tc.Clusters(ctx, nil)
	if err != nil || len(cs) != 1 || cs[0].Name != "c1" {
		t.Errorf("Clusters with c1's token: %v, %v; want only c1", cs, err)
	}
	// The follower may not have applied the job submitted above yet.
	var jobs []*api.Job
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		jobs, _, err = tc.Jobs(ctx, "", nil)
		return err == nil && len(jobs) >= 2, fmt.Sprintf("Jobs with c1's token: %d jobs, %v; want c1's 2", len(jobs), err)
	})
	for _, j := range jobs {
		if j.Cluster != "c1" {
			t.Errorf("Jobs with c1's token lists job %s of cluster %s", j.ID, j.Cluster)
		}
	}
	if len(jobs) != 2 {
		t.Errorf("Jobs with c1's token: %d jobs, want c1's 2", len(jobs))
	}
}

func TestClusterTokenRotation(t *testing.T) {
	f := newAuthFixture(t)
	old := f.c1.Token
	rotated, err := f.op.RotateClusterToken(reqCtx(t), "c1")
	if err != nil {
		t.Fatalf("RotateClusterToken: %v", err)
	}
	if rotated.Token == "" || rotated.Token == old {
		t.Fatalf("rotated token %q: want a new one (old %q)", rotated.Token, old)
	}
	for i := 0; i < 3; i++ {
		addr := f.g.HTTPAddr(i)
		testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
			status, body := call(t, f.g.HTTPClient(), addr, "GET", "/v1/clusters/c1", "Bearer "+rotated.Token, "")
			return status == 200, body
		})
		if status, body := call(t, f.g.HTTPClient(), addr, "GET", "/v1/clusters/c1", "Bearer "+old, ""); status != 401 {
			t.Errorf("server %d, old token after rotation: got %d %s, want 401", i, status, body)
		}
	}
	if _, err := f.op.RotateClusterToken(reqCtx(t), "nope"); !isStatus(err, 404) {
		t.Errorf("RotateClusterToken(nope): %v, want not found", err)
	}
}

func isStatus(err error, status int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == status
}
