package clusternet

import "log/slog"

// SweepNode removes whatever the agent of node, with its network state in
// stateDir, left on this host: for a supervisor that saw that agent die
// (shoal dev, tests), so that its devices and addresses do not clash with
// the next node given the same block of a cluster's subnet on this host.
// It must not be called while that agent runs.
func SweepNode(node, stateDir string, log *slog.Logger) error {
	m, err := New(Config{Node: node, StateDir: stateDir, PoolSize: -1, Log: log})
	if err != nil {
		return err
	}
	defer m.Close()
	return m.Sweep()
}
