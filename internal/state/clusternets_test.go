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
		{nil, "10.10.0.0/30", 24, state.ErrInvalid, "not a valid IPv4 division"},
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
