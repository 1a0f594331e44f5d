package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/dfs"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// The DFS benchmarks compare Shoal with the disk it runs on, measured in
// the same run. Rates are in MB/s of 10^6 bytes, as dd reports them.
const (
	megabyte = 1e6
	// ioBuf is the size of every read and write the benchmarks issue.
	ioBuf = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// patternReader yields a fixed number of bytes cheaply: one random 1 MiB
// block over and over, each copy stamped with its index in its first eight
// bytes so that no two MiB of the stream are alike and a misplaced chunk
// changes the stream's CRC. It keeps the CRC32C of what it yielded.
type patternReader struct {
	block []byte
	off   int
	index uint64
	left  int64
	crc   uint32
}

func newPatternReader(size int64, seed uint64) *patternReader {
	r := &patternReader{block: make([]byte, ioBuf), left: size}
	rng := rand.New(rand.NewPCG(seed, seed^0x5deece66d))
	for i := 0; i < len(r.block); i += 8 {
		binary.LittleEndian.PutUint64(r.block[i:], rng.Uint64())
	}
	return r
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.off == 0 {
		binary.LittleEndian.PutUint64(r.block, r.index)
		r.index++
	}
	n := copy(p[:min(int64(len(p)), r.left)], r.block[r.off:])
	r.crc = crc32.Update(r.crc, castagnoli, p[:n])
	r.off = (r.off + n) % len(r.block)
	r.left -= int64(n)
	return n, nil
}

// dropCaches writes back dirty pages and empties the page cache, so that
// the next read of a file comes from the disk. It needs root.
func dropCaches(b *testing.B) {
	b.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		b.Fatalf("dropping the page cache (the DFS benchmarks must run as root): %v", err)
	}
}

// diskWriteRate writes size bytes to a new file in dir with 1 MiB writes
// and one fdatasync at the end, and returns the rate in MB/s. The file is
// left for diskReadRate; the caller removes it.
func diskWriteRate(b *testing.B, path string, size int64) float64 {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	src := newPatternReader(size, 1)
	buf := make([]byte, ioBuf)
	start := time.Now()
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				b.Fatal(werr)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
	return float64(size) / megabyte / time.Since(start).Seconds()
}

// diskReadRate drops the page cache and reads path with 1 MiB reads; it
// returns the rate in MB/s.
func diskReadRate(b *testing.B, path string) float64 {
	b.Helper()
	dropCaches(b)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, ioBuf)
	var total int64
	start := time.Now()
	for {
		n, err := f.Read(buf)
		total += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return float64(total) / megabyte / time.Since(start).Seconds()
}

// diskRates measures the disk under the installation's data directories:
// sequential write (with a final fdatasync) and cold single-copy read of a
// file of size bytes, in MB/s.
func diskRates(b *testing.B, in *testutil.Installation, size int64) (write, read float64) {
	b.Helper()
	path := filepath.Join(in.Dir, "disk-baseline")
	defer os.Remove(path)
	write = diskWriteRate(b, path, size)
	read = diskReadRate(b, path)
	return write, read
}

// BenchmarkDFSWriteRead1GiB uploads 1 GiB with replication 3 and 64 MiB
// chunks to three agents in three zones, then downloads it with a cold
// page cache and checks its CRC32C, the way `shoal fs put` and `get` do:
// through a dfs.Client, which moves the data straight to and from the data
// nodes (here all on this host, so reads are short-circuit). Writes are
// compared with a third of the disk's sequential write rate (each byte
// lands on the one disk three times), reads with a single cold sequential
// read of a 1 GiB file.
func BenchmarkDFSWriteRead1GiB(b *testing.B) {
	const size = 1 << 30
	in := testutil.StartInstallation(b, testutil.Options{Agents: 3, Zones: 3})
	dc := dfs.NewClient(in.Client, nil)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		diskWrite, diskRead := diskRates(b, in, size)
		dropCaches(b)

		path := fmt.Sprintf("/bench/rw-%d", i)
		src := newPatternReader(size, uint64(i)+2)
		start := time.Now()
		fi, err := dc.Upload(ctx, path, src, size, api.UploadOptions{Replication: 3})
		if err != nil {
			b.Fatalf("upload: %v", err)
		}
		write := time.Since(start)
		if fi.Size != size {
			b.Fatalf("uploaded file has %d bytes, want %d", fi.Size, size)
		}

		dropCaches(b)
		start = time.Now()
		body, _, err := dc.Open(ctx, path)
		if err != nil {
			b.Fatalf("download: %v", err)
		}
		h := crc32.New(castagnoli)
		n, err := io.CopyBuffer(h, body, make([]byte, ioBuf))
		body.Close()
		read := time.Since(start)
		if err != nil {
			b.Fatalf("download after %d bytes: %v", n, err)
		}
		if n != size || h.Sum32() != src.crc {
			b.Fatalf("downloaded %d bytes with CRC32C %08x; uploaded %d with %08x", n, h.Sum32(), size, src.crc)
		}
		if err := in.Client.FSRemove(ctx, &api.Remove{Path: path}); err != nil {
			b.Fatal(err)
		}

		writeRate := size / megabyte / write.Seconds()
		readRate := size / megabyte / read.Seconds()
		b.ReportMetric(diskWrite, "disk-write-MB/s")
		b.ReportMetric(diskRead, "disk-read-MB/s")
		b.ReportMetric(writeRate, "write-MB/s")
		b.ReportMetric(readRate, "read-MB/s")
		b.ReportMetric(writeRate/(diskWrite/3), "write-ratio")
		b.ReportMetric(readRate/diskRead, "read-ratio")
	}
}

// createForm is one way of creating a closed empty file.
type createForm func(ctx context.Context, c *api.Client, path string) error

// createClosed creates the file closed in one request (one Raft write).
func createClosed(ctx context.Context, c *api.Client, path string) error {
	_, err := c.FSCreate(ctx, &api.FileCreate{Path: path, Close: true})
	return err
}

// createThenClose creates the file open, then closes it: two requests and
// two Raft writes, as a writer of an empty stream does.
func createThenClose(ctx context.Context, c *api.Client, path string) error {
	fi, err := c.FSCreate(ctx, &api.FileCreate{Path: path})
	if err != nil {
		return err
	}
	_, err = c.FSClose(ctx, &api.FileClose{Path: path, FileID: fi.FileID, Size: 0})
	return err
}

// syncLatency returns the median time to write 4 KiB to a file in dir and
// fdatasync it: the floor of one durable Raft log commit on this disk
// (raft-boltdb syncs twice per commit: pages, then the meta page).
func syncLatency(b *testing.B, dir string) time.Duration {
	b.Helper()
	f, err := os.Create(filepath.Join(dir, "sync-baseline"))
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, 200)
	for i := range 200 {
		t := time.Now()
		if _, err := f.WriteAt(buf, int64(i%16)*4096); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	return lat[len(lat)/2]
}

// metaRun is the outcome of one metadata load.
type metaRun struct {
	opsPerSec float64
	p50, p99  time.Duration
}

// runCreates creates ops empty files under dir from clients goroutines,
// each in its own subdirectory, and returns the rate and the latency
// percentiles of one create-and-close.
func runCreates(b *testing.B, c *api.Client, dir string, clients, ops int, create createForm) metaRun {
	b.Helper()
	ctx := context.Background()
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	start := time.Now()
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := ops / clients
			if g < ops%clients {
				n++
			}
			lat[g] = make([]time.Duration, 0, n)
			for j := range n {
				t := time.Now()
				if err := create(ctx, c, fmt.Sprintf("%s/c%02d/f%06d", dir, g, j)); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				lat[g] = append(lat[g], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		b.Fatalf("creating files under %s: %v", dir, firstErr)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return metaRun{
		opsPerSec: float64(len(all)) / elapsed.Seconds(),
		p50:       all[len(all)/2],
		p99:       all[len(all)*99/100],
	}
}

// BenchmarkDFSMetadata creates 20,000 closed empty files from 32
// concurrent clients on one server, first with one request per file
// (FSCreate with Close) and then with two (create, then close), and
// reports the rate and the p50 and p99 latency of each form. References:
// the one-request form from 8 clients, the p50 of 1,000 one-request
// creates from a single client, and the p50 of a 4 KiB write plus
// fdatasync on the same disk (a Raft commit costs two).
func BenchmarkDFSMetadata(b *testing.B) {
	const (
		clients = 32
		ops     = 20000
		serial  = 1000
	)
	in := testutil.StartInstallation(b, testutil.Options{})
	ctx := context.Background()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		root := fmt.Sprintf("/bench/meta-%d", i)
		sync := syncLatency(b, in.Dir)
		single := runCreates(b, in.Client, root+"/serial", 1, serial, createClosed)
		one := runCreates(b, in.Client, root+"/one", clients, ops, createClosed)
		eight := runCreates(b, in.Client, root+"/eight", 8, ops, createClosed)
		two := runCreates(b, in.Client, root+"/two", clients, ops, createThenClose)
		if err := in.Client.FSRemove(ctx, &api.Remove{Path: root, Recursive: true}); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(one.opsPerSec, "1req-ops/s")
		b.ReportMetric(ms(one.p50), "1req-p50-ms")
		b.ReportMetric(ms(one.p99), "1req-p99-ms")
		b.ReportMetric(two.opsPerSec, "2req-ops/s")
		b.ReportMetric(ms(two.p50), "2req-p50-ms")
		b.ReportMetric(ms(two.p99), "2req-p99-ms")
		b.ReportMetric(eight.opsPerSec, "8c-ops/s")
		b.ReportMetric(ms(eight.p50), "8c-p50-ms")
		b.ReportMetric(ms(single.p50), "serial-p50-ms")
		b.ReportMetric(ms(sync), "fdatasync-p50-ms")
		b.ReportMetric(float64(single.p50)/float64(2*sync), "serial-p50/2-syncs")
	}
}

// nodeState returns the state of the named node, or "" if it is unknown
// or the server cannot be reached.
func nodeState(c *api.Client, name string) string {
	nodes, _, err := c.Nodes(context.Background(), nil)
	if err != nil {
		return ""
	}
	for _, n := range nodes {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

// BenchmarkDFSRepair writes 2,688 MiB (42 chunks of 64 MiB, replication 3)
// to four agents in four zones, so that each holds about 2 GiB (31.5
// chunks on average), kills -9 the agent holding the most, and measures
// the time until its node is declared down (heartbeat TTL 1 s) and then
// until no chunk is under-replicated. Agents run with --repair-rate 0
// (unlimited). The repair rate (bytes the dead node held over the repair
// time) is compared with the disk's sequential write rate measured in the
// same run: every repaired byte is written once to that disk.
func BenchmarkDFSRepair(b *testing.B) {
	const (
		files    = 6
		fileSize = 7 * api.DefaultChunkSize
	)
	in := testutil.StartInstallation(b, testutil.Options{Agents: 4, Zones: 4, HeartbeatTTL: time.Second,
		AgentArgs: []string{"--repair-rate", "0"}})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		path := filepath.Join(in.Dir, "disk-baseline")
		diskWrite := diskWriteRate(b, path, 1<<30)
		os.Remove(path)

		dir := fmt.Sprintf("/bench/repair-%d", i)
		held := map[string]int64{}
		for f := range files {
			p := fmt.Sprintf("%s/f%d", dir, f)
			if _, err := in.Client.FSUpload(ctx, p, newPatternReader(fileSize, uint64(f)), fileSize,
				api.UploadOptions{Replication: 3}); err != nil {
				b.Fatalf("upload %s: %v", p, err)
			}
			fi, err := in.Client.FSStat(ctx, p)
			if err != nil {
				b.Fatal(err)
			}
			for _, c := range fi.Chunks {
				if len(c.Replicas) != 3 {
					b.Fatalf("chunk %s of %s has %d replicas, want 3", c.ID, p, len(c.Replicas))
				}
				for _, r := range c.Replicas {
					held[r.Node] += c.Length
				}
			}
		}
		var victim string
		for node, n := range held {
			if victim == "" || n > held[victim] {
				victim = node
			}
		}
		st, err := in.Client.FSStatus(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if st.UnderReplicated != 0 {
			b.Fatalf("%d chunks under-replicated before the kill", st.UnderReplicated)
		}
		repairedBefore := st.RepairedBytes
		dropCaches(b)

		kill := time.Now()
		in.Agent(victim).Kill9()
		poll(b, 30*time.Second, func() bool { return nodeState(in.Client, victim) == api.NodeDown })
		detect := time.Since(kill)
		poll(b, 10*time.Minute, func() bool {
			st, err = in.Client.FSStatus(ctx)
			return err == nil && st.UnderReplicated == 0
		})
		full := time.Since(kill)
		repair := full - detect
		// The rate uses the bytes the dead node held, which is what had to
		// be copied; the server's own counter is reported beside it.
		counted := st.RepairedBytes - repairedBefore
		if counted != held[victim] {
			b.Logf("the repaired-bytes counter grew by %d; the dead node held %d", counted, held[victim])
		}

		rate := float64(held[victim]) / megabyte / repair.Seconds()
		b.ReportMetric(float64(held[victim])/megabyte, "victim-MB")
		b.ReportMetric(float64(counted)/megabyte, "counted-MB")
		b.ReportMetric(detect.Seconds(), "down-s")
		b.ReportMetric(repair.Seconds(), "repair-s")
		b.ReportMetric(full.Seconds(), "full-s")
		b.ReportMetric(rate, "repair-MB/s")
		b.ReportMetric(diskWrite, "disk-write-MB/s")
		b.ReportMetric(rate/diskWrite, "ratio")

		// Bring the node back for the next round; its stale replicas are
		// deleted when it reports its inventory.
		in.Agent(victim).Restart(b)
		poll(b, 30*time.Second, func() bool { return nodeState(in.Client, victim) == api.NodeReady })
		if err := in.Client.FSRemove(ctx, &api.Remove{Path: dir, Recursive: true}); err != nil {
			b.Fatal(err)
		}
	}
}
