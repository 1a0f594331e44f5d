package clusternet

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testutil/freenet"
)

// TestDNSRedirect checks that a task's DNS queries reach the node's
// resolver whatever address they are sent to: outside the subnet, or
// another task's (traffic between tasks is not tracked by conntrack,
// except port 53, which the DNAT needs).
func TestDNSRedirect(t *testing.T) {
	needRoot(t)
	m := newTestManager(t, uniqueNode(t, "dns"), -1)
	subnet := freenet.Prefix(t, clusterRange, 20)
	n := Network{
		Cluster: "one", VNI: 4701, Subnet: subnet, Block: freenet.Sub(subnet, 1, 24),
		Overlay: netip.AddrPortFrom(loop, freeUDPPort(t)), EndpointPort: 1,
	}
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	// The resolver listens on the gateway, which exists once applied.
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(n.gateway(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	n.DNSPort = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	if err := m.Apply(n); err != nil {
		t.Fatal(err)
	}
	a, err := m.AddTask("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.AddTask("b")
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.Addr{netip.MustParseAddr("192.0.2.53"), b.Addr} {
		err := inNS(a.NetNS, func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(to, 53).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(to.String()))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(reachTimeout))
		buf := make([]byte, 64)
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Errorf("query to %v:53 did not reach the resolver: %v", to, err)
			continue
		}
		if got, want := string(buf[:k]), to.String(); got != want {
			t.Errorf("resolver got %q from %v, want %q", got, from, want)
		}
	}
}
