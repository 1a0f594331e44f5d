package agent

import (
	"context"
	"crypto/rand"
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

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/sandbox"
	"github.com/shoal-dev/shoal/internal/testutil/freenet"
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
	subnet := freenet.Prefix(t, netip.MustParsePrefix("198.18.0.0/15"), 24)
	a.syncNetwork(&api.NodeNetwork{Cluster: "c1", VNI: 100000 + binary.BigEndian.Uint32(rnd)%1000000, Subnet: subnet.String(), Block: subnet.String()})
	if a.endpointAddr("c1") == "" {
		t.Fatal("the cluster network was not applied")
	}

	zipBytes, v := shellBundle(t, "net", `curl -sS -X POST --data-binary "$BODY via $AWS_LAMBDA_RUNTIME_API" "$API/invocation/$ID/response" >/dev/null`)
	fetch := func(ctx context.Context, cluster string, v *api.FunctionVersion, w io.Writer) error {
		_, err := w.Write(zipBytes)
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
