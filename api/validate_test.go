package api_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

// fieldOf returns the field a validation error names, checking on the way
// that it is a *api.FieldError that matches api.ErrInvalid.
func fieldOf(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	if !errors.Is(err, api.ErrInvalid) {
		t.Errorf("errors.Is(%v, api.ErrInvalid) = false, want true", err)
	}
	var fe *api.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("got error %T (%v), want a *api.FieldError", err, err)
	}
	if !strings.HasPrefix(err.Error(), fe.Field+": ") {
		t.Errorf("got message %q, want it to start with the field %q", err.Error(), fe.Field)
	}
	return fe.Field
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"empty", "", false},
		{"one letter", "a", true},
		{"one digit", "7", true},
		{"63 characters", strings.Repeat("a", 63), true},
		{"64 characters", strings.Repeat("a", 64), false},
		{"dots dashes and underscores", "a.b-c_d", true},
		{"upper case", "Node-A1", true},
		{"leading dash", "-a", false},
		{"leading dot", ".a", false},
		{"leading underscore", "_a", false},
		{"slash", "a/b", false},
		{"dot dot slash", "../etc", false},
		{"space", "a b", false},
		{"newline", "a\n", false},
		{"NUL", "a\x00b", false},
		{"bell", "a\u0007b", false},
		{"DEL", "a\x7f", false},
		{"unicode letter", "zoné", false},
		{"unicode digit", "a١", false},
		{"invalid UTF-8", "a\xffb", false},
		{"colon", "a:b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := api.ValidateName("node", tt.in)
			if got := err == nil; got != tt.valid {
				t.Fatalf("ValidateName(%q): got valid %v, want %v (err %v)", tt.in, got, tt.valid, err)
			}
			if err != nil {
				if got := fieldOf(t, err); got != "node" {
					t.Errorf("got field %q, want %q", got, "node")
				}
			}
		})
	}
}

// validJob returns a minimal job that passes validation.
func validJob() api.JobSpec {
	return api.JobSpec{
		Name:    "train",
		Cluster: "c1",
		Groups: []api.GroupSpec{
			{Name: "a", Count: 2, Command: []string{"echo", "hi"}},
			{Name: "b", Count: 1, Command: []string{"true"}},
		},
	}
}

func TestJobSpecValidateDefaults(t *testing.T) {
	j := validJob()
	j.Groups[1].Resources = api.Resources{CPU: 250, MemoryMB: 512}
	j.Groups[1].MaxAttempts = 7
	if err := j.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := api.JobSpec{
		Name:    "train",
		Cluster: "c1",
		Type:    api.JobBatch,
		Groups: []api.GroupSpec{
			{Name: "a", Count: 2, Command: []string{"echo", "hi"}, Resources: api.Resources{CPU: 100, MemoryMB: 64}, MaxAttempts: 3},
			{Name: "b", Count: 1, Command: []string{"true"}, Resources: api.Resources{CPU: 250, MemoryMB: 512}, MaxAttempts: 7},
		},
	}
	if diff := cmp.Diff(want, j); diff != "" {
		t.Errorf("spec after Validate (-want +got):\n%s", diff)
	}
}

func TestJobSpecValidateErrors(t *testing.T) {
	tests := []struct {
		name      string
		change    func(j *api.JobSpec)
		wantField string
	}{
		{"empty name", func(j *api.JobSpec) { j.Name = "" }, "name"},
		{"cluster with slash", func(j *api.JobSpec) { j.Cluster = "a/b" }, "cluster"},
		{"unknown type", func(j *api.JobSpec) { j.Type = "service" }, "type"},
		{"no groups", func(j *api.JobSpec) { j.Groups = nil }, "groups"},
		{"too many groups", func(j *api.JobSpec) {
			j.Groups = make([]api.GroupSpec, api.MaxGroupsPerJob+1)
		}, "groups"},
		{"bad group name", func(j *api.JobSpec) { j.Groups[1].Name = "-b" }, "groups[1].name"},
		{"duplicate group names", func(j *api.JobSpec) { j.Groups[1].Name = "a" }, "groups[1].name"},
		{"zero count", func(j *api.JobSpec) { j.Groups[1].Count = 0 }, "groups[1].count"},
		{"negative count", func(j *api.JobSpec) { j.Groups[0].Count = -1 }, "groups[0].count"},
		{"one group over the task limit", func(j *api.JobSpec) { j.Groups[0].Count = api.MaxTasksPerJob + 1 }, "groups[0].count"},
		{"groups together over the task limit", func(j *api.JobSpec) {
			j.Groups[0].Count = api.MaxTasksPerJob/2 + 1
			j.Groups[1].Count = api.MaxTasksPerJob / 2
		}, "groups[1].count"},
		{"groups together at the task limit pass", func(j *api.JobSpec) {
			j.Groups[0].Count = api.MaxTasksPerJob / 2
			j.Groups[1].Count = api.MaxTasksPerJob / 2
		}, ""},
		// A huge count must not wrap the running total around and slip
		// through.
		{"count that would overflow the total", func(j *api.JobSpec) { j.Groups[1].Count = math.MaxInt }, "groups[1].count"},
		{"empty command", func(j *api.JobSpec) { j.Groups[0].Command = nil }, "groups[0].command"},
		{"empty program", func(j *api.JobSpec) { j.Groups[0].Command = []string{"", "x"} }, "groups[0].command"},
		{"too many arguments", func(j *api.JobSpec) {
			j.Groups[0].Command = make([]string, api.MaxCommandArgs+1)
			for i := range j.Groups[0].Command {
				j.Groups[0].Command[i] = "x"
			}
		}, "groups[0].command"},
		{"NUL in an argument", func(j *api.JobSpec) { j.Groups[1].Command = []string{"echo", "a\x00b"} }, "groups[1].command[1]"},
		{"empty env name", func(j *api.JobSpec) { j.Groups[0].Env = map[string]string{"": "x"} }, "groups[0].env"},
		{"env name with =", func(j *api.JobSpec) { j.Groups[0].Env = map[string]string{"A=B": "x"} }, "groups[0].env"},
		{"NUL in env value", func(j *api.JobSpec) { j.Groups[0].Env = map[string]string{"A": "x\x00"} }, "groups[0].env.A"},
		{"SHOAL_ env", func(j *api.JobSpec) { j.Groups[0].Env = map[string]string{"SHOAL_X": "1"} }, "groups[0].env.SHOAL_X"},
		{"negative cpu", func(j *api.JobSpec) { j.Groups[1].Resources.CPU = -1 }, "groups[1].resources.cpu"},
		{"negative memory", func(j *api.JobSpec) { j.Groups[1].Resources.MemoryMB = -1 }, "groups[1].resources.memory"},
		{"negative max_attempts", func(j *api.JobSpec) { j.Groups[0].MaxAttempts = -1 }, "groups[0].max_attempts"},
		{"max_attempts over the limit", func(j *api.JobSpec) { j.Groups[0].MaxAttempts = api.MaxTaskAttempts + 1 }, "groups[0].max_attempts"},
		{"max_attempts at the limit pass", func(j *api.JobSpec) { j.Groups[0].MaxAttempts = api.MaxTaskAttempts }, ""},
		{"negative timeout", func(j *api.JobSpec) { j.Groups[0].Timeout = api.Duration(-time.Second) }, "groups[0].timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := validJob()
			tt.change(&j)
			err := j.Validate()
			if got := fieldOf(t, err); got != tt.wantField {
				t.Errorf("got field %q, want %q (err %v)", got, tt.wantField, err)
			}
		})
	}
}

func TestClusterRequestValidate(t *testing.T) {
	tests := []struct {
		name      string
		in        api.ClusterRequest
		want      api.ClusterRequest // after defaults, when valid
		wantField string
	}{
		{"zones default to 1", api.ClusterRequest{Name: "c1", Nodes: 3}, api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 1}, ""},
		{"zones equal to nodes", api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}, api.ClusterRequest{Name: "c1", Nodes: 3, Zones: 3}, ""},
		{"largest cluster", api.ClusterRequest{Name: "c1", Nodes: api.MaxClusterNodes},
			api.ClusterRequest{Name: "c1", Nodes: api.MaxClusterNodes, Zones: 1}, ""},
		{"zones above nodes", api.ClusterRequest{Name: "c1", Nodes: 2, Zones: 3}, api.ClusterRequest{}, "zones"},
		{"negative zones", api.ClusterRequest{Name: "c1", Nodes: 2, Zones: -1}, api.ClusterRequest{}, "zones"},
		{"no nodes", api.ClusterRequest{Name: "c1"}, api.ClusterRequest{}, "nodes"},
		{"too many nodes", api.ClusterRequest{Name: "c1", Nodes: api.MaxClusterNodes + 1}, api.ClusterRequest{}, "nodes"},
		{"bad name", api.ClusterRequest{Name: "c 1", Nodes: 1}, api.ClusterRequest{}, "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.in
			err := r.Validate()
			if got := fieldOf(t, err); got != tt.wantField {
				t.Fatalf("got field %q, want %q (err %v)", got, tt.wantField, err)
			}
			if err == nil {
				if diff := cmp.Diff(tt.want, r); diff != "" {
					t.Errorf("request after Validate (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestNodeRegistrationValidate(t *testing.T) {
	valid := func() api.NodeRegistration {
		return api.NodeRegistration{Name: "n1", Zone: "z1", CPU: 1000, MemoryMB: 1024, Labels: map[string]string{"gpu": "a100"}}
	}
	manyLabels := map[string]string{}
	for i := 0; i < 65; i++ {
		manyLabels["l"+strings.Repeat("x", i)] = "v"
	}
	tests := []struct {
		name      string
		change    func(r *api.NodeRegistration)
		wantField string
	}{
		{"valid", func(r *api.NodeRegistration) {}, ""},
		{"no labels", func(r *api.NodeRegistration) { r.Labels = nil }, ""},
		{"bad name", func(r *api.NodeRegistration) { r.Name = "n/1" }, "name"},
		{"empty zone", func(r *api.NodeRegistration) { r.Zone = "" }, "zone"},
		{"zone with newline", func(r *api.NodeRegistration) { r.Zone = "z\n" }, "zone"},
		{"zero cpu", func(r *api.NodeRegistration) { r.CPU = 0 }, "cpu"},
		{"negative memory", func(r *api.NodeRegistration) { r.MemoryMB = -1 }, "memory"},
		{"too many labels", func(r *api.NodeRegistration) { r.Labels = manyLabels }, "labels"},
		{"bad label key", func(r *api.NodeRegistration) { r.Labels = map[string]string{"a b": "v"} }, "labels"},
		{"label value too long", func(r *api.NodeRegistration) { r.Labels = map[string]string{"k": strings.Repeat("v", 256)} }, "labels.k"},
		{"label value at the limit", func(r *api.NodeRegistration) { r.Labels = map[string]string{"k": strings.Repeat("v", 255)} }, ""},
		{"label value with control char", func(r *api.NodeRegistration) { r.Labels = map[string]string{"k": "a\tb"} }, "labels.k"},
		{"socket", func(r *api.NodeRegistration) { r.Socket = "/var/lib/shoal/local/chunks.sock" }, ""},
		{"relative socket", func(r *api.NodeRegistration) { r.Socket = "local/chunks.sock" }, "socket"},
		{"unclean socket", func(r *api.NodeRegistration) { r.Socket = "/var/lib/../x.sock" }, "socket"},
		{"socket path too long", func(r *api.NodeRegistration) { r.Socket = "/" + strings.Repeat("s", api.MaxSocketPathLen) }, "socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.change(&r)
			err := r.Validate()
			if got := fieldOf(t, err); got != tt.wantField {
				t.Errorf("got field %q, want %q (err %v)", got, tt.wantField, err)
			}
		})
	}
}

func TestDurationJSON(t *testing.T) {
	t.Run("round trip", func(t *testing.T) {
		for _, d := range []time.Duration{0, time.Second, 10 * time.Minute, 90*time.Minute + 500*time.Millisecond} {
			b, err := json.Marshal(api.Duration(d))
			if err != nil {
				t.Fatalf("Marshal(%v): %v", d, err)
			}
			if want := `"` + d.String() + `"`; string(b) != want {
				t.Errorf("Marshal(%v): got %s, want %s", d, b, want)
			}
			var back api.Duration
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if back.D() != d {
				t.Errorf("round trip of %v: got %v, want %v", d, back.D(), d)
			}
		}
	})

	tests := []struct {
		in      string
		want    time.Duration
		wantErr string // substring of the error; empty means no error
	}{
		{`"10m"`, 10 * time.Minute, ""},
		{`"1h30m"`, 90 * time.Minute, ""},
		{`"250ms"`, 250 * time.Millisecond, ""},
		{`""`, 0, ""},
		{`30`, 30 * time.Second, ""},
		{`1.5`, 1500 * time.Millisecond, ""},
		{`0`, 0, ""},
		{`"ten minutes"`, 0, `invalid duration "ten minutes"`},
		{`"10"`, 0, `invalid duration "10"`},
		{`true`, 0, "invalid duration true"},
		{`{"m":10}`, 0, "invalid duration"},
		{`-90`, -90 * time.Second, ""},
		{`9e9`, 9e9 * time.Second, ""},
		// Out of time.Duration's range: an error, not a wrapped value.
		{`1e10`, 0, "invalid duration 1e10: out of range"},
		{`-1e300`, 0, "invalid duration -1e300: out of range"},
		{`"10m`, 0, "unexpected end"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var s struct {
				Timeout api.Duration `json:"timeout"`
			}
			err := json.Unmarshal([]byte(`{"timeout":`+tt.in+`}`), &s)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.Contains(tt.wantErr, "unexpected end") && !strings.Contains(tt.wantErr, "out of range") &&
					!strings.Contains(err.Error(), `"30s"`) {
					t.Errorf("got error %q, want it to show an example such as \"30s\"", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if s.Timeout.D() != tt.want {
				t.Errorf("got %v, want %v", s.Timeout.D(), tt.want)
			}
		})
	}
}
