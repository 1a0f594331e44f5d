package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestClusterNetworks: through the CLI, a cluster gets a private subnet and
// the egress networks asked for, a bad egress is refused and creates
// nothing, and a deleted cluster's subnet goes to the next cluster.
func TestClusterNetworks(t *testing.T) {
	in := testutil.StartInstallation(t, testutil.Options{Agents: 2, Zones: 1})
	out := mustShoal(t, in, "cluster", "create", "a", "--nodes", "1", "--egress", "192.168.50.0/24")
	if !strings.Contains(out, "Its network: 10.128.0.0/18; egress: 192.168.50.0/24") {
		t.Errorf("cluster create printed:\n%s", out)
	}
	for _, egress := range []string{"10.130.0.0/16", "192.168.50.1/24", "banana"} {
		if _, errOut, code := in.Shoal("cluster", "create", "b", "--nodes", "1", "--egress", egress); code == 0 || !strings.Contains(errOut, "egress") {
			t.Errorf("egress %s: exit %d, stderr %q; want a refusal naming egress", egress, code, errOut)
		}
	}
	if _, _, code := in.Shoal("cluster", "status", "b"); code == 0 {
		t.Error("a refused cluster exists")
	}
	var c api.Cluster
	if err := json.Unmarshal([]byte(mustShoal(t, in, "cluster", "status", "a", "-o", "json")), &c); err != nil {
		t.Fatal(err)
	}
	if c.Subnet != "10.128.0.0/18" || len(c.Egress) != 1 || c.Egress[0] != "192.168.50.0/24" {
		t.Errorf("cluster a: subnet %q egress %v", c.Subnet, c.Egress)
	}
	if out := mustShoal(t, in, "cluster", "status", "a"); !strings.Contains(out, "Network: 10.128.0.0/18; egress: 192.168.50.0/24") {
		t.Errorf("cluster status shows no network:\n%s", out)
	}
	mustShoal(t, in, "cluster", "delete", "a")
	if out := mustShoal(t, in, "cluster", "create", "b", "--nodes", "1"); !strings.Contains(out, "Its network: 10.128.0.0/18; egress: none") {
		t.Errorf("the freed subnet was not reused:\n%s", out)
	}
}
