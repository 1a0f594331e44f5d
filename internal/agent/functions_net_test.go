package agent

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/sandbox"
)

// TestFunctionSandboxOnClusterNetwork: on a node with a cluster network,
// a function sandbox gets a namespace of its own on it, and finds the
// Runtime API inside it on 127.0.0.1:9001.
func TestFunctionSandboxOnClusterNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cluster networks need root")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the test bootstrap needs it")
	}
	rnd := make([]byte, 4)
	rand.Read(rnd)
	d, err := sandbox.NewExec(discardLog(), "shoal/agent-fnnet-test-"+hex.EncodeToString(rnd))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Isolated() {
		d.Close()
		t.Skip("the exec driver does not isolate runs here: no task networks")
	}
	c := api.NewClient([]string{"http://127.0.0.1:1"}, "")
	a := &Agent{cfg: Config{Name: "fnnet-" + hex.EncodeToString(rnd), DataDir: t.TempDir(), AdvertiseAddr: "127.0.0.1:1",
		TaskNetwork: TaskNetworkOn, OverlayAddr: "127.0.0.1:" + strconv.Itoa(freeUDPPort(t))},
		log: discardLog(), driver: d, client: c, cluster: "c1", metrics: newAgentMetrics(), caps: capability.NewVerifier(time.Now)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if err := a.setupNetwork(); err != nil {
		d.Close()
		t.Skipf("no cluster networks on this host: %v", err)
	}
	t.Cleanup(func() {
		a.closeFunctions()
		a.cancel()
		a.closeNetwork()
		d.Close()
		c.Close()
	})
	subnet := pickSubnet(t)
	a.syncNetwork(&api.NodeNetwork{Cluster: "c1", VNI: 100000 + binary.BigEndian.Uint32(rnd)%1000000, Subnet: subnet.String(), Block: subnet.String()})
	if a.endpointAddr("c1") == "" {
		t.Fatal("the cluster network was not applied")
	}

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	h := &zip.FileHeader{Name: "bootstrap", Method: zip.Deflate}
	h.SetMode(0o755)
	w, _ := zw.CreateHeader(h)
	io.WriteString(w, `#!/bin/sh
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H="$(mktemp)"
  BODY="$(curl -sS -D "$H" "$API/invocation/next")"
  ID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  curl -sS -X POST --data-binary "$BODY via $AWS_LAMBDA_RUNTIME_API" "$API/invocation/$ID/response" >/dev/null
done
`)
	zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	v := &api.FunctionVersion{Version: 1, Bundle: "/clusters/c1/.functions/net/1.zip", SHA256: hex.EncodeToString(sum[:]),
		Size: int64(buf.Len()), Config: api.FunctionConfig{}.Resolved()}
	fetch := func(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error {
		_, err := w.Write(buf.Bytes())
		return err
	}
	if err := a.startFunctions(fetch); err != nil {
		t.Fatal(err)
	}
	res, err := a.fns.Invoke(context.Background(), &api.SandboxInvocation{RequestID: "r1", Function: "net", Cluster: "c1",
		Version: v, Payload: []byte("hello"), Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.FunctionError != "" || string(res.Payload) != "hello via 127.0.0.1:9001" {
		t.Fatalf("result %+v (%s), want the payload through 127.0.0.1:9001", res, res.Payload)
	}
	sbs := a.fns.Report().Sandboxes
	if len(sbs) != 1 {
		t.Fatalf("sandboxes %+v, want 1", sbs)
	}
	addr, err := netip.ParseAddr(sbs[0].Addr)
	if err != nil || !subnet.Contains(addr) {
		t.Errorf("sandbox address %q, want one in %v", sbs[0].Addr, subnet)
	}
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// pickSubnet returns a random /24 of the benchmarking range 198.18.0.0/15
// that no route of the host overlaps: the host may be shared with other
// tests.
func pickSubnet(t *testing.T) netip.Prefix {
	t.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		b := make([]byte, 2)
		rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + b[0]%2, b[1], 0}), 24)
		clash := false
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			clash = clash || ones > 0 && netip.PrefixFrom(ip.Unmap(), ones).Overlaps(p)
		}
		if !clash {
			return p
		}
	}
	t.Fatal("no free /24 in 198.18.0.0/15")
	return netip.Prefix{}
}
