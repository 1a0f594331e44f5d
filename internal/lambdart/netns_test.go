package lambdart

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/shoal-dev/shoal/api"
)

// testNetwork gives every sandbox the same network namespace, made by the
// test with its loopback down.
type testNetwork struct {
	path string

	mu       sync.Mutex
	attached map[string]bool
}

func (n *testNetwork) Attach(cluster, id string) (string, string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.attached[id] = true
	return n.path, "10.99.0.2", nil
}

func (n *testNetwork) Detach(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.attached, id)
}

// newNamedNetns makes a network namespace bound at /run/netns/NAME.
func newNamedNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making a network namespace needs root")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "lambdart-test-" + hex.EncodeToString(b)
	errc := make(chan error, 1)
	go func() {
		// NewNamed switches the thread into the new namespace; the
		// thread dies with this goroutine, still locked.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Skipf("cannot make a network namespace here: %v", err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return "/run/netns/" + name
}

// TestRuntimeAPIInNetworkNamespace: a sandbox with a network namespace
// finds the Runtime API on 127.0.0.1:9001 inside it, with the namespace's
// loopback brought up, as on Lambda.
func TestRuntimeAPIInNetworkNamespace(t *testing.T) {
	nw := &testNetwork{path: newNamedNetns(t), attached: map[string]bool{}}
	tp := newTestPool(t, func(c *Config) { c.Network = nw })
	z := shBootstrap(t, `set -eu
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H="$(mktemp)"
  BODY="$(curl -sS -D "$H" "$API/invocation/next")"
  ID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$H" | cut -d' ' -f2 | tr -d '\r\n')"
  curl -sS -X POST --data-binary "$BODY from $AWS_LAMBDA_RUNTIME_API" "$API/invocation/$ID/response" >/dev/null
done
`)
	v := tp.b.version("fn", 1, z, api.FunctionConfig{})
	res := tp.invoke(t, v, `hello`, true)
	if res.FunctionError != "" || string(res.Payload) != "hello from "+RuntimeAPIAddr {
		t.Fatalf("result %+v (%s), want the answer through %s", res, res.Payload, RuntimeAPIAddr)
	}
	if s := tp.sandboxesOf(""); len(s) != 1 || s[0].Addr != "10.99.0.2" {
		t.Errorf("sandboxes %+v, want one with the network's address", s)
	}
	// The listener is not on the host's loopback.
	if c, err := net.Dial("tcp", RuntimeAPIAddr); err == nil {
		c.Close()
		t.Errorf("the host reaches %s: the Runtime API is not confined to the sandbox's namespace", RuntimeAPIAddr)
	}
	tp.Close()
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if len(nw.attached) != 0 {
		t.Errorf("sandboxes still attached after Close: %v", nw.attached)
	}
}
