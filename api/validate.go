package api

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits that apply to every submission.
const (
	MaxNameLen       = 63
	MaxTasksPerJob   = 1000000
	MaxGroupsPerJob  = 100
	MaxCommandArgs   = 1024
	MaxEnvVars       = 1024
	MaxBodyBytes     = 8 << 20
	MaxClusterNodes  = 10000
	DefaultMaxTries  = 3
	MaxTaskAttempts  = 100
	MaxDrainDeadline = 24 * time.Hour
)

// ErrInvalid marks a validation failure; the message names the field.
var ErrInvalid = errors.New("invalid")

// FieldError names the field at fault and what is wrong with it.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// Unwrap lets errors.Is(err, ErrInvalid) match.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// ValidateName checks a user-chosen name (node, zone, cluster, job, group):
// 1 to 63 characters of letters, digits, '-', '_' and '.', starting with a
// letter or digit. Names end up in paths and URLs, so nothing else is allowed.
func ValidateName(field, s string) error {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	if len(s) > MaxNameLen {
		return invalid(field, "%q is %d characters long; at most %d are allowed", truncate(s), len(s), MaxNameLen)
	}
	for i, r := range s {
		ok := r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || (i > 0 && (r == '-' || r == '_' || r == '.')))
		if !ok {
			return invalid(field, "%q contains %q; use letters, digits, '-', '_' and '.', starting with a letter or digit", truncate(s), r)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Validate checks a job spec and fills defaults. It reports the first
// problem found, naming the field (for example "groups[0].count").
func (j *JobSpec) Validate() error {
	if err := ValidateName("name", j.Name); err != nil {
		return err
	}
	if err := ValidateName("cluster", j.Cluster); err != nil {
		return err
	}
	if j.Type == "" {
		j.Type = JobBatch
	}
	switch j.Type {
	case JobMPI:
		return j.validateMPI()
	case JobBatch:
	default:
		return invalid("type", "%q is not a known job type (want one of %s)", truncate(j.Type), strings.Join(JobTypes, ", "))
	}
	switch {
	case j.MPI != nil:
		return invalid("mpi", "only mpi jobs have an mpi section; this job's type is %q", j.Type)
	case j.Resources != (Resources{}):
		return invalid("resources", "only mpi jobs have job-wide resources; batch jobs set them per group")
	case len(j.Files) > 0:
		return invalid("files", "only mpi jobs have files; batch jobs read inputs per group")
	case len(j.Env) > 0:
		return invalid("env", "only mpi jobs have a job-wide env; batch jobs set it per group")
	}
	if len(j.Groups) == 0 {
		return invalid("groups", "at least one group is required")
	}
	if len(j.Groups) > MaxGroupsPerJob {
		return invalid("groups", "%d groups; at most %d are allowed", len(j.Groups), MaxGroupsPerJob)
	}
	seen := map[string]bool{}
	total := 0
	for i := range j.Groups {
		g := &j.Groups[i]
		f := fmt.Sprintf("groups[%d]", i)
		if err := ValidateName(f+".name", g.Name); err != nil {
			return err
		}
		if seen[g.Name] {
			return invalid(f+".name", "%q is used by another group", g.Name)
		}
		seen[g.Name] = true
		if err := g.validateData(f, j.Cluster); err != nil {
			return err
		}
		if g.SplitInputs && g.Count == 0 {
			g.Count = 1 // set to the number of input files when submitted
		}
		if g.Count < 1 {
			return invalid(f+".count", "must be at least 1, got %d", g.Count)
		}
		// Compare before adding: total+g.Count could overflow and wrap.
		if g.Count > MaxTasksPerJob-total {
			return invalid(f+".count", "the job would have more than %d tasks", MaxTasksPerJob)
		}
		total += g.Count
		if err := validateCommand(f+".command", g.Command); err != nil {
			return err
		}
		if err := validateEnv(f+".env", g.Env); err != nil {
			return err
		}
		if g.Resources.CPU < 0 {
			return invalid(f+".resources.cpu", "must not be negative, got %d", g.Resources.CPU)
		}
		if g.Resources.MemoryMB < 0 {
			return invalid(f+".resources.memory", "must not be negative, got %d", g.Resources.MemoryMB)
		}
		if g.Resources.CPU == 0 {
			g.Resources.CPU = 100
		}
		if g.Resources.MemoryMB == 0 {
			g.Resources.MemoryMB = 64
		}
		if g.MaxAttempts < 0 || g.MaxAttempts > MaxTaskAttempts {
			return invalid(f+".max_attempts", "must be between 1 and %d, got %d", MaxTaskAttempts, g.MaxAttempts)
		}
		if g.MaxAttempts == 0 {
			g.MaxAttempts = DefaultMaxTries
		}
		if g.Timeout < 0 {
			return invalid(f+".timeout", "must not be negative")
		}
	}
	return nil
}

// Validate checks a cluster request and fills defaults.
func (r *ClusterRequest) Validate() error {
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if r.Nodes < 1 || r.Nodes > MaxClusterNodes {
		return invalid("nodes", "must be between 1 and %d, got %d", MaxClusterNodes, r.Nodes)
	}
	if r.Zones < 0 {
		return invalid("zones", "must not be negative, got %d", r.Zones)
	}
	if r.Zones == 0 {
		r.Zones = 1
	}
	if r.Zones > r.Nodes {
		return invalid("zones", "%d zones cannot be spanned by %d nodes", r.Zones, r.Nodes)
	}
	if len(r.Egress) > MaxEgress {
		return invalid("egress", "%d networks; at most %d are allowed", len(r.Egress), MaxEgress)
	}
	for i, e := range r.Egress {
		p, err := netip.ParsePrefix(e)
		f := fmt.Sprintf("egress[%d]", i)
		switch {
		case err != nil:
			return invalid(f, "%q is not a network in CIDR notation such as 192.168.10.0/24", truncate(e))
		case !p.Addr().Is4():
			return invalid(f, "%s: only IPv4 networks are supported", e)
		case p.Masked() != p:
			return invalid(f, "%s has host bits set; did you mean %s?", e, p.Masked())
		case p.Addr().IsLoopback() || p.Overlaps(netip.MustParsePrefix("127.0.0.0/8")):
			return invalid(f, "%s overlaps the loopback network 127.0.0.0/8", e)
		}
		r.Egress[i] = p.String()
	}
	return nil
}

// MaxEgress bounds the egress networks of a cluster.
const MaxEgress = 32

// Validate checks a node registration.
func (r *NodeRegistration) Validate() error {
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if err := ValidateName("zone", r.Zone); err != nil {
		return err
	}
	if r.CPU <= 0 {
		return invalid("cpu", "must be positive, got %d", r.CPU)
	}
	if r.MemoryMB <= 0 {
		return invalid("memory", "must be positive, got %d", r.MemoryMB)
	}
	if len(r.Labels) > 64 {
		return invalid("labels", "%d labels; at most 64 are allowed", len(r.Labels))
	}
	for k, v := range r.Labels {
		if err := ValidateName("labels", k); err != nil {
			return err
		}
		if len(v) > 255 || strings.ContainsFunc(v, unicode.IsControl) {
			return invalid("labels."+k, "value must be at most 255 printable characters")
		}
	}
	if s := r.Socket; s != "" && (!strings.HasPrefix(s, "/") || path.Clean(s) != s || len(s) > MaxSocketPathLen ||
		strings.ContainsFunc(s, unicode.IsControl)) {
		return invalid("socket", "must be a clean absolute path of at most %d bytes", MaxSocketPathLen)
	}
	if o := r.OverlayAddr; o != "" {
		ap, err := netip.ParseAddrPort(o)
		if err != nil || !ap.Addr().Is4() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			return invalid("overlay_addr", "%q is not an IPv4 address and UDP port (e.g. 192.0.2.7:4789)", o)
		}
	}
	return nil
}

// MaxSocketPathLen is the longest path a unix socket can be bound to on
// Linux (sun_path holds 108 bytes with the terminating NUL).
const MaxSocketPathLen = 107

// MaxInputs bounds the input patterns of a group and the files they match.
const MaxInputs = 100000

// validateData checks a group's inputs and outputs and makes them absolute.
// Relative paths are under the cluster's root; nothing may lie outside it.
func (g *GroupSpec) validateData(f, cluster string) error {
	root := ClusterRoot(cluster)
	resolve := func(field, p string) (string, error) { return resolveInCluster(cluster, field, p) }
	if len(g.Inputs) > MaxInputs {
		return invalid(f+".inputs", "%d entries; at most %d are allowed", len(g.Inputs), MaxInputs)
	}
	for k, in := range g.Inputs {
		p, err := resolve(fmt.Sprintf("%s.inputs[%d]", f, k), in)
		if err != nil {
			return err
		}
		g.Inputs[k] = p
	}
	if g.SplitInputs && len(g.Inputs) == 0 {
		return invalid(f+".split_inputs", "needs inputs to split")
	}
	if g.Outputs != "" {
		p, err := resolve(f+".outputs", g.Outputs)
		if err != nil {
			return err
		}
		if p == root {
			return invalid(f+".outputs", "must be a directory below %s, not the cluster root itself", root)
		}
		g.Outputs = p
	}
	return nil
}

// resolveInCluster makes p absolute (a relative path is under the
// cluster's root) and checks that it lies within the cluster's root.
func resolveInCluster(cluster, field, p string) (string, error) {
	root := ClusterRoot(cluster)
	if p != "" && p[0] != '/' {
		p = root + "/" + p
	}
	p, err := CleanPath(field, p)
	if err != nil {
		return "", err
	}
	if !WithinDir(p, root) {
		return "", invalid(field, "%s is outside this cluster's directory %s", truncate(p), root)
	}
	return p, nil
}
