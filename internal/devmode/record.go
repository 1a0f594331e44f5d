package devmode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RecordFile is the name, under a dev installation's directory, of the
// record of its agents.
const RecordFile = "agents.json"

// Agent states in the record.
const (
	// AgentRunning: the agent runs under a `shoal dev` (or did when that
	// process was killed without a chance to say otherwise).
	AgentRunning = "running"
	// AgentStopped: `shoal dev` stopped it when it stopped itself; the next
	// `shoal dev` in the directory starts it again.
	AgentStopped = "stopped"
	// AgentExited: it ended while `shoal dev` ran (killed, crashed); it is
	// not started again.
	AgentExited = "exited"
)

// AgentRecord is one agent a dev installation started.
type AgentRecord struct {
	Name    string    `json:"name"`
	Zone    string    `json:"zone"`
	DataDir string    `json:"data_dir"`
	State   string    `json:"state"`
	PID     int       `json:"pid,omitempty"` // while running
	Started time.Time `json:"started"`
	Exited  time.Time `json:"exited,omitzero"`
}

// Record is what DIR/agents.json holds: every agent the installation
// started, so that a restarted `shoal dev` brings back the same ones and
// `shoal dev kill` finds their processes.
type Record struct {
	// Binary is the shoal executable the agents run.
	Binary string `json:"binary"`
	// LastNumber is the highest N of the node-N names given so far; new
	// agents continue after it.
	LastNumber int           `json:"last_number"`
	Agents     []AgentRecord `json:"agents"`
}

// agent returns the record of the agent named name, or nil.
func (r *Record) agent(name string) *AgentRecord {
	for i := range r.Agents {
		if r.Agents[i].Name == name {
			return &r.Agents[i]
		}
	}
	return nil
}

// names lists the recorded agents' names.
func (r *Record) names() string {
	var s []string
	for _, a := range r.Agents {
		s = append(s, a.Name)
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// nodeNumber returns N of a name node-N, or 0.
func nodeNumber(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "node-"))
	if err != nil || !strings.HasPrefix(name, "node-") || n < 0 {
		return 0
	}
	return n
}

// errNoRecord means a directory holds no dev installation's record.
var errNoRecord = errors.New("devmode: no record")

// readRecord reads DIR/agents.json.
func readRecord(dir string) (*Record, error) {
	path := filepath.Join(dir, RecordFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", errNoRecord, path)
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s is not a record of agents (%v); remove it to start fresh agents", path, err)
	}
	seen := map[string]bool{}
	for _, a := range r.Agents {
		if a.Name == "" || a.Zone == "" || a.DataDir == "" {
			return nil, fmt.Errorf("%s lists an agent without a name, zone or data dir; remove it to start fresh agents", path)
		}
		if seen[a.Name] {
			return nil, fmt.Errorf("%s lists agent %s twice; remove it to start fresh agents", path, a.Name)
		}
		seen[a.Name] = true
		r.LastNumber = max(r.LastNumber, nodeNumber(a.Name))
	}
	return &r, nil
}

// writeRecord replaces DIR/agents.json atomically: a reader (or a crash)
// sees the old record or the new one, never a mix.
func writeRecord(dir string, r *Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, RecordFile+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, RecordFile))
}
