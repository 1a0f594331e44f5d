package state

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// tableFunctions holds the clusters' functions: one record per cluster
// and name, with every version of the function.
const tableFunctions = "functions"

// TableFunctions names the functions' table for blocking queries.
const TableFunctions = tableFunctions

// functionRecord is a function as the store keeps it. It is kept apart
// from api.Function so that the wire type can grow without changing what
// snapshots hold, and so that readers always get a copy of their own.
// ID is "CLUSTER/NAME"; neither part may contain a '/'.
type functionRecord struct {
	ID          string
	Cluster     string
	Name        string
	Latest      int
	Versions    []*api.FunctionVersion
	Created     time.Time
	Updated     time.Time
	CreateIndex uint64
	ModifyIndex uint64
}

func functionID(cluster, name string) string { return cluster + "/" + name }

// toAPI returns a deep copy of r as an api.Function.
func (r *functionRecord) toAPI() *api.Function {
	f := &api.Function{Name: r.Name, Cluster: r.Cluster, Latest: r.Latest, Created: r.Created, Updated: r.Updated,
		CreateIndex: r.CreateIndex, ModifyIndex: r.ModifyIndex, Versions: make([]*api.FunctionVersion, len(r.Versions))}
	for i, v := range r.Versions {
		f.Versions[i] = copyVersion(v)
	}
	return f
}

// copyVersion returns a copy of v sharing nothing with it.
func copyVersion(v *api.FunctionVersion) *api.FunctionVersion {
	c := *v
	c.Config.Env = maps.Clone(v.Config.Env)
	if v.Config.Retries != nil {
		r := *v.Config.Retries
		c.Config.Retries = &r
	}
	return &c
}

// FunctionDeployRequest adds a version to a function, creating the
// function unless Update is set. The FSM numbers the version (the latest
// one's number plus one) and resolves its configuration; the bundle must
// already be stored at Version.Bundle.
type FunctionDeployRequest struct {
	Cluster string              `json:"cluster"`
	Name    string              `json:"name"`
	Version api.FunctionVersion `json:"version"`
	// Update requires the function to exist already.
	Update bool      `json:"update,omitempty"`
	Now    time.Time `json:"now"`
}

// FunctionDeleteRequest deletes a function with all its versions.
type FunctionDeleteRequest struct {
	Cluster string `json:"cluster"`
	Name    string `json:"name"`
}

// Function returns a copy of the named function of a cluster, or nil.
func (s *Snapshot) Function(ws memdb.WatchSet, cluster, name string) *api.Function {
	r := first[*functionRecord](s.txn, ws, tableFunctions, functionID(cluster, name))
	if r == nil {
		return nil
	}
	return r.toAPI()
}

// Functions returns copies of a cluster's functions sorted by name, or of
// every cluster's (sorted by cluster, then name) when cluster is "".
func (s *Snapshot) Functions(ws memdb.WatchSet, cluster string) []*api.Function {
	var recs []*functionRecord
	if cluster == "" {
		recs = collect[*functionRecord](s.txn, ws, tableFunctions, "id")
	} else {
		recs = collect[*functionRecord](s.txn, ws, tableFunctions, "cluster", cluster)
	}
	return sortedFunctions(recs)
}

// FunctionsNamed returns copies of the functions called name in every
// cluster, sorted by cluster.
func (s *Snapshot) FunctionsNamed(ws memdb.WatchSet, name string) []*api.Function {
	return sortedFunctions(collect[*functionRecord](s.txn, ws, tableFunctions, "name", name))
}

func sortedFunctions(recs []*functionRecord) []*api.Function {
	slices.SortFunc(recs, func(a, b *functionRecord) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Name, b.Name))
	})
	out := make([]*api.Function, len(recs))
	for i, r := range recs {
		out[i] = r.toAPI()
	}
	return out
}

// validateVersion checks what a deploy request says of its version. The
// bundle must lie in the cluster's own part of the file system, so that
// no version of one cluster runs another cluster's files.
func validateVersion(cluster string, v *api.FunctionVersion) error {
	if err := v.Config.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if p, err := api.CleanPath("bundle", v.Bundle); err != nil || p != v.Bundle || !api.WithinDir(p, api.ClusterRoot(cluster)) || p == api.ClusterRoot(cluster) {
		return fmt.Errorf("%w: bundle: %q is not a file of cluster %s (under %s)", ErrInvalid, v.Bundle, cluster, api.ClusterRoot(cluster))
	}
	if b, err := hex.DecodeString(v.SHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("%w: sha256: %q is not a hex SHA-256 digest", ErrInvalid, v.SHA256)
	}
	if v.Size <= 0 || v.Size > api.MaxBundleBytes {
		return fmt.Errorf("%w: size: %d bytes is out of range: a bundle holds 1 to %d bytes", ErrInvalid, v.Size, api.MaxBundleBytes)
	}
	return nil
}

// DeployFunction adds a version to a function (see FunctionDeployRequest)
// and returns the function. It fails with ErrNotFound when the cluster
// does not exist or when an update names a missing function, and with
// ErrInvalid, naming the field, when the name or the version is invalid.
func (s *Store) DeployFunction(index uint64, req *FunctionDeployRequest) (*api.Function, error) {
	if err := api.ValidateFunctionName("name", req.Name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := validateVersion(req.Cluster, &req.Version); err != nil {
		return nil, err
	}
	var out *api.Function
	err := s.write(index, func(tx *writeTxn) error {
		if tx.cluster(req.Cluster) == nil {
			return fmt.Errorf("%w: no cluster named %q", ErrNotFound, req.Cluster)
		}
		var r functionRecord
		if old := first[*functionRecord](tx.Txn, nil, tableFunctions, functionID(req.Cluster, req.Name)); old != nil {
			r = *old
			r.Versions = slices.Clone(old.Versions)
		} else if req.Update {
			return fmt.Errorf("%w: function %s in cluster %s does not exist; deploy it first", ErrNotFound, req.Name, req.Cluster)
		} else {
			r = functionRecord{ID: functionID(req.Cluster, req.Name), Cluster: req.Cluster, Name: req.Name,
				Created: req.Now, CreateIndex: index}
		}
		v := copyVersion(&req.Version)
		v.Version = r.Latest + 1
		v.Config = v.Config.Resolved()
		if v.Created.IsZero() {
			v.Created = req.Now
		}
		r.Versions = append(r.Versions, v)
		r.Latest = v.Version
		r.Updated = req.Now
		r.ModifyIndex = index
		out = r.toAPI()
		return tx.put(tableFunctions, &r)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteFunction deletes a function with all its versions and returns
// what it was, so that the caller can remove its bundles.
func (s *Store) DeleteFunction(index uint64, req *FunctionDeleteRequest) (*api.Function, error) {
	var out *api.Function
	err := s.write(index, func(tx *writeTxn) error {
		r := first[*functionRecord](tx.Txn, nil, tableFunctions, functionID(req.Cluster, req.Name))
		if r == nil {
			return fmt.Errorf("%w: function %s in cluster %s", ErrNotFound, req.Name, req.Cluster)
		}
		out = r.toAPI()
		return tx.del(tableFunctions, r)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// deleteFunctions deletes every function of a cluster (the cluster is
// being deleted).
func (tx *writeTxn) deleteFunctions(cluster string) error {
	for _, r := range collect[*functionRecord](tx.Txn, nil, tableFunctions, "cluster", cluster) {
		if err := tx.del(tableFunctions, r); err != nil {
			return err
		}
	}
	return nil
}
