package clusternet

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/shoal-dev/shoal/internal/testutil/freenet"
)

// BenchmarkAddTask measures AddTask+RemoveTask: with a pool whose
// namespaces are ready at each add (the refill is not timed), with a pool
// under back-to-back adds (refills compete with the adds), and without a
// pool (the first add builds a namespace; RemoveTask recycles it for the
// next).
func BenchmarkAddTask(b *testing.B) {
	needRoot(b)
	for _, bc := range []struct {
		name     string
		pool     int
		waitFull bool
	}{
		{"pool-ready", 4, true},
		{"pool-back-to-back", 4, false},
		{"no-pool", -1, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := newTestManager(b, uniqueNode(b, "bench"), bc.pool)
			subnet := freenet.Prefix(b, clusterRange, 20)
			n := Network{
				Cluster: "bench", VNI: 4501, Subnet: subnet, Block: freenet.Sub(subnet, 1, 24),
				Overlay: netip.AddrPortFrom(loop, freeUDPPort(b)), EndpointPort: 1,
			}
			if err := m.Apply(n); err != nil {
				b.Fatal(err)
			}
			full := func() bool {
				m.mu.Lock()
				defer m.mu.Unlock()
				return len(m.ready) >= bc.pool
			}
			i := 0
			for b.Loop() {
				if bc.waitFull {
					b.StopTimer()
					waitFor(b, "the pool to fill", full)
					b.StartTimer()
				}
				id := fmt.Sprintf("job/%d#run", i)
				i++
				if _, err := m.AddTask(id); err != nil {
					b.Fatal(err)
				}
				if err := m.RemoveTask(id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
