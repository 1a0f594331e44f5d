package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusterpki"
	"github.com/shoal-dev/shoal/internal/mpi"
	"github.com/shoal-dev/shoal/internal/testutil"
)

func TestGangHost(t *testing.T) {
	task := &api.Task{JobID: "heat-1", MPI: &api.TaskMPI{Ranks: 4, SlotsPerNode: 2, Nodes: []string{"n1", "n2"}}}
	for _, tt := range []struct {
		host string
		ok   bool
	}{{"n1", true}, {"n2", true}, {"n3", false}, {"", false}, {"N2", false}} {
		err := gangHost(task, tt.host)
		if (err == nil) != tt.ok {
			t.Errorf("gangHost(%q): got %v, want ok=%v", tt.host, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "not a node of job heat-1's gang") {
			t.Errorf("gangHost(%q): got %q, want it to say the host is not in the gang", tt.host, err)
		}
	}
	if err := gangHost(&api.Task{JobID: "b-1"}, "n1"); err == nil {
		t.Error("gangHost of a batch task: got nil, want an error")
	}
}

func TestHostfile(t *testing.T) {
	got := string(hostfileContent(&api.TaskMPI{Ranks: 5, SlotsPerNode: 2, Nodes: []string{"n1", "n2", "n3"}}))
	if want := "n1 slots=2\nn2 slots=2\nn3 slots=2\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLocalLaunchRefusals(t *testing.T) {
	a, _ := newTestAgent(t, &fakeDriver{})
	task := testTask(0, 1)
	task.MPI = &api.TaskMPI{Ranks: 4, SlotsPerNode: 2, Nodes: []string{"n1", "n2"}}
	a.runs[runKey{task.ID, 1}] = &run{key: runKey{task.ID, 1}, task: task, secret: "s3cret", done: closedChan(), stopped: make(chan struct{})}
	for _, tt := range []struct {
		name, secret, host, want string
	}{
		{"no secret", "", "n2", "no run on node n1 has the secret"},
		{"wrong secret", "other", "n2", "no run on node n1 has the secret"},
		{"host outside the gang", "s3cret", "n7", "is not a node of job train-7's gang (its nodes: n1, n2)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body, _ := jsonBody(mpi.LaunchRequest{Host: tt.host, Command: []string{"orted"}})
			req := httptest.NewRequest("POST", "/v1/local/launch", body)
			req.Header.Set(api.RunSecretHeader, tt.secret)
			w := httptest.NewRecorder()
			a.handleLocalLaunch(w, req)
			if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), tt.want) {
				t.Errorf("got %d %s, want 403 saying %q", w.Code, w.Body.String(), tt.want)
			}
		})
	}
}

// testCreds makes credentials for node in the cluster of ca.
func testCreds(t *testing.T, ca *clusterpki.CA, cluster, node string) (*clusterpki.Credentials, tls.Certificate) {
	t.Helper()
	key, csr, err := clusterpki.NewNodeKey(node, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignNode(csr, cluster, node, rand.Reader, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := clusterpki.NewCredentials(key, certPEM, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	return creds, tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

func TestPeerLaunchAuthorization(t *testing.T) {
	ca1, err := clusterpki.NewCA("c1", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := clusterpki.NewCA("c2", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := newTestAgent(t, &fakeDriver{})
	self, _ := testCreds(t, ca1, "c1", "n1")
	a.peerCreds.Store(self)
	a.credsWake = make(chan struct{}, 1)
	if a.peerLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.servePeer())

	// This node's run of the gang, and a stand-in for its wrapper.
	task := testTask(1, 4)
	task.MPI = &api.TaskMPI{Ranks: 4, SlotsPerNode: 2, Nodes: []string{"n2", "n1"}}
	secret := "run-secret-for-peer-test"
	a.runs[runKey{task.ID, 4}] = &run{key: runKey{task.ID, 4}, task: task, secret: secret, done: closedChan(), stopped: make(chan struct{})}
	launched := fakeWrapper(t, secret)

	n2, _ := testCreds(t, ca1, "c1", "n2")
	n3, _ := testCreds(t, ca1, "c1", "n3")
	_, otherCluster := testCreds(t, ca2, "c2", "n2")
	launch := func(cfg *tls.Config) (int, string, error) {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
		body, _ := jsonBody(mpi.PeerLaunchRequest{Job: task.JobID, RunID: 4, Command: []string{"orted", "-mca", "x"}})
		resp, err := client.Post("https://"+a.peerLn.Addr().String()+"/v1/peer/launch", "application/json", body)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b), nil
		}
		var out bytes.Buffer
		status, err := mpi.Follow(resp.Body, &out, io.Discard)
		if err != nil || status != 0 {
			t.Errorf("launch: status %d, %v; want 0, nil", status, err)
		}
		return resp.StatusCode, out.String(), nil
	}

	if code, out, err := launch(clusterpki.ClientConfig(n2, "n1")); err != nil || code != 200 || out != "orted -mca x\n" {
		t.Fatalf("gang node n2: got %d %q %v, want 200 and the command echoed", code, out, err)
	}
	if code, out, err := launch(clusterpki.ClientConfig(n3, "n1")); err != nil || code != http.StatusForbidden || !strings.Contains(out, "node n3 is not in the gang of job train-7 run 4") {
		t.Errorf("node n3 of the cluster, not in the gang: got %d %q %v, want 403 naming the gang", code, out, err)
	}
	refused := map[string]*tls.Config{
		"no certificate":                {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		"another cluster's certificate": {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &otherCluster, nil }},
	}
	for name, cfg := range refused {
		if code, out, err := launch(cfg); err == nil {
			t.Errorf("%s: got %d %q, want the handshake refused", name, code, out)
		}
	}
	// A node that left its cluster drops its credentials: nobody gets in.
	a.mu.Lock()
	a.setClusterLocked("")
	a.mu.Unlock()
	if code, out, err := launch(clusterpki.ClientConfig(n2, "n1")); err == nil {
		t.Errorf("after the node left its cluster: got %d %q, want the handshake refused", code, out)
	}
	if got := launched(); got != 1 {
		t.Errorf("the wrapper ran %d commands, want 1 (the gang node's)", got)
	}
}

// fakeWrapper serves the wrapper socket of the run with secret: it echoes
// each command on stdout and exits 0. The function returned counts the
// commands it ran.
func fakeWrapper(t *testing.T, secret string) func() int32 {
	ln, err := net.Listen("unix", mpi.SocketName(secret))
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			kind, data, err := mpi.ReadFrame(c)
			var req mpi.SocketRequest
			if err == nil && kind == mpi.FrameRequest && json.Unmarshal(data, &req) == nil && req.Secret == secret {
				ran.Add(1)
				mpi.WriteFrame(c, mpi.FrameStdout, []byte(strings.Join(req.Command, " ")+"\n"))
				mpi.WriteFrame(c, mpi.FrameExit, mpi.ExitFrame(0))
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ran.Load
}

func jsonBody(v any) (io.Reader, error) {
	b, err := json.Marshal(v)
	return bytes.NewReader(b), err
}

// closedChan is the done channel of a run whose process has ended (the
// hand-made runs of these tests have none).
func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func TestShoalFirstOnPath(t *testing.T) {
	a := &Agent{cfg: Config{Name: "n1"}, binDir: "/data/bin"}
	for _, env := range []map[string]string{nil, {"PATH": "/opt/bin"}} {
		got := a.taskEnvMap(&api.Task{Env: env}, "/w")["PATH"]
		if !strings.HasPrefix(got, "/data/bin:") {
			t.Errorf("task env %v: got PATH %q, want /data/bin first", env, got)
		}
	}
}

// TestCredentialsFollowMembership: the agent gets credentials when its
// node joins a cluster, renews them before they expire, drops them the
// moment the node leaves, and gets the new cluster's when it joins another.
func TestCredentialsFollowMembership(t *testing.T) {
	cas := map[string]*clusterpki.CA{}
	for _, c := range []string{"c1", "c2"} {
		ca, err := clusterpki.NewCA(c, rand.Reader, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		cas[c] = ca
	}
	var (
		mu     sync.Mutex
		member string // the cluster the fake servers say n1 is in
	)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/nodes/n1/certificate", func(w http.ResponseWriter, r *http.Request) {
		var req api.NodeCertificateRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		cluster := member
		mu.Unlock()
		if cluster == "" {
			logError(w, http.StatusConflict, api.CodeConflict, "node n1 is in no cluster")
			return
		}
		// A short life, so that the test sees renewals (over a second:
		// certificates count whole seconds).
		cert, notAfter, err := cas[cluster].SignNode([]byte(req.CSR), cluster, "n1", rand.Reader, time.Now(), 2*time.Second)
		if err != nil {
			logError(w, http.StatusBadRequest, api.CodeInvalid, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, &api.NodeCertificate{Cluster: cluster, Node: "n1", Cert: string(cert), CA: string(cas[cluster].CertPEM), NotAfter: notAfter})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := api.NewClient([]string{srv.URL}, "")
	t.Cleanup(c.Close)
	a := &Agent{cfg: Config{Name: "n1"}, log: discardLog(), client: c, credsWake: make(chan struct{}, 1)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.credsLoop() }()
	t.Cleanup(func() { a.cancel(); <-done })

	join := func(cluster string) {
		mu.Lock()
		member = cluster
		mu.Unlock()
		a.mu.Lock()
		a.setClusterLocked(cluster)
		a.mu.Unlock()
		if got := a.peerCreds.Load(); got != nil {
			t.Fatalf("right after the node moved to %q: still holding credentials for %s", cluster, got.Cluster)
		}
	}
	held := func(cluster string) func() (bool, string) {
		return func() (bool, string) {
			got := a.peerCreds.Load()
			return got != nil && got.Cluster == cluster && got.Node == "n1", fmt.Sprintf("holding %+v, want credentials for n1 in %s", got, cluster)
		}
	}
	join("c1")
	testutil.WaitFor(t, 10*time.Second, held("c1"))
	first := a.peerCreds.Load()
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		got := a.peerCreds.Load()
		return got != first && got != nil && got.Cluster == "c1", "credentials not renewed yet"
	})
	join("c2")
	testutil.WaitFor(t, 10*time.Second, held("c2"))
	join("")
}
