package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
	"sigs.k8s.io/yaml"
)

// TestWordCountSurvivesDataNodeKill runs the word-count example's jobs with
// a data node killed while the map tasks run (each map task first sleeps so
// that the kill lands mid-run). The result must equal a local count: lost
// map tasks are re-placed next to another replica of their input, and no
// partial or duplicate output is published.
func TestWordCountSurvivesDataNodeKill(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 5, Zones: 3, HeartbeatTTL: time.Second})
	mustShoal(t, in, "cluster", "create", "wc", "--nodes", "3", "--zones", "3")

	corpus := map[string]string{}
	dir := t.TempDir()
	for i := range 6 {
		var b strings.Builder
		for j := range 400 {
			fmt.Fprintf(&b, "Word%d the quick brown fox %d jumps, over the lazy dog-%d!\n", j%17, i, j%5)
		}
		name := fmt.Sprintf("part-%d.txt", i)
		corpus[name] = b.String()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		mustShoal(t, in, "fs", "put", filepath.Join(dir, name), "/clusters/wc/corpus/"+name)
	}

	mapJob := loadExample(t, "map.yaml")
	mapJob.Groups[0].Command[2] = "sleep 2; " + mapJob.Groups[0].Command[2]
	id := submitSpec(t, in, mapJob)
	victim := runningNode(t, in, id)
	in.Agent(victim).Kill9()
	waitJobState(t, in, id, api.JobComplete, 60*time.Second)

	j := jobJSON(t, in, id)
	for _, tk := range j.Tasks {
		if tk.Node == victim {
			t.Errorf("task %d completed on the killed node %s", tk.Index, victim)
		}
		fi, err := in.Client.FSStat(context.Background(), tk.Inputs[0])
		if err != nil {
			t.Fatal(err)
		}
		if !holdsReplica(fi, tk.Node) {
			t.Errorf("task %d ran on %s, which holds no replica of %s", tk.Index, tk.Node, tk.Inputs[0])
		}
	}
	counts, err := in.Client.FSList(context.Background(), "/clusters/wc/counts")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range counts {
		if !c.Dir {
			names = append(names, c.Name)
		}
	}
	if len(names) != len(corpus) {
		t.Errorf("map outputs %v: want one per input file (%d)", names, len(corpus))
	}

	red := submitSpec(t, in, loadExample(t, "reduce.yaml"))
	waitJobState(t, in, red, api.JobComplete, 60*time.Second)
	got := mustShoal(t, in, "fs", "cat", "/clusters/wc/result/wordcount.txt")
	if want := localWordCount(corpus); got != want {
		t.Errorf("word count differs from a local count:\ngot:\n%s\nwant:\n%s", head(got), head(want))
	}
}

func loadExample(t *testing.T, name string) *api.JobSpec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "wordcount", name))
	if err != nil {
		t.Fatal(err)
	}
	var spec api.JobSpec
	if err := yaml.UnmarshalStrict(b, &spec); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &spec
}

func submitSpec(t *testing.T, in *testutil.Installation, spec *api.JobSpec) string {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return submit(t, in, string(b))
}

func holdsReplica(fi *api.FileInfo, node string) bool {
	for _, c := range fi.Chunks {
		for _, r := range c.Replicas {
			if r.Node == node {
				return true
			}
		}
	}
	return false
}

// localWordCount counts like the example's shell pipeline: runs of ASCII
// letters, lowercased; "count word" lines, most frequent first, then by
// word in byte order.
func localWordCount(corpus map[string]string) string {
	counts := map[string]int{}
	for _, text := range corpus {
		for _, w := range strings.FieldsFunc(text, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) {
			counts[strings.ToLower(w)]++
		}
	}
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	sort.Slice(words, func(i, j int) bool {
		if counts[words[i]] != counts[words[j]] {
			return counts[words[i]] > counts[words[j]]
		}
		return words[i] < words[j]
	})
	var b strings.Builder
	for _, w := range words {
		fmt.Fprintf(&b, "%d %s\n", counts[w], w)
	}
	return b.String()
}

func head(s string) string {
	lines := strings.SplitN(s, "\n", 11)
	return strings.Join(lines[:min(len(lines), 10)], "\n")
}
