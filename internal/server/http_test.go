package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestBadRequests sends malformed and invalid requests to a real server and
// checks that each gets a JSON error with the right status, code and field,
// and that none of them writes anything.
func TestBadRequests(t *testing.T) {
	g := testutil.StartServers(t, 1, longTTL)
	c := g.Client(0)
	addReadyNode(t, c, "n1", "z1", 1000, 1024)
	addReadyNode(t, c, "n2", "z1", 1000, 1024)
	if created, err := c.CreateCluster(reqCtx(t), &api.ClusterRequest{Name: "c1", Nodes: 1}); err != nil || created.Subnet != "10.128.0.0/18" {
		t.Fatalf("CreateCluster: %v, subnet %q", err, created.Subnet)
	}
	if got, _, err := c.Cluster(reqCtx(t), "c1", nil); err != nil || got.Subnet != "10.128.0.0/18" || got.Egress != nil {
		t.Fatalf("cluster c1: %v, subnet %q egress %v; want the first /18 of the default cluster networks and no egress", err, got.Subnet, got.Egress)
	}
	job := func(group string) string {
		return `{"name":"j","cluster":"c1","groups":[` + group + `]}`
	}
	mpi := func(section string) string {
		return `{"name":"j","cluster":"c1","type":"mpi","mpi":{` + section + `}}`
	}
	oversized := `{"name":"` + strings.Repeat("a", api.MaxBodyBytes) + `","nodes":1}`

	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantCode   string
		wantInMsg  string // a substring of the message, such as the field at fault
	}{
		{"malformed JSON", "POST", "/v1/clusters", `{"name":`, 400, api.CodeInvalid, "invalid JSON"},
		{"not an object", "POST", "/v1/clusters", `[1,2]`, 400, api.CodeInvalid, "invalid JSON"},
		{"wrong type", "POST", "/v1/clusters", `{"name":"x","nodes":"two"}`, 400, api.CodeInvalid, "nodes"},
		{"unknown field", "POST", "/v1/clusters", `{"name":"x","nodes":1,"colour":"red"}`, 400, api.CodeInvalid, "colour"},
		{"trailing data", "POST", "/v1/clusters", `{"name":"x","nodes":1} {}`, 400, api.CodeInvalid, "after the JSON value"},
		{"empty body", "POST", "/v1/clusters", ``, 400, api.CodeInvalid, "empty"},
		{"oversized body", "POST", "/v1/clusters", oversized, 413, api.CodeTooLarge, "larger than"},
		{"name with slash", "POST", "/v1/clusters", `{"name":"a/b","nodes":1}`, 400, api.CodeInvalid, "name"},
		{"name with control char", "POST", "/v1/clusters", `{"name":"a\u0007b","nodes":1}`, 400, api.CodeInvalid, "name"},
		{"cluster too big", "POST", "/v1/clusters", `{"name":"big","nodes":5}`, 409, api.CodeNoCapacity, "needs 5 nodes"},
		{"cluster exists", "POST", "/v1/clusters", `{"name":"c1","nodes":1}`, 409, api.CodeConflict, "c1"},
		{"resize unknown cluster", "PUT", "/v1/clusters/nope", `{"nodes":1}`, 404, api.CodeNotFound, "nope"},
		{"delete unknown cluster", "DELETE", "/v1/clusters/nope", ``, 404, api.CodeNotFound, "nope"},
		{"job count 0", "POST", "/v1/jobs", job(`{"name":"g","count":0,"command":["true"]}`), 400, api.CodeInvalid, "groups[0].count"},
		{"job empty command", "POST", "/v1/jobs", job(`{"name":"g","count":1,"command":[]}`), 400, api.CodeInvalid, "groups[0].command"},
		{"job without groups", "POST", "/v1/jobs", job(``), 400, api.CodeInvalid, "groups"},
		{"job second group invalid", "POST", "/v1/jobs",
			job(`{"name":"a","count":1,"command":["true"]},{"name":"b","count":1,"command":["true"],"resources":{"cpu":-1}}`),
			400, api.CodeInvalid, "groups[1].resources.cpu"},
		{"job unknown cluster", "POST", "/v1/jobs", `{"name":"j","cluster":"nope","groups":[{"name":"g","count":1,"command":["true"]}]}`,
			404, api.CodeNotFound, "nope"},
		{"job cpu larger than any node", "POST", "/v1/jobs", job(`{"name":"g","count":1,"command":["true"],"resources":{"cpu":1001}}`),
			400, api.CodeInvalid, "groups[0].resources.cpu"},
		{"job memory larger than any node", "POST", "/v1/jobs", job(`{"name":"g","count":1,"command":["true"],"resources":{"memory":4096}}`),
			400, api.CodeInvalid, "groups[0].resources.memory"},
		{"job name with slash", "POST", "/v1/jobs", `{"name":"a/b","cluster":"c1","groups":[{"name":"g","count":1,"command":["true"]}]}`,
			400, api.CodeInvalid, "name"},
		{"mpi ranks 0", "POST", "/v1/jobs", mpi(`"ranks":0,"slots_per_node":1,"command":["mpirun"]`), 400, api.CodeInvalid, "mpi.ranks"},
		{"mpi slots 0", "POST", "/v1/jobs", mpi(`"ranks":2,"slots_per_node":0,"command":["mpirun"]`), 400, api.CodeInvalid, "mpi.slots_per_node"},
		{"mpi more nodes than the cluster", "POST", "/v1/jobs", mpi(`"ranks":4,"slots_per_node":1,"command":["mpirun"]`),
			400, api.CodeInvalid, "need 4 nodes, but cluster \"c1\" has 1"},
		{"mpi slots more than a node holds", "POST", "/v1/jobs", mpi(`"ranks":20,"slots_per_node":20,"command":["mpirun"]`),
			400, api.CodeInvalid, "mpi.slots_per_node"},
		{"mpi empty command", "POST", "/v1/jobs", mpi(`"ranks":1,"slots_per_node":1,"command":[]`), 400, api.CodeInvalid, "mpi.command"},
		{"mpi max_restarts < 0", "POST", "/v1/jobs", mpi(`"ranks":1,"slots_per_node":1,"command":["mpirun"],"max_restarts":-1`),
			400, api.CodeInvalid, "mpi.max_restarts"},
		{"mpi job without an mpi section", "POST", "/v1/jobs", `{"name":"j","cluster":"c1","type":"mpi"}`, 400, api.CodeInvalid, "mpi section"},
		{"mpi section on a batch job", "POST", "/v1/jobs",
			`{"name":"j","cluster":"c1","groups":[{"name":"g","count":1,"command":["true"]}],"mpi":{"ranks":1,"slots_per_node":1,"command":["x"]}}`,
			400, api.CodeInvalid, "only mpi jobs have an mpi section"},
		{"checkpoints of a batch job's unknown id", "GET", "/v1/jobs/nope-1/checkpoints", ``, 404, api.CodeNotFound, "nope-1"},
		{"checkpoint report for an unknown job", "PUT", "/v1/nodes/n1/checkpoints", `{"job":"nope-1","task":"nope-1/mpi/0","run_id":1,"epoch":1,"rank":0}`,
			404, api.CodeNotFound, "nope-1"},
		{"certificate for a pool node", "POST", "/v1/nodes/n2/certificate", `{"csr":"x"}`, 409, api.CodeConflict, "in no cluster"},
		{"certificate with a bad csr", "POST", "/v1/nodes/n1/certificate", `{"csr":"not a csr"}`, 400, api.CodeInvalid, "csr"},
		{"cluster egress malformed", "POST", "/v1/clusters", `{"name":"x","nodes":1,"egress":["10.0.0.0/33"]}`, 400, api.CodeInvalid, "egress[0]"},
		{"cluster egress overlapping the cluster networks", "POST", "/v1/clusters", `{"name":"x","nodes":1,"egress":["10.200.0.0/16"]}`,
			400, api.CodeInvalid, "overlaps the cluster networks 10.128.0.0/9"},
		{"cancel unknown job", "DELETE", "/v1/jobs/nope-1", ``, 404, api.CodeNotFound, "nope-1"},
		{"node name mismatch", "PUT", "/v1/nodes/n9", `{"name":"n8","zone":"z1","cpu":1,"memory":1}`, 400, api.CodeInvalid, "name"},
		{"node without cpu", "PUT", "/v1/nodes/n9", `{"name":"n9","zone":"z1","cpu":0,"memory":1}`, 400, api.CodeInvalid, "cpu"},
		{"node zone with control char", "PUT", "/v1/nodes/n9", `{"name":"n9","zone":"z\n","cpu":1,"memory":1}`, 400, api.CodeInvalid, "zone"},
		{"heartbeat unknown node", "PUT", "/v1/nodes/n9/heartbeat", `{"ready":true}`, 404, api.CodeNotFound, "n9"},
		{"drain unknown node", "PUT", "/v1/nodes/n9/drain", `{}`, 404, api.CodeNotFound, "n9"},
		{"drain deadline too long", "PUT", "/v1/nodes/n1/drain", `{"deadline":"48h"}`, 400, api.CodeInvalid, "deadline"},
		{"task report for another node", "PUT", "/v1/nodes/n1/tasks", `{"node":"n2","updates":[]}`, 400, api.CodeInvalid, "node"},
		{"unknown node", "GET", "/v1/nodes/n9", ``, 404, api.CodeNotFound, "n9"},
		{"invalid index", "GET", "/v1/nodes?index=abc", ``, 400, api.CodeInvalid, "index"},
		{"negative index", "GET", "/v1/nodes?index=-1", ``, 400, api.CodeInvalid, "index"},
		{"invalid wait", "GET", "/v1/nodes?index=1&wait=soon", ``, 400, api.CodeInvalid, "wait"},
		{"unknown endpoint", "GET", "/v1/nope", ``, 404, api.CodeNotFound, "/v1/nope"},
		{"unknown method", "PATCH", "/v1/nodes", ``, 404, api.CodeNotFound, "PATCH"},
		{"logs of unknown job", "GET", "/v1/jobs/nope-1/logs", ``, 404, api.CodeNotFound, "nope-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := g.Server(0).Store().Snapshot().Index(allTables...)
			req, err := http.NewRequestWithContext(reqCtx(t), tt.method, "http://"+g.HTTPAddr(0)+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := g.HTTPClient().Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.method, tt.path, err)
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", resp.StatusCode, tt.wantStatus, raw)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want %q", ct, "application/json")
			}
			// Decode strictly: an error body has exactly this shape.
			var body struct {
				Error *struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil || body.Error == nil {
				t.Fatalf("body %s is not {\"error\":{\"code\",\"message\"}}: %v", raw, err)
			}
			if body.Error.Code != tt.wantCode {
				t.Errorf("code = %q, want %q (message %q)", body.Error.Code, tt.wantCode, body.Error.Message)
			}
			if !strings.Contains(body.Error.Message, tt.wantInMsg) {
				t.Errorf("message = %q, want it to contain %q", body.Error.Message, tt.wantInMsg)
			}
			if after := g.Server(0).Store().Snapshot().Index(allTables...); after != before {
				t.Errorf("state index moved from %d to %d: a bad request wrote something", before, after)
			}
		})
	}
}

// TestBlockingQuery checks that a read with ?index= waits for a newer
// state and answers as soon as one exists, and otherwise answers when its
// wait ends, unchanged.
func TestBlockingQuery(t *testing.T) {
	g := testutil.StartServers(t, 1, longTTL)
	c := g.Client(0)
	addReadyNode(t, c, "n1", "z1", 1000, 1024)
	nodes, idx, err := c.Nodes(reqCtx(t), nil)
	if err != nil || len(nodes) != 1 || idx == 0 {
		t.Fatalf("Nodes() = %d nodes, index %d, err %v; want 1 node and an index", len(nodes), idx, err)
	}

	t.Run("wakes on write", func(t *testing.T) {
		type answer struct {
			nodes []*api.Node
			idx   uint64
			err   error
		}
		done := make(chan answer, 1)
		sent := make(chan struct{})
		var once sync.Once // a retried request is written twice
		// The query may wait a minute; it must answer long before that.
		ctx := httptrace.WithClientTrace(reqCtx(t), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(func() { close(sent) }) },
		})
		go func() {
			n, i, err := c.Nodes(ctx, &api.QueryOptions{Index: idx, Wait: time.Minute})
			done <- answer{n, i, err}
		}()
		select {
		case <-sent:
		case a := <-done:
			t.Fatalf("the query answered before it was sent: %+v", a)
		}
		addReadyNode(t, g.Client(0), "n2", "z1", 1000, 1024)
		var a answer
		select {
		case a = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("the blocking query did not answer within 15s of a write to the nodes table")
		}
		if a.err != nil {
			t.Fatalf("blocking Nodes: %v", a.err)
		}
		if a.idx <= idx {
			t.Errorf("index = %d, want more than %d", a.idx, idx)
		}
		var names []string
		for _, n := range a.nodes {
			names = append(names, n.Name)
		}
		if len(names) != 2 || names[1] != "n2" {
			t.Errorf("nodes = %q, want n1 and n2", names)
		}
	})

	t.Run("times out unchanged", func(t *testing.T) {
		_, cur, err := c.Nodes(reqCtx(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		const wait = 300 * time.Millisecond
		start := time.Now()
		nodes, got, err := c.Nodes(reqCtx(t), &api.QueryOptions{Index: cur, Wait: wait})
		if err != nil {
			t.Fatalf("blocking Nodes: %v", err)
		}
		// Not a timing assertion: nothing changed, so the server had to wait
		// out the whole wait before answering.
		if elapsed := time.Since(start); elapsed < wait {
			t.Errorf("answered after %s with nothing changed; want it to wait %s", elapsed, wait)
		}
		if got != cur || len(nodes) != 2 {
			t.Errorf("index %d with %d nodes, want the unchanged index %d with 2 nodes", got, len(nodes), cur)
		}
	})

	t.Run("index from the future", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		_, got, err := c.Nodes(ctx, &api.QueryOptions{Index: 1 << 40, Wait: 200 * time.Millisecond})
		if err != nil {
			t.Fatalf("blocking Nodes: %v", err)
		}
		if got == 0 || got >= 1<<40 {
			t.Errorf("index = %d, want the current index", got)
		}
	})
}
