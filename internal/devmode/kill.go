package devmode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// signals are the names `shoal dev kill --signal` accepts.
var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM,
	"STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT,
}

// ParseSignal parses a signal name (KILL, SIGKILL, kill) or number (9).
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signals[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		for _, sig := range signals {
			if int(sig) == n {
				return sig, nil
			}
		}
	}
	return 0, fmt.Errorf("--signal: %q is not one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, STOP, CONT or their numbers", s)
}

// Kill sends sig to the agent named name of the dev installation in dir,
// and returns its pid. It signals only a process that is that agent: the
// pid recorded in DIR/agents.json must run the recorded shoal binary as
// `agent --name NAME --data-dir DATA` with the recorded data directory
// under dir, so that it can never hit a process of another installation
// or one that reused the pid.
func Kill(dir, name string, sig syscall.Signal) (int, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	rec, err := readRecord(dir)
	if errors.Is(err, errNoRecord) {
		return 0, fmt.Errorf("no shoal dev installation in %s (no %s); pass the --dir that shoal dev uses", dir, RecordFile)
	}
	if err != nil {
		return 0, err
	}
	a := rec.agent(name)
	if a == nil {
		return 0, fmt.Errorf("no agent named %q in the shoal dev installation in %s (its agents: %s)", name, dir, rec.names())
	}
	if a.State != AgentRunning || a.PID == 0 {
		return 0, fmt.Errorf("agent %s is not running (%s)", name, a.State)
	}
	// The process is held (a pidfd on Linux) before it is checked, so that
	// the signal reaches the process checked even if it exits meanwhile
	// and another takes its pid.
	p, err := os.FindProcess(a.PID)
	if err != nil {
		return 0, fmt.Errorf("agent %s (pid %d): %w", name, a.PID, err)
	}
	defer p.Release()
	if err := checkAgentProcess(a.PID, rec.Binary, dir, a); err != nil {
		return 0, err
	}
	if err := p.Signal(sig); err != nil {
		return 0, fmt.Errorf("signalling agent %s (pid %d): %w", name, a.PID, err)
	}
	return a.PID, nil
}

// checkAgentProcess checks that pid runs the agent a of the installation
// in dir.
func checkAgentProcess(pid int, binary, dir string, a *AgentRecord) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, os.ErrNotExist) || err == nil && len(b) == 0 {
		return fmt.Errorf("agent %s is not running (pid %d has exited)", a.Name, pid)
	}
	if err != nil {
		return fmt.Errorf("reading the command line of agent %s (pid %d): %w", a.Name, pid, err)
	}
	if err := matchAgentCmdline(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), binary, dir, a); err != nil {
		return fmt.Errorf("pid %d is not agent %s of the shoal dev installation in %s (%v); not signalling it", pid, a.Name, dir, err)
	}
	return nil
}

// matchAgentCmdline checks a process's arguments against the agent a of
// the installation in dir, started from binary.
func matchAgentCmdline(argv []string, binary, dir string, a *AgentRecord) error {
	if len(argv) < 2 || argv[1] != "agent" {
		return fmt.Errorf("it runs %q, not a shoal agent", strings.Join(argv, " "))
	}
	if binary != "" && argv[0] != binary {
		return fmt.Errorf("it runs %s, not %s", argv[0], binary)
	}
	flags := map[string]string{}
	for i := 2; i < len(argv); i++ {
		k, v, hasValue := strings.Cut(argv[i], "=")
		if !strings.HasPrefix(k, "--") {
			continue
		}
		if !hasValue && i+1 < len(argv) {
			v = argv[i+1]
			i++
		}
		flags[k] = v
	}
	if flags["--name"] != a.Name {
		return fmt.Errorf("it is agent %q", flags["--name"])
	}
	rel, err := filepath.Rel(dir, a.DataDir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return fmt.Errorf("its recorded data dir %s is outside %s", a.DataDir, dir)
	}
	if flags["--data-dir"] != a.DataDir {
		return fmt.Errorf("its data dir is %q, not %s", flags["--data-dir"], a.DataDir)
	}
	return nil
}

// SignalName returns a signal's name as ParseSignal accepts it: SIGKILL.
func SignalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return "SIG" + name
		}
	}
	return strconv.Itoa(int(sig))
}
