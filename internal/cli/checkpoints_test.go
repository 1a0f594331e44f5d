package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/api"
)

// setRankEnv sets the commit's environment; empty values unset a variable
// for the test.
func setRankEnv(t *testing.T, addr, secret, ompi, pmi string) {
	t.Helper()
	for k, v := range map[string]string{"SHOAL_AGENT_ADDR": addr, "SHOAL_RUN_SECRET": secret,
		"OMPI_COMM_WORLD_RANK": ompi, "PMI_RANK": pmi} {
		t.Setenv(k, v) // restored after the test; "" reads as unset
	}
}

func TestCheckpointCommit(t *testing.T) {
	agent := newFakeServer(t, 200, `{"epoch":3,"rank":5,"files":2,"bytes":2048}`)
	tests := []struct {
		name       string
		args       []string
		ompi, pmi  string
		wantRank   int
		wantStdout string
	}{
		{"rank from Open MPI", nil, "5", "", 5, ""},
		{"rank from MPICH", nil, "", "4", 4, ""},
		{"Open MPI before MPICH", nil, "2", "9", 2, ""},
		{"--rank wins", []string{"--rank", "7"}, "2", "", 7, ""},
		{"verbose", []string{"-v"}, "5", "", 5, "Epoch 3 of rank 5 committed: the agent holds 2 files, 2.0 KiB.\n"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setRankEnv(t, agent.URL, "s3cret", tt.ompi, tt.pmi)
			code, stdout, stderr := runCLI(t, append([]string{"checkpoint", "commit", "3"}, tt.args...)...)
			if code != 0 || stdout != tt.wantStdout || stderr != "" {
				t.Fatalf("got exit %d stdout %q stderr %q, want 0 %q and no stderr", code, stdout, stderr, tt.wantStdout)
			}
			agent.mu.Lock()
			req, body := agent.reqs[i], agent.body[i]
			agent.mu.Unlock()
			var cc api.CheckpointCommit
			if err := json.Unmarshal(body, &cc); err != nil || req != "POST /v1/local/checkpoint" || cc != (api.CheckpointCommit{Epoch: 3, Rank: tt.wantRank}) {
				t.Errorf("agent got %s %s, want POST /v1/local/checkpoint with epoch 3 rank %d", req, body, tt.wantRank)
			}
		})
	}
}

func TestCheckpointCommitErrors(t *testing.T) {
	refusing := newFakeServer(t, 403, `{"error":{"code":"forbidden","message":"the run secret matches no MPI run on node n1"}}`)
	tests := []struct {
		name               string
		args               []string
		addr, secret, ompi string
		want               string
		mayReachAgent      bool
	}{
		{"no epoch", nil, refusing.URL, "s", "0", "accepts 1 arg", false},
		{"epoch not a number", []string{"three"}, refusing.URL, "s", "0", `epoch "three" is not a positive whole number`, false},
		{"epoch zero", []string{"0"}, refusing.URL, "s", "0", `epoch "0" is not a positive whole number`, false},
		{"no agent address", []string{"1"}, "", "s", "0", "SHOAL_AGENT_ADDR not set", false},
		{"nothing set", []string{"1"}, "", "", "0", "SHOAL_AGENT_ADDR and SHOAL_RUN_SECRET not set", false},
		{"no rank", []string{"1"}, refusing.URL, "s", "", "no rank: set --rank", false},
		{"bad rank", []string{"1"}, refusing.URL, "s", "x", `OMPI_COMM_WORLD_RANK="x" is not a rank`, false},
		{"refused", []string{"1"}, refusing.URL, "wrong", "0", "committing epoch 1 of rank 0: the agent refused (403 Forbidden): the run secret matches no MPI run on node n1", true},
		{"agent unreachable", []string{"1"}, "127.0.0.1:1", "s", "0", "cannot reach the node's agent at http://127.0.0.1:1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setRankEnv(t, tt.addr, tt.secret, tt.ompi, "")
			before := len(refusing.requests())
			code, stdout, stderr := runCLI(t, append([]string{"checkpoint", "commit"}, tt.args...)...)
			if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "Error: ") || !strings.Contains(stderr, tt.want) {
				t.Errorf("got exit %d stdout %q stderr %q, want 1 and an error containing %q", code, stdout, stderr, tt.want)
			}
			if reached := len(refusing.requests()) > before; reached != tt.mayReachAgent {
				t.Errorf("reached the agent: %v, want %v", reached, tt.mayReachAgent)
			}
		})
	}
}

func TestJobCheckpoints(t *testing.T) {
	srv := newFakeServer(t, 200, `[
 {"job":"heat-1","epoch":1,"state":"deleted","ranks":8,"durable":8,"bytes":1048576,"dir":"/clusters/c1/.checkpoints/heat-1/1","created":"2026-01-02T10:00:00Z","completed":"2026-01-02T10:00:01Z"},
 {"job":"heat-1","epoch":2,"state":"complete","ranks":8,"durable":8,"bytes":2097152,"dir":"/clusters/c1/.checkpoints/heat-1/2","created":"2026-01-02T10:01:00Z","completed":"2026-01-02T10:01:02Z"},
 {"job":"heat-1","epoch":3,"state":"partial","ranks":8,"durable":5,"bytes":1310720,"dir":"/clusters/c1/.checkpoints/heat-1/3","created":"2026-01-02T10:02:00Z"}]`)
	code, stdout, stderr := runCLI(t, "job", "checkpoints", "heat-1", "--addr", srv.URL)
	if code != 0 || stderr != "" {
		t.Fatalf("got exit %d stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want a header and 3 epochs:\n%s", len(lines), stdout)
	}
	for i, want := range [][]string{
		{"EPOCH", "STATE", "DURABLE", "SIZE", "CREATED", "COMPLETED"},
		{"1", "deleted", "8/8", "1.0 MiB"},
		{"2", "complete", "8/8", "2.0 MiB"},
		{"3", "partial", "5/8", "1.2 MiB", "-"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	if got := srv.requests(); len(got) != 1 || got[0] != "GET /v1/jobs/heat-1/checkpoints" {
		t.Errorf("got requests %v", got)
	}
	code, stdout, _ = runCLI(t, "job", "checkpoints", "heat-1", "-o", "json", "--addr", srv.URL)
	var cps []api.Checkpoint
	if err := json.Unmarshal([]byte(stdout), &cps); code != 0 || err != nil || len(cps) != 3 || cps[2].Durable != 5 {
		t.Errorf("-o json: exit %d, %v, %+v", code, err, cps)
	}
	empty := newFakeServer(t, 200, `[]`)
	if code, stdout, _ := runCLI(t, "job", "checkpoints", "heat-2", "--addr", empty.URL); code != 0 || stdout != "Job heat-2 has no checkpoints yet.\n" {
		t.Errorf("no epochs: got %d %q", code, stdout)
	}
}

func TestJobStatusMPI(t *testing.T) {
	srv := newFakeServer(t, 200, `{"id":"heat-1","cluster":"c1","type":"mpi","state":"running",
 "mpi":{"ranks":8,"slots_per_node":2,"command":["mpirun","./heat"],"max_restarts":5},
 "mpi_status":{"ranks":8,"nodes":4,"gang_nodes":["n1","n2","n3","n4"],"restarts":1,"last_complete_epoch":12},
 "counts":{"running":4},"group_status":[{"name":"mpi","counts":{"running":4}}],"events":[]}`)
	code, stdout, stderr := runCLI(t, "job", "status", "heat-1", "--addr", srv.URL)
	if code != 0 || stderr != "" {
		t.Fatalf("got exit %d stderr %q", code, stderr)
	}
	for _, want := range []string{"MPI: 8 ranks on 4 nodes (n1, n2, n3, n4)\n", "Restarts: 1 of 5; last complete checkpoint epoch: 12\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
}
