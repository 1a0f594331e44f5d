package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testutil"
)

// The README tour test follows README.md's "A short tour" literally, in
// order, as a new user would, against a fresh `shoal dev`. What it relies
// on, for whoever edits the README:
//
//   - The tour is every ```sh block from the heading "## A short tour" up to
//     "## Running for real". The blocks run in order in one bash with
//     `set -euo pipefail`, so shell variables carry from one block to the
//     next and any failing command fails the test, which prints the block
//     and the output.
//   - Commands call `./shoal` and run in the directory where `./shoal dev`
//     runs, with its default --dir `.shoal-dev`: the test runs them in a
//     temporary directory holding a `shoal` symlink to the binary built from
//     this tree and an `examples` symlink to the repository's examples, with
//     `shoal dev --dir .shoal-dev` started there and SHOAL_ADDR pointing at
//     it (any free port instead of 7460).
//   - A command meant to fail carries a comment starting with `# refused`
//     (`SHOAL_TOKEN=$T ./shoal node list    # refused: operators only`):
//     the test runs it expecting a non-zero exit, and fails if it succeeds.
//   - Waits are commands that wait (`job run --wait`, `wait`), never sleeps.
//
// The tour ends with examples/wordcount/run.sh, after the tour killed two
// nodes: it passes only if the pool provider refilled every zone.

const (
	tourStart = "## A short tour"
	tourEnd   = "## Running for real"
)

// tourBlock is one ```sh block of the tour.
type tourBlock struct {
	line int // of its first command in README.md
	text string
}

// readTour extracts the tour's sh blocks from the README.
func readTour(readme []byte) ([]tourBlock, error) {
	var blocks []tourBlock
	in, inBlock := false, false
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, tourStart):
			in = true
		case strings.HasPrefix(line, tourEnd):
			in = false
		case in && !inBlock && line == "```sh":
			inBlock, start = true, n+1
			cur.Reset()
		case inBlock && line == "```":
			inBlock = false
			blocks = append(blocks, tourBlock{line: start, text: cur.String()})
		case inBlock:
			cur.WriteString(line + "\n")
		}
	}
	if inBlock {
		return nil, fmt.Errorf("README.md: the sh block at line %d does not end", start)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("README.md has no sh blocks between %q and %q", tourStart, tourEnd)
	}
	return blocks, nil
}

// refusedLine is a command with a "# refused" comment.
var refusedLine = regexp.MustCompile(`^(\S.*?)\s+# refused`)

// tourScript turns the blocks into one bash script; commands marked
// "# refused" must fail.
func tourScript(blocks []tourBlock) string {
	var b strings.Builder
	b.WriteString("set -euo pipefail\nPS4='+ '\nset -x\n")
	for i, bl := range blocks {
		fmt.Fprintf(&b, ": '### README block %d (README.md line %d)'\n", i+1, bl.line)
		for _, line := range strings.SplitAfter(bl.text, "\n") {
			if m := refusedLine.FindStringSubmatch(line); m != nil {
				quoted := strings.ReplaceAll(m[1], "'", `'\''`)
				line = fmt.Sprintf("if %s; then echo 'README: should have been refused but succeeded: %s' >&2; exit 1; fi\n", m[1], quoted)
			}
			b.WriteString(line)
		}
	}
	return b.String()
}

func TestReadmeTourScript(t *testing.T) {
	readme := []byte("# X\n```sh\nnot tour\n```\n## A short tour\n\n```sh\n./shoal a\nX=1\n```\n" +
		"```yaml\nnot: sh\n```\n```sh\n./shoal b $X             # refused: no\n```\n## Running for real\n```sh\nnot tour\n```\n")
	blocks, err := readTour(readme)
	if err != nil {
		t.Fatal(err)
	}
	want := []tourBlock{{line: 8, text: "./shoal a\nX=1\n"}, {line: 15, text: "./shoal b $X             # refused: no\n"}}
	if fmt.Sprint(blocks) != fmt.Sprint(want) {
		t.Errorf("readTour() = %+v, want %+v", blocks, want)
	}
	script := tourScript(blocks)
	if want := "if ./shoal b $X; then echo 'README: should have been refused but succeeded: ./shoal b $X' >&2; exit 1; fi\n"; !strings.Contains(script, want) {
		t.Errorf("tourScript() = %q, want it to contain %q", script, want)
	}
	if _, err := readTour([]byte("## A short tour\n```sh\n./shoal a\n")); err == nil {
		t.Error("readTour of an unterminated block: got no error")
	}
}

// TestReadme runs the README's tour, then the word count example, against
// one `shoal dev`.
func TestReadme(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(readme, []byte("pkill")) {
		t.Error("README.md uses pkill, which can hit processes of other installations; use ./shoal dev kill NODE")
	}
	blocks, err := readTour(readme)
	if err != nil {
		t.Fatal(err)
	}
	script := tourScript(blocks)
	if !strings.Contains(script, "examples/wordcount/run.sh") {
		t.Fatalf("the README tour does not run examples/wordcount/run.sh:\n%s", script)
	}

	work := t.TempDir()
	examples, err := filepath.Abs("../examples")
	if err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"shoal": testutil.Binary(t), "examples": examples} {
		if err := os.Symlink(target, filepath.Join(work, name)); err != nil {
			t.Fatal(err)
		}
	}
	addr := testutil.FreeAddr(t)
	c := devClient(t, filepath.Join(work, ".shoal-dev"), addr)
	dev := startDev(t, filepath.Join(work, ".shoal-dev"), addr)
	testutil.WaitFor(t, 30*time.Second, func() (bool, string) {
		p, _, err := c.Pool(context.Background(), nil)
		if err != nil {
			return false, err.Error()
		}
		return p.Idle == 3, fmt.Sprintf("%d idle nodes, want the 3 of shoal dev", p.Idle)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = work
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The CLI finds the CA and client certificate in ./.shoal-dev/tls.
	cmd.Env = append(cmd.Env, "SHOAL_ADDR=https://"+addr)
	var out testutil.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		output := out.String()
		block := "?"
		if i := strings.LastIndex(output, "### README block "); i >= 0 {
			var n int
			fmt.Sscanf(output[i:], "### README block %d", &n)
			if n >= 1 && n <= len(blocks) {
				block = fmt.Sprintf("%d (README.md line %d):\n%s", n, blocks[n-1].line, blocks[n-1].text)
			}
		}
		if len(output) > 16000 {
			output = "...\n" + output[len(output)-16000:]
		}
		t.Fatalf("the README tour failed (%v) in block %s\noutput:\n%s", err, block, output)
	}
	t.Logf("the README tour's output:\n%s", out.String())
	if !strings.Contains(out.String(), "word count matches a local count") {
		t.Errorf("the tour's word count did not say it matches:\n%s", out.String())
	}
	dev.stop()
}
