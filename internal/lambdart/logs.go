package lambdart

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Invocation logs. A sandbox's stdout and stderr go to its log file; the
// pool writes Lambda's START, END and REPORT lines into the same file
// around each invocation and notes the byte offsets, so that an
// invocation's log is the bytes between them. The records are kept per
// function on disk, as JSON lines, bounded in number and size.

// maxRecordLog caps the log text kept in one record; the end is kept.
// maxSandboxLog caps a sandbox's log file: past it, the file starts over
// at the next invocation.
const (
	maxRecordLog  = 256 << 10
	maxSandboxLog = 16 << 20
)

// logSegment is one invocation's part of a sandbox's log file.
type logSegment struct {
	start int64 // offset of the START line
	f     *os.File
}

// beginLog writes the START line and notes where the invocation's log
// starts. A log that cannot be written does not fail the invocation.
func beginLog(path, reqID string, version int) *logSegment {
	seg := &logSegment{}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644) // read back by end
	if err != nil {
		return seg
	}
	seg.f = f
	if fi, err := f.Stat(); err == nil {
		seg.start = fi.Size()
		if seg.start > maxSandboxLog {
			// Earlier invocations' logs are in their records: start
			// over (the sandbox appends, so it follows).
			if f.Truncate(0) == nil {
				seg.start = 0
			}
		}
	}
	fmt.Fprintf(f, "START RequestId: %s Version: %d\n", reqID, version)
	return seg
}

// line adds a line of the pool's own (a timeout, a crash) to the log.
func (seg *logSegment) line(s string) {
	if seg.f != nil {
		fmt.Fprintln(seg.f, s)
	}
}

// end writes the END and REPORT lines and returns the invocation's log.
func (seg *logSegment) end(reqID string, dur, initDur time.Duration, memMiB int) []byte {
	if seg.f == nil {
		return nil
	}
	defer seg.f.Close()
	ms := float64(dur.Microseconds()) / 1000
	report := fmt.Sprintf("REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %d ms\tMemory Size: %d MB",
		reqID, ms, (dur+time.Millisecond-1)/time.Millisecond, memMiB)
	if initDur > 0 {
		report += fmt.Sprintf("\tInit Duration: %.2f ms", float64(initDur.Microseconds())/1000)
	}
	fmt.Fprintf(seg.f, "END RequestId: %s\n%s\n", reqID, report)
	fi, err := seg.f.Stat()
	if err != nil {
		return nil
	}
	from := seg.start
	if fi.Size()-from > maxRecordLog {
		from = fi.Size() - maxRecordLog
	}
	b := make([]byte, fi.Size()-from)
	n, _ := seg.f.ReadAt(b, from)
	return b[:n]
}

// logStore keeps invocation log records per function, oldest first, in
// two files: DIR/<cluster>/<function>.jsonl, appended to, and
// <function>.jsonl.1, the one before. When the current file would pass
// half of either bound it becomes the previous one (a rename, replacing
// the older), so a function keeps between half and all of its bounds and
// no record is ever rewritten: adding one costs a write, whatever the
// bounds.
type logStore struct {
	dir        string
	maxRecords int
	maxBytes   int64

	mu    sync.Mutex
	sizes map[fnKey]*logSize // of the current files; loaded on first use
	// files are the functions' record files, kept open for appending:
	// a record is added at every invocation.
	files map[fnKey]*os.File
}

type logSize struct {
	records int
	bytes   int64
}

func newLogStore(dir string, maxRecords int, maxBytes int64) *logStore {
	if maxRecords <= 0 {
		maxRecords = 1000
	}
	if maxBytes <= 0 {
		maxBytes = 10 << 20
	}
	return &logStore{dir: dir, maxRecords: maxRecords, maxBytes: maxBytes, sizes: map[fnKey]*logSize{}, files: map[fnKey]*os.File{}}
}

func (l *logStore) path(k fnKey) string {
	return filepath.Join(l.dir, k.cluster, k.function+".jsonl")
}

// removeOthers removes the records of every cluster but keep.
func (l *logStore) removeOthers(keep string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.sizes {
		if k.cluster != keep {
			delete(l.sizes, k)
		}
	}
	for k, f := range l.files {
		if k.cluster != keep {
			f.Close()
			delete(l.files, k)
		}
	}
	return removeOtherDirs(l.dir, keep)
}

// add appends a record, dropping the oldest ones when the function's
// records would exceed their bounds.
func (l *logStore) add(k fnKey, rec *api.FunctionLogRecord) {
	line, err := json.Marshal(rec)
	if err != nil {
		return
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	sz := l.sizes[k]
	if sz == nil {
		sz = &logSize{}
		for _, ln := range readLines(l.path(k)) {
			sz.records++
			sz.bytes += int64(len(ln))
		}
		l.sizes[k] = sz
	}
	if sz.records > 0 && (sz.records+1 > max(1, l.maxRecords/2) || sz.bytes+int64(len(line)) > l.maxBytes/2) {
		if !l.rotate(k) {
			return
		}
		sz.records, sz.bytes = 0, 0
	}
	f := l.files[k]
	if f == nil {
		p := l.path(k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return
		}
		if f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
			return
		}
		l.files[k] = f
	}
	if _, err := f.Write(line); err != nil {
		return
	}
	sz.records++
	sz.bytes += int64(len(line))
}

// rotate makes a function's current record file the previous one.
func (l *logStore) rotate(k fnKey) bool {
	if f := l.files[k]; f != nil {
		f.Close() // the next record opens a new file
		delete(l.files, k)
	}
	err := os.Rename(l.path(k), l.path(k)+".1")
	return err == nil || errors.Is(err, fs.ErrNotExist)
}

// close closes the record files.
func (l *logStore) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, f := range l.files {
		f.Close()
		delete(l.files, k)
	}
}

// lines returns a function's record lines, oldest first, each with its
// newline.
func (l *logStore) lines(k fnKey) [][]byte {
	return append(readLines(l.path(k)+".1"), readLines(l.path(k))...)
}

// readLines returns the lines of the file at path, each with its newline.
func readLines(path string) [][]byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]byte
	r := bufio.NewReader(f)
	for {
		ln, err := r.ReadBytes('\n')
		if len(ln) > 0 && ln[len(ln)-1] == '\n' {
			out = append(out, ln)
		}
		if err != nil {
			return out
		}
	}
}

// Logs returns the invocation log records of a function kept on the
// node, oldest first: those that started at or after since (all when it
// is zero), only requestID's when it is set.
func (p *Pool) Logs(cluster, function string, since time.Time, requestID string) []*api.FunctionLogRecord {
	out := []*api.FunctionLogRecord{}
	if api.ValidateName("cluster", cluster) != nil || api.ValidateFunctionName("function", function) != nil {
		return out // names that would not stay in the log directory
	}
	l := p.logs
	l.mu.Lock()
	lines := l.lines(fnKey{cluster, function})
	l.mu.Unlock()
	for _, ln := range lines {
		var rec api.FunctionLogRecord
		if json.Unmarshal(ln, &rec) != nil {
			continue
		}
		if requestID != "" && rec.RequestID != requestID || !since.IsZero() && rec.Start.Before(since) {
			continue
		}
		out = append(out, &rec)
	}
	return out
}
