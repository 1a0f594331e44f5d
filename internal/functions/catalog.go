package functions

import (
	"fmt"
	"sort"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/invoke"
	"github.com/shoal-dev/shoal/internal/state"
)

// OperatorAccessKey is the AWS access key id that stands for the operator
// in requests signed with AWS Signature Version 4; any other access key id
// names a cluster, whose API token is its secret.
const OperatorAccessKey = "operator"

// Catalog is the read side of the functions' state that the invoke path
// uses. Every method reads the current state; it is safe for concurrent
// use, and what it returns is the caller's own.
type Catalog struct {
	store         *state.Store
	operatorToken string
}

// Agent is a ready member node of a cluster, where the cluster's
// functions run: the invoke path's own description of one, so that
// Catalog is the invoke path's catalog as it is.
type Agent = invoke.Agent

// Function returns a cluster's function; the error wraps
// state.ErrNotFound when there is none.
func (c *Catalog) Function(cluster, name string) (*api.Function, error) {
	f := c.store.Snapshot().Function(nil, cluster, name)
	if f == nil {
		return nil, fmt.Errorf("%w: function %s in cluster %s", state.ErrNotFound, name, cluster)
	}
	return f, nil
}

// FunctionsNamed returns the functions called name in every cluster,
// sorted by cluster.
func (c *Catalog) FunctionsNamed(name string) []*api.Function {
	return c.store.Snapshot().FunctionsNamed(nil, name)
}

// Agents returns a cluster's ready member nodes that have an agent
// address, sorted by name.
func (c *Catalog) Agents(cluster string) []Agent {
	return readyAgents(c.store.Snapshot(), cluster)
}

// readyAgents returns the ready members of cluster with an address,
// sorted by name.
func readyAgents(snap *state.Snapshot, cluster string) []Agent {
	cl := snap.Cluster(nil, cluster)
	if cl == nil {
		return nil
	}
	var out []Agent
	for _, name := range cl.Nodes {
		n := snap.Node(nil, name)
		if n == nil || n.State != api.NodeReady || n.Cluster != cluster || n.Addr == "" {
			continue
		}
		out = append(out, Agent{Node: n.Name, Addr: n.Addr, Zone: n.Zone})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// SigningSecret returns the secret of an AWS access key id and the
// principal that signing with it stands for: OperatorAccessKey has the
// operator token (an operator), a cluster's name its API token (that
// cluster). ok is false for an unknown key, and for the operator key of
// an installation without an operator token (there is no secret to sign
// with; the invoke path decides what an open installation accepts). The
// operator key wins over a cluster named "operator".
func (c *Catalog) SigningSecret(accessKey string) (secret string, p httpapi.Principal, ok bool) {
	if accessKey == OperatorAccessKey {
		if c.operatorToken == "" {
			return "", httpapi.Principal{}, false
		}
		return c.operatorToken, httpapi.Principal{}, true
	}
	cl := c.store.Snapshot().Cluster(nil, accessKey)
	if cl == nil || cl.Token == "" {
		return "", httpapi.Principal{}, false
	}
	return cl.Token, httpapi.Principal{Cluster: cl.Name}, true
}

// The invoke path reads functions through a Catalog.
var _ invoke.Catalog = (*Catalog)(nil)
