package devmode

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/shoal-dev/shoal/api"
)

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := readRecord(dir); !errors.Is(err, errNoRecord) {
		t.Fatalf("readRecord of an empty dir: got %v, want errNoRecord", err)
	}
	started := time.Date(2026, 11, 30, 17, 0, 0, 0, time.UTC)
	rec := &Record{Binary: "/bin/shoal", LastNumber: 4, Agents: []AgentRecord{
		{Name: "node-1", Zone: "zone-1", DataDir: dir + "/agents/node-1", State: AgentExited, Started: started, Exited: started.Add(time.Minute)},
		{Name: "node-4", Zone: "zone-1", DataDir: dir + "/agents/node-4", State: AgentRunning, PID: 42, Started: started},
	}}
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	got, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rec, got); diff != "" {
		t.Errorf("record read back (-want +got):\n%s", diff)
	}
	// No temporary file is left next to it.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != RecordFile {
		t.Errorf("got files %v in the dir, want only %s", entries, RecordFile)
	}
}

func TestReadRecordErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"not JSON", "{", "is not a record of agents"},
		{"agent without zone", `{"agents":[{"name":"node-1","data_dir":"/x"}]}`, "without a name, zone or data dir"},
		{"agent twice", `{"agents":[{"name":"node-1","zone":"z","data_dir":"/x"},{"name":"node-1","zone":"z","data_dir":"/y"}]}`, "lists agent node-1 twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, RecordFile), []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := readRecord(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("readRecord: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestReadRecordNumbersAfterHighest(t *testing.T) {
	dir := t.TempDir()
	content := `{"last_number":2,"agents":[{"name":"node-7","zone":"z","data_dir":"/d","state":"stopped"},{"name":"web","zone":"z","data_dir":"/e","state":"stopped"}]}`
	if err := os.WriteFile(filepath.Join(dir, RecordFile), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	rec, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rec.LastNumber != 7 {
		t.Errorf("got LastNumber %d, want 7 (the highest node-N recorded)", rec.LastNumber)
	}
}

func TestMatchAgentCmdline(t *testing.T) {
	dir := "/work/.shoal-dev"
	a := &AgentRecord{Name: "node-1", Zone: "zone-1", DataDir: dir + "/agents/node-1"}
	ok := []string{"/usr/bin/shoal", "agent", "--name", "node-1", "--zone", "zone-1", "--data-dir", dir + "/agents/node-1", "--servers", "127.0.0.1:7460"}
	tests := []struct {
		name    string
		argv    []string
		binary  string
		a       *AgentRecord
		wantErr string // "" for a match
	}{
		{"the agent", ok, "/usr/bin/shoal", a, ""},
		{"flags with =", []string{"/usr/bin/shoal", "agent", "--name=node-1", "--data-dir=" + dir + "/agents/node-1"}, "/usr/bin/shoal", a, ""},
		{"no binary recorded", ok, "", a, ""},
		{"another binary", ok, "/opt/shoal", a, "not /opt/shoal"},
		{"not an agent", []string{"/usr/bin/shoal", "server", "--name", "node-1"}, "", a, "not a shoal agent"},
		{"a pkill -f look-alike", []string{"/bin/sh", "-c", "agent --name node-1 "}, "", a, "not a shoal agent"},
		{"another node", append(append([]string{}, ok[:3]...), append([]string{"node-11"}, ok[4:]...)...), "", a, `it is agent "node-11"`},
		{"another installation", []string{"/usr/bin/shoal", "agent", "--name", "node-1", "--data-dir", "/srv/other/agents/node-1"}, "", a,
			"its data dir is"},
		{"recorded data dir outside dir", []string{"/usr/bin/shoal", "agent", "--name", "node-1", "--data-dir", "/srv/node-1"}, "",
			&AgentRecord{Name: "node-1", DataDir: "/srv/node-1"}, "outside"},
		{"empty", nil, "", a, "not a shoal agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := matchAgentCmdline(tt.argv, tt.binary, dir, tt.a)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got error %v, want a match", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in      string
		want    syscall.Signal
		wantErr bool
	}{
		{"KILL", syscall.SIGKILL, false},
		{"SIGKILL", syscall.SIGKILL, false},
		{"term", syscall.SIGTERM, false},
		{"9", syscall.SIGKILL, false},
		{"15", syscall.SIGTERM, false},
		{"BOGUS", 0, true},
		{"0", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if got, want := SignalName(syscall.SIGKILL), "SIGKILL"; got != want {
		t.Errorf("SignalName(SIGKILL) = %q, want %q", got, want)
	}
}

// TestKillRefuses checks that Kill signals nothing but a recorded agent
// of the installation: a real process that took a recorded pid survives.
func TestKillRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, err := Kill(dir, "node-1", syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), "no shoal dev installation") {
		t.Errorf("Kill without a record: got %v, want \"no shoal dev installation\"", err)
	}
	other := exec.Command("/bin/sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	rec := &Record{Binary: "/bin/sleep", Agents: []AgentRecord{
		{Name: "node-1", Zone: "zone-1", DataDir: filepath.Join(dir, "agents", "node-1"), State: AgentRunning, PID: other.Process.Pid},
		{Name: "node-2", Zone: "zone-2", DataDir: filepath.Join(dir, "agents", "node-2"), State: AgentExited},
	}}
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		node string
		want string
	}{
		{"node-1", "is not agent node-1"},
		{"node-2", "agent node-2 is not running (exited)"},
		{"node-3", `no agent named "node-3"`},
	}
	for _, tt := range tests {
		if _, err := Kill(dir, tt.node, syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Kill(%s): got %v, want an error containing %q", tt.node, err, tt.want)
		}
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process holding node-1's recorded pid was signalled: %v", err)
	}
}

func TestWanted(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 17, 0, 0, 0, time.UTC)
	node := func(name, zone, state, cluster string, since time.Time) *api.Node {
		return &api.Node{Name: name, Zone: zone, State: state, Cluster: cluster, StateSince: since}
	}
	agent := func(name, zone string, started time.Time) *child {
		return &child{name: name, zone: zone, agent: true, started: started}
	}
	tests := []struct {
		name      string
		maxAgents int
		agents    []*child
		nodes     []*api.Node
		want      map[string]int
	}{
		{"cluster took every node: one per zone", 32,
			[]*child{agent("node-1", "zone-1", t0), agent("node-2", "zone-2", t0), agent("node-3", "zone-3", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeReady, "c1", t0), node("node-2", "zone-2", api.NodeReady, "c1", t0),
				node("node-3", "zone-3", api.NodeReady, "c1", t0)},
			map[string]int{"zone-1": 1, "zone-2": 1, "zone-3": 1}},
		{"started agents fill their zones before they register", 32,
			[]*child{agent("node-1", "zone-1", t0), agent("node-2", "zone-2", t0), agent("node-3", "zone-3", t0),
				agent("node-4", "zone-1", t0), agent("node-5", "zone-2", t0), agent("node-6", "zone-3", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeReady, "c1", t0), node("node-2", "zone-2", api.NodeReady, "c1", t0),
				node("node-3", "zone-3", api.NodeReady, "c1", t0), node("node-5", "zone-2", api.NodeInitializing, "", t0)},
			map[string]int{}},
		{"a member died: its zone only", 32,
			[]*child{agent("node-2", "zone-2", t0), agent("node-3", "zone-3", t0),
				agent("node-4", "zone-1", t0), agent("node-5", "zone-2", t0), agent("node-6", "zone-3", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeDown, "", t0), node("node-2", "zone-2", api.NodeReady, "c1", t0),
				node("node-3", "zone-3", api.NodeReady, "c1", t0), node("node-4", "zone-1", api.NodeReady, "c1", t0),
				node("node-5", "zone-2", api.NodeReady, "", t0), node("node-6", "zone-3", api.NodeReady, "", t0)},
			map[string]int{"zone-1": 1}},
		{"a restarted agent whose node is still down from before is on its way", 32,
			[]*child{agent("node-1", "zone-1", t0.Add(time.Minute))},
			[]*api.Node{node("node-1", "zone-1", api.NodeDown, "", t0)},
			map[string]int{"zone-2": 1, "zone-3": 1}},
		{"a running agent whose node went down since is not", 32,
			[]*child{agent("node-1", "zone-1", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeDown, "", t0.Add(time.Minute))},
			map[string]int{"zone-1": 1, "zone-2": 1, "zone-3": 1}},
		{"--max-agents", 4,
			[]*child{agent("node-1", "zone-1", t0), agent("node-2", "zone-2", t0), agent("node-3", "zone-3", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeReady, "c1", t0), node("node-2", "zone-2", api.NodeReady, "c1", t0),
				node("node-3", "zone-3", api.NodeReady, "c1", t0)},
			map[string]int{"zone-1": 1}},
		{"--max-agents reached", 3,
			[]*child{agent("node-1", "zone-1", t0), agent("node-2", "zone-2", t0), agent("node-3", "zone-3", t0)},
			[]*api.Node{node("node-1", "zone-1", api.NodeReady, "c1", t0)},
			map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &installation{cfg: Config{Zones: 3, PoolMin: 1, MaxAgents: tt.maxAgents}, agents: map[string]*child{},
				log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			for _, c := range tt.agents {
				in.agents[c.name] = c
			}
			got := in.wanted(tt.nodes)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("wanted() = %v, want %v (-want +got):\n%s", got, tt.want, diff)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	now := time.Date(2026, 11, 30, 17, 0, 0, 0, time.UTC)
	tests := []struct {
		failures int
		ago      time.Duration
		want     time.Duration
	}{
		{0, 0, 0},
		{1, 0, time.Second},
		{1, 2 * time.Second, 0},
		{3, time.Second, 3 * time.Second},
		{6, 0, maxBackoff},
		{60, 0, maxBackoff},
	}
	for _, tt := range tests {
		in := &installation{now: func() time.Time { return now }, failures: tt.failures, lastFailure: now.Add(-tt.ago)}
		if got := in.backoff(); got != tt.want {
			t.Errorf("backoff after %d failures, the last %s ago = %s, want %s", tt.failures, tt.ago, got, tt.want)
		}
	}
}

// TestRunRefusesASecondInstance: a shoal dev refuses a directory another
// one holds, before it starts or writes anything.
func TestRunRefusesASecondInstance(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Agents: 1, Zones: 1, MaxAgents: 1, Dir: dir, Addr: "127.0.0.1:1", Binary: "/bin/false",
		Logger: slog.New(slog.DiscardHandler), Stdout: io.Discard}
	err = Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "a shoal dev already runs in") {
		t.Errorf("Run in a locked directory: got %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, RecordFile)); err == nil {
		t.Error("the refused Run wrote a record of agents")
	}
}
