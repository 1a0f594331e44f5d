// Package freenet finds IPv4 prefixes that tests and benchmarks may give
// to networks they make on this host: inside a range they name, clear of
// every route the host has and of every prefix this process took before.
// The machine may be shared with other tests that use the same ranges.
// It imports no Shoal package, so that any package's tests may use it.
package freenet

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// taken are the prefixes this process was given, so that no two tests
// get the same.
var (
	mu    sync.Mutex
	taken []netip.Prefix
)

// Prefix returns a random prefix of length bits inside within that
// overlaps no route of the host and no prefix returned before.
func Prefix(tb testing.TB, within netip.Prefix, bits int) netip.Prefix {
	tb.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	n := 1 << (bits - within.Bits())
	for range 100 {
		var x [4]byte
		rand.Read(x[:])
		p := Sub(within, int(binary.BigEndian.Uint32(x[:])%uint32(n)), bits)
		clash := slices.ContainsFunc(taken, p.Overlaps)
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if ones > 0 && netip.PrefixFrom(ip.Unmap(), ones).Overlaps(p) {
				clash = true
			}
		}
		if !clash {
			taken = append(taken, p)
			return p
		}
	}
	tb.Fatalf("no free /%d in %v", bits, within)
	return netip.Prefix{}
}

// Sub returns the i-th prefix of length bits inside IPv4 prefix p.
func Sub(p netip.Prefix, i, bits int) netip.Prefix {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) + uint32(i)<<(32-bits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v))), bits)
}
