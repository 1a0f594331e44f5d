package state

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Tasks and the file system: a group's inputs are resolved to files when
// its job is submitted; a task's outputs are staged by its agent under
// OUTPUTS/.shoal-staging/RUN and published, in the same Raft write that
// marks the task complete, by renaming them into OUTPUTS. Any other end of
// a run (failure, loss, cancel) deletes its staging directory, so a retried
// or lost attempt never leaves partial or duplicate output.

// expandInputs resolves patterns to closed files, in order, without
// duplicates. A directory stands for the files directly in it.
func (tx *writeTxn) expandInputs(field string, patterns []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for k, p := range patterns {
		matches := tx.glob(p)
		n := 0
		for _, m := range matches {
			e := tx.entry(m)
			var files []*fsEntry
			if e.Dir {
				for _, c := range collectEntries(tx, m) {
					if !c.Dir && !strings.HasPrefix(api.PathBase(c.Path), ".") {
						files = append(files, c)
					}
				}
			} else {
				files = []*fsEntry{e}
			}
			for _, f := range files {
				if f.State != api.FileClosed {
					return nil, fmt.Errorf("%w: %s[%d]: %s is still open for writing", ErrConflict, field, k, f.Path)
				}
				n++
				if !seen[f.Path] {
					seen[f.Path] = true
					out = append(out, f.Path)
				}
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("%w: %s[%d]: %s matches no file", ErrNotFound, field, k, p)
		}
		if len(out) > api.MaxInputs {
			return nil, fmt.Errorf("%w: %s: more than %d input files", ErrInvalid, field, api.MaxInputs)
		}
	}
	return out, nil
}

func collectEntries(tx *writeTxn, dir string) []*fsEntry {
	out := collect[*fsEntry](tx.Txn, nil, tableFSEntries, "parent", dir)
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// glob returns the live paths matching a clean pattern, sorted. Wildcards
// match within one name; a name starting with a dot is matched only by a
// pattern that starts with one.
func (tx *writeTxn) glob(pattern string) []string {
	segs := strings.Split(strings.TrimPrefix(pattern, "/"), "/")
	cur := []string{"/"}
	for _, seg := range segs {
		var next []string
		for _, dir := range cur {
			if !strings.ContainsAny(seg, "*?[\\") {
				p := api.JoinPath(dir, seg)
				if tx.entry(p) != nil {
					next = append(next, p)
				}
				continue
			}
			for _, c := range collectEntries(tx, dir) {
				name := api.PathBase(c.Path)
				if strings.HasPrefix(name, ".") && !strings.HasPrefix(seg, ".") {
					continue
				}
				if ok, _ := path.Match(seg, name); ok {
					next = append(next, c.Path)
				}
			}
		}
		cur = next
	}
	return cur
}

// endRun publishes (when publish is set) or discards the staged outputs of
// task t's current run. It returns a problem that makes publishing fail
// (an output that already exists); the caller fails the attempt with it.
func (tx *writeTxn) endRun(t *api.Task, publish bool, now time.Time) (problem string, err error) {
	if t.Outputs == "" || t.RunID == 0 {
		return "", nil
	}
	staging := api.StagingDir(t)
	if publish && tx.entry(staging) != nil {
		children := collectEntries(tx, staging)
		for _, c := range children {
			dst := api.JoinPath(t.Outputs, api.PathBase(c.Path))
			if tx.entry(dst) != nil {
				problem = fmt.Sprintf("output %s already exists; nothing of this attempt was published", dst)
				break
			}
			if !c.Dir && c.State != api.FileClosed {
				problem = fmt.Sprintf("output %s was not completely written", c.Path)
				break
			}
		}
		if problem == "" {
			if err := tx.ensureDir(t.Outputs, now); err != nil {
				return "", err
			}
			for _, c := range children {
				if err := tx.moveTree(c.Path, api.JoinPath(t.Outputs, api.PathBase(c.Path)), now); err != nil {
					return "", err
				}
			}
		}
	}
	for _, e := range tx.subtree(staging) {
		if err := tx.retire(e); err != nil {
			return "", err
		}
	}
	// The staging root goes once no run stages anything in it.
	root := tx.entry(api.PathDir(staging))
	if root != nil && len(collectEntries(tx, root.Path)) == 0 {
		return problem, tx.retire(root)
	}
	return problem, nil
}

// ensureDir creates directory p and its parents when missing.
func (tx *writeTxn) ensureDir(p string, now time.Time) error {
	if e := tx.entry(p); e != nil {
		if !e.Dir {
			return fmt.Errorf("%w: %s is a file, not a directory", ErrConflict, p)
		}
		return nil
	}
	if err := tx.ensureParents(p, true, now); err != nil {
		return err
	}
	return tx.putEntry(tx.newDir(p, now))
}

// groupData resolves each group's inputs (setting Count for groups that
// split them) and creates the output directories.
func (tx *writeTxn) groupData(groups []api.GroupSpec, now time.Time) ([][]string, error) {
	out := make([][]string, len(groups))
	total := 0
	for i := range groups {
		g := &groups[i]
		f := fmt.Sprintf("groups[%d]", i)
		if len(g.Inputs) > 0 {
			files, err := tx.expandInputs(f+".inputs", g.Inputs)
			if err != nil {
				return nil, err
			}
			out[i] = files
			if g.SplitInputs {
				g.Count = len(files)
			}
		}
		if total += g.Count; total > api.MaxTasksPerJob {
			return nil, fmt.Errorf("%w: %s: the job would have more than %d tasks", ErrInvalid, f, api.MaxTasksPerJob)
		}
		if g.Outputs != "" {
			if err := tx.ensureDir(g.Outputs, now); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
