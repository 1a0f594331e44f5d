package state_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

func (f *fixture) createNet(name string, egress []string, networks string, bits int) (*api.Cluster, error) {
	return f.s.CreateCluster(f.next(), &state.ClusterCreateRequest{
		Req: api.ClusterRequest{Name: name, Nodes: 1, Egress: egress}, Now: f.now, Token: "t-" + name,
		Networks: networks, SubnetBits: bits})
}

func TestClusterNetworks(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		f.addNode(n, "z1")
	}
	const pool = "10.10.0.0/22" // four /24s
	subnet := func(name string) string {
		s, _ := f.snap().ClusterNetwork(nil, name)
		return s
	}
	if _, err := f.createNet("a", []string{"192.168.5.0/24"}, pool, 24); err != nil {
		t.Fatal(err)
	}
	if sn, eg := f.snap().ClusterNetwork(nil, "a"); sn != "10.10.0.0/24" || !cmp.Equal(eg, []string{"192.168.5.0/24"}) {
		t.Errorf("a's network %s egress %v", sn, eg)
	}
	if stored := f.cluster("a"); stored.Subnet != "" {
		t.Errorf("the stored cluster row holds subnet %q; only reads derive it", stored.Subnet)
	}
	if _, err := f.createNet("b", nil, pool, 24); err != nil {
		t.Fatal(err)
	}
	if got := subnet("b"); got != "10.10.1.0/24" {
		t.Errorf("b's subnet %s, want the next one", got)
	}
	// Deleting a frees its subnet for the next cluster.
	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "a", Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if got := subnet("a"); got != "" {
		t.Errorf("deleted cluster still has subnet %s", got)
	}
	if _, err := f.createNet("c", nil, pool, 24); err != nil {
		t.Fatal(err)
	}
	if got := subnet("c"); got != "10.10.0.0/24" {
		t.Errorf("c's subnet %s, want a's freed one", got)
	}

	// Refused, changing nothing.
	before := dump(t, f.s)
	for _, tt := range []struct {
		egress   []string
		networks string
		bits     int
		want     error
		msg      string
	}{
		{[]string{"10.10.2.0/23"}, pool, 24, state.ErrInvalid, "overlaps the cluster networks"},
		{nil, "10.10.0.0/30", 24, state.ErrInvalid, "do not divide the cluster networks"},
	} {
		_, err := f.createNet("d", tt.egress, tt.networks, tt.bits)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("egress %v networks %s/%d: got %v, want %q", tt.egress, tt.networks, tt.bits, err, tt.msg)
		}
	}
	checkUnchanged(t, f.s, before)
	if _, err := f.createNet("d", nil, "10.10.0.0/23", 24); !errors.Is(err, state.ErrNoRoom) {
		t.Errorf("a third cluster in two subnets: got %v, want no room", err)
	}
}

func TestEgressValidation(t *testing.T) {
	for _, tt := range []struct {
		egress string
		want   string
	}{
		{"10.0.0.0/8", ""},
		{"nonsense", "CIDR notation"},
		{"10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8"},
		{"127.0.0.0/16", "loopback"},
		{"fd00::/8", "only IPv4"},
	} {
		r := api.ClusterRequest{Name: "c", Nodes: 1, Egress: []string{tt.egress}}
		err := r.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("egress %q: got %v, want %q", tt.egress, err, tt.want)
		}
	}
}

func TestNodeBlocks(t *testing.T) {
	f := newFixture(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.addNode(n, "z1")
	}
	create := func(name string, nodes int) error {
		_, err := f.s.CreateCluster(f.next(), &state.ClusterCreateRequest{
			Req: api.ClusterRequest{Name: name, Nodes: nodes}, Now: f.now, Token: "t-" + name,
			Networks: "10.10.0.0/16", SubnetBits: 22, NodeBits: 24})
		return err
	}
	blocks := func(cluster string) map[string]string {
		out := map[string]string{}
		for _, n := range []string{"n1", "n2", "n3"} {
			if nw := f.snap().NodeNetwork(nil, cluster, n); nw != nil {
				out[n] = nw.Block
				if nw.VNI == 0 || nw.Subnet != "10.10.0.0/22" && nw.Subnet != "10.10.4.0/22" {
					t.Errorf("%s on %s: vni %d subnet %s", cluster, n, nw.VNI, nw.Subnet)
				}
			}
		}
		return out
	}
	if err := create("a", 2); err != nil {
		t.Fatal(err)
	}
	got := blocks("a")
	if len(got) != 2 || got[f.cluster("a").Nodes[0]] != "10.10.0.0/24" || got[f.cluster("a").Nodes[1]] != "10.10.1.0/24" {
		t.Fatalf("blocks of a: %v (members %v)", got, f.cluster("a").Nodes)
	}
	// A node that leaves frees its block; the next member takes the
	// lowest free one.
	gone := f.cluster("a").Nodes[0]
	if _, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "a", Nodes: 1, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.ResizeCluster(f.next(), &state.ClusterResizeRequest{Name: "a", Nodes: 2, Now: f.now}); err != nil {
		t.Fatal(err)
	}
	got = blocks("a")
	if len(got) != 2 {
		t.Fatalf("after shrink and grow: %v", got)
	}
	seen := map[string]bool{}
	for _, b := range got {
		seen[b] = true
	}
	if seen["10.10.0.0/24"] == seen["10.10.1.0/24"] || !seen["10.10.2.0/24"] {
		t.Errorf("after shrink and grow: %v, want a never used block rather than the one just freed (left: %s)", got, gone)
	}
	// Deleting the cluster frees the nodes; another cluster numbers its
	// blocks from its own subnet.
	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "a", Now: f.now}); err != nil {
		t.Fatal(err)
	}
	if err := create("b", 3); err != nil {
		t.Fatal(err)
	}
	if got := blocks("b"); len(got) != 3 {
		t.Errorf("blocks of b: %v", got)
	}
	// More members than blocks: refused, changing nothing.
	if err := f.s.DeleteCluster(f.next(), &state.ClusterDeleteRequest{Name: "b", Now: f.now}); err != nil {
		t.Fatal(err)
	}
	before := dump(t, f.s)
	_, err := f.s.CreateCluster(f.next(), &state.ClusterCreateRequest{
		Req: api.ClusterRequest{Name: "c", Nodes: 2}, Now: f.now, Token: "t-c",
		Networks: "10.10.0.0/16", SubnetBits: 24, NodeBits: 24})
	if !errors.Is(err, state.ErrNoRoom) || !strings.Contains(err.Error(), "room for 1 nodes") {
		t.Errorf("two nodes in one block: %v", err)
	}
	checkUnchanged(t, f.s, before)
}
